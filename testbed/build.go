package testbed

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/vishvananda/netlink"
)

const routerPrivate = "br0"

func (tb *Testbed) labels(role string) map[string]string {
	return map[string]string{Label: strconv.Itoa(tb.slot), "cnsmo.testbed.role": role}
}

// run starts a container with no network of Docker's.
func (tb *Testbed) run(ctx context.Context, name, role, hostname string, vm bool) error {
	hc := &container.HostConfig{NetworkMode: "none", CapAdd: []string{"NET_ADMIN", "NET_RAW"},
		Sysctls: map[string]string{"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.disable_ipv6": "0"}}
	env := []string{"PATH=/opt/cnsmo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	if vm {
		hc.Sysctls = map[string]string{"net.ipv6.conf.all.disable_ipv6": "0"}
		hc.Devices = []container.DeviceMapping{{PathOnHost: "/dev/net/tun", PathInContainer: "/dev/net/tun", CgroupPermissions: "rwm"}}
		hc.Binds = []string{"/var/run/docker.sock:/var/run/docker.sock"}
		if tb.opts.BinDir != "" {
			hc.Binds = append(hc.Binds, tb.opts.BinDir+":/opt/cnsmo/bin:ro")
		}
		env = append(env, "CNSMO_DOCKER_NETWORK=container:"+name)
	}
	_, err := tb.cli.ContainerCreate(ctx, &container.Config{Image: tb.opts.Image, Hostname: hostname,
		Cmd: []string{"sleep", "infinity"}, Env: env, Labels: tb.labels(role)}, hc, nil, nil, name)
	if err != nil {
		return fmt.Errorf("testbed: create %s: %w", name, err)
	}
	if err := tb.cli.ContainerStart(ctx, name, container.StartOptions{}); err != nil {
		return fmt.Errorf("testbed: start %s: %w", name, err)
	}
	return nil
}

func (tb *Testbed) pid(ctx context.Context, name string) (int, error) {
	info, err := tb.cli.ContainerInspect(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("testbed: inspect %s: %w", name, err)
	}
	if info.State == nil || info.State.Pid == 0 {
		return 0, fmt.Errorf("testbed: %s is not running", name)
	}
	return info.State.Pid, nil
}

// veth creates a pair and moves each end into a container's namespace (pid 0 = stay on the host).
func (tb *Testbed) veth(ctx context.Context, a string, aCont string, b string, bCont string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		return fmt.Errorf("testbed: veth %s-%s: %w", a, b, err)
	}
	for _, end := range [][2]string{{a, aCont}, {b, bCont}} {
		if end[1] == "" {
			continue
		}
		pid, err := tb.pid(ctx, end[1])
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName(end[0])
		if err != nil {
			return fmt.Errorf("testbed: %s: %w", end[0], err)
		}
		if err := netlink.LinkSetNsPid(l, pid); err != nil {
			return fmt.Errorf("testbed: move %s into %s: %w", end[0], end[1], err)
		}
	}
	return nil
}

// sh runs a setup script inside a container (fixed addresses only, built by the testbed).
func (tb *Testbed) sh(ctx context.Context, cont string, script string) error {
	out, errOut, code, err := tb.exec(ctx, cont, nil, []string{"sh", "-ec", script})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("testbed: setup in %s failed (exit %d): %s%s\nscript: %s", cont, code, out, errOut, script)
	}
	return nil
}

func (tb *Testbed) inetAddr(c int) (inet, router string) {
	base := 4 * (c + 1)
	return fmt.Sprintf("198.19.%d.%d", 16*tb.slot, base+1), fmt.Sprintf("198.19.%d.%d", 16*tb.slot, base+2)
}

func (tb *Testbed) build(ctx context.Context) error {
	tb.inet = tb.name("internet")
	if err := tb.run(ctx, tb.inet, "internet", "internet", false); err != nil {
		return err
	}
	// host <-> internet
	inetHost := fmt.Sprintf("tb%dih", tb.slot)
	if err := tb.veth(ctx, tb.hostIf, "", inetHost, tb.inet); err != nil {
		return err
	}
	hl, err := netlink.LinkByName(tb.hostIf)
	if err != nil {
		return err
	}
	addr, _ := netlink.ParseAddr(tb.HostAddr() + "/30")
	if err := netlink.AddrAdd(hl, addr); err != nil {
		return fmt.Errorf("testbed: host address: %w", err)
	}
	if err := netlink.LinkSetUp(hl); err != nil {
		return err
	}
	inetSide := fmt.Sprintf("198.19.%d.2", 16*tb.slot)
	_, slotNet, _ := net.ParseCIDR(fmt.Sprintf("198.19.%d.0/20", 16*tb.slot))
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: hl.Attrs().Index, Dst: slotNet, Gw: net.ParseIP(inetSide)}); err != nil {
		return fmt.Errorf("testbed: host route: %w", err)
	}
	inetScript := fmt.Sprintf("ip link set lo up; ip addr add %s/30 dev %s; ip link set %s up;", inetSide, inetHost, inetHost)
	for c, cs := range tb.opts.Clouds {
		router := tb.name("router", strconv.Itoa(c))
		if err := tb.run(ctx, router, "router", "router-"+cs.Name, false); err != nil {
			return err
		}
		iIf, rIf := fmt.Sprintf("tb%di%d", tb.slot, c), fmt.Sprintf("tb%dr%d", tb.slot, c)
		if err := tb.veth(ctx, iIf, tb.inet, rIf, router); err != nil {
			return err
		}
		ia, ra := tb.inetAddr(c)
		inetScript += fmt.Sprintf(" ip addr add %s/30 dev %s; ip link set %s up; ip route add 198.19.%d.0/24 via %s;", ia, iIf, iIf, 16*tb.slot+1+c, ra)
		rs := fmt.Sprintf("ip link set lo up; ip addr add %s/30 dev %s; ip link set %s up; ip route add default via %s;"+
			" ip link add %s type bridge; ip addr add 198.18.%d.1/24 dev %s; ip link set %s up;",
			ra, rIf, rIf, ia, routerPrivate, 16*tb.slot+c, routerPrivate, routerPrivate)
		if err := tb.sh(ctx, router, rs); err != nil {
			return err
		}
	}
	if err := tb.sh(ctx, tb.inet, inetScript); err != nil {
		return err
	}
	for _, vm := range tb.vms {
		if err := tb.run(ctx, vm.Container, "vm", vm.Name, true); err != nil {
			return err
		}
		if err := vm.plumb(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (vm *VM) router() string { return vm.tb.name("router", strconv.Itoa(vm.cloud)) }

// plumb connects the VM to its cloud's router and sets up its 1:1 NAT (again after a restart).
func (vm *VM) plumb(ctx context.Context) error {
	tb := vm.tb
	inner := fmt.Sprintf("tb%dv%d", tb.slot, vm.cloud*50+vm.index)
	router := vm.router()
	// A restart leaves the router's end behind, peerless: remove it first.
	_ = tb.sh(ctx, router, "ip link del "+vm.routerIf+" 2>/dev/null || true; "+
		fmt.Sprintf("iptables -t nat -D PREROUTING -d %s -j DNAT --to-destination %s 2>/dev/null || true; ", vm.PublicAddr, vm.PrivateAddr)+
		fmt.Sprintf("iptables -t nat -D POSTROUTING -s %s -o tb%dr%d -j SNAT --to-source %s 2>/dev/null || true", vm.PrivateAddr, tb.slot, vm.cloud, vm.PublicAddr))
	if err := tb.veth(ctx, vm.routerIf, router, inner, vm.Container); err != nil {
		return err
	}
	if err := tb.sh(ctx, router, fmt.Sprintf("ip link set %s master %s; ip link set %s up;"+
		" iptables -t nat -A PREROUTING -d %s -j DNAT --to-destination %s;"+
		" iptables -t nat -A POSTROUTING -s %s -o tb%dr%d -j SNAT --to-source %s",
		vm.routerIf, routerPrivate, vm.routerIf, vm.PublicAddr, vm.PrivateAddr, vm.PrivateAddr, tb.slot, vm.cloud, vm.PublicAddr)); err != nil {
		return err
	}
	return tb.sh(ctx, vm.Container, fmt.Sprintf("ip link set lo up; ip link set %s name eth0; ip addr add %s/24 dev eth0;"+
		" ip link set eth0 up; ip route add default via 198.18.%d.1", inner, vm.PrivateAddr, 16*tb.slot+vm.cloud))
}

// Exec runs argv in the VM and waits; a non-zero exit is an error that carries the code.
func (vm *VM) Exec(ctx context.Context, argv ...string) (string, string, error) {
	out, errOut, code, err := vm.tb.exec(ctx, vm.Container, nil, argv)
	if err != nil {
		return out, errOut, err
	}
	if code != 0 {
		return out, errOut, &ExitError{Code: code, Argv: argv, Stderr: errOut}
	}
	return out, errOut, nil
}

// ExitError is a command that ran in a VM and failed.
type ExitError struct {
	Code   int
	Argv   []string
	Stderr string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: exit %d: %s", strings.Join(e.Argv, " "), e.Code, strings.TrimSpace(e.Stderr))
}

// WriteFile writes a file into the VM.
func (vm *VM) WriteFile(ctx context.Context, p string, data []byte, mode os.FileMode) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var dirs []string
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	for _, d := range dirs {
		_ = tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d[1:] + "/", Mode: 0o755, ModTime: time.Now()})
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: p[1:], Mode: int64(mode.Perm()), Size: int64(len(data)), ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := vm.tb.cli.CopyToContainer(ctx, vm.Container, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("testbed: write %s on %s: %w", p, vm.Name, err)
	}
	return nil
}

// Stop stops the VM (its network state is lost); Restart starts it again with the same addresses.
func (vm *VM) Stop(ctx context.Context) error {
	t := 2
	return vm.tb.cli.ContainerStop(ctx, vm.Container, container.StopOptions{Timeout: &t})
}

// Restart starts a stopped VM and plumbs it again.
func (vm *VM) Restart(ctx context.Context) error {
	if err := vm.tb.cli.ContainerStart(ctx, vm.Container, container.StartOptions{}); err != nil {
		return fmt.Errorf("testbed: restart %s: %w", vm.Name, err)
	}
	return vm.plumb(ctx)
}

// Cut takes the VM off its cloud's network; Reconnect puts it back.
func (vm *VM) Cut(ctx context.Context) error {
	return vm.tb.sh(ctx, vm.router(), "ip link set "+vm.routerIf+" down")
}

// Reconnect undoes Cut.
func (vm *VM) Reconnect(ctx context.Context) error {
	return vm.tb.sh(ctx, vm.router(), "ip link set "+vm.routerIf+" up")
}
