package vpn

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WGKey is the person's WireGuard private key (made by Join).
func (p *Person) WGKey() (wgtypes.Key, error) { return LoadOrCreateWGKey(p.file(personWGKey)) }

// UpWireGuard brings a person's tunnel up with a user-space WireGuard device inside this process
// (no kernel module needed): interface ifname with the granted addresses, the server as the only
// peer for the whole overlay. down removes it.
func UpWireGuard(key wgtypes.Key, j *Joined, ifname string) (down func(), err error) {
	ep, err := net.ResolveUDPAddr("udp", j.Server.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("up: the server's endpoint %s: %w", j.Server.Endpoint, err)
	}
	t, err := tun.CreateTUN(ifname, 1420)
	if err != nil {
		return nil, fmt.Errorf("up: create %s (root and /dev/net/tun needed): %w", ifname, err)
	}
	dev := device.NewDevice(t, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, "wireguard: "))
	k, pk := key, j.Server.Key
	cfg := fmt.Sprintf("private_key=%s\nreplace_peers=true\npublic_key=%s\nendpoint=%s\npersistent_keepalive_interval=%d\nreplace_allowed_ips=true\nallowed_ip=%s\nallowed_ip=%s\n",
		hex.EncodeToString(k[:]), hex.EncodeToString(pk[:]), ep.String(), int(WGKeepalive.Seconds()), j.Inputs.V4, j.Inputs.V6)
	if err := dev.IpcSet(cfg); err != nil {
		dev.Close()
		return nil, fmt.Errorf("up: configure %s: %w", ifname, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("up: %s: %w", ifname, err)
	}
	if err := addrsUp(ifname, netip.PrefixFrom(j.Self.V4, j.Inputs.V4.Bits()), netip.PrefixFrom(j.Self.V6, j.Inputs.V6.Bits())); err != nil {
		dev.Close()
		return nil, err
	}
	return dev.Close, nil
}

// addrsUp gives the interface its addresses (IPv6 without duplicate address detection: the
// server assigned it) and sets it up.
func addrsUp(ifname string, v4, v6 netip.Prefix) error {
	l, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("up: %s: %w", ifname, err)
	}
	for _, p := range []netip.Prefix{v4, v6} {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
		if p.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, a); err != nil {
			return fmt.Errorf("up: address %s on %s: %w", p, ifname, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("up: set %s up: %w", ifname, err)
	}
	return nil
}

// RouteDomain sends the overlay's domain (and only it) to the server's DNS on the person's
// interface through systemd-resolved; ok false (and the manual step in msg) where it does not run.
func RouteDomain(ctx context.Context, ifname string, j *Joined, dnsV4, dnsV6 netip.Addr) (msg string, ok bool) {
	domain := j.Inputs.Domain
	manual := fmt.Sprintf("names: %s answers DNS for %s (A and AAAA, through the tunnel) and refuses every other name: "+
		"send only that domain to it, e.g. `resolvectl dns %s %s %s && resolvectl domain %s '~%s'` (systemd-resolved), "+
		"dnsmasq `server=/%s/%s`, or ask it directly: `dig @%s web-1.%s`",
		dnsV4, domain, ifname, dnsV4, dnsV6, ifname, domain, domain, dnsV4, dnsV4, domain)
	rc, err := exec.LookPath("resolvectl")
	if err != nil {
		return manual, false
	}
	if _, err := os.Stat("/run/systemd/resolve"); err != nil {
		return manual, false
	}
	for _, args := range [][]string{{"dns", ifname, dnsV4.String(), dnsV6.String()}, {"domain", ifname, "~" + domain}} {
		if out, err := exec.CommandContext(ctx, rc, args...).CombinedOutput(); err != nil {
			return manual + fmt.Sprintf(" (resolvectl %s: %v: %s)", strings.Join(args, " "), err, strings.TrimSpace(string(out))), false
		}
	}
	return fmt.Sprintf("names: %s resolves through %s (systemd-resolved, this interface only)", domain, dnsV4), true
}

// ServerAddrs are the overlay addresses of the server (index 1 of both prefixes): its DNS.
func ServerAddrs(in Inputs) (netip.Addr, netip.Addr) {
	return hostAddr(in.V4, serverIndex), hostAddr(in.V6, serverIndex)
}

// DefaultPersonDir is where a person's keys go: $XDG_CONFIG_HOME/cnsmo or ~/.config/cnsmo.
func DefaultPersonDir() string {
	if d := os.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "cnsmo")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".config", "cnsmo")
	}
	return ".cnsmo"
}

// WaitAddr waits until the interface holds addr (OpenVPN applies what the server pushed once
// connected), polling every 200 ms until ctx ends.
func WaitAddr(ctx context.Context, ifname string, addr netip.Addr) error {
	for {
		if l, err := netlink.LinkByName(ifname); err == nil {
			if as, err := netlink.AddrList(l, netlink.FAMILY_ALL); err == nil {
				for _, a := range as {
					if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
						return nil
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("up: %s never got %s: %w", ifname, addr, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
