package vpn

import (
	"crypto/ed25519"
	"net/netip"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// ledger is what the VPN server granted, whichever engine runs: the signing key, the generation
// counter and one record per member (its key is the WireGuard pin), kept in wg/members.json. Both
// engines sign their entries with it, so a member follows one counter across an engine change.
type ledger struct {
	file   jsonFile
	signer ed25519.PrivateKey
	st     wgServerState
	dirty  bool // st changed since it was saved
}

// wgServerState is kept in wg/members.json: the generation counter and, per instance, the entry
// granted.
type wgServerState struct {
	Counter uint64              `json:"counter"`
	Members map[string]wgRecord `json:"members"`
}

type wgRecord struct {
	Gen      uint64 `json:"gen"`
	Key      string `json:"key,omitempty"` // "": none (granted by the OpenVPN engine)
	Endpoint string `json:"endpoint,omitempty"`
	V4       string `json:"v4"`
	V6       string `json:"v6"`
}

// openLedger loads the ledger and the signing key of the server whose state dir is dir, making
// the key on first use.
func openLedger(dir string) (*ledger, error) {
	sg, err := LoadOrCreateSigner(filepath.Join(dir, wgSignerFile))
	if err != nil {
		return nil, err
	}
	l := &ledger{file: jsonFile(filepath.Join(dir, wgStateFile)), signer: sg, st: wgServerState{Members: map[string]wgRecord{}}}
	if err := l.file.load(&l.st); err != nil {
		return nil, err
	}
	if l.st.Members == nil {
		l.st.Members = map[string]wgRecord{}
	}
	return l, nil
}

func recordOf(e Entry) wgRecord {
	r := wgRecord{Gen: e.Gen, Endpoint: e.Endpoint, V4: e.V4.String(), V6: e.V6.String()}
	if e.Key != (wgtypes.Key{}) {
		r.Key = e.Key.String()
	}
	return r
}

// grant records what the server grants e.Instance and returns the signed entry: a new
// generation when anything in it changed.
func (l *ledger) grant(e Entry) (Entry, string) {
	if r, ok := l.st.Members[e.Instance]; ok {
		e.Gen = r.Gen
		if r == recordOf(e) {
			return e, e.Sign(l.signer)
		}
	}
	l.st.Counter++
	e.Gen = l.st.Counter
	l.st.Members[e.Instance] = recordOf(e)
	l.dirty = true
	return e, e.Sign(l.signer)
}

// save keeps the ledger once per pass, before any entry it signed is published: a restarted
// server never signs two meanings with one generation.
func (l *ledger) save() error {
	if !l.dirty {
		return nil
	}
	if err := l.file.save(l.st); err != nil {
		return err
	}
	l.dirty = false
	return nil
}

// forget drops inst's record (it left); saved with the next save.
func (l *ledger) forget(inst string) {
	if _, ok := l.st.Members[inst]; ok {
		delete(l.st.Members, inst)
		l.dirty = true
	}
}

// record is the entry recorded for inst.
func (l *ledger) record(inst string) (Entry, bool) {
	r, ok := l.st.Members[inst]
	if !ok {
		return Entry{}, false
	}
	v4, err4 := netip.ParseAddr(r.V4)
	v6, err6 := netip.ParseAddr(r.V6)
	if err4 != nil || err6 != nil {
		return Entry{}, false
	}
	e := Entry{Gen: r.Gen, Instance: inst, Endpoint: r.Endpoint, V4: v4, V6: v6}
	if r.Key != "" {
		k, err := wgtypes.ParseKey(r.Key)
		if err != nil {
			return Entry{}, false
		}
		e.Key = k
	}
	return e, true
}

// signed is the signed form of inst's recorded entry.
func (l *ledger) signed(inst string) (string, bool) {
	e, ok := l.record(inst)
	if !ok {
		return "", false
	}
	return e.Sign(l.signer), true
}
