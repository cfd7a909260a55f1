package vpn

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/cnsmo/cnsmo/backend/slipstream"
	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/driver/execdriver"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
	"github.com/cnsmo/cnsmo/ssclient"
)

// These tests run the real server and client roles against mocknuvla, with OpenVPN as host
// processes (the exec driver) inside network namespaces that stand for the VMs: one per member,
// joined by veths to a bridge namespace (the underlay, 198.18.240.0/24). The overlay is
// 198.19.240.0/24 and 2001:db8:f0::/64.

const (
	testSubnet  = "198.19.240.0/24"
	testSubnet6 = "2001:db8:f0::/64"
	testPort    = 11940
)

// nsDriver is the exec driver with every command run inside a namespace (`ip netns exec`).
type nsDriver struct {
	*execdriver.Driver
	ns string
}

func (d nsDriver) wrap(spec driver.Spec) driver.Spec {
	spec.Cmd = append([]string{"ip", "netns", "exec", d.ns}, spec.Cmd...)
	return spec
}

func (d nsDriver) Start(ctx context.Context, spec driver.Spec) error {
	return d.Driver.Start(ctx, d.wrap(spec))
}

func (d nsDriver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	return d.Driver.Run(ctx, d.wrap(spec), stdin)
}

// inNS runs fn on a thread switched into namespace ns.
func inNS(ns string, fn func() error) error { return testutil.InNS(ns, fn) }

func nsHandle(ns string) (*netlink.Handle, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return netlink.NewHandleAt(h)
}

func nsHooks(ns string) (DialFunc, AddrsFunc, DelLinkFunc) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	addrs := func(_ context.Context, dev string) ([]netip.Prefix, error) {
		h, err := nsHandle(ns)
		if err != nil {
			return nil, err
		}
		defer h.Close()
		return LinkAddrs(h, dev)
	}
	del := func(_ context.Context, dev string) error {
		h, err := nsHandle(ns)
		if err != nil {
			return err
		}
		defer h.Close()
		return DelLink(h, dev)
	}
	return dial, addrs, del
}

func run(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%v: %s", args, out)
	return string(out)
}

func nsRun(ns string, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	return string(out), err
}

// lab is the simulated deployment: mocknuvla, the namespaces and the roles.
type lab struct {
	docker bool
	t      testing.TB
	id     string
	mock   *mocknuvla.Server
	url    string
	uuid   string
	base   string
	bridge string
	mu     sync.Mutex
	hosts  map[string]*host // by namespace suffix: "s", "1", "2", ...
	roles  map[string]*member
}

type host struct {
	ns        string
	veth      string // the member's underlay interface
	addr      string // underlay IPv4
	container string // the VM container (docker lab)
}

type member struct {
	instance string
	host     *host
	svc      role.Service
	cancel   context.CancelFunc
	done     chan struct{}
	passes   atomic.Int64
}

var labSeq atomic.Int64

func newLab(t testing.TB, hosts int, device string) *lab { return newLabWith(t, hosts, device, false) }

// newLabWith builds the lab; with docker, every "VM" is a container (network none, its
// namespace named with `ip netns attach`) and the roles use the Docker driver, which puts the
// OpenVPN functions and the ping one-shots into the VM's namespace (container:<vm>).
func newLabWith(t testing.TB, hosts int, device string, docker bool) *lab {
	testutil.RequireRoot(t)
	if docker {
		testutil.RequireImage(t, DefaultImage)
		testutil.RequireBinary(t, "docker")
	}
	testutil.RequireBinary(t, "ip", "openvpn", "ping")
	l := &lab{docker: docker, t: t, id: fmt.Sprintf("%04d", (time.Now().UnixNano()/1000+labSeq.Add(1))%10000), base: t.TempDir(), hosts: map[string]*host{}, roles: map[string]*member{}}
	// OpenVPN drops root to nobody: the server's files must be reachable (as under /var/lib).
	for _, d := range []string{l.base, filepath.Dir(l.base)} {
		require.NoError(t, os.Chmod(d, 0o711))
	}
	l.bridge = "cvb" + l.id
	run(t, "ip", "netns", "add", l.bridge)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.bridge).Run() })
	run(t, "ip", "netns", "exec", l.bridge, "ip", "link", "add", "br0", "type", "bridge")
	run(t, "ip", "netns", "exec", l.bridge, "ip", "link", "set", "br0", "up")
	for i := 0; i <= hosts; i++ {
		name := "s"
		if i > 0 {
			name = strconv.Itoa(i)
		}
		h := &host{ns: "cv" + name + l.id, veth: "u" + name + l.id, addr: fmt.Sprintf("198.18.240.%d", i+1)}
		if docker {
			h.container = "cnsmo-vpntest-" + h.ns
			run(t, "docker", "run", "-d", "--name", h.container, "--network", "none", "--label", "cnsmo.vpntest=1",
				"--sysctl", "net.ipv6.conf.all.disable_ipv6=0", "--sysctl", "net.ipv6.conf.default.disable_ipv6=0", DefaultImage, "sleep", "infinity")
			ctr := h.container
			t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", ctr).Run() })
			pid := strings.TrimSpace(run(t, "docker", "inspect", "-f", "{{.State.Pid}}", h.container))
			run(t, "ip", "netns", "attach", h.ns, pid)
		} else {
			run(t, "ip", "netns", "add", h.ns)
		}
		ns := h.ns
		t.Cleanup(func() {
			// Processes left in the namespace (a role stopped without teardown) end with it.
			for _, pid := range nsPids(ns, "") {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			_ = exec.Command("ip", "netns", "del", ns).Run()
		})
		run(t, "ip", "link", "add", h.veth, "netns", h.ns, "type", "veth", "peer", "name", "b"+name+l.id, "netns", l.bridge)
		run(t, "ip", "netns", "exec", l.bridge, "ip", "link", "set", "b"+name+l.id, "master", "br0", "up")
		for _, c := range [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"ip", "addr", "add", h.addr + "/24", "dev", h.veth},
			{"ip", "link", "set", h.veth, "up"},
		} {
			run(t, append([]string{"ip", "netns", "exec", h.ns}, c...)...)
		}
		l.hosts[name] = h
	}

	def, err := recipes.Application()
	require.NoError(t, err)
	for i := range def.Nodes {
		if def.Nodes[i].Name == "web" {
			def.Nodes[i].Multiplicity = 2
		}
	}
	for k, v := range map[string]string{
		params.ServicesEnable: `["vpn"]`, params.VPNSubnet: testSubnet, params.VPNSubnet6: testSubnet6,
		params.VPNPort: strconv.Itoa(testPort), params.VPNDevice: device,
	} {
		require.NoError(t, def.SetValue("cnsmo", k, v))
	}
	l.mock = mocknuvla.New(mocknuvla.Options{NoAuth: true, Logger: zerolog.Nop()})
	hs := httptest.NewServer(l.mock)
	t.Cleanup(hs.Close)
	l.url = hs.URL
	ri, err := l.mock.CreateRun(def)
	require.NoError(t, err)
	l.uuid = ri.UUID
	t.Cleanup(l.stopAll)
	return l
}

func (l *lab) param(key string) string {
	v, _, _ := l.mock.Param(l.uuid, key)
	return v
}

// start runs the role of instance on host (its namespace): the server for "cnsmo.1", a client
// otherwise. The loop below is the orchestrator's in miniature, without teardown on stop, so
// that a stop stands for a killed role.
func (l *lab) start(instance, hostName string) *member {
	t := l.t
	h := l.hosts[hostName]
	require.NoError(t, l.mock.SetParam(l.uuid, instance+":"+params.Hostname, h.addr))
	sc, err := ssclient.New(ssclient.Config{ServiceURL: l.url, RunUUID: l.uuid, NodeInstance: instance},
		ssclient.WithPoll(50*time.Millisecond, 500*time.Millisecond))
	require.NoError(t, err)
	c := slipstream.New(sc)
	dir := filepath.Join(l.base, instance)
	var drv driver.Driver
	if l.docker {
		dd, err := dockerdriver.New(driver.Owner{Run: l.uuid, Instance: instance}, dockerdriver.WithNetwork("container:"+h.container))
		require.NoError(t, err)
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = dd.Cleanup(ctx)
		})
		drv = dd
	} else {
		ed, err := execdriver.New(driver.Owner{Run: l.uuid, Instance: instance}, filepath.Join(dir, "exec"))
		require.NoError(t, err)
		drv = nsDriver{Driver: ed, ns: h.ns}
	}
	env := role.Env{Params: c, Driver: drv, Instance: instance, StateDir: filepath.Join(dir, "state"),
		UseVPN: true, Exec: !l.docker, Log: zerolog.New(zerolog.NewTestWriter(t)).With().Str("instance", instance).Logger().Level(zerolog.InfoLevel)}
	dial, addrs, del := nsHooks(h.ns)
	m := &member{instance: instance, host: h, done: make(chan struct{})}
	var services []role.Service
	if instance == "cnsmo.1" {
		s := newServer(env)
		s.Dial, s.Addrs, s.DelLink = dial, addrs, del // exec: its files under its own state dir
		services = []role.Service{serverID{c}, s}
		m.svc = s
	} else {
		cl := newClient(env)
		cl.Addrs, cl.DelLink = addrs, del
		services = []role.Service{cl}
		m.svc = cl
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			r, err := c.Read(ctx)
			if err == nil {
				for _, s := range services {
					ok, err := s.Reconcile(ctx, r)
					if err != nil && ctx.Err() == nil {
						env.Log.Warn().Err(err).Msg("reconcile")
					}
					if !ok || err != nil {
						break
					}
				}
			}
			m.passes.Add(1)
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	l.mu.Lock()
	l.roles[instance] = m
	l.mu.Unlock()
	return m
}

// serverID publishes the server's identity, as the orchestrator does on the CNSMO server (the
// clients find the server through it).
type serverID struct{ p role.Publisher }

func (serverID) Name() string                   { return "core" }
func (serverID) Teardown(context.Context) error { return nil }
func (serverID) Withdraw(context.Context) error { return nil }
func (s serverID) Reconcile(ctx context.Context, snap role.Snapshot) (bool, error) {
	return true, role.Publish(ctx, s.p, snap, snap.Self(), params.ServerInstanceID, snap.Self())
}

// kill stops a role's loop without teardown (as kill -9 of the role would).
func (m *member) kill() {
	m.cancel()
	<-m.done
}

func (l *lab) stopAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.roles {
		m.kill()
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		if err := m.svc.Teardown(ctx); err != nil {
			l.t.Logf("teardown %s: %v", m.instance, err)
		}
		cancel()
	}
}

// waitReady waits until the server reports every client connected and each client published
// its addresses.
func (l *lab) waitReady(d time.Duration, clients ...string) {
	l.t.Helper()
	require.Eventually(l.t, func() bool {
		if l.param("cnsmo.1:"+params.VPNReady) != "true" {
			return false
		}
		for _, c := range clients {
			if l.param(c+":"+params.VPNClientListening) != "true" || l.param(c+":"+params.VPNAddress6) == "" {
				return false
			}
		}
		return true
	}, d, 100*time.Millisecond, "vpn ready on "+strings.Join(clients, ", "))
}

func (l *lab) ping(from *host, addr string) error {
	args := []string{"ping", "-c1", "-W2", addr}
	var out string
	var err error
	for i := 0; i < 20; i++ { // bounded: DAD of a fresh IPv6 address may take a moment
		if out, err = nsRun(from.ns, args...); err == nil {
			return nil
		}
		time.Sleep(250 * time.Millisecond)
	}
	return fmt.Errorf("ping %s from %s: %v: %s", addr, from.ns, err, out)
}

// mgmt is a management client of srv's OpenVPN (password read from the role's state dir).
func (l *lab) mgmt(srv *member) *Mgmt {
	s := srv.svc.(*Server)
	pw, _ := os.ReadFile(filepath.Join(l.base, srv.instance, "state", "mgmt.pw"))
	return &Mgmt{Addr: "127.0.0.1:" + strconv.Itoa(s.MgmtPort), Password: strings.TrimSpace(string(pw)), Dial: s.Dial}
}

func (l *lab) mgmtStatus(srv *member) []ClientStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := l.mgmt(srv).Status(ctx)
	require.NoError(l.t, err)
	return st
}

func parseCertSerial(certPEM string) (string, error) {
	c, err := pki.ParseCert([]byte(certPEM))
	if err != nil {
		return "", err
	}
	return c.SerialNumber.String(), nil
}

func crlSerials(crlPEM string) ([]string, error) {
	blk, _ := pem.Decode([]byte(crlPEM))
	if blk == nil {
		return nil, fmt.Errorf("no PEM CRL in %q", crlPEM)
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.String())
	}
	return out, nil
}

// capture runs tcpdump in ns on dev with filter, writing to a pcap file; stop returns its bytes
// and the number of packets tcpdump reported.
func capture(t *testing.T, ns, dev, filter string) (stop func() []byte) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "cap.pcap")
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "tcpdump", "--immediate-mode", "-i", dev, "-n", "-U", "-s", "0", "-w", f}, strings.Fields(filter)...)...)
	var stderr bytes.Buffer
	var mu sync.Mutex
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return stderr.Write(p) })
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return strings.Contains(stderr.String(), "listening on")
	}, 10*time.Second, 100*time.Millisecond, "tcpdump listening")
	return func() []byte {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		mu.Lock()
		t.Logf("tcpdump in %s on %s: %s", ns, dev, strings.TrimSpace(stderr.String()))
		mu.Unlock()
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		return b
	}
}

// nsPids lists the processes in namespace ns (named comm, when not empty), never this test's
// own process (whose threads may visit the namespace through inNS).
func nsPids(ns, comm string) []int {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if comm != "" {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			if strings.TrimSpace(string(b)) != comm {
				continue
			}
		}
		pids = append(pids, pid)
	}
	return pids
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// TestVPNRolesInNamespaces is the Appendix A scenario on namespaces: the server and two clients
// reach each other through the overlay (IPv4 and IPv6), the underlay shows only encrypted
// traffic, a restarted server keeps its CA and addresses, a third client joins at run time, a
// removed one is revoked and cannot connect any more, and its address goes to the next new one.
func TestVPNRolesInNamespaces(t *testing.T) {
	testutil.RequireBinary(t, "tcpdump")
	l := newLab(t, 4, "tap")
	srv := l.start("cnsmo.1", "s")
	w1 := l.start("web.1", "1")
	w2 := l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")

	// Addresses: the server takes the first host address, clients the next ones.
	require.Equal(t, "198.19.240.1", l.param("cnsmo.1:"+params.VPNAddress))
	require.Equal(t, "2001:db8:f0::1", l.param("cnsmo.1:"+params.VPNAddress6))
	addr := map[string][2]string{}
	for _, in := range []string{"web.1", "web.2"} {
		addr[in] = [2]string{l.param(in + ":" + params.VPNAddress), l.param(in + ":" + params.VPNAddress6)}
	}
	require.ElementsMatch(t, []string{"198.19.240.2", "198.19.240.3"}, []string{addr["web.1"][0], addr["web.2"][0]})
	require.Equal(t, "198.18.240.1:11940/udp", l.param("cnsmo.1:"+params.VPNEndpoint))

	// OpenVPN gave up root (user nobody) on the server and the clients.
	for _, h := range []*host{srv.host, w1.host, w2.host} {
		pids := nsPids(h.ns, "openvpn")
		require.NotEmpty(t, pids, h.ns)
		for _, pid := range pids {
			st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			require.NoError(t, err)
			require.Regexp(t, `(?m)^Uid:\s+65534\s`, string(st), "openvpn %d in %s", pid, h.ns)
		}
	}

	// Client to client through the overlay, both families; and the server from a client.
	require.NoError(t, l.ping(w1.host, addr["web.2"][0]))
	require.NoError(t, l.ping(w1.host, addr["web.2"][1]))
	require.NoError(t, l.ping(w2.host, addr["web.1"][0]))
	require.NoError(t, l.ping(w2.host, addr["web.1"][1]))
	require.NoError(t, l.ping(w1.host, "198.19.240.1"))

	// The underlay (the server's link, UDP port of the VPN) carries the pings encrypted: the
	// payload pattern never shows there, while a capture on the overlay device sees it.
	pattern := "c0ffee5eedcafe42"
	under := capture(t, srv.host.ns, srv.host.veth, fmt.Sprintf("udp port %d", testPort))
	over := capture(t, w2.host.ns, Device, "icmp")
	out, err := nsRun(w1.host.ns, "ping", "-c5", "-i0.2", "-W2", "-p", pattern, "-s", "200", addr["web.2"][0])
	require.NoError(t, err, out)
	ub, ob := under(), over()
	raw, _ := hex.DecodeString(pattern + pattern + pattern)
	require.Greater(t, len(ub), 5*200, "the underlay capture saw the tunnel traffic")
	require.False(t, bytes.Contains(ub, raw), "ping payload in clear on the underlay")
	require.True(t, bytes.Contains(ob, raw), "the overlay capture sees the payload (the check works): %d bytes: %x", len(ob), ob)

	// Restart: the server role and its OpenVPN die (kill -9); a new role converges with the
	// same CA and addresses, and the clients reconnect.
	caBefore := l.param("cnsmo.1:" + params.VPNCACert)
	srv.kill()
	killed := nsPids(srv.host.ns, "openvpn")
	require.NotEmpty(t, killed)
	for _, pid := range killed {
		require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	}
	require.Eventually(t, func() bool { return len(nsPids(srv.host.ns, "openvpn")) == 0 }, 10*time.Second, 100*time.Millisecond, "the server's OpenVPN is gone")
	restartAt := time.Now()
	srv = l.start("cnsmo.1", "s")
	require.Eventually(t, func() bool {
		st := l.mgmtStatusSoft(srv)
		return len(st) == 2
	}, 90*time.Second, 100*time.Millisecond, "clients reconnected to the restarted server")
	t.Logf("clients reconnected %s after the server restarted", time.Since(restartAt).Round(time.Millisecond))
	require.Equal(t, caBefore, l.param("cnsmo.1:"+params.VPNCACert), "same CA after a restart")
	for _, in := range []string{"web.1", "web.2"} {
		require.Equal(t, addr[in][0], l.param(in+":"+params.VPNAddress))
	}
	require.NoError(t, l.ping(w1.host, addr["web.2"][0]))

	// Scale out: web.3 joins without touching the others.
	names, err := l.mock.ScaleUp(l.uuid, "web", 1)
	require.NoError(t, err)
	require.Equal(t, []string{"web.3"}, names)
	require.NoError(t, l.mock.SetState(l.uuid, "Ready"))
	w3 := l.start("web.3", "3")
	l.waitReady(90*time.Second, "web.1", "web.2", "web.3")
	require.Equal(t, "198.19.240.4", l.param("web.3:"+params.VPNAddress))
	require.NoError(t, l.ping(w3.host, addr["web.1"][0]))
	require.NoError(t, l.ping(w3.host, addr["web.2"][1]))
	require.NoError(t, l.ping(w1.host, "198.19.240.4"))

	// Scale in web.2: its certificate is revoked, its connection closed; its OpenVPN keeps
	// trying with the old certificate (its role is gone without teardown) and is refused.
	oldCert := l.param("web.2:" + params.VPNCert)
	w2.kill()
	require.NoError(t, l.mock.ScaleDown(l.uuid, "web", []int{2}))
	require.NoError(t, l.mock.SetState(l.uuid, "Ready"))
	srvSvc := srv.svc.(*Server)
	require.Eventually(t, func() bool {
		logs, _ := srvSvc.env.Driver.Logs(context.Background(), ServerFunction)
		return strings.Contains(logs, "certificate revoked") && strings.Contains(logs, "CN=web.2")
	}, 60*time.Second, 100*time.Millisecond, "the server refuses web.2's revoked certificate")
	crl := l.param("cnsmo.1:" + params.VPNCRL)
	c, err := parseCertSerial(oldCert)
	require.NoError(t, err)
	serials, err := crlSerials(crl)
	require.NoError(t, err)
	require.Contains(t, serials, c, "the published CRL lists web.2's certificate")
	for _, st := range l.mgmtStatus(srv) {
		require.NotEqual(t, "web.2", st.CN, "web.2 must not be connected")
	}
	_, err = nsRun(w2.host.ns, "ping", "-c1", "-W1", "198.19.240.1")
	require.Error(t, err, "the removed instance cannot reach the overlay")
	require.Equal(t, "true", l.param("cnsmo.1:"+params.VPNReady), "ready again with web.1 and web.3")

	// The removed VM is cleaned up; the next new instance reuses web.2's address.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	require.NoError(t, w2.svc.Teardown(ctx))
	cancel()
	l.mu.Lock()
	delete(l.roles, "web.2")
	l.mu.Unlock()
	names, err = l.mock.ScaleUp(l.uuid, "web", 1)
	require.NoError(t, err)
	require.NoError(t, l.mock.SetState(l.uuid, "Ready"))
	l.start(names[0], "4")
	l.waitReady(90*time.Second, "web.1", "web.3", names[0])
	require.Equal(t, addr["web.2"][0], l.param(names[0]+":"+params.VPNAddress), "the freed address is reused")
	require.Equal(t, addr["web.2"][1], l.param(names[0]+":"+params.VPNAddress6))
	require.NoError(t, l.ping(w1.host, addr["web.2"][0]))

	// Only public data went into the run's parameters.
	all, err := l.mock.Params(l.uuid)
	require.NoError(t, err)
	for k, v := range all {
		require.NotContains(t, v.Value, "PRIVATE KEY", k)
	}
}

func (l *lab) mgmtStatusSoft(srv *member) []ClientStatus {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, _ := l.mgmt(srv).Status(ctx)
	return st
}

// TestVPNTunDevice: the same overlay with vpn.device=tun.
func TestVPNTunDevice(t *testing.T) {
	l := newLab(t, 2, "tun")
	l.start("cnsmo.1", "s")
	w1 := l.start("web.1", "1")
	w2 := l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")
	out, err := nsRun(w1.host.ns, "ip", "-d", "link", "show", Device)
	require.NoError(t, err, out)
	require.Contains(t, out, "tun type tun")
	require.NoError(t, l.ping(w1.host, l.param("web.2:"+params.VPNAddress)))
	require.NoError(t, l.ping(w1.host, l.param("web.2:"+params.VPNAddress6)))
	require.NoError(t, l.ping(w2.host, l.param("web.1:"+params.VPNAddress6)))
}

// TestVPNDockerDriver: the roles with the Docker driver, OpenVPN and the readiness pings in
// containers sharing each simulated VM's namespace (as on the testbed); teardown leaves no
// container and no device behind.
func TestVPNDockerDriver(t *testing.T) {
	l := newLabWith(t, 2, "tap", true)
	l.start("cnsmo.1", "s")
	w1 := l.start("web.1", "1")
	w2 := l.start("web.2", "2")
	l.waitReady(120*time.Second, "web.1", "web.2")
	require.NoError(t, l.ping(w1.host, l.param("web.2:"+params.VPNAddress)))
	require.NoError(t, l.ping(w1.host, l.param("web.2:"+params.VPNAddress6)))
	require.NoError(t, l.ping(w2.host, l.param("web.1:"+params.VPNAddress)))

	l.stopAll()
	out := run(t, "docker", "ps", "-a", "-q", "--filter", "label=cnsmo.run="+l.uuid)
	require.Empty(t, strings.TrimSpace(out), "containers left after teardown")
	for _, h := range []*host{l.hosts["s"], w1.host, w2.host} {
		_, err := nsRun(h.ns, "ip", "link", "show", Device)
		require.Error(t, err, "device left in %s", h.ns)
	}
}

// forgeCSR is what a VM of the run can publish for another instance: a CSR naming it, made with
// a key of its own.
func forgeCSR(t *testing.T, instance string) string {
	k, err := pki.NewKey()
	require.NoError(t, err)
	csr, err := pki.NewCSR(k, instance)
	require.NoError(t, err)
	return string(csr)
}

// waitPasses waits until m's loop has made n more passes (counted, not timed).
func (m *member) waitPasses(t *testing.T, n int64) {
	t.Helper()
	from := m.passes.Load()
	require.Eventually(t, func() bool { return m.passes.Load() >= from+n }, 60*time.Second, 100*time.Millisecond, fmt.Sprintf("%d passes of %s", n, m.instance))
}

// TestVPNForgedCSRChangesNothing: a VM writes web.2's vpn.csr with a key of its own. The server
// has pinned web.2's first key: it signs nothing, revokes nothing and moves no address; web.2
// keeps its certificate, its address and its connection.
func TestVPNForgedCSRChangesNothing(t *testing.T) {
	l := newLab(t, 2, "tap")
	srv := l.start("cnsmo.1", "s")
	l.start("web.1", "1")
	w2 := l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")
	cert, addr, addr6 := l.param("web.2:"+params.VPNCert), l.param("web.2:"+params.VPNAddress), l.param("web.2:"+params.VPNAddress6)
	crl := l.param("cnsmo.1:" + params.VPNCRL)

	w2.kill() // web.2's role would put its own CSR back: leave the forgery in place
	require.NoError(t, l.mock.SetParam(l.uuid, "web.2:"+params.VPNCSR, forgeCSR(t, "web.2")))
	srv.waitPasses(t, 3)

	require.Equal(t, cert, l.param("web.2:"+params.VPNCert), "web.2's certificate was replaced")
	require.Equal(t, crl, l.param("cnsmo.1:"+params.VPNCRL), "the CRL changed")
	serials, err := crlSerials(l.param("cnsmo.1:" + params.VPNCRL))
	require.NoError(t, err)
	require.Empty(t, serials, "a certificate was revoked")
	as, ok := srv.svc.(*Server).alloc.Get("web.2")
	require.True(t, ok)
	require.Equal(t, addr, as.V4.String())
	require.Equal(t, addr6, as.V6.String())
	connected := false
	for _, st := range l.mgmtStatus(srv) {
		connected = connected || st.CN == "web.2"
	}
	require.True(t, connected, "web.2 is still connected")
	require.Equal(t, "true", l.param("cnsmo.1:"+params.VPNReady), "the forgery does not make the VPN unready")
	require.Contains(t, l.param("cnsmo.1:statecustom"), "refused a certificate request for web.2", "the UI says so")

	// web.2's role comes back, puts its own CSR back and is ready with the same address.
	l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")
	require.Equal(t, cert, l.param("web.2:"+params.VPNCert))
	require.Equal(t, addr, l.param("web.2:"+params.VPNAddress))
}

// TestVPNClientPinsItsCA: while the server's role is down, a VM publishes a CA of its own, a
// certificate it signed for web.1's public key and an endpoint of its choosing. web.1's role,
// restarted, refuses the changed CA (it pinned the first one in its state dir) and keeps its
// tunnel to the real server.
func TestVPNClientPinsItsCA(t *testing.T) {
	l := newLab(t, 2, "tap")
	srv := l.start("cnsmo.1", "s")
	w1 := l.start("web.1", "1")
	l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")
	caFile := filepath.Join(l.base, "web.1", "state", "openvpn", "ca.crt")
	before, err := os.ReadFile(caFile)
	require.NoError(t, err)

	srv.kill() // its OpenVPN keeps running; the role would put its own CA back
	evil, err := pki.LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	csr := l.param("web.1:" + params.VPNCSR)
	forged, err := evil.Sign([]byte(csr), "web.1")
	require.NoError(t, err)
	require.NoError(t, l.mock.SetParam(l.uuid, "cnsmo.1:"+params.VPNCACert, string(evil.CertPEM())))
	require.NoError(t, l.mock.SetParam(l.uuid, "web.1:"+params.VPNCert, string(forged)))
	require.NoError(t, l.mock.SetParam(l.uuid, "cnsmo.1:"+params.VPNEndpoint, "198.18.240.3:11940/udp"))
	w1.kill()
	w1 = l.start("web.1", "1")
	w1.waitPasses(t, 3)

	after, err := os.ReadFile(caFile)
	require.NoError(t, err)
	require.Equal(t, string(before), string(after), "web.1 followed a changed CA")
	require.NoError(t, l.ping(w1.host, l.param("cnsmo.1:"+params.VPNAddress)), "web.1's tunnel to the real server")
}
