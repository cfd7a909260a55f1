package vpn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/roles/role"
)

// WireGuard engine defaults.
const (
	WGImage       = "cnsmo/wireguard:latest"
	WGFunction    = "vpn-wg"
	WGRunDir      = "/run/wireguard" // user-space WireGuard's control sockets (/var/run/wireguard)
	WGKeepalive   = 25 * time.Second
	WGRecent      = 3 * time.Minute // a handshake this recent counts in vpn.wg.handshakes
	wgOverhead    = 80              // IPv6 + UDP + WireGuard header: 1420 on a 1500 underlay
	wgDefaultMTU  = 1420
	wgMinMTU      = 1280
	wgSocketWait  = 5 * time.Second
	wgPingTimeout = time.Second
)

// WGClient is what the engine uses of wgctrl (a *wgctrl.Client: the kernel through netlink or a
// user-space device through its socket in /var/run/wireguard, one code path).
type WGClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// WGLinks are the netlink operations on the overlay device.
type WGLinks interface {
	// Kind returns the device's link kind ("wireguard", "tun", …); ok false when it is absent.
	Kind(name string) (kind string, ok bool, err error)
	// AddWireGuard creates a kernel WireGuard device; an error when the kernel has none.
	AddWireGuard(name string) error
	// Setup sets the MTU and exactly these addresses (no duplicate address detection) and brings
	// the device up.
	Setup(name string, mtu int, addrs []netip.Prefix) error
	// UnderlayMTU is the MTU of the device of the default route (0: unknown).
	UnderlayMTU() int
	Del(name string) error
}

// wgDev runs the overlay device of the WireGuard engine on this VM: the kernel's when it has
// one, otherwise wireguard-go as a function (container or host process) whose control socket is
// in WGRunDir, shared with the role.
type wgDev struct {
	env   role.Env
	image string
	wg    WGClient
	links WGLinks
	ping  PingFunc
	addrs AddrsFunc

	epoch    int                       // counts the devices this process set up (1, 2, …)
	kernel   *bool                     // decided on the first pass
	applied  map[wgtypes.Key]wgApplied // peers as this process configured them
	resolved map[string]*net.UDPAddr   // endpoint -> address
	status   string                    // "<n>/<peers>" last published
	// route, when set, gives the prefixes routed to a peer besides its own addresses (a member
	// routes the people's block to the server).
	route func(Entry) []netip.Prefix
}

func (d *wgDev) statusLine() string {
	if d.status == "" {
		return ""
	}
	return "wireguard mesh, " + d.status + " peers with a recent handshake"
}

type wgApplied struct {
	endpoint string
	v4, v6   netip.Addr
	allowed  string
}

func newWGDev(env role.Env) *wgDev {
	return &wgDev{env: env, image: WGImage, links: netlinkLinks{}, addrs: defaultAddrs}
}

func (d *wgDev) client() (WGClient, error) {
	if d.wg == nil {
		c, err := wgctrl.New()
		if err != nil {
			return nil, fmt.Errorf("vpn: wireguard control: %w", err)
		}
		d.wg = c
	}
	return d.wg, nil
}

// wireguardGo is the user-space WireGuard binary: in the image with Docker; with exec, the one
// beside this executable (where make build and the recipes put it) when there is one, else PATH's.
func (d *wgDev) wireguardGo() string {
	if d.env.Exec {
		if self, err := os.Executable(); err == nil {
			p := filepath.Join(filepath.Dir(self), "wireguard-go")
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	return "wireguard-go"
}

// spec is the user-space WireGuard function.
func (d *wgDev) spec() driver.Spec {
	return driver.Spec{
		Name: WGFunction, Service: "vpn", Image: d.image,
		Cmd:    []string{d.wireguardGo(), "-f", Device},
		Env:    []string{"LOG_LEVEL=error"},
		CapAdd: []string{"NET_ADMIN"}, Devices: []string{"/dev/net/tun"},
		Shared: []string{WGRunDir},
	}
}

// ensure makes the device exist with this private key and listen port. It reports false (and no
// error) while a just-started user-space device has not opened its control socket yet.
func (d *wgDev) ensure(ctx context.Context, key wgtypes.Key, port int) (bool, error) {
	kind, exists, err := d.links.Kind(Device)
	if err != nil {
		return false, err
	}
	if d.kernel == nil {
		k := exists && kind == "wireguard"
		if !exists {
			if err := d.links.AddWireGuard(Device); err == nil {
				k, exists = true, true
			} else {
				d.env.Log.Info().Str("reason", err.Error()).Msg("vpn: no kernel WireGuard here: user-space wireguard-go")
			}
		}
		d.kernel = &k
	}
	if *d.kernel {
		if !exists {
			if err := d.links.AddWireGuard(Device); err != nil {
				return false, fmt.Errorf("vpn: add wireguard device: %w", err)
			}
			d.applied = nil
			d.epoch++
		} else if d.epoch == 0 {
			d.epoch++
		}
	} else {
		st, err := d.env.Driver.Status(ctx, WGFunction)
		if err != nil {
			return false, fmt.Errorf("vpn: status of %s: %w", WGFunction, err)
		}
		if st.State == driver.StateExited {
			logTail(ctx, d.env, WGFunction, st)
		}
		if err := d.env.Driver.Start(ctx, d.spec()); err != nil {
			return false, fmt.Errorf("vpn: start wireguard-go: %w", err)
		}
		if st.State != driver.StateRunning || d.epoch == 0 {
			d.applied = nil // a new device (or one this process does not know): no peer trusted yet
			d.epoch++
			d.env.Log.Info().Msg("vpn: wireguard-go started")
		}
	}
	wg, err := d.client()
	if err != nil {
		return false, err
	}
	var dev *wgtypes.Device
	_ = wait.Backoff{Min: 20 * time.Millisecond, Max: 200 * time.Millisecond, Limit: wgSocketWait}.Until(ctx, func(context.Context) (bool, error) {
		dev, err = wg.Device(Device)
		return err == nil, nil
	})
	if err != nil {
		d.env.Log.Debug().Err(err).Msg("vpn: wireguard device not answering yet")
		return false, nil
	}
	if dev.PrivateKey != key || dev.ListenPort != port {
		if err := wg.ConfigureDevice(Device, wgtypes.Config{PrivateKey: &key, ListenPort: &port}); err != nil {
			return false, fmt.Errorf("vpn: configure wireguard device: %w", err)
		}
		d.applied = nil
		d.epoch++
	}
	return true, nil
}

// setup gives the device its MTU (from the underlay) and addresses, and brings it up.
func (d *wgDev) setup(v4, v6 netip.Prefix) error {
	// 1420 on a 1500 underlay; never more (a peer on a 1500 path must not get larger packets
	// than it can carry), less on a smaller underlay.
	mtu := wgDefaultMTU
	if u := d.links.UnderlayMTU(); u > 0 {
		mtu = min(max(u-wgOverhead, wgMinMTU), wgDefaultMTU)
	}
	return d.links.Setup(Device, mtu, []netip.Prefix{v4, v6})
}

// sync makes the device's peers exactly peers (scale out adds, scale in removes; a peer that did
// not change is left alone, so its tunnel is not disturbed). It reports whether it changed any.
func (d *wgDev) sync(peers []Entry) (bool, error) {
	wg, err := d.client()
	if err != nil {
		return false, err
	}
	dev, err := wg.Device(Device)
	if err != nil {
		return false, fmt.Errorf("vpn: read wireguard device: %w", err)
	}
	want := map[wgtypes.Key]Entry{}
	for _, e := range peers {
		if e.Key != (wgtypes.Key{}) { // an entry of the OpenVPN engine: no peer
			want[e.Key] = e
		}
	}
	have := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range dev.Peers {
		have[p.PublicKey] = p
	}
	if d.applied == nil {
		d.applied = map[wgtypes.Key]wgApplied{}
	}
	var cfg []wgtypes.PeerConfig
	for k := range have {
		if _, ok := want[k]; !ok {
			cfg = append(cfg, wgtypes.PeerConfig{PublicKey: k, Remove: true})
			delete(d.applied, k)
		}
	}
	ka := WGKeepalive
	for k, e := range want {
		allowed := []netip.Prefix{netip.PrefixFrom(e.V4, 32), netip.PrefixFrom(e.V6, 128)}
		if d.route != nil {
			allowed = append(allowed, d.route(e)...)
		}
		a := wgApplied{endpoint: e.Endpoint, v4: e.V4, v6: e.V6, allowed: fmt.Sprint(allowed)}
		if p, ok := have[k]; ok && d.applied[k] == a && sameAllowed(p.AllowedIPs, allowed) {
			continue
		}
		ep, err := d.resolve(e.Endpoint)
		if err != nil {
			d.env.Log.Warn().Err(err).Str("peer", e.Instance).Msg("vpn: peer endpoint does not resolve; left out for now")
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: k, Endpoint: ep, ReplaceAllowedIPs: true}
		if ep != nil { // a person (no endpoint, behind NAT) keeps its own connection alive
			pc.PersistentKeepaliveInterval = &ka
		}
		for _, p := range allowed {
			pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
		}
		cfg = append(cfg, pc)
		d.applied[k] = a
	}
	if len(cfg) == 0 {
		return false, nil
	}
	sort.Slice(cfg, func(i, j int) bool { return cfg[i].PublicKey.String() < cfg[j].PublicKey.String() })
	if err := wg.ConfigureDevice(Device, wgtypes.Config{Peers: cfg}); err != nil {
		d.applied = nil
		return false, fmt.Errorf("vpn: configure wireguard peers: %w", err)
	}
	return true, nil
}

func sameAllowed(got []net.IPNet, want []netip.Prefix) bool {
	if len(got) != len(want) {
		return false
	}
	var s, w []string
	for _, n := range got {
		s = append(s, n.String())
	}
	for _, p := range want {
		w = append(w, p.String())
	}
	slices.Sort(s)
	slices.Sort(w)
	return slices.Equal(s, w)
}

func (d *wgDev) resolve(ep string) (*net.UDPAddr, error) {
	if ep == "" {
		return nil, nil
	}
	if a, ok := d.resolved[ep]; ok {
		return a, nil
	}
	a, err := net.ResolveUDPAddr("udp", ep)
	if err != nil {
		return nil, err
	}
	if d.resolved == nil {
		d.resolved = map[string]*net.UDPAddr{}
	}
	d.resolved[ep] = a
	return a, nil
}

// handshakes returns, per peer key, the time of its last handshake (zero: none yet).
func (d *wgDev) handshakes() (map[wgtypes.Key]time.Time, error) {
	wg, err := d.client()
	if err != nil {
		return nil, err
	}
	dev, err := wg.Device(Device)
	if err != nil {
		return nil, fmt.Errorf("vpn: read wireguard device: %w", err)
	}
	out := map[wgtypes.Key]time.Time{}
	for _, p := range dev.Peers {
		out[p.PublicKey] = p.LastHandshakeTime
	}
	return out, nil
}

// recent formats how many of the peers had a handshake within WGRecent: "<n>/<peers>".
func recent(hs map[wgtypes.Key]time.Time, now time.Time) string {
	n := 0
	for _, t := range hs {
		if !t.IsZero() && now.Sub(t) < WGRecent {
			n++
		}
	}
	return fmt.Sprintf("%d/%d", n, len(hs))
}

// hasAddrs reports whether the device has both addresses (usable: DAD done).
func (d *wgDev) hasAddrs(ctx context.Context, v4, v6 netip.Addr) (bool, error) {
	have, err := d.addrs(ctx, Device)
	if err != nil {
		return false, err
	}
	has4, has6 := false, false
	for _, a := range have {
		has4 = has4 || a.Addr() == v4
		has6 = has6 || a.Addr() == v6
	}
	return has4 && has6, nil
}

func (d *wgDev) answers(ctx context.Context, addr netip.Addr) (bool, error) {
	if d.ping != nil {
		return d.ping(ctx, addr)
	}
	return icmpPing(ctx, addr)
}

// teardown removes the device and the user-space function.
func (d *wgDev) teardown(ctx context.Context) error {
	var errs []error
	if err := d.env.Driver.Remove(ctx, WGFunction); err != nil && !errors.Is(err, driver.ErrNotFound) {
		errs = append(errs, fmt.Errorf("vpn: remove %s: %w", WGFunction, err))
	}
	if err := d.links.Del(Device); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(filepath.Join(WGRunDir, Device+".sock"))
	d.kernel, d.applied = nil, nil
	return errors.Join(errs...)
}

// icmpPing sends one ICMP echo to addr from this process (root: a raw socket) and waits up to a
// second for the reply.
func icmpPing(ctx context.Context, addr netip.Addr) (bool, error) {
	network, any, proto := "ip4:icmp", "0.0.0.0", 1
	var typ, reply icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if addr.Is6() {
		network, any, proto = "ip6:ipv6-icmp", "::", 58
		typ, reply = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	c, err := icmp.ListenPacket(network, any)
	if err != nil {
		return false, fmt.Errorf("vpn: ping %s: %w", addr, err)
	}
	defer c.Close()
	id := os.Getpid() & 0xffff
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("cnsmo")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return false, err
	}
	dl := time.Now().Add(wgPingTimeout)
	if t, ok := ctx.Deadline(); ok && t.Before(dl) {
		dl = t
	}
	_ = c.SetDeadline(dl)
	if _, err := c.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
		return false, nil // no route yet
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return false, nil // timed out
		}
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil || m.Type != reply {
			continue
		}
		if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id && from.String() == addr.String() {
			return true, nil
		}
	}
}

// netlinkLinks is WGLinks through netlink in this process's namespace (the VM's).
type netlinkLinks struct{}

func (netlinkLinks) Kind(name string) (string, bool, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("vpn: device %s: %w", name, err)
	}
	return l.Type(), true, nil
}

func (netlinkLinks) AddWireGuard(name string) error {
	return netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
}

func (netlinkLinks) Setup(name string, mtu int, addrs []netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("vpn: device %s: %w", name, err)
	}
	if l.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("vpn: mtu of %s: %w", name, err)
		}
	}
	have, err := netlink.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("vpn: addresses of %s: %w", name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, p := range addrs {
		want[p] = true
	}
	for _, a := range have {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		p := netip.PrefixFrom(ip.Unmap(), ones)
		if want[p] {
			delete(want, p)
			continue
		}
		if a.Scope == syscall.RT_SCOPE_UNIVERSE {
			if err := netlink.AddrDel(l, &a); err != nil {
				return fmt.Errorf("vpn: remove %s from %s: %w", p, name, err)
			}
		}
	}
	for p := range want {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = syscall.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, a); err != nil {
			return fmt.Errorf("vpn: add %s to %s: %w", p, name, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("vpn: bring %s up: %w", name, err)
		}
	}
	return nil
}

func (netlinkLinks) UnderlayMTU() int {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, fam)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP != nil && !r.Dst.IP.IsUnspecified() {
				ones, _ := r.Dst.Mask.Size()
				if ones != 0 {
					continue
				}
			}
			if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().Name != Device {
				return l.Attrs().MTU
			}
		}
	}
	return 0
}

func (netlinkLinks) Del(name string) error { return DelLink(nil, name) }
