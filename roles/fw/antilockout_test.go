package fw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

// flushNeighbours forgets every IPv6 neighbour of both namespaces, so that the next packet
// needs neighbour discovery again.
func (p pair) flushNeighbours(t *testing.T) {
	for _, ns := range []string{p.cli, p.srv} {
		sh(t, "ip", "netns", "exec", ns, "ip", "-6", "neigh", "flush", "all")
	}
}

// Under denyall, and under a plain ICMP drop, IPv6 keeps working: neighbour discovery (ICMPv6
// 133-137) always passes, so SSH over IPv6 reaches the VM.
func TestIPv6NeighbourDiscoveryAlwaysPasses(t *testing.T) {
	p := twoHosts(t)
	ctx := context.Background()
	ap := &Applier{Driver: nsDriver{ns: p.srv}}
	for _, in := range []string{`[{"policy":"denyall"}]`, `[{"direction":"in","protocol":"icmp","action":"drop"}]`} {
		rules, err := ParseRules(in)
		require.NoError(t, err)
		require.NoError(t, ap.Apply(ctx, rules, Options{}))
		p.flushNeighbours(t)
		require.True(t, p.connectRetry("2001:db8:fa::2", "22"), "SSH over IPv6 under %s", in)
	}
	require.NoError(t, ap.Teardown(ctx))
}

// Under denyall the VPN's own control traffic stays open: its UDP port and the readiness pings
// over the overlay device (a new ICMP flow that denyall would drop).
func TestDenyAllKeepsVPNPings(t *testing.T) {
	p := twoHosts(t)
	testutil.RequireBinary(t, "ping")
	ctx := context.Background()
	id := strings.TrimPrefix(p.cli, "cnsmo-fwc")
	sh(t, "ip", "link", "add", "cnsmo-vpn", "netns", p.srv, "type", "veth", "peer", "name", "vpnp"+id, "netns", p.cli)
	for _, c := range [][]string{
		{p.srv, "ip", "addr", "add", "198.19.250.2/24", "dev", "cnsmo-vpn"}, {p.srv, "ip", "addr", "add", "2001:db8:fb::2/64", "dev", "cnsmo-vpn", "nodad"},
		{p.srv, "ip", "link", "set", "cnsmo-vpn", "up"},
		{p.cli, "ip", "addr", "add", "198.19.250.1/24", "dev", "vpnp" + id}, {p.cli, "ip", "addr", "add", "2001:db8:fb::1/64", "dev", "vpnp" + id, "nodad"},
		{p.cli, "ip", "link", "set", "vpnp" + id, "up"},
	} {
		sh(t, append([]string{"ip", "netns", "exec"}, c...)...)
	}
	r := New(role.Env{Params: &fakeParams{set: map[string]string{}}, Driver: nsDriver{ns: p.srv}, Instance: "web.1", Exec: true, Log: zerolog.Nop(), UseVPN: true})
	ready, err := r.Reconcile(ctx, roletest.NewSnapshot("web.1", map[string]string{params.FWRules: `[{"policy":"denyall"}]`}))
	require.NoError(t, err)
	require.True(t, ready)
	for _, a := range []string{"198.19.250.1", "2001:db8:fb::1"} {
		out, err := exec.Command("ip", "netns", "exec", p.srv, "ping", "-c1", "-W2", a).CombinedOutput()
		require.NoError(t, err, "ping %s over the overlay under denyall: %s", a, out)
	}
	require.NoError(t, r.Teardown(ctx))
}

// dnsServer answers A and AAAA queries for names from its table over UDP (NXDOMAIN for the
// rest), on a socket made in namespace ns.
func dnsServer(t *testing.T, ns, addr string, table map[string][]netip.Addr) {
	var pc net.PacketConn
	require.NoError(t, testutil.InNS(ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}))
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil || len(m.Questions) != 1 {
				continue
			}
			q := m.Questions[0]
			m.Header.Response, m.Header.Authoritative, m.Header.RecursionAvailable = true, true, false
			addrs, ok := table[strings.TrimSuffix(q.Name.String(), ".")]
			if !ok {
				m.Header.RCode = dnsmessage.RCodeNameError
			}
			for _, a := range addrs {
				h := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
				switch {
				case q.Type == dnsmessage.TypeA && a.Is4():
					h.Type = dnsmessage.TypeA
					m.Answers = append(m.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AResource{A: a.As4()}})
				case q.Type == dnsmessage.TypeAAAA && a.Is6():
					h.Type = dnsmessage.TypeAAAA
					m.Answers = append(m.Answers, dnsmessage.Resource{Header: h, Body: &dnsmessage.AAAAResource{AAAA: a.As16()}})
				}
			}
			if b, err := m.Pack(); err == nil {
				_, _ = pc.WriteTo(b, from)
			}
		}
	}()
}

// Under denyall, a VM whose Nuvla endpoint is given by host name still resolves it (through the
// resolvers of its resolv.conf, a real DNS server in another namespace) and reaches it: the role
// keeps the resolvers and the endpoint's resolved addresses open.
func TestDenyAllKeepsNameResolutionAndTheEndpoint(t *testing.T) {
	p := twoHosts(t)
	testutil.RequireBinary(t, "getent")
	ctx := context.Background()
	dnsServer(t, p.cli, "198.18.250.1:53", map[string][]netip.Addr{
		"nuvla.test": {netip.MustParseAddr("198.18.250.1"), netip.MustParseAddr("2001:db8:fa::1")},
	})
	ep := exec.Command("ip", "netns", "exec", p.cli, "socat", "TCP6-LISTEN:8443,fork,reuseaddr", "EXEC:/bin/true")
	require.NoError(t, ep.Start())
	t.Cleanup(func() { _ = ep.Process.Signal(syscall.SIGTERM); _ = ep.Wait() })
	// `ip netns exec` puts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
	confDir := filepath.Join("/etc/netns", p.srv)
	require.NoError(t, os.MkdirAll(confDir, 0o755))
	t.Cleanup(func() { _ = os.RemoveAll(confDir) })
	resolv := filepath.Join(confDir, "resolv.conf")
	require.NoError(t, os.WriteFile(resolv, []byte("nameserver 198.18.250.1\noptions timeout:1 attempts:1\n"), 0o644))
	resolved := func() bool {
		return exec.Command("ip", "netns", "exec", p.srv, "getent", "ahostsv4", "nuvla.test").Run() == nil
	}
	reach := func() bool {
		return exec.Command("ip", "netns", "exec", p.srv, "socat", "-T1", "/dev/null", "TCP4:nuvla.test:8443,connect-timeout=1").Run() == nil
	}
	require.Eventually(t, resolved, 10e9, 1e8, "the DNS server answers (before any rule)")

	fp := &fakeParams{set: map[string]string{}}
	r := New(role.Env{Params: fp, Driver: nsDriver{ns: p.srv}, Instance: "web.1", Exec: true, Log: zerolog.Nop(), Endpoint: "https://nuvla.test:8443"})
	r.ResolvConf = resolv
	r.Lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p.srv, "getent", "ahosts", host).Output()
		if err != nil {
			return nil, fmt.Errorf("getent %s: %w", host, err)
		}
		var as []netip.Addr
		for _, l := range strings.Split(string(out), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				if a, err := netip.ParseAddr(f[0]); err == nil {
					as = append(as, a)
				}
			}
		}
		return as, nil
	}
	run := roletest.NewSnapshot("web.1", map[string]string{params.FWRules: `[{"policy":"denyall"}]`})
	ready, err := r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.True(t, ready)
	require.True(t, resolved(), "name resolution under denyall")
	require.True(t, reach(), "the endpoint by name under denyall")
	require.False(t, p.connect("198.18.250.2", "8080"), "denyall drops the rest")

	// The agent restarts (a crash: the rules stay in the kernel): before its first pass it must
	// reach Nuvla by name again, and then it converges.
	r2 := New(role.Env{Params: fp, Driver: nsDriver{ns: p.srv}, Instance: "web.1", Exec: true, Log: zerolog.Nop(), Endpoint: "https://nuvla.test:8443"})
	r2.ResolvConf, r2.Lookup = r.ResolvConf, r.Lookup
	require.True(t, resolved() && reach(), "a restarted agent reaches Nuvla by name under the rules left in place")
	ready, err = r2.Reconcile(ctx, run)
	require.NoError(t, err)
	require.True(t, ready, "the restarted agent converges")
	require.True(t, resolved() && reach())
	require.NoError(t, r2.Teardown(ctx))
}
