package lb

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

// fakeDriver records what the role asks of the runtime; the `haproxy -c` one-shot fails when
// rejectCheck is set.
type fakeDriver struct {
	driver.Driver
	mu          sync.Mutex
	running     bool
	starts      int
	files       map[string]string // path -> content, written into the running function
	signals     []syscall.Signal
	rejectCheck bool
	pids        string // what `pidof haproxy` prints in the function (default: a master and one worker)
}

func (d *fakeDriver) Exec(_ context.Context, _ string, cmd []string, _ io.Reader) (driver.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(cmd) == 2 && cmd[0] == "pidof" && cmd[1] == "haproxy" {
		if d.pids == "" {
			return driver.Result{Stdout: []byte("12 7\n")}, nil
		}
		return driver.Result{Stdout: []byte(d.pids)}, nil
	}
	return driver.Result{ExitCode: 127}, nil
}

func (d *fakeDriver) Start(_ context.Context, spec driver.Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.running = true
	d.starts++
	for _, f := range spec.Files {
		d.files[f.Path] = string(f.Data)
	}
	return nil
}

func (d *fakeDriver) Run(context.Context, driver.Spec, io.Reader) (driver.Result, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rejectCheck {
		return driver.Result{ExitCode: 1, Stderr: []byte("[ALERT] parsing [haproxy.cfg:20]: unknown keyword")}, nil
	}
	return driver.Result{}, nil
}

func (d *fakeDriver) PutFiles(_ context.Context, _ string, files []driver.File) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range files {
		d.files[f.Path] = string(f.Data)
	}
	return nil
}

func (d *fakeDriver) Signal(_ context.Context, _ string, sig syscall.Signal) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.signals = append(d.signals, sig)
	return nil
}

func (d *fakeDriver) Status(context.Context, string) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.running {
		return driver.Status{State: driver.StateRunning}, nil
	}
	return driver.Status{}, nil
}

// fakeParams records the writes of cnsmo.1: its own keys by name, others' as "instance:key", the
// deployment's as "deployment:key".
type fakeParams struct {
	set      map[string]string
	displays []string
}

func (f *fakeParams) Self() string { return "cnsmo.1" }
func (f *fakeParams) Set(_ context.Context, instance, k, v string) error {
	switch instance {
	case role.Deployment:
		k = "deployment:" + k
	case "cnsmo.1":
	default:
		k = instance + ":" + k
	}
	f.set[k] = v
	return nil
}
func (f *fakeParams) Display(_ context.Context, m string) error {
	f.displays = append(f.displays, m)
	return nil
}

// runtimeAPI answers HAProxy's runtime API commands over an in-memory connection: every server
// UP, and a server-state dump.
func runtimeAPI(ctx context.Context, addr string) (net.Conn, error) {
	return runtimeAPIWith("UP")(ctx, addr)
}

// runtimeAPIWith answers "show stat" with every server in the given status.
func runtimeAPIWith(status string) func(context.Context, string) (net.Conn, error) {
	return func(context.Context, string) (net.Conn, error) {
		return fakeRuntimeAPI(status)
	}
}

func fakeRuntimeAPI(status string) (net.Conn, error) {
	c, s := net.Pipe()
	go func() {
		defer s.Close()
		cmd, err := bufio.NewReader(s).ReadString('\n')
		if err != nil {
			return // the readiness probe only connects
		}
		switch strings.TrimSpace(cmd) {
		case "show stat":
			check := map[string]string{"UP": "L4OK", "DOWN": "L4CON", "UP-INI": "INI"}[status]
			st := strings.TrimSuffix(status, "-INI")
			_, _ = io.WriteString(s, "# pxname,svname,status,check_status\ncnsmo_backends,web.1,"+st+","+check+"\ncnsmo_backends,BACKEND,"+st+",\n")
		case "show servers state":
			_, _ = io.WriteString(s, "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n3 cnsmo_backends 1 web.1 198.18.0.11 2\n")
		}
	}()
	return c, nil
}

func lbRun(backends ...string) *roletest.Snapshot {
	s := roletest.NewSnapshot("cnsmo.1", map[string]string{
		params.LBPort: "8080", params.LBMode: "roundrobin", params.LBNode: "web", params.Hostname: "198.18.0.2",
	})
	s.AddNode("cnsmo", "cnsmo.1").AddNode("web", backends...)
	for i, b := range backends {
		s.Put(b+":"+params.Hostname, "198.18.0."+string(rune('1'+i))+"1")
	}
	return s
}

// A new backend set is checked, then handed to the running HAProxy with the servers' states and
// a SIGUSR2; a set whose configuration fails `haproxy -c` never replaces the running one, and the
// error goes to statecustom.
func TestReconcileReloadsCheckedConfigsOnly(t *testing.T) {
	ctx := context.Background()
	drv := &fakeDriver{files: map[string]string{}}
	fp := &fakeParams{set: map[string]string{}}
	r := &Role{Params: fp, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI}

	ready, err := r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.True(t, ready)
	require.Equal(t, 1, drv.starts)
	require.Equal(t, "true", fp.set[params.LBReady])
	require.Equal(t, "198.18.0.2:8080", fp.set["deployment:"+params.URLService])
	first := drv.files[ConfigPath]
	require.Contains(t, first, "server web.1 198.18.0.11:8080 check")

	// Scale out: checked, written with the server states, reloaded; HAProxy is not restarted.
	_, err = r.Reconcile(ctx, lbRun("web.1", "web.2"))
	require.NoError(t, err)
	require.Equal(t, 1, drv.starts, "a reload, not a restart")
	require.Equal(t, []syscall.Signal{syscall.SIGUSR2}, drv.signals)
	require.Contains(t, drv.files[ConfigPath], "server web.2 198.18.0.21:8080 check")
	require.Contains(t, drv.files[StatePath], "cnsmo_backends 1 web.1", "the servers' states go to the next worker")
	second := drv.files[ConfigPath]

	// Same input again: nothing to do.
	_, err = r.Reconcile(ctx, lbRun("web.1", "web.2"))
	require.NoError(t, err)
	require.Len(t, drv.signals, 1)

	// A configuration haproxy -c rejects: the running one stays, the UI says why.
	drv.rejectCheck = true
	_, err = r.Reconcile(ctx, lbRun("web.1", "web.2", "web.3"))
	require.ErrorContains(t, err, "haproxy -c rejected the configuration")
	require.Equal(t, second, drv.files[ConfigPath], "the rejected configuration never replaces the running one")
	require.Len(t, drv.signals, 1, "no reload")
	require.Contains(t, fp.displays[len(fp.displays)-1], "configuration rejected by haproxy -c, old one kept")
	require.NotEqual(t, first, second)
}

// lb.ready means serving: with every backend down the load balancer is not ready, and a
// published lb.ready=true is withdrawn (false); it comes back when a backend is up again.
func TestReadyOnlyWhileABackendIsUp(t *testing.T) {
	ctx := context.Background()
	drv := &fakeDriver{files: map[string]string{}}
	fp := &fakeParams{set: map[string]string{}}
	r := &Role{Params: fp, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPIWith("DOWN")}

	ready, err := r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.False(t, ready, "no backend up: not ready")
	require.NotContains(t, fp.set, params.LBReady, "never published ready")

	r.Dial = runtimeAPI
	ready, err = r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.True(t, ready)
	require.Equal(t, "true", fp.set[params.LBReady])

	r.Dial = runtimeAPIWith("DOWN")
	run := lbRun("web.1")
	run.Put("cnsmo.1:"+params.LBReady, "true")
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.False(t, ready, "every backend down: not ready")
	require.Equal(t, "", fp.set[params.LBReady], "lb.ready withdrawn: un-set, not false")
	require.True(t, r.Down(), "known down")
}

// HAProxy counts a server UP until its first check: lb.ready means a backend has passed a check.
// While checks have not run yet (a fresh start, or just after a reload) the load balancer is not
// ready, but not known down either: nothing is withdrawn.
func TestReadyMeansABackendPassedACheck(t *testing.T) {
	ctx := context.Background()
	drv := &fakeDriver{files: map[string]string{}}
	fp := &fakeParams{set: map[string]string{}}
	r := &Role{Params: fp, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPIWith("UP-INI")}
	ready, err := r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.False(t, ready, "no check has passed")
	require.NotContains(t, fp.set, params.LBReady)
	require.False(t, r.Down())

	run := lbRun("web.1")
	run.Put("cnsmo.1:"+params.LBReady, "true")
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.False(t, ready)
	require.NotContains(t, fp.set, params.LBReady, "checks pending after a reload withdraw nothing")
	require.False(t, r.Down())
}

// runWith is lbRun with each backend's hostname and vpn.address as given.
func runWith(hosts map[string][2]string) *roletest.Snapshot {
	run := lbRun()
	var ids []string
	for inst, hv := range hosts {
		ids = append(ids, inst)
		if hv[0] != "" {
			run.Put(inst+":"+params.Hostname, hv[0])
		}
		if hv[1] != "" {
			run.Put(inst+":"+params.VPNAddress, hv[1])
		}
	}
	slices.SortFunc(ids, compareInstance)
	run.Members["web"] = ids
	return run
}

// A VM's claimed address never makes the load balancer forward into the LB VM itself or to the
// cloud's metadata service: loopback, link-local, multicast and unspecified addresses are left
// out (IPv4-mapped forms too); other backends are served.
func TestBackendsRefuseLocalAddresses(t *testing.T) {
	bad := []string{"127.0.0.1", "127.1.2.3", "169.254.169.254", "0.0.0.0", "224.0.0.1", "255.255.255.255",
		"::1", "::", "fe80::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
		"fd00:ec2::254", "100.100.100.200", "168.63.129.16", "198.18.0.2"} // the last: the LB VM's own
	hosts := map[string][2]string{"web.1": {"198.18.0.11", ""}}
	for i, a := range bad {
		hosts[fmt.Sprintf("web.%d", i+2)] = [2]string{a, ""}
	}
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI,
		Own: func() map[netip.Addr]bool { return map[netip.Addr]bool{netip.MustParseAddr("198.18.0.2"): true} }}
	_, err := r.Reconcile(context.Background(), runWith(hosts))
	require.NoError(t, err)
	conf := drv.files[ConfigPath]
	require.Contains(t, conf, "server web.1 198.18.0.11:8080 check")
	for i, a := range bad {
		require.NotContains(t, conf, fmt.Sprintf("server web.%d ", i+2), "backend at %s rendered", a)
	}
}

// With the VPN on, a backend is served at the address the VPN server assigned to it, never at the
// vpn.address it claims; an instance without an assignment is left out.
func TestBackendsAtAssignedVPNAddresses(t *testing.T) {
	assigned := map[string]netip.Addr{"web.1": netip.MustParseAddr("198.19.0.2"), "web.2": netip.MustParseAddr("198.19.0.3")}
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI, UseVPN: true,
		Assigned: func(inst string) (netip.Addr, bool) { a, ok := assigned[inst]; return a, ok }}
	_, err := r.Reconcile(context.Background(), runWith(map[string][2]string{
		"web.1": {"198.18.0.11", "198.19.0.2"},
		"web.2": {"198.18.0.21", "127.0.0.1"},       // claims loopback
		"web.3": {"198.18.0.31", "169.254.169.254"}, // never assigned
		"web.4": {"198.18.0.41", ""},                // its tunnel is not up yet
	}))
	require.NoError(t, err)
	conf := drv.files[ConfigPath]
	require.NotContains(t, conf, "web.4", "no address yet: left out (it was rendered as 'invalid AddrPort', which haproxy -c rejected)")
	require.NotContains(t, conf, "invalid")
	require.Contains(t, conf, "server web.1 198.19.0.2:8080 check")
	require.Contains(t, conf, "server web.2 198.19.0.3:8080 check")
	require.NotContains(t, conf, "127.0.0.1:8080")
	require.NotContains(t, conf, "web.3")
}

// The VPN turned on under load: a backend whose tunnel is not up yet stays where HAProxy serves it
// (its public address) instead of leaving the pool, and the pool moves to the overlay in one reload
// once every tunnel is up.
func TestBackendsStayServedUntilTheirTunnelIsUp(t *testing.T) {
	assigned := map[string]netip.Addr{"web.1": netip.MustParseAddr("198.19.0.2"), "web.2": netip.MustParseAddr("198.19.0.3")}
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI,
		Assigned: func(inst string) (netip.Addr, bool) { a, ok := assigned[inst]; return a, ok }}
	_, err := r.Reconcile(context.Background(), runWith(map[string][2]string{"web.1": {"198.18.0.11", ""}, "web.2": {"198.18.0.21", ""}}))
	require.NoError(t, err)
	require.Contains(t, drv.files[ConfigPath], "server web.2 198.18.0.21:8080 check")
	r.UseVPN = true
	_, err = r.Reconcile(context.Background(), runWith(map[string][2]string{"web.1": {"198.18.0.11", "198.19.0.2"}, "web.2": {"198.18.0.21", ""}}))
	require.NoError(t, err)
	conf := drv.files[ConfigPath]
	require.Contains(t, conf, "server web.1 198.18.0.11:8080 check", "the pool moves at once: one reload, not one per backend")
	require.Contains(t, conf, "server web.2 198.18.0.21:8080 check", "still served where it was")
	_, err = r.Reconcile(context.Background(), runWith(map[string][2]string{"web.1": {"198.18.0.11", "198.19.0.2"}, "web.2": {"198.18.0.21", "198.19.0.3"}}))
	require.NoError(t, err)
	require.Contains(t, drv.files[ConfigPath], "server web.1 198.19.0.2:8080 check")
	require.Contains(t, drv.files[ConfigPath], "server web.2 198.19.0.3:8080 check")

	// A role made anew (the enabled services changed) while HAProxy serves web.1 at its public
	// address (what the runtime API says): web.1 stays there until its tunnel is up.
	fresh := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI, UseVPN: true,
		Assigned: r.Assigned}
	_, err = fresh.Reconcile(context.Background(), runWith(map[string][2]string{"web.1": {"198.18.0.11", ""}}))
	require.NoError(t, err)
	require.Contains(t, drv.files[ConfigPath], "server web.1 198.18.0.11:8080 check", "not dropped from the pool")
}

// HAProxy's runtime API is no TCP listener at admin level.
func TestRuntimeAPINotAdminOverTCP(t *testing.T) {
	conf := Render(Config{Port: 8080, BackendPort: 8080, Mode: "roundrobin", StatsPort: DefaultStatsPort, CheckInter: 2000, Fall: 2, Rise: 2}, nil)
	for _, line := range strings.Split(conf, "\n") {
		if strings.Contains(line, "stats socket ipv4@") || strings.Contains(line, "stats socket ipv6@") {
			require.NotContains(t, line, "level admin", line)
			require.Contains(t, line, "@127.0.0.1:", line)
		}
	}
}

// After a reload the load balancer is ready again only once the old worker is gone: until then
// it may still accept connections for the old backends (e.g. overlay addresses of a VPN about to
// be torn down). lb.ready is not withdrawn meanwhile.
func TestNotReadyWhileAnOldWorkerRuns(t *testing.T) {
	ctx := context.Background()
	drv := &fakeDriver{files: map[string]string{}}
	fp := &fakeParams{set: map[string]string{}}
	r := &Role{Params: fp, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI}
	ready, err := r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.True(t, ready)

	drv.pids = "12 7\n" // right after SIGUSR2 the master may not have forked the new worker yet
	run := lbRun("web.1", "web.2")
	run.Put("cnsmo.1:"+params.LBReady, "true")
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.Len(t, drv.signals, 1, "reloaded")
	require.False(t, ready, "no new worker yet: the old one still serves")
	drv.pids = "31 12 7\n" // the new worker, the old one, the master
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.False(t, ready, "an old worker still runs")
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.False(t, ready, "an old worker still runs")
	require.Equal(t, "true", fp.set[params.LBReady], "lb.ready is not withdrawn meanwhile")

	drv.pids = "31 7\n"
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.True(t, ready, "the old worker is gone")
	require.Len(t, drv.signals, 1)
}

// The role's logger already carries service=lb (the orchestrator gives every service its own):
// no log line repeats the key.
func TestLogsDoNotRepeatTheServiceKey(t *testing.T) {
	var buf strings.Builder
	log := zerolog.New(&buf).Level(zerolog.DebugLevel).With().Str("service", "lb").Logger()
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: log, Dial: runtimeAPIWith("DOWN")}
	_, err := r.Reconcile(context.Background(), lbRun("web.1"))
	require.NoError(t, err)
	r.Dial = runtimeAPI
	_, err = r.Reconcile(context.Background(), lbRun("web.1", "web.2"))
	require.NoError(t, err)
	drv.rejectCheck = true
	_, _ = r.Reconcile(context.Background(), lbRun("web.1", "web.2", "web.3"))
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.NotEmpty(t, lines)
	for _, l := range lines {
		require.Equal(t, 1, strings.Count(l, `"service":`), l)
	}
}

// With every backend down the UI says so, naming the addresses and port the checks go to.
func TestWaitingSaysEveryBackendIsDown(t *testing.T) {
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPIWith("DOWN")}
	ready, err := r.Reconcile(context.Background(), lbRun("web.1", "web.2"))
	require.NoError(t, err)
	require.False(t, ready)
	require.Equal(t, "every backend is down: health checks to web.1 198.18.0.11:8080, web.2 198.18.0.21:8080 fail", r.Waiting())
	r.Dial = runtimeAPI
	ready, err = r.Reconcile(context.Background(), lbRun("web.1", "web.2"))
	require.NoError(t, err)
	require.True(t, ready)
	require.Empty(t, r.Waiting())
}

// With the exec driver every file of the load balancer lives under its role's state dir, so two
// roles with different state dirs on one filesystem never touch each other's files.
func TestExecFilesLiveUnderTheStateDir(t *testing.T) {
	for _, dir := range []string{t.TempDir(), t.TempDir()} {
		drv := &fakeDriver{files: map[string]string{}}
		r := New(role.Env{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Exec: true, StateDir: dir})
		r.Dial = runtimeAPI
		_, err := r.Reconcile(context.Background(), lbRun("web.1"))
		require.NoError(t, err)
		_, err = r.Reconcile(context.Background(), lbRun("web.1", "web.2"))
		require.NoError(t, err)
		require.NotEmpty(t, drv.files)
		for p, content := range drv.files {
			require.True(t, strings.HasPrefix(p, dir+"/"), "%s is outside %s", p, dir)
			for _, l := range strings.Split(content, "\n") {
				if f := strings.Fields(l); len(f) > 2 && (f[0] == "server-state-file" || f[1] == "socket" && strings.HasPrefix(f[2], "/")) {
					require.Contains(t, l, dir+"/", "the configuration points outside the state dir: %s", l)
				}
			}
		}
	}
}

// Serves tells the VPN server when a scaled-in backend's tunnel may close: not while it is in the
// applied configuration, nor while a reload is not over (the old worker may still send to it).
func TestServesUntilTheReloadIsOver(t *testing.T) {
	ctx := context.Background()
	drv := &fakeDriver{files: map[string]string{}}
	r := &Role{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Log: zerolog.Nop(), Dial: runtimeAPI}
	_, err := r.Reconcile(ctx, lbRun("web.1", "web.2"))
	require.NoError(t, err)
	require.True(t, r.Serves("web.2"))
	drv.pids = "12 7\n" // the reload is not over yet
	_, err = r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.True(t, r.Serves("web.2"), "the old worker may still send to web.2")
	drv.pids = "31 7\n"
	_, err = r.Reconcile(ctx, lbRun("web.1"))
	require.NoError(t, err)
	require.False(t, r.Serves("web.2"), "reload over, web.2 gone from the configuration")
	require.True(t, r.Serves("web.1"))
}
