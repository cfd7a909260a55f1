package vpn

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/roles/role"
)

// AddrsFunc returns the usable addresses of a device: global scope, not tentative (IPv6 DAD
// done), not failed. A missing device is reported as no addresses.
type AddrsFunc func(ctx context.Context, dev string) ([]netip.Prefix, error)

// DelLinkFunc deletes a device if it exists.
type DelLinkFunc func(ctx context.Context, dev string) error

// LinkAddrs reads a device's usable addresses through h (netlink in a namespace; nil: this
// process's namespace). The role runs in the namespace of the functions it starts: the VM's
// (host network for the Docker driver on a real VM, container:<vm> in the testbed) or, with the
// exec driver, the same host.
func LinkAddrs(h *netlink.Handle, dev string) ([]netip.Prefix, error) {
	if h == nil {
		h = &netlink.Handle{}
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("vpn: device %s: %w", dev, err)
	}
	list, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("vpn: addresses of %s: %w", dev, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		if a.Scope != syscall.RT_SCOPE_UNIVERSE || a.Flags&(syscall.IFA_F_TENTATIVE|syscall.IFA_F_DADFAILED) != 0 {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// DelLink deletes dev through h (nil: this namespace) when it exists.
func DelLink(h *netlink.Handle, dev string) error {
	if h == nil {
		h = &netlink.Handle{}
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("vpn: device %s: %w", dev, err)
	}
	if err := h.LinkDel(link); err != nil {
		return fmt.Errorf("vpn: delete device %s: %w", dev, err)
	}
	return nil
}

func defaultAddrs(_ context.Context, dev string) ([]netip.Prefix, error) { return LinkAddrs(nil, dev) }

func defaultDelLink(_ context.Context, dev string) error { return DelLink(nil, dev) }

// pick returns the first IPv4 and the first IPv6 address of a device.
func pick(addrs []netip.Prefix) (v4, v6 netip.Prefix) {
	for _, p := range addrs {
		switch {
		case p.Addr().Is4() && !v4.IsValid():
			v4 = p
		case p.Addr().Is6() && !v6.IsValid():
			v6 = p
		}
	}
	return v4, v6
}

// logTail logs the last lines of an exited function's output (OpenVPN logs hold no secrets),
// so that a crash loop says why.
func logTail(ctx context.Context, env role.Env, name string, st driver.Status) {
	out, err := env.Driver.Logs(ctx, name)
	if err != nil {
		env.Log.Warn().Err(err).Str("function", name).Int("exit", st.ExitCode).Msg("vpn: function exited; no logs")
		return
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) > 6 {
		lines = lines[len(lines)-6:]
	}
	env.Log.Warn().Str("function", name).Int("exit", st.ExitCode).Strs("last_lines", lines).Msg("vpn: function exited; restarting it")
}
