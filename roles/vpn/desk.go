package vpn

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// desk is the VPN server's side of cnsmo-role join: it reads the slots, pins each person's name to
// its identity and VPN key, assigns addresses from the people's block, and publishes the grants.
// Its state (people.json) is the truth: a slot's request is only a mailbox, so a VM that
// overwrites a slot cannot remove anyone (a leave must be signed by the pinned identity). A grant
// follows its request: it is published in the slot that holds the person's join (a VM that blanks
// the slot hides the person's name, and the person's next join shows it again; the person stays).
type desk struct {
	file jsonFile
	st   deskState
	said map[string]string // slot or name -> what was last said about it
}

type deskState struct {
	People map[string]personRecord `json:"people"` // name -> what was granted
	Left   map[string]leftRecord   `json:"left"`   // name -> its last leave (older joins are replays)
	// The roster last signed (its body without the generation) and its generation.
	Roster    string `json:"roster,omitempty"`
	RosterGen uint64 `json:"roster_gen,omitempty"`
}

type leftRecord struct {
	T  int64  `json:"t"`
	ID string `json:"id"`
}

// rosterInfo is what the running engine puts into the roster besides the people.
type rosterInfo struct {
	in Inputs
	ca string // CA fingerprint (OpenVPN)
	ep string // OpenVPN's endpoint host:port
}

type personRecord struct {
	ID    string `json:"id"`              // identity (base64 Ed25519 public key): the pin
	Key   string `json:"key,omitempty"`   // WireGuard public key
	CSR   string `json:"csr,omitempty"`   // OpenVPN: the request's public key (base64 DER): the pin
	Extra string `json:"extra,omitempty"` // after the entry in the grant (OpenVPN: the certificate)
	T     int64  `json:"t"`               // the join's time
}

// personEngine is what the running engine does for a person.
type personEngine interface {
	// admit checks r's VPN credential (the key taken by no one else, a request the CA signs) and
	// returns what follows the entry in the grant.
	admit(r Request, as Assignment) (extra string, err error)
	// drop cuts a person off that left (OpenVPN: revokes the certificate, closes the connection).
	drop(ctx context.Context, name string) error
}

const deskFile = "people.json"

func openDesk(dir string) (*desk, error) {
	d := &desk{file: jsonFile(filepath.Join(dir, deskFile)), st: deskState{People: map[string]personRecord{}, Left: map[string]leftRecord{}}}
	if err := d.file.load(&d.st); err != nil {
		return nil, err
	}
	if d.st.People == nil {
		d.st.People = map[string]personRecord{}
	}
	if d.st.Left == nil {
		d.st.Left = map[string]leftRecord{}
	}
	return d, nil
}

// say logs msg once per subject.
func (d *desk) say(env role.Env, subject, msg string) {
	if d.said[subject] == msg {
		return
	}
	if d.said == nil {
		d.said = map[string]string{}
	}
	d.said[subject] = msg
	env.Log.Warn().Str("slot", subject).Msg("vpn: people: " + msg)
}

// pass handles every slot once: proven leaves first, then joins; then it publishes every grant
// (a person's signed entry, the signed record of a finished leave, or a refusal) and the roster.
// People (entries in the ledger under <name>.users) stay until a proven leave.
func (d *desk) pass(ctx context.Context, env role.Env, snap role.Snapshot, alloc *Allocator, led *ledger, eng personEngine, info rosterInfo) error {
	me := env.Instance
	reqs := map[int]Request{}
	refusals := map[int]string{}
	for i := 1; i <= params.UserSlots; i++ {
		v := strings.TrimSpace(snap.Get(me, params.UserSlot(i)))
		if v == "" {
			continue
		}
		r, err := ParseRequest(v)
		if err != nil {
			refusals[i] = Refusal(requestName(v), err.Error())
			d.say(env, params.UserSlot(i), fmt.Sprintf("%s: %v", params.UserSlot(i), err))
			continue
		}
		reqs[i] = r
	}
	changed := false
	byes := map[int]string{}
	joined := map[int]string{} // slot -> the person whose join is in it (its grant follows its request)
	for _, i := range sortedSlots(reqs) {
		r := reqs[i]
		if !r.Leave {
			continue
		}
		id := PersonID(r.ID)
		p, ok := d.st.People[r.Name]
		if !ok {
			if l := d.st.Left[r.Name]; l.ID == id && l.T == r.T { // done: say so again
				byes[i] = LeftRecord(r.Name, id, r.T, led.signer)
			}
			continue
		}
		if p.ID != id || r.T <= p.T {
			d.say(env, "leave "+r.Name, fmt.Sprintf("a leave of %s not signed by its identity, or older than its join: ignored", r.Name))
			joined[i] = r.Name // and the person's grant stays where it was
			continue
		}
		if err := eng.drop(ctx, r.Name); err != nil {
			return err
		}
		// The person's record goes first: a crash after it leaves an address to free again, never
		// a person without an address that nobody can remove.
		delete(d.st.People, r.Name)
		d.st.Left[r.Name] = leftRecord{T: r.T, ID: id}
		if err := d.file.save(d.st); err != nil {
			return err
		}
		led.forget(r.Instance())
		if err := alloc.Free(r.Instance()); err != nil {
			return err
		}
		byes[i] = LeftRecord(r.Name, id, r.T, led.signer)
		env.Log.Info().Str("person", r.Name).Msg("vpn: people: left (proven by its identity): removed everywhere")
	}
	for _, i := range sortedSlots(reqs) {
		r := reqs[i]
		if r.Leave {
			continue
		}
		id := PersonID(r.ID)
		if p, ok := d.st.People[r.Name]; ok {
			if p.ID != id || p.Key != keyString(r.Key) || p.CSR != csrKey(r.CSR) {
				refusals[i] = Refusal(r.Name, "the name is taken: pinned to another key until that person leaves")
				d.say(env, "join "+r.Name, refusals[i])
				continue
			}
			joined[i] = r.Name
			continue
		}
		if r.T <= d.st.Left[r.Name].T {
			refusals[i] = Refusal(r.Name, "older than the name's last leave (a replay)")
			continue
		}
		if r.Key != (wgtypes.Key{}) && d.keyTaken(led, r.Key.String()) {
			refusals[i] = Refusal(r.Name, "the WireGuard key is another member's")
			continue
		}
		as, err := alloc.Assign(r.Instance())
		if err != nil {
			refusals[i] = Refusal(r.Name, err.Error())
			continue
		}
		extra, err := eng.admit(r, as)
		if err != nil {
			_ = alloc.Free(r.Instance())
			refusals[i] = Refusal(r.Name, err.Error())
			continue
		}
		d.st.People[r.Name] = personRecord{ID: id, Key: keyString(r.Key), CSR: csrKey(r.CSR), Extra: extra, T: r.T}
		joined[i] = r.Name
		changed = true
		env.Log.Info().Str("person", r.Name).Int("slot", i).Str("address", as.V4.String()).Str("address6", as.V6.String()).Msg("vpn: people: joined")
	}
	signed := map[string]string{}
	var names []string
	for name, p := range d.st.People {
		as, ok := alloc.Get(name + PeopleSuffix)
		if !ok {
			continue
		}
		names = append(names, name)
		e := Entry{Instance: name + PeopleSuffix, V4: as.V4, V6: as.V6}
		if p.Key != "" {
			e.Key, _ = wgtypes.ParseKey(p.Key)
		}
		_, signed[name] = led.grant(e)
		if p.Extra != "" {
			signed[name] += "\n" + p.Extra
		}
	}
	grants := map[int]string{}
	for i, name := range joined {
		if v, ok := signed[name]; ok {
			grants[i] = v
		}
	}
	slices.Sort(names)
	ro := Roster{Server: me, Engine: info.in.Engine, Device: info.in.Device, V4: info.in.V4, V6: info.in.V6, Domain: info.in.Domain,
		CA: info.ca, Endpoint: info.ep, People: names}
	if body := ro.body(); body != d.st.Roster || d.st.RosterGen == 0 {
		led.st.Counter++ // one counter with the entries: never two meanings for one generation
		led.dirty = true
		d.st.Roster, d.st.RosterGen, changed = body, led.st.Counter, true
	}
	ro.Gen = d.st.RosterGen
	if changed {
		if err := d.file.save(d.st); err != nil {
			return err
		}
	}
	if err := led.save(); err != nil {
		return err
	}
	for i := 1; i <= params.UserSlots; i++ {
		want, ok := grants[i]
		if !ok {
			if want, ok = byes[i]; !ok {
				want = refusals[i]
			}
		}
		if err := role.Publish(ctx, env.Params, snap, me, params.UserGrant(i), want); err != nil {
			return fmt.Errorf("vpn: people: %w", err)
		}
	}
	if err := role.Publish(ctx, env.Params, snap, me, params.VPNRoster, ro.Sign(led.signer)); err != nil {
		return fmt.Errorf("vpn: people: %w", err)
	}
	return nil
}

// keyTaken reports whether a WireGuard key is granted to a member or a person already.
func (d *desk) keyTaken(led *ledger, key string) bool {
	for _, r := range led.st.Members {
		if r.Key == key {
			return true
		}
	}
	return false
}

func keyString(k wgtypes.Key) string {
	if k == (wgtypes.Key{}) {
		return ""
	}
	return k.String()
}

// csrKey is the pinned form of a request's public key ("" none).
func csrKey(der []byte) string {
	if der == nil {
		return ""
	}
	pub, err := csrPublicKey(der)
	if err != nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(pub)
}

// requestName is the name= of a request that did not parse, for its refusal ("?" when none).
func requestName(v string) string {
	for _, f := range strings.Fields(v) {
		if n, ok := strings.CutPrefix(f, "name="); ok && ValidPersonName(n) == nil {
			return n
		}
	}
	return "?"
}

func sortedSlots(m map[int]Request) []int {
	var out []int
	for i := range m {
		out = append(out, i)
	}
	slices.Sort(out)
	return out
}

// PersonID is the base64 form of an identity.
func PersonID(k ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(k) }
