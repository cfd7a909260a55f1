package vpn

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// WGServer is the WireGuard engine on the CNSMO server VM: it allocates the members' overlay
// addresses (the same allocator as OpenVPN), pins each instance's first public key until the
// instance leaves, signs one entry per member into that member's vpn.member, and is itself a
// member of the mesh.
type WGServer struct {
	env role.Env
	dev *wgDev
	// Hold, when set, reports whether an instance that left must stay a peer a little longer (the
	// load balancer still serves it).
	Hold func(instance string) bool
	// RemoveKeys makes Teardown delete the keys, the signing key, the pins and the addresses.
	RemoveKeys bool

	alloc   *Allocator
	led     *ledger
	desk    *desk
	key     wgtypes.Key
	fwdSaid string
	refused map[string]string // instance -> the refusal last said
}

// NewWGServer returns the WireGuard engine of the CNSMO server VM.
func NewWGServer(env role.Env) *WGServer { return &WGServer{env: env, dev: newWGDev(env)} }

// Name implements role.Service.
func (s *WGServer) Name() string { return "vpn" }

// Assigned returns the overlay IPv4 address the server assigned to instance.
func (s *WGServer) Assigned(instance string) (netip.Addr, bool) { return s.alloc.V4Of(instance) }

func (s *WGServer) open(in Inputs) error {
	if err := os.MkdirAll(s.env.StateDir, 0o700); err != nil {
		return fmt.Errorf("vpn: state dir: %w", err)
	}
	if s.led == nil {
		k, err := LoadOrCreateWGKey(filepath.Join(s.env.StateDir, wgKeyFile))
		if err != nil {
			return err
		}
		l, err := openLedger(s.env.StateDir)
		if err != nil {
			return err
		}
		s.env.Log.Info().Str("signer", FormatSigner(l.signer.Public().(ed25519.PublicKey))).Msg("vpn: the server's signing key (members pin it; people check it with cnsmo-role join --signer)")
		d, err := openDesk(s.env.StateDir)
		if err != nil {
			return err
		}
		s.key, s.led, s.desk = k, l, d
	}
	a, err := reopen(s.alloc, s.env.StateDir, in)
	if err != nil {
		return err
	}
	s.alloc = a
	return nil
}

// Reconcile runs the server's own mesh device, signs an entry for every current member that
// published a key (the first key of an instance is pinned), removes the instances that left,
// and reports ready when the whole mesh works: every current member has confirmed its tunnel,
// shook hands with the server and with every other member.
func (s *WGServer) Reconcile(ctx context.Context, snap role.Snapshot) (bool, error) {
	me := s.env.Instance
	in, host, err := serverInputs(snap, s.env)
	if host == "" || err != nil {
		return false, err
	}
	if err := s.open(in); err != nil {
		return false, err
	}
	srv := s.alloc.Server()
	own, ownSigned := s.led.grant(Entry{Instance: me, Key: s.key.PublicKey(), Endpoint: wgEndpoint(host, in.WGPort), V4: srv.V4, V6: srv.V6})
	if err := s.led.save(); err != nil {
		return false, err
	}
	current := clients(snap, me)
	entries, problems, err := s.members(ctx, snap, in, current)
	if err != nil {
		return false, err
	}
	if err := s.leave(snap, current); err != nil {
		return false, err
	}
	if err := s.desk.pass(ctx, s.env, snap, s.alloc, s.led, wgPeople{}, rosterInfo{in: in}); err != nil {
		return false, err
	}
	s.forwarding()
	// Publish what members need first (public data only): they can start while this device comes up.
	for _, kv := range [][2]string{
		{params.VPNServerInstanceID, me},
		{params.VPNSigner, FormatSigner(s.led.signer.Public().(ed25519.PublicKey))},
		{params.VPNWGKey, own.Key.String()},
		{params.VPNMember, ownSigned},
		{params.VPNEndpoint, Endpoint(host, in.WGPort)},
	} {
		if err := role.Publish(ctx, s.env.Params, snap, me, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("vpn: %w", err)
		}
	}
	if up, err := s.dev.ensure(ctx, s.key, in.WGPort); !up || err != nil {
		return false, errors.Join(append(problems, err)...)
	}
	if err := s.dev.setup(netip.PrefixFrom(srv.V4, in.V4.Bits()), netip.PrefixFrom(srv.V6, in.V6.Bits())); err != nil {
		return false, err
	}
	var peers []Entry
	for _, c := range current {
		if e, ok := entries[c]; ok {
			peers = append(peers, e)
		}
	}
	// Members that left but are held (the load balancer still sends to them) stay peers.
	for inst := range s.led.st.Members {
		if inst != me && !slices.Contains(current, inst) {
			if e, ok := s.led.record(inst); ok {
				peers = append(peers, e)
			}
		}
	}
	if changed, err := s.dev.sync(peers); err != nil {
		return false, err
	} else if changed {
		s.env.Log.Info().Int("peers", len(peers)).Msg("vpn: wireguard peers updated")
	}
	ready, err := s.publish(ctx, snap, srv, current, entries, problems)
	return ready, errors.Join(append(problems, err)...)
}

func wgEndpoint(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// members signs an entry for every current member with a valid key and a hostname, and publishes
// it in the member's vpn.member.
func (s *WGServer) members(ctx context.Context, snap role.Snapshot, in Inputs, current []string) (map[string]Entry, []error, error) {
	entries, signed := map[string]Entry{}, map[string]string{}
	var problems []error
	for _, c := range current {
		raw := strings.TrimSpace(snap.Get(c, params.VPNWGKey))
		host := strings.TrimSpace(snap.Get(c, params.Hostname))
		if raw == "" || host == "" {
			continue
		}
		if err := validHost(host); err != nil {
			problems = append(problems, fmt.Errorf("%s: %s: %w", c, params.Hostname, err))
			continue
		}
		key, err := wgtypes.ParseKey(raw)
		if err == nil && key == (wgtypes.Key{}) {
			err = errors.New("the all-zero key")
		}
		pinned, has := s.led.st.Members[c]
		has = has && pinned.Key != "" // granted by the OpenVPN engine: no key pinned yet
		switch {
		case has && (err != nil || pinned.Key != key.String()):
			// Another key in c's vpn.wg.pubkey (a VM that rewrote it, or a purged member): refused,
			// said once; c keeps its pinned key, address and entry.
			s.refuse(ctx, c, fmt.Sprintf("cnsmo: vpn: refused a new WireGuard key for %s: the instance's first key is pinned until it leaves the run", c))
			if key, err = wgtypes.ParseKey(pinned.Key); err != nil {
				continue
			}
		case err != nil:
			problems = append(problems, fmt.Errorf("%s: %s: %w", c, params.VPNWGKey, err))
			continue
		case !has && s.keyTaken(key, c):
			// The key of another member (or of this server): a VM that copied it would take that
			// member's place in every peer list. Refused, not pinned.
			s.refuse(ctx, c, fmt.Sprintf("cnsmo: vpn: refused the WireGuard key of %s: it is another member's key", c))
			continue
		}
		as, err := s.alloc.Assign(c)
		if err != nil {
			problems = append(problems, err)
			continue
		}
		e, sig := s.led.grant(Entry{Instance: c, Key: key, Endpoint: wgEndpoint(host, in.WGPort), V4: as.V4, V6: as.V6})
		entries[c], signed[c] = e, sig
	}
	if err := s.led.save(); err != nil {
		return nil, nil, err
	}
	for _, c := range current {
		sig, ok := signed[c]
		if !ok || snap.Get(c, params.VPNMember) == sig {
			continue
		}
		if err := s.env.Params.Set(ctx, c, params.VPNMember, sig); err != nil {
			return nil, nil, fmt.Errorf("vpn: publish %s of %s: %w", params.VPNMember, c, err)
		}
		e := entries[c]
		s.env.Log.Info().Str("client", c).Str("address", e.V4.String()).Str("address6", e.V6.String()).Uint64("gen", e.Gen).Msg("vpn: wireguard member signed")
	}
	return entries, problems, nil
}

// refuse says once per instance and message why its key was refused (log and statecustom).
func (s *WGServer) refuse(ctx context.Context, inst, msg string) {
	if s.refused[inst] == msg {
		return
	}
	if s.refused == nil {
		s.refused = map[string]string{}
	}
	s.refused[inst] = msg
	s.env.Log.Warn().Str("client", inst).Msg(strings.TrimPrefix(msg, "cnsmo: "))
	_ = s.env.Params.Display(ctx, msg)
}

// keyTaken reports whether key is pinned by another instance than inst (the server's own included).
func (s *WGServer) keyTaken(key wgtypes.Key, inst string) bool {
	k := key.String()
	for other, r := range s.led.st.Members {
		if other != inst && r.Key == k {
			return true
		}
	}
	return key == s.key.PublicKey()
}

// validHost accepts an IP address or a DNS name (letters, digits, '-', '.'; labels of 1-63).
func validHost(h string) error {
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	if len(h) > 253 {
		return fmt.Errorf("%d characters: not a host name", len(h))
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("%q is not an IP address or a host name", h)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("%q is not an IP address or a host name", h)
			}
		}
	}
	return nil
}

// leave forgets the instances that left the run (once the load balancer no longer sends to
// them): their pin, their entry and their addresses (the next new member reuses them).
func (s *WGServer) leave(snap role.Snapshot, current []string) error {
	me := s.env.Instance
	var gone []string
	for _, inst := range append(slices.Collect(maps.Keys(s.led.st.Members)), s.alloc.Members()...) {
		if inst == me || strings.HasSuffix(inst, PeopleSuffix) || slices.Contains(current, inst) || slices.Contains(gone, inst) || !snap.Gone(inst) {
			continue
		}
		if s.Hold != nil && s.Hold(inst) {
			continue
		}
		gone = append(gone, inst)
	}
	sort.Strings(gone)
	for _, inst := range gone {
		s.led.forget(inst)
		delete(s.refused, inst)
		if err := s.alloc.Free(inst); err != nil {
			return err
		}
		s.env.Log.Info().Str("client", inst).Msg("vpn: instance left the run: removed from the mesh, its key unpinned")
	}
	return s.led.save()
}

// publish publishes the server's own addresses and listening flag once its device has them, its
// handshake count, and vpn.ready when every current member has an entry, confirmed its tunnel
// and shook hands with the server.
func (s *WGServer) publish(ctx context.Context, snap role.Snapshot, srv Assignment, current []string, entries map[string]Entry, problems []error) (bool, error) {
	me := s.env.Instance
	devOK, err := s.dev.hasAddrs(ctx, srv.V4, srv.V6)
	if err != nil {
		return false, err
	}
	if devOK {
		for _, kv := range [][2]string{{params.VPNAddress, srv.V4.String()}, {params.VPNAddress6, srv.V6.String()}, {params.VPNServerListening, "true"}} {
			if err := role.Publish(ctx, s.env.Params, snap, me, kv[0], kv[1]); err != nil {
				return false, fmt.Errorf("vpn: %w", err)
			}
		}
	}
	hs, err := s.dev.handshakes()
	if err != nil {
		return false, err
	}
	if err := publishHandshakes(ctx, s.env, snap, s.dev); err != nil {
		return false, err
	}
	// Ready means the whole mesh works: every member confirmed (the server answers it), shook
	// hands with the server, and counts every other current member as a peer with a recent
	// handshake.
	full := fmt.Sprintf("%d/%d", len(current), len(current))
	now := time.Now()
	var missing []string
	for _, c := range current {
		e, ok := entries[c]
		if !ok || snap.Get(c, params.VPNClientListening) != "true" || now.Sub(hs[e.Key]) >= WGRecent || snap.Get(c, params.VPNWGHandshakes) != full {
			missing = append(missing, c)
		}
	}
	ready := devOK && len(missing) == 0 && len(problems) == 0
	v := ""
	if ready {
		v = "true"
	}
	if err := role.Publish(ctx, s.env.Params, snap, me, params.VPNReady, v); err != nil {
		return false, fmt.Errorf("vpn: %w", err)
	}
	if !ready {
		s.env.Log.Debug().Strs("waiting_for", missing).Bool("device", devOK).Msg("vpn: not every member has confirmed the mesh yet")
	}
	return ready, nil
}

// Status is shown in statecustom: the peers with a recent handshake.
func (s *WGServer) Status() string { return s.dev.statusLine() }

// Withdraw un-sets the server's readiness, listening flag, addresses and handshake count.
func (s *WGServer) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, s.env.Params, params.VPNServerListening, params.VPNReady, params.VPNAddress, params.VPNAddress6, params.VPNWGHandshakes)
}

// Teardown removes the device and the user-space function. The keys, pins and addresses stay in
// the state dir unless RemoveKeys is set.
func (s *WGServer) Teardown(ctx context.Context) error {
	err := s.dev.teardown(ctx)
	if s.RemoveKeys && s.env.StateDir != "" {
		for _, p := range []string{filepath.Join(s.env.StateDir, "wg"), filepath.Join(s.env.StateDir, "addresses.json")} {
			if rerr := os.RemoveAll(p); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		s.led, s.alloc, s.desk = nil, nil, nil
	}
	return err
}

// wgPeople admits people to the WireGuard hub: the desk checked the key; the peer follows the
// ledger (a person that left is no peer any more).
type wgPeople struct{}

func (wgPeople) admit(Request, Assignment) (string, error) { return "", nil }
func (wgPeople) drop(context.Context, string) error        { return nil }

// forwarding turns IP forwarding on: the server routes between people and members. Where the
// role cannot (a container's read-only /proc/sys) and it is off, it says so once.
func (s *WGServer) forwarding() {
	var errs []error
	for _, f := range []string{"/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"} {
		if b, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(b)) == "1" {
			continue
		}
		if err := os.WriteFile(f, []byte("1\n"), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil && err.Error() != s.fwdSaid {
		s.fwdSaid = err.Error()
		s.env.Log.Warn().Err(err).Msg("vpn: people: IP forwarding is off and cannot be turned on: people reach only this server")
	}
}
