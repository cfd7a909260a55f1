package vpn

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Files of the WireGuard engine in the VPN's state dir.
const (
	wgKeyFile    = "wg/private.key" // this VM's WireGuard key (0600), every member and the server
	wgSignerFile = "wg/signer.key"  // the server's signing key (0600)
	wgSignerPin  = "wg/signer.pin"  // a member: the server's signing key, pinned on first use
	wgSeenFile   = "wg/seen.json"   // a member: the newest generation seen per instance
	wgStateFile  = "wg/members.json"
)

// WGMember is the WireGuard engine on an application VM: it makes its key, publishes the public
// half, and configures every member the server signed as a direct peer.
type WGMember struct {
	env role.Env
	dev *wgDev
	// RemoveKey makes Teardown delete the key, the pinned signer and the generations seen.
	RemoveKey bool

	key       wgtypes.Key
	ms        *membership
	confirmed int // the device epoch whose mesh was confirmed (0: none)
	pins      signerPins
}

// NewWGMember returns the WireGuard engine of an application VM.
func NewWGMember(env role.Env) *WGMember {
	return &WGMember{env: env, dev: newWGDev(env), pins: signerPins{env: env}}
}

// Name implements role.Service.
func (m *WGMember) Name() string { return "vpn" }

func (m *WGMember) load() error {
	if m.ms != nil {
		return nil
	}
	if err := os.MkdirAll(m.env.StateDir, 0o700); err != nil {
		return fmt.Errorf("vpn: state dir: %w", err)
	}
	k, err := LoadOrCreateWGKey(filepath.Join(m.env.StateDir, wgKeyFile))
	if err != nil {
		return err
	}
	ms := &membership{seenFile: jsonFile(filepath.Join(m.env.StateDir, wgSeenFile)), seen: map[string]uint64{}}
	if err := ms.seenFile.load(&ms.seen); err != nil {
		return err
	}
	m.key, m.ms = k, ms
	return nil
}

// Reconcile publishes this VM's public key, waits for the server's signed entry for it, runs the
// device with every signed member as a peer, and reports ready (publishing vpn.address,
// vpn.address6 and client.listening) once the device has its addresses and the server's overlay
// addresses answer through the mesh.
func (m *WGMember) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	if err := m.load(); err != nil {
		return false, err
	}
	me := m.env.Instance
	pub := m.key.PublicKey().String()
	if err := role.Publish(ctx, m.env.Params, s, me, params.VPNWGKey, pub); err != nil {
		return false, fmt.Errorf("vpn: %w", err)
	}
	srv := m.pins.server(s)
	if srv == "" {
		return false, nil // the VPN server has not published itself yet
	}
	in, err := ParseInputs(func(k string) string { return s.Get(srv, k) })
	if err != nil {
		return false, nil // the server aborts the run with the message
	}
	signer, err := m.pins.signer(s, srv)
	if signer == nil || err != nil {
		return false, err
	}
	m.ms.signer = signer
	own, ok := m.ms.entry(s, me, m.env)
	if !ok || own.Key != m.key.PublicKey() {
		m.env.Log.Debug().Msg("vpn: waiting for the server's entry for this key")
		return false, nil
	}
	p4, p6 := PeopleBlock(in.V4, in.V6)
	m.dev.route = func(e Entry) []netip.Prefix { // people are peers of the server only
		if e.Instance == srv {
			return []netip.Prefix{p4, p6}
		}
		return nil
	}
	if up, err := m.dev.ensure(ctx, m.key, in.WGPort); !up || err != nil {
		return false, err
	}
	if err := m.dev.setup(netip.PrefixFrom(own.V4, in.V4.Bits()), netip.PrefixFrom(own.V6, in.V6.Bits())); err != nil {
		return false, err
	}
	peers := m.ms.peers(s, me, m.env)
	if changed, err := m.dev.sync(peers); err != nil {
		return false, err
	} else if changed {
		m.env.Log.Info().Int("peers", len(peers)).Msg("vpn: wireguard peers updated")
	}
	server, ok := m.ms.last[srv]
	if !ok {
		return false, nil
	}
	ok, err = m.confirm(ctx, s, own, server)
	m.ms.flush(m.env)
	if err := publishHandshakes(ctx, m.env, s, m.dev); err != nil {
		return false, err
	}
	return ok, err
}

// confirm reports whether the device has this member's addresses and the server answers through
// the mesh; then it publishes the addresses and the listening flag.
func (m *WGMember) confirm(ctx context.Context, s role.Snapshot, own, server Entry) (bool, error) {
	if ok, err := m.dev.hasAddrs(ctx, own.V4, own.V6); !ok || err != nil {
		return false, err
	}
	me := m.env.Instance
	confirmed := m.confirmed == m.dev.epoch && m.confirmed != 0
	if !confirmed {
		for _, a := range []netip.Addr{server.V4, server.V6} {
			if ok, err := m.dev.answers(ctx, a); err != nil || !ok {
				return false, err
			}
		}
	}
	for _, kv := range [][2]string{
		{params.VPNAddress, own.V4.String()},
		{params.VPNAddress6, own.V6.String()},
		{params.VPNClientListening, "true"},
	} {
		if err := role.Publish(ctx, m.env.Params, s, me, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("vpn: %w", err)
		}
	}
	if !confirmed {
		m.confirmed = m.dev.epoch
		m.env.Log.Info().Str("address", own.V4.String()).Str("address6", own.V6.String()).Msg("vpn: wireguard mesh up, server answers")
	}
	return true, nil
}

// publishHandshakes publishes how many peers had a recent handshake (for operators).
func publishHandshakes(ctx context.Context, env role.Env, s role.Snapshot, d *wgDev) error {
	hs, err := d.handshakes()
	if err != nil {
		return err
	}
	d.status = recent(hs, time.Now())
	if err := role.Publish(ctx, env.Params, s, env.Instance, params.VPNWGHandshakes, d.status); err != nil {
		return fmt.Errorf("vpn: %w", err)
	}
	return nil
}

// Status is shown in statecustom: the peers with a recent handshake.
func (m *WGMember) Status() string { return m.dev.statusLine() }

// serverPin is the VPN server this member pinned on first use: its instance and signing key.
type serverPin struct {
	instance string
	signer   ed25519.PublicKey
}

// signerPins is a member's pin of the VPN server and its signing key (both engines).
type signerPins struct {
	env   role.Env
	pin   *serverPin
	saidS string // the refused signer last said
}

// load reads the pin kept in the state dir (nil: none yet).
func (m *signerPins) load() (*serverPin, error) {
	if m.pin != nil {
		return m.pin, nil
	}
	b, err := os.ReadFile(filepath.Join(m.env.StateDir, wgSignerPin))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vpn: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 2 || !validInstance(f[0]) {
		return nil, fmt.Errorf("vpn: %s: not \"<instance> <signing key>\"", filepath.Join(m.env.StateDir, wgSignerPin))
	}
	k, err := ParseSigner(f[1])
	if err != nil {
		return nil, fmt.Errorf("vpn: %s: %w", filepath.Join(m.env.StateDir, wgSignerPin), err)
	}
	m.pin = &serverPin{instance: f[0], signer: k}
	return m.pin, nil
}

// server is the VPN server's instance: the pinned one once there is a pin (a VM that points
// cnsmo.server.nodeinstanceid or vpn.server.nodeinstanceid elsewhere later is not followed, for
// the engine, the port and the prefixes too), else the one the parameters name.
func (m *signerPins) server(s role.Snapshot) string {
	if p, err := m.load(); err == nil && p != nil {
		return p.instance
	}
	srv := s.Get(m.env.Instance, params.ServerInstanceID)
	if srv != "" {
		srv = s.Get(srv, params.VPNServerInstanceID)
	}
	return srv
}

// pinSigner trusts the first valid signing key the server publishes, with the server's instance,
// and keeps them: a VM that later rewrites vpn.signer or the server pointers cannot make this
// member follow entries it signed. nil (and no error) while the server has published none.
func (m *signerPins) signer(s role.Snapshot, srv string) (ed25519.PublicKey, error) {
	pin, err := m.load()
	if err != nil {
		return nil, err
	}
	v := s.Get(srv, params.VPNSigner)
	if pin != nil {
		named := s.Get(m.env.Instance, params.ServerInstanceID)
		if named != "" {
			named = s.Get(named, params.VPNServerInstanceID)
		}
		if k, err := ParseSigner(v); v != "" && (err != nil || !bytes.Equal(k, pin.signer)) || named != "" && named != pin.instance {
			if said := v + "|" + named; m.saidS != said {
				m.saidS = said
				m.env.Log.Warn().Str("server", pin.instance).Str("named", named).Msg("vpn: the VPN server or its signing key in the parameters is not the one this VM pinned on first use: refused, the mesh stays with the pinned server; " +
					"if the CNSMO server was really re-created, run `cnsmo-role stop --purge` on this VM and start the role again")
			}
		}
		return pin.signer, nil
	}
	if v == "" {
		return nil, nil
	}
	k, err := ParseSigner(v)
	if err != nil {
		return nil, fmt.Errorf("vpn: %s:%s: %w: not trusted", srv, params.VPNSigner, err)
	}
	p := filepath.Join(m.env.StateDir, wgSignerPin)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, fmt.Errorf("vpn: %w", err)
	}
	if err := atomicfile.Write(p, []byte(srv+" "+FormatSigner(k)+"\n"), 0o644); err != nil {
		return nil, err
	}
	m.pin = &serverPin{instance: srv, signer: k}
	m.env.Log.Info().Str("server", srv).Msg("vpn: the VPN server and its signing key pinned on first use")
	return k, nil
}

// Withdraw un-sets the member's addresses, listening flag and handshake count.
func (m *WGMember) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, m.env.Params, params.VPNClientListening, params.VPNAddress, params.VPNAddress6, params.VPNWGHandshakes)
}

// Teardown removes the device and the user-space function; the key stays unless RemoveKey.
func (m *WGMember) Teardown(ctx context.Context) error {
	err := m.dev.teardown(ctx)
	if m.RemoveKey && m.env.StateDir != "" {
		if rerr := os.RemoveAll(filepath.Join(m.env.StateDir, "wg")); rerr != nil {
			err = errors.Join(err, rerr)
		}
		m.ms, m.pins.pin = nil, nil
	}
	return err
}

// membership is what a member (or the server) has verified of the server's signed entries.
type membership struct {
	signer   ed25519.PublicKey
	seenFile jsonFile
	seen     map[string]uint64 // instance -> newest generation accepted (kept across restarts)
	last     map[string]Entry  // instance -> last entry accepted
	raw      map[string]string // instance -> the value last looked at
	dirty    bool              // seen changed since it was saved

	ros       Roster // the newest roster accepted
	hasRos    bool
	rawRoster string
}

// flush keeps the generations seen (once per pass).
func (ms *membership) flush(env role.Env) {
	if !ms.dirty {
		return
	}
	if err := ms.seenFile.save(ms.seen); err != nil {
		env.Log.Warn().Err(err).Msg("vpn: keep the generations seen")
		return
	}
	ms.dirty = false
}

// entry returns the instance's entry: the published one when it verifies (signed by the pinned
// server, for that instance, not older than one seen before), otherwise the last one accepted.
func (ms *membership) entry(s role.Snapshot, inst string, env role.Env) (Entry, bool) {
	return ms.check(inst, s.Get(inst, params.VPNMember), env)
}

// check is entry for the value v published for inst.
func (ms *membership) check(inst, v string, env role.Env) (Entry, bool) {
	if ms.last == nil {
		ms.last, ms.raw = map[string]Entry{}, map[string]string{}
	}
	if v == "" || v == ms.raw[inst] {
		e, ok := ms.last[inst]
		return e, ok
	}
	ms.raw[inst] = v
	e, err := ParseEntry(v, ms.signer)
	switch {
	case err != nil:
		env.Log.Warn().Err(err).Str("instance", inst).Msg("vpn: membership entry refused; the last one accepted stays")
	case e.Instance != inst:
		env.Log.Warn().Str("instance", inst).Str("entry_of", e.Instance).Msg("vpn: membership entry of another instance refused")
	case e.Gen < ms.seen[inst]:
		env.Log.Warn().Str("instance", inst).Uint64("gen", e.Gen).Uint64("newest", ms.seen[inst]).Msg("vpn: older membership entry refused (replayed)")
	default:
		ms.last[inst] = e
		if e.Gen > ms.seen[inst] {
			ms.seen[inst] = e.Gen
			ms.dirty = true
		}
	}
	e, ok := ms.last[inst]
	return e, ok
}

// people returns the entries of the people the server srv granted (in its slots' grants) that its
// newest roster names, one per person (the newest): a person's old grant replayed in a slot after
// it left names nobody.
func (ms *membership) people(s role.Snapshot, srv string, env role.Env) []Entry {
	ro, ok := ms.roster(s, srv, env)
	if !ok {
		return nil
	}
	best := map[string]Entry{}
	for i := 1; i <= params.UserSlots; i++ {
		v, _, _ := strings.Cut(s.Get(srv, params.UserGrant(i)), "\n")
		if v == "" || strings.HasPrefix(v, grantRefused) {
			continue
		}
		e, err := ParseEntry(v, ms.signer)
		name, isPerson := strings.CutSuffix(e.Instance, PeopleSuffix)
		if err != nil || !isPerson || !slices.Contains(ro.People, name) {
			continue
		}
		if e, ok := ms.check(e.Instance, v, env); ok && e.Gen >= best[e.Instance].Gen {
			best[e.Instance] = e
		}
	}
	var out []Entry
	for _, e := range best {
		out = append(out, e)
	}
	return out
}

// roster returns the newest roster of srv that verifies (kept across a rewrite, as entries are).
func (ms *membership) roster(s role.Snapshot, srv string, env role.Env) (Roster, bool) {
	const key = "~roster"
	v := s.Get(srv, params.VPNRoster)
	if v != "" && v != ms.rawRoster {
		ms.rawRoster = v
		r, err := ParseRoster(v, ms.signer)
		switch {
		case err != nil:
			env.Log.Warn().Err(err).Msg("vpn: roster refused; the last one accepted stays")
		case r.Server != srv || r.Gen < ms.seen[key]:
			env.Log.Warn().Uint64("gen", r.Gen).Msg("vpn: an older roster or another server's refused (replayed)")
		default:
			ms.ros, ms.hasRos = r, true
			if r.Gen > ms.seen[key] {
				ms.seen[key], ms.dirty = r.Gen, true
			}
		}
	}
	return ms.ros, ms.hasRos
}

// peers returns the entries of every current instance of the deployment but me.
func (ms *membership) peers(s role.Snapshot, me string, env role.Env) []Entry {
	var out []Entry
	current := map[string]bool{}
	for _, n := range s.Nodes() {
		for _, inst := range s.Instances(n) {
			current[inst] = true
			if inst == me {
				continue
			}
			if e, ok := ms.entry(s, inst, env); ok {
				out = append(out, e)
			}
		}
	}
	for inst := range ms.last { // instances that left: forgotten (their generation stays)
		if !current[inst] && !strings.HasSuffix(inst, PeopleSuffix) { // people follow the roster
			delete(ms.last, inst)
			delete(ms.raw, inst)
		}
	}
	ms.flush(env)
	return unique(out, env)
}

// unique keeps, of entries sharing a key or an address, the one granted first (the lowest
// generation): two peers with one key would replace each other in the device, and the server
// never grants a key or an address twice.
func unique(list []Entry, env role.Env) []Entry {
	slices.SortStableFunc(list, func(a, b Entry) int { return cmp.Compare(a.Gen, b.Gen) })
	seen := map[string]bool{}
	out := list[:0]
	for _, e := range list {
		ids := []string{"a" + e.V4.String(), "a" + e.V6.String()}
		if e.Key != (wgtypes.Key{}) { // OpenVPN's entries have no key
			ids = append(ids, "k"+e.Key.String())
		}
		if slices.ContainsFunc(ids, func(id string) bool { return seen[id] }) {
			env.Log.Warn().Str("instance", e.Instance).Msg("vpn: membership entry with a key or an address already granted to another member: left out")
			continue
		}
		for _, id := range ids {
			seen[id] = true
		}
		out = append(out, e)
	}
	return out
}
