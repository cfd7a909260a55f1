package vpn

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

func testSigner(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

func testEntry(t testing.TB) Entry {
	k, err := wgtypes.GeneratePrivateKey()
	require.NoError(t, err)
	return Entry{Gen: 7, Instance: "web.2", Key: k.PublicKey(), Endpoint: "198.19.3.10:51820",
		V4: netip.MustParseAddr("198.19.200.3"), V6: netip.MustParseAddr("2001:db8:c5e0::3")}
}

func TestEntryRoundTrip(t *testing.T) {
	sk := testSigner(t)
	e := testEntry(t)
	v := e.Sign(sk)
	require.Less(t, len(v), 300, "one entry fits a parameter many times over")
	got, err := ParseEntry(v, sk.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	require.Equal(t, e, got)
	e.Endpoint = "[2001:db8:3::10]:51820"
	got, err = ParseEntry(e.Sign(sk), sk.Public().(ed25519.PublicKey))
	require.NoError(t, err)
	require.Equal(t, e, got)
}

// Every malformed, re-signed or edited entry is refused with ErrBadEntry.
func TestParseEntryRefusesBadValues(t *testing.T) {
	sk, other := testSigner(t), testSigner(t)
	pub := sk.Public().(ed25519.PublicKey)
	e := testEntry(t)
	good := e.Sign(sk)
	body, _, _ := strings.Cut(good, " sig=")
	resign := func(b string) string { return b + " sig=" + b64(ed25519.Sign(sk, []byte(b))) }
	edit := func(from, to string) string { return resign(strings.Replace(body, from, to, 1)) }
	for name, v := range map[string]string{
		"empty":              "",
		"no signature":       body,
		"other signer":       e.Sign(other),
		"edited after sig":   strings.Replace(good, "198.19.200.3", "198.19.200.4", 1),
		"bad sig encoding":   body + " sig=***",
		"short sig":          body + " sig=" + b64([]byte("short")),
		"magic":              edit("cnsmo-vpn1", "cnsmo-wg2"),
		"gen zero":           edit("gen=7", "gen=0"),
		"gen negative":       edit("gen=7", "gen=-1"),
		"gen word":           edit("gen=7", "gen=seven"),
		"instance slash":     edit("inst=web.2", "inst=web/2"),
		"instance empty":     edit("inst=web.2", "inst="),
		"instance long":      edit("inst=web.2", "inst="+strings.Repeat("w", 129)),
		"key short":          edit("key="+e.Key.String(), "key=AAAA"),
		"endpoint no port":   edit("ep=198.19.3.10:51820", "ep=198.19.3.10"),
		"endpoint port 0":    edit("ep=198.19.3.10:51820", "ep=198.19.3.10:0"),
		"endpoint port high": edit("ep=198.19.3.10:51820", "ep=198.19.3.10:70000"),
		"endpoint no host":   edit("ep=198.19.3.10:51820", "ep=:51820"),
		"v4 is v6":           edit("v4=198.19.200.3", "v4=2001:db8::3"),
		"v4 garbage":         edit("v4=198.19.200.3", "v4=198.19.200"),
		"v6 is v4":           edit("v6=2001:db8:c5e0::3", "v6=198.19.200.3"),
		"v6 mapped v4":       edit("v6=2001:db8:c5e0::3", "v6=::ffff:198.19.200.3"),
		"v6 zone":            edit("v6=2001:db8:c5e0::3", "v6=fe80::1%eth0"),
		"fields reordered":   edit("v4=198.19.200.3 v6=2001:db8:c5e0::3", "v6=2001:db8:c5e0::3 v4=198.19.200.3"),
		"extra field":        resign(body + " x=1"),
		"missing field":      resign(strings.Replace(body, " v6=2001:db8:c5e0::3", "", 1)),
		"double space":       resign(strings.Replace(body, " ", "  ", 1)),
		"too long":           resign(body + strings.Repeat("x", role.MaxValueLen)),
		"gen leading zero":   edit("gen=7", "gen=07"),
		"v6 not canonical":   edit("v6=2001:db8:c5e0::3", "v6=2001:db8:c5e0:0::3"),
		"zero key":           edit("key="+e.Key.String(), "key="+wgtypes.Key{}.String()),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseEntry(v, pub)
			require.ErrorIs(t, err, ErrBadEntry)
		})
	}
	_, err := ParseEntry(good, nil)
	require.ErrorIs(t, err, ErrBadEntry, "no pinned signer: nothing verifies")
}

// An entry that parses is exactly what signing it again renders: one text per meaning.
func FuzzParseEntry(f *testing.F) {
	sk := testSigner(f)
	pub := sk.Public().(ed25519.PublicKey)
	good := testEntry(f).Sign(sk)
	body, _, _ := strings.Cut(good, " sig=")
	f.Add(body)
	f.Add(strings.Replace(body, "198.19.3.10", "[2001:db8::1]", 1))
	f.Add("cnsmo-vpn1 gen=1 inst=a key= ep=: v4= v6=")
	f.Fuzz(func(t *testing.T, b string) {
		v := b + " sig=" + b64(ed25519.Sign(sk, []byte(b)))
		e, err := ParseEntry(v, pub)
		if err != nil {
			require.ErrorIs(t, err, ErrBadEntry)
			return
		}
		require.Equal(t, v, e.Sign(sk))
	})
}

func b64(b []byte) string { return FormatSigner(ed25519.PublicKey(b)) }

func TestParseSignerRefusesBadValues(t *testing.T) {
	for _, v := range []string{"", "x", b64([]byte("short")), b64(make([]byte, 33))} {
		_, err := ParseSigner(v)
		require.Error(t, err, v)
	}
	k, err := ParseSigner(b64(make([]byte, 32)))
	require.NoError(t, err)
	require.Len(t, k, 32)
}

// fabric links fake WireGuard devices by public key: a peer "answers" and has shaken hands when
// both devices list each other.
type fabric struct {
	mu   sync.Mutex
	devs map[string]*fakeWG // VM -> its device
}

type fakeWG struct {
	f       *fabric
	dev     *wgtypes.Device
	configs int
}

func (f *fabric) device(vm string) *fakeWG {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.devs == nil {
		f.devs = map[string]*fakeWG{}
	}
	if f.devs[vm] == nil {
		f.devs[vm] = &fakeWG{f: f}
	}
	return f.devs[vm]
}

func (w *fakeWG) Device(name string) (*wgtypes.Device, error) {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	if w.dev == nil {
		return nil, fmt.Errorf("no device %s", name)
	}
	d := *w.dev
	d.Peers = slices.Clone(d.Peers)
	for i, p := range d.Peers {
		if w.f.mutual(w, p.PublicKey) {
			d.Peers[i].LastHandshakeTime = time.Now()
		}
	}
	return &d, nil
}

// mutual reports whether the device holding key lists w's key as a peer (lock held).
func (f *fabric) mutual(w *fakeWG, key wgtypes.Key) bool {
	for _, o := range f.devs {
		if o.dev != nil && o.dev.PublicKey == key {
			for _, p := range o.dev.Peers {
				if p.PublicKey == w.dev.PublicKey {
					return true
				}
			}
		}
	}
	return false
}

func (w *fakeWG) ConfigureDevice(_ string, cfg wgtypes.Config) error {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	w.configs++
	if cfg.PrivateKey != nil {
		w.dev.PrivateKey, w.dev.PublicKey = *cfg.PrivateKey, cfg.PrivateKey.PublicKey()
	}
	if cfg.ListenPort != nil {
		w.dev.ListenPort = *cfg.ListenPort
	}
	for _, pc := range cfg.Peers {
		i := slices.IndexFunc(w.dev.Peers, func(p wgtypes.Peer) bool { return p.PublicKey == pc.PublicKey })
		if pc.Remove {
			if i >= 0 {
				w.dev.Peers = slices.Delete(w.dev.Peers, i, i+1)
			}
			continue
		}
		p := wgtypes.Peer{PublicKey: pc.PublicKey, Endpoint: pc.Endpoint, AllowedIPs: pc.AllowedIPs}
		if pc.PersistentKeepaliveInterval != nil {
			p.PersistentKeepaliveInterval = *pc.PersistentKeepaliveInterval
		}
		if i >= 0 {
			w.dev.Peers[i] = p
		} else {
			w.dev.Peers = append(w.dev.Peers, p)
		}
	}
	return nil
}

// fakeLinks: a kernel with WireGuard (kernel true) or without.
type fakeLinks struct {
	w        *fakeWG
	kernel   bool
	addrs    []netip.Prefix
	mtu      int
	underlay int // 0: 1500
}

func (l *fakeLinks) Kind(string) (string, bool, error) {
	if l.w.dev == nil {
		return "", false, nil
	}
	if l.kernel {
		return "wireguard", true, nil
	}
	return "tuntap", true, nil
}

func (l *fakeLinks) AddWireGuard(string) error {
	if !l.kernel {
		return errors.New("operation not supported")
	}
	l.w.dev = &wgtypes.Device{Name: Device, Type: wgtypes.LinuxKernel}
	return nil
}

func (l *fakeLinks) Setup(_ string, mtu int, addrs []netip.Prefix) error {
	l.mtu, l.addrs = mtu, slices.Clone(addrs)
	return nil
}
func (l *fakeLinks) UnderlayMTU() int {
	if l.underlay == 0 {
		return 1500
	}
	return l.underlay
}
func (l *fakeLinks) Del(string) error { l.w.dev, l.addrs = nil, nil; return nil }

// startsUserspace makes the fake driver's Start of wireguard-go create the user-space device.
type wgDriver struct {
	*fakeDriver
	w *fakeWG
}

func (d *wgDriver) Start(ctx context.Context, spec driver.Spec) error {
	if d.w.dev == nil {
		d.w.dev = &wgtypes.Device{Name: Device, Type: wgtypes.Userspace}
	}
	return d.fakeDriver.Start(ctx, spec)
}

func (d *wgDriver) Remove(_ context.Context, name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.started, name)
	d.w.dev = nil
	return nil
}

// wgVM wires one VM's fakes into a wgDev.
func wgVM(t *testing.T, f *fabric, env role.Env, kernel bool, vm string) (*wgDev, *fakeLinks) {
	w := f.device(vm)
	links := &fakeLinks{w: w, kernel: kernel}
	fd := newFakeDriver()
	env.Driver = &wgDriver{fakeDriver: fd, w: w}
	d := &wgDev{env: env, image: WGImage, wg: w, links: links}
	d.addrs = func(context.Context, string) ([]netip.Prefix, error) { return links.addrs, nil }
	d.ping = func(_ context.Context, a netip.Addr) (bool, error) {
		hs, err := d.handshakes()
		if err != nil {
			return false, err
		}
		for _, p := range w.dev.Peers {
			for _, n := range p.AllowedIPs {
				if n.Contains(a.AsSlice()) && !hs[p.PublicKey].IsZero() {
					return true, nil
				}
			}
		}
		return false, nil
	}
	return d, links
}

type meshLab struct {
	t       *testing.T
	st      *roletest.Store
	srv     *WGServer
	members map[string]*WGMember
	links   map[string]*fakeLinks
	f       *fabric
}

func newMeshLab(t *testing.T, kernel bool, members ...string) *meshLab {
	l := &meshLab{t: t, st: roletest.NewStore("cnsmo.1", nil), members: map[string]*WGMember{}, links: map[string]*fakeLinks{}, f: &fabric{}}
	l.st.Edit(func(s *roletest.Snapshot) {
		s.AddNode("cnsmo", "cnsmo.1").AddNode("web", members...)
		s.Put("cnsmo.1:"+params.VPNEngine, EngineWireGuard).Put("cnsmo.1:"+params.VPNSubnet, "198.19.200.0/24").
			Put("cnsmo.1:"+params.VPNSubnet6, "2001:db8:c5e0::/64")
		for i, in := range append([]string{"cnsmo.1"}, members...) {
			s.Put(in+":"+params.Hostname, fmt.Sprintf("198.19.%d.10", i+1)).Put(in+":"+params.ServerInstanceID, "cnsmo.1")
		}
	})
	env := func(in string) role.Env {
		return role.Env{Params: l.st, Instance: in, StateDir: t.TempDir(), Log: zerolog.Nop(), UseVPN: true}
	}
	l.srv = NewWGServer(env("cnsmo.1"))
	l.srv.dev, l.links["cnsmo.1"] = wgVM(t, l.f, env("cnsmo.1"), kernel, "cnsmo.1")
	for _, in := range members {
		m := NewWGMember(env(in))
		m.dev, l.links[in] = wgVM(t, l.f, env(in), kernel, in)
		l.members[in] = m
	}
	return l
}

func (l *meshLab) snap() role.Snapshot {
	s, err := l.st.Read(context.Background())
	require.NoError(l.t, err)
	return s
}

// converge runs passes of the server and every member until all are ready (at most 6 rounds).
func (l *meshLab) converge() {
	l.t.Helper()
	ctx := context.Background()
	for round := 0; round < 6; round++ {
		all := true
		ready, err := l.srv.Reconcile(ctx, l.snap())
		require.NoError(l.t, err)
		all = all && ready
		for in, m := range l.members {
			ready, err := m.Reconcile(ctx, l.snap())
			require.NoError(l.t, err, in)
			all = all && ready
		}
		if all {
			if ready, _ := l.srv.Reconcile(ctx, l.snap()); ready {
				return
			}
		}
	}
	l.t.Fatalf("the mesh did not converge; sets: %v", l.st.Sets())
}

func (l *meshLab) peers(vm string) map[string]wgtypes.Peer {
	out := map[string]wgtypes.Peer{}
	for _, p := range l.f.device(vm).dev.Peers {
		out[p.PublicKey.String()] = p
	}
	return out
}

// The kernel path: no function is started; every member (the server included) has every other
// as a peer at its hostname and WireGuard port, with its two addresses as allowed IPs; the MTU
// follows the underlay; the server is ready once every member confirmed and shook hands.
func TestWireGuardMeshKernel(t *testing.T) {
	l := newMeshLab(t, true, "web.1", "web.2")
	l.converge()
	require.Equal(t, "true", l.st.Value("cnsmo.1:"+params.VPNReady))
	all := []string{"cnsmo.1", "web.1", "web.2"}
	for _, vm := range all {
		require.Equal(t, 1420, l.links[vm].mtu, "1500 - 80")
		require.Len(t, l.links[vm].addrs, 2)
		require.Equal(t, "2/2", l.st.Value(vm+":"+params.VPNWGHandshakes))
		if vm != "cnsmo.1" {
			require.Equal(t, "wireguard mesh, 2/2 peers with a recent handshake", l.members[vm].Status(), "shown in statecustom")
		}
		peers := l.peers(vm)
		require.Len(t, peers, 2, vm)
		for i, o := range all {
			if o == vm {
				continue
			}
			p, ok := peers[l.st.Value(o+":"+params.VPNWGKey)]
			require.True(t, ok, "%s has %s as a peer", vm, o)
			require.Equal(t, fmt.Sprintf("198.19.%d.10:51820", i+1), p.Endpoint.String())
			require.Equal(t, WGKeepalive, p.PersistentKeepaliveInterval)
			var allowed []string
			for _, n := range p.AllowedIPs {
				allowed = append(allowed, n.String())
			}
			want := []string{l.st.Value(o+":"+params.VPNAddress) + "/32", l.st.Value(o+":"+params.VPNAddress6) + "/128"}
			if o == "cnsmo.1" { // members route the people's block through the server
				want = append(want, "198.19.200.192/26", "2001:db8:c5e0::c0/122")
			}
			require.ElementsMatch(t, want, allowed)
		}
	}
	for _, in := range []string{"web.1", "web.2"} {
		require.Empty(t, l.members[in].dev.env.Driver.(*wgDriver).started, "no user-space function with a kernel WireGuard")
		require.Equal(t, "true", l.st.Value(in+":"+params.VPNClientListening))
	}
	// A steady pass configures nothing.
	before := l.f.device("web.1").configs
	l.converge()
	require.Equal(t, before, l.f.device("web.1").configs, "no change, no configuration")
}

// Without a kernel WireGuard, wireguard-go runs as a function whose control-socket directory is
// shared with the role.
func TestWireGuardUserspaceFunction(t *testing.T) {
	l := newMeshLab(t, false, "web.1")
	l.converge()
	spec, ok := l.members["web.1"].dev.env.Driver.(*wgDriver).started[WGFunction]
	require.True(t, ok, "wireguard-go started")
	require.Equal(t, []string{WGRunDir}, spec.Shared)
	require.Equal(t, []string{"wireguard-go", "-f", Device}, spec.Cmd, "in the image's PATH")
	require.Equal(t, WGImage, spec.Image)
	require.NoError(t, l.members["web.1"].Teardown(context.Background()))
	require.Nil(t, l.f.device("web.1").dev, "the device is removed")
}

// Trust: another key written into web.2's vpn.wg.pubkey is refused and said; an entry for web.2
// signed by another key, or an older entry of web.2, is refused by web.1, which keeps web.2's
// real key as the peer at web.2's addresses.
func TestWireGuardTrust(t *testing.T) {
	l := newMeshLab(t, true, "web.1", "web.2")
	l.converge()
	ctx := context.Background()
	real2, entry2 := l.st.Value("web.2:"+params.VPNWGKey), l.st.Value("web.2:"+params.VPNMember)

	k, _ := wgtypes.GeneratePrivateKey()
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("web.2:"+params.VPNWGKey, k.PublicKey().String()) })
	_, err := l.srv.Reconcile(ctx, l.snap())
	require.NoError(t, err)
	require.Equal(t, entry2, l.st.Value("web.2:"+params.VPNMember), "web.2's entry stays")
	require.Contains(t, strings.Join(l.st.Displays(), "\n"), "refused a new WireGuard key for web.2")
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("web.2:"+params.VPNWGKey, real2) })

	// A forged entry: web.2's addresses with an attacker's key, signed by its own key.
	e, err := ParseEntry(entry2, l.members["web.1"].ms.signer)
	require.NoError(t, err)
	forged := e
	forged.Gen, forged.Key = e.Gen+100, k.PublicKey()
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("web.2:"+params.VPNMember, forged.Sign(testSigner(t))) })
	_, err = l.members["web.1"].Reconcile(ctx, l.snap())
	require.NoError(t, err)
	require.Contains(t, l.peers("web.1"), real2)
	require.NotContains(t, l.peers("web.1"), k.PublicKey().String())

	// web.2 moves (new hostname): a newer entry; then the older one is replayed.
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Put("web.2:"+params.VPNMember, entry2).Put("web.2:"+params.Hostname, "198.19.9.10")
	})
	l.converge()
	newer := l.st.Value("web.2:" + params.VPNMember)
	require.NotEqual(t, entry2, newer)
	require.Equal(t, "198.19.9.10:51820", l.peers("web.1")[real2].Endpoint.String())
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("web.2:"+params.VPNMember, entry2) })
	_, err = l.members["web.1"].Reconcile(ctx, l.snap())
	require.NoError(t, err)
	require.Equal(t, "198.19.9.10:51820", l.peers("web.1")[real2].Endpoint.String(), "the replayed older entry is refused")

	// A rewritten signing key is refused: web.1 keeps the pinned one.
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Put("cnsmo.1:"+params.VPNSigner, FormatSigner(testSigner(t).Public().(ed25519.PublicKey)))
	})
	_, err = l.members["web.1"].Reconcile(ctx, l.snap())
	require.NoError(t, err)
	require.Contains(t, l.peers("web.1"), real2)
}

// Scale in: the server frees the instance's addresses and unpins its key; every member drops the
// peer; the next new member gets the freed addresses.
func TestWireGuardScaleIn(t *testing.T) {
	l := newMeshLab(t, true, "web.1", "web.2")
	l.converge()
	gone := l.st.Value("web.2:" + params.VPNWGKey)
	addr := l.st.Value("web.2:" + params.VPNAddress)
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Members["web"] = []string{"web.1"}
		if s.Left == nil {
			s.Left = map[string]bool{}
		}
		s.Left["web.2"] = true
	})
	delete(l.members, "web.2")
	l.converge()
	require.NotContains(t, l.peers("web.1"), gone)
	require.NotContains(t, l.peers("cnsmo.1"), gone)
	require.Equal(t, "1/1", l.st.Value("web.1:"+params.VPNWGHandshakes))
	_, pinned := l.srv.led.st.Members["web.2"]
	require.False(t, pinned, "the key of an instance that left is unpinned")

	// web.3 joins and reuses the address.
	env := role.Env{Params: l.st, Instance: "web.3", StateDir: t.TempDir(), Log: zerolog.Nop()}
	m := NewWGMember(env)
	m.dev, l.links["web.3"] = wgVM(t, l.f, env, true, "web.3")
	l.members["web.3"] = m
	l.st.Edit(func(s *roletest.Snapshot) {
		s.AddNode("web", "web.3")
		s.Put("web.3:"+params.Hostname, "198.19.5.10").Put("web.3:"+params.ServerInstanceID, "cnsmo.1")
	})
	l.converge()
	require.Equal(t, addr, l.st.Value("web.3:"+params.VPNAddress))
	require.Contains(t, l.peers("web.1"), l.st.Value("web.3:"+params.VPNWGKey))
}

// A restarted role keeps its key, and the server its signing key, counter and addresses.
func TestWireGuardRestartKeepsKeys(t *testing.T) {
	l := newMeshLab(t, true, "web.1")
	l.converge()
	key, signer, entry := l.st.Value("web.1:"+params.VPNWGKey), l.st.Value("cnsmo.1:"+params.VPNSigner), l.st.Value("web.1:"+params.VPNMember)
	old := l.members["web.1"]
	m := NewWGMember(old.env)
	m.dev = old.dev
	l.members["web.1"] = m
	s := NewWGServer(l.srv.env)
	s.dev = l.srv.dev
	l.srv = s
	l.converge()
	require.Equal(t, key, l.st.Value("web.1:"+params.VPNWGKey))
	require.Equal(t, signer, l.st.Value("cnsmo.1:"+params.VPNSigner))
	require.Equal(t, entry, l.st.Value("web.1:"+params.VPNMember), "the same entry, the same generation")
}

// membershipPass renders, signs and publishes the entries of n members (the server's pass, no
// device) and verifies them all as a member does, in a fresh process: the cost of the membership
// at that size.
func membershipPass(t testing.TB, n int) time.Duration {
	st := roletest.NewStore("cnsmo.1", nil)
	var members []string
	st.Edit(func(s *roletest.Snapshot) {
		s.Put("cnsmo.1:"+params.VPNSubnet, "198.18.0.0/16").Put("cnsmo.1:"+params.VPNSubnet6, "2001:db8:c5e0::/64")
		for i := 1; i <= n; i++ {
			in := fmt.Sprintf("web.%d", i)
			members = append(members, in)
			k, err := wgtypes.GeneratePrivateKey()
			require.NoError(t, err)
			s.Put(in+":"+params.VPNWGKey, k.PublicKey().String()).Put(in+":"+params.Hostname, fmt.Sprintf("198.19.%d.%d", i/200, 10+i%200))
		}
		s.AddNode("cnsmo", "cnsmo.1").AddNode("web", members...)
	})
	dir := t.(interface{ TempDir() string }).TempDir()
	s := NewWGServer(role.Env{Params: st, Instance: "cnsmo.1", StateDir: dir, Log: zerolog.Nop()})
	in, err := ParseInputs(func(k string) string { return st.Value("cnsmo.1:" + k) })
	require.NoError(t, err)
	ctx := context.Background()
	start := time.Now()
	require.NoError(t, s.open(in))
	snap, err := st.Read(ctx)
	require.NoError(t, err)
	entries, problems, err := s.members(ctx, snap, in, members)
	require.NoError(t, err)
	require.Empty(t, problems)
	require.Len(t, entries, n)
	snap, err = st.Read(ctx)
	require.NoError(t, err)
	ms := &membership{signer: s.led.signer.Public().(ed25519.PublicKey), seenFile: jsonFile(dir + "/seen.json"), seen: map[string]uint64{}}
	peers := ms.peers(snap, "web.1", role.Env{Log: zerolog.Nop()})
	took := time.Since(start)
	require.Len(t, peers, n-1)
	for _, in := range members {
		require.LessOrEqual(t, len(st.Value(in+":"+params.VPNMember)), role.MaxValueLen)
	}
	return took
}

// TestBenchWGMembership: the membership of 200 members rendered, signed and verified (no
// tunnels), beside 10.
func TestBenchWGMembership(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("benchmark: set CNSMO_BENCH=1")
	}
	best := func(n int) time.Duration {
		var b time.Duration
		for i := 0; i < 5; i++ {
			if d := membershipPass(t, n); b == 0 || d < b {
				b = d
			}
		}
		return b
	}
	m10, m200 := best(10), best(200)
	benchreport.Report(t, benchreport.Figure{Name: "vpn_wg_membership_200_ms", Value: float64(m200.Microseconds()) / 1000,
		Baseline: "vpn_wg_membership_10_ms", BaselineValue: float64(m10.Microseconds()) / 1000,
		Note: "a first pass over n new members: the server assigns their addresses (each kept on disk), signs and publishes one entry per member (Ed25519), and a member verifies every entry; 200 vs 10, best of 5, no tunnels"})
}

// The membership of 200 members fits: one entry per member's own parameter, each verified.
func TestWGMembership200(t *testing.T) { membershipPass(t, 200) }

// A key already pinned by another member, or the server's own, is refused (and said), not
// signed; an invalid hostname is a problem, not an endpoint.
func TestWireGuardRefusesCopiedKeysAndBadHosts(t *testing.T) {
	l := newMeshLab(t, true, "web.1", "web.2", "web.3")
	ctx := context.Background()
	// web.2 and web.3 have not published yet: a VM writes web.1's key as web.2's, the server's as web.3's.
	_, err := l.members["web.1"].Reconcile(ctx, l.snap())
	require.NoError(t, err)
	_, _ = l.srv.Reconcile(ctx, l.snap())
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Put("web.2:"+params.VPNWGKey, s.Get("web.1", params.VPNWGKey)).Put("web.3:"+params.VPNWGKey, s.Get("cnsmo.1", params.VPNWGKey))
	})
	_, _ = l.srv.Reconcile(ctx, l.snap())
	require.Empty(t, l.st.Value("web.2:"+params.VPNMember), "no entry for a copied key")
	require.Empty(t, l.st.Value("web.3:"+params.VPNMember), "no entry for the server's key")
	require.Contains(t, strings.Join(l.st.Displays(), "\n"), "refused the WireGuard key of web.2: it is another member's key")

	for _, h := range []string{"-bad.example", "a b", "x_y.example", strings.Repeat("a", 64) + ".example"} {
		l.st.Edit(func(s *roletest.Snapshot) {
			s.Put("web.2:"+params.VPNWGKey, "").Put("web.3:"+params.VPNWGKey, "").Put("web.1:"+params.Hostname, h)
		})
		snap := l.snap()
		in, err := ParseInputs(func(k string) string { return snap.Get("cnsmo.1", k) })
		require.NoError(t, err)
		_, problems, err := l.srv.members(ctx, snap, in, []string{"web.1"})
		require.NoError(t, err)
		require.Len(t, problems, 1, h)
		require.ErrorContains(t, problems[0], "web.1: hostname", h)
	}
	require.NoError(t, validHost("web-1.cloud.example"))
	require.NoError(t, validHost("2001:db8::10"))
}

// Once joined, a member follows its pinned server: pointing its cnsmo.server.nodeinstanceid (or
// the server's vpn.server.nodeinstanceid) at another VM that publishes vpn.engine=openvpn or
// another port changes nothing.
func TestWireGuardMemberFollowsThePinnedServer(t *testing.T) {
	l := newMeshLab(t, true, "web.1", "web.2")
	l.converge()
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Put("web.1:"+params.ServerInstanceID, "web.2").Put("web.2:"+params.VPNServerInstanceID, "web.2").
			Put("web.2:"+params.VPNEngine, EngineOpenVPN).Put("web.2:"+params.VPNWGPort, "4000")
	})
	m := l.members["web.1"]
	require.Equal(t, "cnsmo.1", m.pins.server(l.snap()))
	c := &ClientService{OpenVPN: newClient(m.env), WG: m, active: EngineWireGuard}
	ready, err := c.Reconcile(context.Background(), l.snap())
	require.NoError(t, err)
	require.True(t, ready)
	require.Equal(t, EngineWireGuard, c.active)
	require.Equal(t, 51820, l.f.device("web.1").dev.ListenPort)
}

// The MTU follows a smaller underlay but is never above 1420, so that every peer can carry it.
func TestWireGuardMTU(t *testing.T) {
	for underlay, want := range map[int]int{1500: 1420, 9001: 1420, 1460: 1380, 1300: 1280} {
		l := newMeshLab(t, true, "web.1")
		l.links["web.1"].underlay = underlay
		l.converge()
		require.Equal(t, want, l.links["web.1"].mtu, "underlay %d", underlay)
	}
}

// Of two entries sharing a key or an address, the one granted first is kept.
func TestUniqueEntries(t *testing.T) {
	a, b, c := testEntry(t), testEntry(t), testEntry(t)
	a.Instance, a.Gen = "web.1", 3
	b.Instance, b.Gen, b.Key = "web.2", 9, a.Key
	c.Instance, c.Gen, c.V4 = "web.3", 5, netip.MustParseAddr("198.19.200.9")
	c.V6 = netip.MustParseAddr("2001:db8:c5e0::9")
	got := unique([]Entry{b, c, a}, role.Env{Log: zerolog.Nop()})
	require.Equal(t, []string{"web.1", "web.3"}, []string{got[0].Instance, got[1].Instance})
}

// An engine changed while the role was down: the other engine's function is torn down on the
// first pass.
func TestEngineLeftoverTornDown(t *testing.T) {
	l := newMeshLab(t, true, "web.1")
	m := l.members["web.1"]
	drv := m.dev.env.Driver.(*wgDriver)
	require.NoError(t, drv.fakeDriver.Start(context.Background(), driver.Spec{Name: ClientFunction}))
	cl := newClient(m.env)
	cl.env.Driver = drv
	cl.DelLink = func(context.Context, string) error { return nil }
	c := &ClientService{OpenVPN: cl, WG: m}
	_, err := c.Reconcile(context.Background(), l.snap())
	require.NoError(t, err)
	_, left := drv.started[ClientFunction]
	require.False(t, left, "the OpenVPN client left from before is removed")
}

// A kernel WireGuard device left from before a restart, the engine now openvpn: torn down on the
// first pass (it has no function to find, its link kind tells).
func TestEngineLeftoverKernelDeviceTornDown(t *testing.T) {
	l := newMeshLab(t, true, "web.1")
	l.converge()
	m := l.members["web.1"]
	require.NotNil(t, l.f.device("web.1").dev)
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.VPNEngine, EngineOpenVPN) })
	restarted := NewWGMember(m.env)
	restarted.dev = &wgDev{env: m.dev.env, image: WGImage, wg: m.dev.wg, links: m.dev.links, addrs: m.dev.addrs, ping: m.dev.ping}
	cl := newClient(m.dev.env)
	cl.DelLink = func(context.Context, string) error { return nil }
	c := &ClientService{OpenVPN: cl, WG: restarted}
	_, _ = c.Reconcile(context.Background(), l.snap())
	require.Nil(t, l.f.device("web.1").dev, "the kernel WireGuard device is removed")
}
