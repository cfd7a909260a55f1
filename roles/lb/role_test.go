package lb

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/ssclient"
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

type fakeParams struct {
	ssclient.Params
	set      map[string]string
	displays []string
}

func (f *fakeParams) Instance() string                         { return "cnsmo.1" }
func (f *fakeParams) Set(_ context.Context, k, v string) error { f.set[k] = v; return nil }
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
			_, _ = io.WriteString(s, "# pxname,svname,status\ncnsmo_backends,web.1,"+status+"\ncnsmo_backends,BACKEND,"+status+"\n")
		case "show servers state":
			_, _ = io.WriteString(s, "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state\n3 cnsmo_backends 1 web.1 198.18.0.11 2\n")
		}
	}()
	return c, nil
}

func lbRun(backends ...string) *ssclient.Run {
	p := map[string]ssclient.Param{}
	set := func(k, v string) { p[k] = ssclient.Param{Value: v, IsSet: true} }
	set("ss:groups", "cloud-a:cnsmo,cloud-b:web")
	set("cnsmo.1:"+params.LBPort, "8080")
	set("cnsmo.1:"+params.LBMode, "roundrobin")
	set("cnsmo.1:"+params.LBNode, "web")
	set("cnsmo.1:"+params.Hostname, "198.18.0.2")
	var ids []string
	for i, b := range backends {
		ids = append(ids, strings.TrimPrefix(b, "web."))
		set(b+":"+params.Hostname, "198.18.0."+string(rune('1'+i))+"1")
	}
	set("web:ids", strings.Join(ids, ","))
	return &ssclient.Run{Params: p}
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
	require.Equal(t, "198.18.0.2:8080", fp.set[params.SSURLService])
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
	run.Params["cnsmo.1:"+params.LBReady] = ssclient.Param{Value: "true", IsSet: true}
	ready, err = r.Reconcile(ctx, run)
	require.NoError(t, err)
	require.False(t, ready, "every backend down: not ready")
	require.Equal(t, "false", fp.set[params.LBReady], "lb.ready withdrawn")
}
