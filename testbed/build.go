package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Interface names inside the testbed's namespaces (the host sees none of them).
const (
	bridgeIf = "br0"    // a cloud router's private bridge
	uplinkIf = "uplink" // a cloud router's link to the internet router
	vmIf     = "eth0"   // a VM's only link
	inetHost = "host"   // the internet router's link to the host
)

func routerIf(c int) string      { return "cloud" + strconv.Itoa(c) } // in the internet router
func vmRouterIf(i int) string    { return "vm" + strconv.Itoa(i) }    // in a cloud router
func (vm *VM) router() string    { return vm.tb.routerName(vm.cloud) }
func (tb *Testbed) inet() string { return tb.name("internet") }
func (tb *Testbed) routerName(c int) string {
	return tb.name("router-" + strconv.Itoa(c))
}

// The addressing plan (see the package comment).
func (tb *Testbed) hostNet() (host, inet string) {
	return fmt.Sprintf("198.19.%d.1", 16*tb.slot), fmt.Sprintf("198.19.%d.2", 16*tb.slot)
}
func (tb *Testbed) transit(c int) (inet, router string) {
	b := 4 * (c + 1)
	return fmt.Sprintf("198.19.%d.%d", 16*tb.slot, b+1), fmt.Sprintf("198.19.%d.%d", 16*tb.slot, b+2)
}
func (tb *Testbed) transit6(c int) (inet, router string) {
	return fmt.Sprintf("2001:db8:%d:f%d::1", tb.slot, c), fmt.Sprintf("2001:db8:%d:f%d::2", tb.slot, c)
}
func (tb *Testbed) privateGW(c int) string { return fmt.Sprintf("198.18.%d.1", 16*tb.slot+c) }
func (tb *Testbed) publicNet(c int) string { return fmt.Sprintf("198.19.%d.0/24", 16*tb.slot+1+c) }
func (tb *Testbed) public6GW(c int) string { return fmt.Sprintf("2001:db8:%d:%d::1", tb.slot, c+1) }
func (tb *Testbed) public6Net(c int) string {
	return fmt.Sprintf("2001:db8:%d:%d::/64", tb.slot, c+1)
}

// mac is a fixed, locally administered MAC address: a VM keeps its MAC across a restart and the
// bridge keeps its own whatever ports come and go, so no neighbour cache goes stale.
func (tb *Testbed) mac(c, i, end int) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0xcb, byte(tb.slot), byte(c), byte(i), byte(end)}
}

// WireGuardRunDir is where user-space WireGuard puts its control sockets (/var/run/wireguard).
const WireGuardRunDir = "/run/wireguard"

const pathEnv = "PATH=/opt/cnsmo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// box is a container to create: a VM, a cloud router or the internet router.
type box struct {
	name, role, hostname, cloud string
	vm                          *VM
}

func (tb *Testbed) create(ctx context.Context, b box) error {
	labels := map[string]string{Label: strconv.Itoa(tb.slot), LabelRole: b.role}
	if b.cloud != "" {
		labels[LabelCloud] = b.cloud
	}
	cfg := &container.Config{Image: tb.opts.Image, Hostname: b.hostname, Cmd: []string{"sleep", "infinity"},
		Env: []string{pathEnv}, Labels: labels}
	// PID 1 stays sleep (no init): the recipes are written for that and see through zombies;
	// with Init, the VMs' PID 1 is the stand-in for systemd.
	if tb.opts.Init && b.vm != nil {
		cfg.Cmd = []string{"sh", "-c", initScript}
	}
	hc := &container.HostConfig{NetworkMode: "none", CapAdd: []string{"NET_ADMIN", "NET_RAW"},
		Sysctls: map[string]string{"net.ipv6.conf.all.disable_ipv6": "0", "net.ipv6.conf.default.disable_ipv6": "0",
			// No duplicate address detection on links that are ours alone: addresses work at once.
			"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"}}
	// Routers forward; so may a VM (the CNSMO server routes between people and members): a role
	// on a real VM turns it on itself, a container's /proc/sys is read-only.
	hc.Sysctls["net.ipv4.ip_forward"] = "1"
	hc.Sysctls["net.ipv6.conf.all.forwarding"] = "1"
	if b.vm != nil {
		labels[LabelVM] = b.vm.Name
		cfg.Env = append(cfg.Env, "CNSMO_DOCKER_NETWORK=container:"+b.name)
		hc.Devices = []container.DeviceMapping{{PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm"}}
		hc.Binds = []string{"/var/run/docker.sock:/var/run/docker.sock"}
		// A volume for user-space WireGuard's control sockets: the VM's functions (containers in
		// its namespace) mount it at the same path, so the role reaches their sockets.
		cfg.Volumes = map[string]struct{}{WireGuardRunDir: {}}
		if tb.opts.BinDir != "" {
			hc.Binds = append(hc.Binds, tb.opts.BinDir+":/opt/cnsmo/bin:ro")
		}
	}
	if _, err := tb.cli.ContainerCreate(ctx, cfg, hc, nil, nil, b.name); err != nil {
		return fmt.Errorf("testbed: create %s: %w", b.name, err)
	}
	if err := tb.cli.ContainerStart(ctx, b.name, container.StartOptions{}); err != nil {
		return fmt.Errorf("testbed: start %s: %w", b.name, err)
	}
	return nil
}

// nsOf opens the network namespace of a running container.
func (tb *Testbed) nsOf(ctx context.Context, cont string) (netns.NsHandle, error) {
	info, err := tb.cli.ContainerInspect(ctx, cont)
	if err != nil {
		return netns.None(), fmt.Errorf("testbed: inspect %s: %w", cont, err)
	}
	if info.State == nil || !info.State.Running || info.State.Pid == 0 {
		return netns.None(), fmt.Errorf("testbed: %s is not running", cont)
	}
	ns, err := netns.GetFromPid(info.State.Pid)
	if err != nil {
		return netns.None(), fmt.Errorf("testbed: network namespace of %s: %w", cont, err)
	}
	return ns, nil
}

// inNS runs f with a netlink handle inside a container's network namespace.
func (tb *Testbed) inNS(ctx context.Context, cont string, f func(h *netlink.Handle, ns netns.NsHandle) error) error {
	ns, err := tb.nsOf(ctx, cont)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("testbed: netlink in %s: %w", cont, err)
	}
	defer h.Close()
	if err := f(h, ns); err != nil {
		return fmt.Errorf("testbed: %s: %w", cont, err)
	}
	return nil
}

// netcfg configures links in one namespace; the first error sticks.
type netcfg struct {
	h   *netlink.Handle
	err error
}

func (n *netcfg) link(name string) netlink.Link {
	if n.err != nil {
		return nil
	}
	l, err := n.h.LinkByName(name)
	if err != nil {
		n.err = fmt.Errorf("link %s: %w", name, err)
	}
	return l
}

func (n *netcfg) addr(name, cidr string) {
	l := n.link(name)
	if n.err != nil {
		return
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		n.err = fmt.Errorf("address %s: %w", cidr, err)
		return
	}
	if a.IP.To4() == nil {
		a.Flags = syscall.IFA_F_NODAD // usable at once, no duplicate detection delay
	}
	if err := n.h.AddrAdd(l, a); err != nil {
		n.err = fmt.Errorf("address %s on %s: %w", cidr, name, err)
	}
}

func (n *netcfg) up(names ...string) {
	for _, name := range names {
		l := n.link(name)
		if n.err != nil {
			return
		}
		if err := n.h.LinkSetUp(l); err != nil {
			n.err = fmt.Errorf("set %s up: %w", name, err)
		}
	}
}

// route adds a route to dst ("" = default) through gw on link name.
func (n *netcfg) route(name, dst, gw string) {
	l := n.link(name)
	if n.err != nil {
		return
	}
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}
	if dst != "" {
		_, d, err := net.ParseCIDR(dst)
		if err != nil {
			n.err = fmt.Errorf("route %s: %w", dst, err)
			return
		}
		r.Dst = d
	}
	if err := n.h.RouteAdd(r); err != nil {
		n.err = fmt.Errorf("route %q via %s on %s: %w", dst, gw, name, err)
	}
}

// veth creates a pair in this namespace, its peer moved at once into another one; nil MACs are
// chosen by the kernel.
func (n *netcfg) veth(name, peer string, peerNS netns.NsHandle, mac, peerMAC net.HardwareAddr) {
	if n.err != nil {
		return
	}
	if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}, PeerName: peer,
		PeerNamespace: netlink.NsFd(peerNS), PeerHardwareAddr: peerMAC}); err != nil {
		n.err = fmt.Errorf("veth %s/%s: %w", name, peer, err)
	}
}

// forEach runs f on every item, a few at a time, and joins the errors.
func forEach[T any](items []T, f func(T) error) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 6)
	)
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(it); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (tb *Testbed) build(ctx context.Context) error {
	boxes := []box{{name: tb.inet(), role: "internet", hostname: "internet"}}
	for c, cs := range tb.opts.Clouds {
		boxes = append(boxes, box{name: tb.routerName(c), role: "router", hostname: "router-" + strconv.Itoa(c), cloud: cs.Name})
	}
	for _, vm := range tb.vms {
		boxes = append(boxes, box{name: vm.Container, role: "vm", hostname: vm.Name, cloud: vm.Cloud, vm: vm})
	}
	if err := forEach(boxes, func(b box) error { return tb.create(ctx, b) }); err != nil {
		return err
	}
	if err := tb.plumbInternet(ctx); err != nil {
		return err
	}
	for c := range tb.opts.Clouds {
		if err := tb.plumbRouter(ctx, c); err != nil {
			return err
		}
	}
	for _, vm := range tb.vms {
		if err := vm.plumb(ctx); err != nil {
			return err
		}
	}
	return forEach(tb.opts.Clouds, func(cs CloudSpec) error { return tb.nat(ctx, cs) })
}

// plumbInternet links the host to the internet router.
func (tb *Testbed) plumbInternet(ctx context.Context) error {
	hostAddr, inetAddr := tb.hostNet()
	ns, err := tb.nsOf(ctx, tb.inet())
	if err != nil {
		return err
	}
	defer ns.Close()
	host := &netcfg{h: &netlink.Handle{}}
	host.veth(hostLink(tb.slot), inetHost, ns, nil, nil)
	if host.err != nil {
		return fmt.Errorf("testbed: host link: %w", host.err)
	}
	if err := tb.inNS(ctx, tb.inet(), func(h *netlink.Handle, _ netns.NsHandle) error {
		n := &netcfg{h: h}
		n.up("lo")
		n.addr(inetHost, inetAddr+"/30")
		n.up(inetHost)
		return n.err
	}); err != nil {
		return err
	}
	host.addr(hostLink(tb.slot), hostAddr+"/30")
	host.up(hostLink(tb.slot))
	host.route(hostLink(tb.slot), fmt.Sprintf("198.19.%d.0/20", 16*tb.slot), inetAddr)
	if host.err != nil {
		return fmt.Errorf("testbed: host link: %w", host.err)
	}
	return nil
}

// plumbRouter links cloud c's router to the internet router and gives it its private bridge.
func (tb *Testbed) plumbRouter(ctx context.Context, c int) error {
	rns, err := tb.nsOf(ctx, tb.routerName(c))
	if err != nil {
		return err
	}
	defer rns.Close()
	ia, ra := tb.transit(c)
	ia6, ra6 := tb.transit6(c)
	if err := tb.inNS(ctx, tb.inet(), func(h *netlink.Handle, _ netns.NsHandle) error {
		n := &netcfg{h: h}
		n.veth(routerIf(c), uplinkIf, rns, nil, nil)
		n.addr(routerIf(c), ia+"/30")
		n.addr(routerIf(c), ia6+"/64")
		n.up(routerIf(c))
		n.route(routerIf(c), tb.publicNet(c), ra)
		n.route(routerIf(c), tb.public6Net(c), ra6)
		return n.err
	}); err != nil {
		return err
	}
	return tb.inNS(ctx, tb.routerName(c), func(h *netlink.Handle, _ netns.NsHandle) error {
		n := &netcfg{h: h}
		n.up("lo")
		n.addr(uplinkIf, ra+"/30")
		n.addr(uplinkIf, ra6+"/64")
		n.up(uplinkIf)
		n.route(uplinkIf, "", ia)
		n.route(uplinkIf, "::/0", ia6)
		if n.err == nil {
			if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeIf, HardwareAddr: tb.mac(c, 255, 0)}}); err != nil {
				return fmt.Errorf("bridge: %w", err)
			}
		}
		n.addr(bridgeIf, tb.privateGW(c)+"/24")
		n.addr(bridgeIf, tb.public6GW(c)+"/64")
		n.up(bridgeIf)
		return n.err
	})
}

// plumb connects the VM to its cloud's bridge with its private and IPv6 addresses (again after a
// restart, which gives the VM a new namespace). Its 1:1 NAT lives in the router and stays.
func (vm *VM) plumb(ctx context.Context) error {
	tb := vm.tb
	vns, err := tb.nsOf(ctx, vm.Container)
	if err != nil {
		return err
	}
	defer vns.Close()
	if err := tb.inNS(ctx, vm.router(), func(h *netlink.Handle, _ netns.NsHandle) error {
		if old, err := h.LinkByName(vmRouterIf(vm.index)); err == nil {
			if err := h.LinkDel(old); err != nil {
				return fmt.Errorf("delete old %s: %w", vmRouterIf(vm.index), err)
			}
		}
		n := &netcfg{h: h}
		n.veth(vmRouterIf(vm.index), vmIf, vns, tb.mac(vm.cloud, vm.index, 2), tb.mac(vm.cloud, vm.index, 1))
		br, l := n.link(bridgeIf), n.link(vmRouterIf(vm.index))
		if n.err == nil {
			if err := h.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("attach %s to %s: %w", vmRouterIf(vm.index), bridgeIf, err)
			}
		}
		n.up(vmRouterIf(vm.index))
		return n.err
	}); err != nil {
		return err
	}
	return tb.inNS(ctx, vm.Container, func(h *netlink.Handle, _ netns.NsHandle) error {
		n := &netcfg{h: h}
		n.up("lo")
		n.addr(vmIf, vm.PrivateAddr+"/24")
		n.addr(vmIf, vm.PublicAddr6+"/64")
		n.up(vmIf)
		n.route(vmIf, "", tb.privateGW(vm.cloud))
		n.route(vmIf, "::/0", tb.public6GW(vm.cloud))
		return n.err
	})
}

// natRules is the 1:1 NAT of a cloud's router: a VM's public address is translated to its
// private one on the way in, its private one to its public one on the way out, and a VM that
// calls another VM of the same cloud by its public address (hairpin) gets there too, seen from
// its own public address as in a real cloud.
func natRules(vms []*VM) string {
	var b strings.Builder
	b.WriteString("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n")
	for _, vm := range vms {
		fmt.Fprintf(&b, "-A PREROUTING -d %s/32 -j DNAT --to-destination %s\n", vm.PublicAddr, vm.PrivateAddr)
	}
	for _, vm := range vms {
		fmt.Fprintf(&b, "-A POSTROUTING -s %s/32 -o %s -j SNAT --to-source %s\n", vm.PrivateAddr, uplinkIf, vm.PublicAddr)
		fmt.Fprintf(&b, "-A POSTROUTING -s %s/32 -o %s -m conntrack --ctstate DNAT -j SNAT --to-source %s\n", vm.PrivateAddr, bridgeIf, vm.PublicAddr)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

func (tb *Testbed) nat(ctx context.Context, cs CloudSpec) error {
	var vms []*VM
	c := -1
	for _, vm := range tb.vms {
		if vm.Cloud == cs.Name {
			vms, c = append(vms, vm), vm.cloud
		}
	}
	if len(vms) == 0 {
		return nil
	}
	router := tb.routerName(c)
	out, errOut, code, err := tb.exec(ctx, router, nil, []byte(natRules(vms)), []string{"iptables-restore", "-w"})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("testbed: NAT rules in %s: iptables-restore exit %d: %s%s", router, code, out, errOut)
	}
	return nil
}
