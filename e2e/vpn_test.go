package e2e

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

// vpnDefinition is the application with the VPN only, engine and webs instances of web.
func vpnDefinition(t *testing.T, engine string, webs int) *mocknuvla.Deployment {
	t.Helper()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	require.NoError(t, def.SetValue("cnsmo", params.ServicesEnable, `["vpn"]`))
	require.NoError(t, def.SetValue("cnsmo", params.VPNEngine, engine))
	setMultiplicity(def, "web", webs)
	return def
}

// startVPNLab deploys the seed's Appendix A on a testbed of three clouds (spares web3, web4) with
// the VPN only and engine, through the recipes (Docker driver), and waits for cnsmo.1, web.1 and
// web.2 to be enabled.
func startVPNLab(t *testing.T, ctx context.Context, engine string) *vpnLab {
	t.Helper()
	tb := testbed.New(t, testbed.Options{Clouds: []testbed.CloudSpec{
		{Name: "cloud-a", VMs: []string{"cnsmo1"}},
		{Name: "cloud-b", VMs: []string{"web1", "web3"}},
		{Name: "cloud-c", VMs: []string{"web2", "web4"}},
	}})
	def := vpnDefinition(t, engine, 2)
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Driver: "docker",
		Placement: map[string]string{"cnsmo.1": "cnsmo1", "web.1": "web1", "web.2": "web2"}})
	require.NoError(t, err)
	l := &vpnLab{t: t, d: d}
	for _, in := range []string{"cnsmo.1", "web.1", "web.2"} {
		require.NoError(t, d.Launch(ctx, in))
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	l.requireEnabled(wctx, "cnsmo.1", "web.1", "web.2")
	return l
}

// vpnLab is the seed's Appendix A deployment: the CNSMO server in cloud-a, one client in cloud-b
// and one in cloud-c, two spare VMs for scale-out; VPN only, through the real recipes.
type vpnLab struct {
	t *testing.T
	d *deploy.Deployment
}

func (l *vpnLab) param(key string) string { return l.d.Param(key) }

// requireNameGone: after a scale in, no member's hosts file names the instance any more (the
// others are still named).
func (l *vpnLab) requireNameGone(ctx context.Context, name string, members ...string) {
	l.t.Helper()
	for _, m := range members {
		var hosts string
		require.Eventually(l.t, func() bool {
			hosts, _, _ = l.d.VMOf(m).Exec(ctx, "cat", "/etc/hosts")
			return !strings.Contains(hosts, "\t"+name+".")
		}, time.Minute, 200*time.Millisecond, "%s still names %s:\n%s", m, name, hosts)
		require.Contains(l.t, hosts, "\tweb-1.cnsmo.internal web-1\n", "%s names the others", m)
	}
	require.Empty(l.t, l.d.CheckNames(ctx, members, members))
}

// ping pings addr from the VM of instance, once, with a 2 s deadline.
func (l *vpnLab) ping(ctx context.Context, from, addr string) error {
	_, _, err := l.d.VMOf(from).Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", addr)
	return err
}

// pingsEventually: the path from instance to addr works within the deadline (a tunnel that
// just reconnected may lose the first echo).
func (l *vpnLab) pingsEventually(ctx context.Context, from, addr string, within time.Duration) {
	l.t.Helper()
	var last error
	require.Eventuallyf(l.t, func() bool { last = l.ping(ctx, from, addr); return last == nil },
		within, 200*time.Millisecond, "%s cannot ping %s: %v", from, addr, last)
}

// scaleOut adds one web instance on vmName, runs its recipe and the onvmadd hooks of the others.
func (l *vpnLab) scaleOut(ctx context.Context, vmName string, others ...string) string {
	t := l.t
	names, err := l.d.Mock.ScaleUp(l.d.Run.UUID, "web", 1)
	require.NoError(t, err)
	require.NoError(t, l.d.Mock.SetState(l.d.Run.UUID, "Ready"))
	in := names[0]
	require.NoError(t, l.d.Adopt(ctx, in, vmName))
	require.NoError(t, l.d.Launch(ctx, in))
	for _, o := range others {
		_, err := l.d.Recipe(ctx, o, "onvmadd.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS="+in, "SLIPSTREAM_SCALING_ACTION=vm_add")
		require.NoError(t, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	l.requireEnabled(wctx, in)
	return in
}

func (l *vpnLab) requireEnabled(ctx context.Context, instances ...string) {
	l.t.Helper()
	if err := l.d.WaitEnabled(ctx, instances...); err != nil {
		var b strings.Builder
		for _, in := range l.d.Instances() {
			b.WriteString("\n-- " + in + "\n" + l.d.Logs(context.Background(), in))
		}
		l.t.Fatalf("%v%s", err, b.String())
	}
}

// functions lists the run's containers of the VPN function name on instance.
func (l *vpnLab) functions(ctx context.Context, instance, name string) []string {
	out, err := hoststate.Host(ctx, "docker", "ps", "-aq", "--filter", "label=cnsmo.run="+l.d.Run.UUID,
		"--filter", "label=cnsmo.instance="+instance, "--filter", "label="+dockerdriver.LabelName+"="+name)
	require.NoError(l.t, err)
	return strings.Fields(out)
}

// started identifies the running container of a function (id and start time): the same value
// later means it was neither restarted nor replaced.
func (l *vpnLab) started(ctx context.Context, instance, name string) string {
	ids := l.functions(ctx, instance, name)
	require.Len(l.t, ids, 1, "one %s on %s", name, instance)
	out, err := hoststate.Host(ctx, "docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}} {{.State.Running}}", ids[0])
	require.NoError(l.t, err)
	return strings.TrimSpace(out)
}

// deviceHas tells whether the VPN device of instance's VM carries addr (the address the
// server's client-config-dir gave this client on its last connection).
func (l *vpnLab) deviceHas(ctx context.Context, instance, addr string) bool {
	out, _, err := l.d.VMOf(instance).Exec(ctx, "ip", "-o", "addr", "show", "dev", vpn.Device)
	return err == nil && strings.Contains(out, " "+addr+"/")
}

// capture runs tcpdump on vm's link with filter; stop ends it and returns the pcap's bytes.
func capture(t *testing.T, ctx context.Context, vm *testbed.VM, dev, filter string) (stop func() []byte) {
	t.Helper()
	file := "/tmp/cnsmo-capture-" + strings.ReplaceAll(dev, "-", "") + ".pcap"
	p, err := vm.Start(ctx, nil, append([]string{"tcpdump", "--immediate-mode", "-i", dev, "-n", "-U", "-s", "0", "-w", file}, strings.Fields(filter)...)...)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return strings.Contains(p.Output(), "listening on") }, 10*time.Second, 50*time.Millisecond,
		"tcpdump listening on %s of %s", dev, vm.Name)
	return func() []byte {
		require.NoError(t, p.Signal(syscall.SIGINT))
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_ = p.Wait(wctx)
		t.Logf("tcpdump on %s of %s: %s", dev, vm.Name, strings.TrimSpace(p.Output()))
		out, _, err := vm.Exec(ctx, "cat", file)
		require.NoError(t, err)
		return []byte(out)
	}
}

func certSerial(t *testing.T, certPEM string) *big.Int {
	b, _ := pem.Decode([]byte(certPEM))
	require.NotNil(t, b, "a PEM certificate")
	c, err := x509.ParseCertificate(b.Bytes)
	require.NoError(t, err)
	return c.SerialNumber
}

func crlLists(crlPEM string, serial *big.Int) bool {
	b, _ := pem.Decode([]byte(crlPEM))
	if b == nil {
		return false
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		return false
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return true
		}
	}
	return false
}

// The seed's Appendix A, automated on the testbed through the recipes and cnsmo-role: the VPN
// server in one cloud and two clients in two other clouds reach each other over the overlay
// (IPv4 and IPv6) while the underlay carries only encrypted traffic; kill -9 of the server role
// and of its OpenVPN, then a restart, keeps the CA and the addresses and the clients reconnect; a
// third client joins at run time; a removed client's certificate is revoked and refused, and its
// address goes to the next new client; no run parameter holds a private key.
func TestVPNAppendixA(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l := startVPNLab(t, ctx, vpn.EngineOpenVPN)
	d := l.d
	defer d.Close(context.Background())

	// Addresses: in the test prefixes, distinct, published by each client once its tunnel works.
	v4net, v6net := netip.MustParsePrefix(deploy.TestSubnet), netip.MustParsePrefix(deploy.TestSubnet6)
	addr := map[string][2]string{}
	for _, in := range []string{"cnsmo.1", "web.1", "web.2"} {
		a4, a6 := l.param(in+":"+params.VPNAddress), l.param(in+":"+params.VPNAddress6)
		require.True(t, v4net.Contains(netip.MustParseAddr(a4)), "%s: %s in %s", in, a4, v4net)
		require.True(t, v6net.Contains(netip.MustParseAddr(a6)), "%s: %s in %s", in, a6, v6net)
		addr[in] = [2]string{a4, a6}
	}
	require.NotEqual(t, addr["web.1"][0], addr["web.2"][0])
	require.Equal(t, "true", l.param("cnsmo.1:"+params.VPNReady))
	require.Equal(t, d.VMOf("cnsmo.1").PublicAddr+":1194/udp", l.param("cnsmo.1:"+params.VPNEndpoint))

	// Each client pings the other across clouds, IPv4 and IPv6.
	for _, p := range [][2]string{{"web.1", "web.2"}, {"web.2", "web.1"}} {
		require.NoError(t, l.ping(ctx, p[0], addr[p[1]][0]), "%s -> %s (IPv4)", p[0], p[1])
		require.NoError(t, l.ping(ctx, p[0], addr[p[1]][1]), "%s -> %s (IPv6)", p[0], p[1])
	}

	// The underlay (the server VM's link, the VPN port) carries the pings, encrypted: the payload
	// pattern never shows there, while a capture on the receiver's overlay device sees it.
	pattern := "c0ffee5eedcafe42"
	under := capture(t, ctx, d.VMOf("cnsmo.1"), "eth0", "udp port 1194")
	over := capture(t, ctx, d.VMOf("web.2"), vpn.Device, "icmp")
	_, _, err := d.VMOf("web.1").Exec(ctx, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", "-p", pattern, "-s", "200", addr["web.2"][0])
	require.NoError(t, err)
	ub, ob := under(), over()
	raw, _ := hex.DecodeString(pattern + pattern + pattern)
	require.Greater(t, len(ub), 2*5*200, "the underlay capture saw the tunnel traffic")
	require.NotContains(t, string(ub), string(raw), "ping payload in clear on the underlay")
	require.Contains(t, string(ob), string(raw), "the overlay capture sees the payload (so the check works)")

	// Restart: kill -9 the server role and its OpenVPN, start the role again through the recipe.
	caBefore := l.param("cnsmo.1:" + params.VPNCACert)
	_, _, err = d.VMOf("cnsmo.1").Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
	require.NoError(t, err)
	servers := l.functions(ctx, "cnsmo.1", vpn.ServerFunction)
	require.Len(t, servers, 1, "one OpenVPN server")
	_, err = hoststate.Host(ctx, "docker", "kill", "-s", "KILL", servers[0])
	require.NoError(t, err)
	require.NoError(t, d.Mock.SetParam(d.Run.UUID, "cnsmo.1:"+params.ServicesEnabled, ""))
	restart := time.Now()
	require.NoError(t, d.Launch(ctx, "cnsmo.1"))
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	l.requireEnabled(wctx, "cnsmo.1")
	wcancel()
	l.pingsEventually(ctx, "web.1", addr["web.2"][0], 60*time.Second)
	t.Logf("clients reach each other again %s after the server's restart", time.Since(restart).Round(time.Millisecond))
	require.Equal(t, caBefore, l.param("cnsmo.1:"+params.VPNCACert), "same CA after the restart")
	for _, in := range []string{"cnsmo.1", "web.1", "web.2"} {
		require.Equal(t, addr[in], [2]string{l.param(in + ":" + params.VPNAddress), l.param(in + ":" + params.VPNAddress6)}, "%s keeps its addresses", in)
		// The clients reconnected to the new OpenVPN server, which pushed their addresses again.
		for _, a := range addr[in] {
			require.Eventually(t, func() bool { return l.deviceHas(ctx, in, a) }, 30*time.Second, 200*time.Millisecond,
				"%s's device has %s after the server's restart", in, a)
		}
	}
	require.Len(t, l.functions(ctx, "cnsmo.1", vpn.ServerFunction), 1, "still one OpenVPN server")

	// Scale out: a third client joins without touching the others (the server's and the
	// clients' OpenVPN keep running, neither restarted nor replaced), and reaches both.
	untouched := map[string]string{"cnsmo.1": l.started(ctx, "cnsmo.1", vpn.ServerFunction),
		"web.1": l.started(ctx, "web.1", vpn.ClientFunction), "web.2": l.started(ctx, "web.2", vpn.ClientFunction)}
	third := l.scaleOut(ctx, "web3", "cnsmo.1", "web.1", "web.2")
	require.Equal(t, untouched, map[string]string{"cnsmo.1": l.started(ctx, "cnsmo.1", vpn.ServerFunction),
		"web.1": l.started(ctx, "web.1", vpn.ClientFunction), "web.2": l.started(ctx, "web.2", vpn.ClientFunction)},
		"the server and the other clients are not restarted by a join")
	a3 := l.param(third + ":" + params.VPNAddress)
	require.True(t, v4net.Contains(netip.MustParseAddr(a3)))
	for _, in := range []string{"web.1", "web.2"} {
		require.NoError(t, l.ping(ctx, third, addr[in][0]), "%s -> %s", third, in)
		require.NoError(t, l.ping(ctx, third, addr[in][1]), "%s -> %s (IPv6)", third, in)
		require.NoError(t, l.ping(ctx, in, a3), "%s -> %s", in, third)
	}

	// Scale in web.2: its role dies with its VM, but its OpenVPN keeps trying with the old
	// certificate. The certificate is revoked (published CRL), the server refuses it, web.2 is
	// out of the overlay, and the server is ready again with the remaining clients.
	serial := certSerial(t, l.param("web.2:"+params.VPNCert))
	_, _, err = d.VMOf("web.2").Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
	require.NoError(t, err)
	require.NoError(t, d.Mock.ScaleDown(d.Run.UUID, "web", []int{2}))
	require.NoError(t, d.Mock.SetState(d.Run.UUID, "Ready"))
	for _, o := range []string{"cnsmo.1", "web.1", third} {
		_, err := d.Recipe(ctx, o, "onvmremove.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS=web.2", "SLIPSTREAM_SCALING_ACTION=vm_remove")
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return crlLists(l.param("cnsmo.1:"+params.VPNCRL), serial) }, time.Minute, 200*time.Millisecond,
		"the published CRL lists web.2's certificate")
	serverFn := l.functions(ctx, "cnsmo.1", vpn.ServerFunction)[0]
	require.Eventually(t, func() bool {
		logs, _ := hoststate.Host(ctx, "docker", "logs", serverFn)
		return strings.Contains(logs, "certificate revoked") && strings.Contains(logs, "CN=web.2")
	}, time.Minute, 500*time.Millisecond, "the server refuses web.2's revoked certificate")
	require.Error(t, l.ping(ctx, "web.2", addr["cnsmo.1"][0]), "the removed instance cannot reach the overlay")
	require.NoError(t, l.ping(ctx, "web.1", a3), "the others still reach each other")
	require.Eventually(t, func() bool { return l.param("cnsmo.1:"+params.VPNReady) == "true" }, time.Minute, 200*time.Millisecond,
		"the server is ready again with the remaining clients")
	l.requireNameGone(ctx, "web-2", "cnsmo.1", "web.1", third)
	for _, id := range l.functions(ctx, "web.2", vpn.ClientFunction) { // the "destroyed" VM's leftover
		_, err := hoststate.Host(ctx, "docker", "rm", "-f", id)
		require.NoError(t, err)
	}

	// The next new client gets web.2's freed addresses.
	fourth := l.scaleOut(ctx, "web4", "cnsmo.1", "web.1", third)
	require.Equal(t, addr["web.2"], [2]string{l.param(fourth + ":" + params.VPNAddress), l.param(fourth + ":" + params.VPNAddress6)},
		"%s reuses the address freed by web.2", fourth)
	// web.1's neighbour entry for that address still names web.2's tap MAC until it goes stale
	// and is resolved again (no gratuitous ARP on a reused address): reachable within that.
	l.pingsEventually(ctx, "web.1", addr["web.2"][0], 30*time.Second)
	require.NoError(t, l.ping(ctx, fourth, a3))

	// Only public data in the run's parameters.
	leaks, scanned, err := d.KeyLeaks(ctx)
	require.NoError(t, err)
	require.Empty(t, leaks, "private key material in parameters")
	require.Greater(t, scanned, 20)
	t.Logf("no private key in the %d parameters of the run", scanned)

	// Teardown: every role stops; no container of the run is left.
	require.NoError(t, d.Stop(ctx))
	require.Empty(t, ownedContainers(t, ctx, d.Run.UUID), fmt.Sprintf("containers of run %s left", d.Run.UUID))
}
