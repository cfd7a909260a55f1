package fw

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

func rulesRun(rules string) *roletest.Snapshot {
	return roletest.NewSnapshot("web.1", map[string]string{params.FWRules: rules})
}

// reconcileUntil runs the role's passes until cond holds, at most max passes, and returns how
// many it took (max+1 when it never held).
func reconcileUntil(t *testing.T, r *Role, run role.Snapshot, max int, cond func() bool) int {
	t.Helper()
	for i := 1; i <= max; i++ {
		_, err := r.Reconcile(context.Background(), run)
		require.NoError(t, err)
		if cond() {
			return i
		}
	}
	return max + 1
}

// Rules changed behind cnsmo's back (a chain flushed by another tool, one rule edited, a jump
// deleted) are seen by comparing with the kernel on every steady pass and repaired within two
// passes of the role, counted; fw.ready stays true and the repair is logged.
func TestDriftIsRepairedWithinTwoPasses(t *testing.T) {
	p := twoHosts(t)
	var logs strings.Builder
	var mu sync.Mutex
	fp := &fakeParams{set: map[string]string{}}
	r := New(role.Env{Params: fp, Driver: nsDriver{ns: p.srv}, Instance: "web.1", Exec: true,
		Log: zerolog.New(lockedWriter{&mu, &logs})})
	run := rulesRun(`[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"},{"direction":"in","protocol":"tcp","dst_port":"8080","action":"drop"}]`)
	ready, err := r.Reconcile(context.Background(), run)
	require.NoError(t, err)
	require.True(t, ready)
	want := save(t, p.srv)
	require.False(t, p.connect("198.18.250.2", "8081"))

	for _, tamper := range [][]string{
		{"iptables", "-F", ChainIn}, // flushed by another tool
		{"iptables", "-R", ChainIn, "4", "-p", "tcp", "--dport", "8082", "-j", "DROP"},   // one rule edited
		{"ip6tables", "-D", "INPUT", "-j", ChainIn},                                      // a jump removed
		{"iptables", "-I", ChainIn, "1", "-j", "ACCEPT"},                                 // a rule added
		{"iptables", "-I", "INPUT", "1", "-p", "tcp", "--dport", "8081", "-j", "ACCEPT"}, // a rule before the jump
	} {
		sh(t, append([]string{"ip", "netns", "exec", p.srv}, tamper...)...)
		require.NotEqual(t, want, save(t, p.srv), "%v changed the tables", tamper)
		// cnsmo's chains and jumps as applied (another tool's own rule is left where it is, after
		// cnsmo's jump).
		n := reconcileUntil(t, r, run, 2, func() bool {
			rules, _ := ParseRules(run.Get("web.1", params.FWRules))
			d, err := r.ap.Check(context.Background(), rules, r.options(context.Background(), run))
			return err == nil && d == ""
		})
		require.LessOrEqual(t, n, 2, "%v not repaired within two passes", tamper)
		require.False(t, p.connect("198.18.250.2", "8081"), "8081 dropped again after %v", tamper)
	}
	require.Equal(t, "true", fp.set[params.FWReady])
	mu.Lock()
	require.Contains(t, logs.String(), "repaired")
	mu.Unlock()
	require.NoError(t, r.Teardown(context.Background()))
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// countingDriver counts what the firewall asks of a Docker-like driver: one-shot containers
// (Run) against commands in its long-lived function (Exec), which it runs in the namespace.
type countingDriver struct {
	nsDriver
	mu    sync.Mutex
	runs  int
	execs int
}

func (d *countingDriver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	d.mu.Lock()
	d.runs++
	d.mu.Unlock()
	return d.nsDriver.Run(ctx, spec, stdin)
}

func (d *countingDriver) Start(context.Context, driver.Spec) error { return nil }

func (d *countingDriver) Status(context.Context, string) (driver.Status, error) {
	return driver.Status{State: driver.StateRunning}, nil
}

func (d *countingDriver) Remove(context.Context, string) error { return nil }

func (d *countingDriver) Exec(ctx context.Context, _ string, cmd []string, stdin io.Reader) (driver.Result, error) {
	d.mu.Lock()
	d.execs++
	d.mu.Unlock()
	return d.nsDriver.Run(ctx, driver.Spec{Cmd: cmd}, stdin)
}

// With the Docker driver the per-pass comparison starts no container: it runs in the firewall's
// long-lived function.
func TestDockerDriftCheckStartsNoContainer(t *testing.T) {
	p := twoHosts(t)
	drv := &countingDriver{nsDriver: nsDriver{ns: p.srv}}
	r := New(role.Env{Params: &fakeParams{set: map[string]string{}}, Driver: drv, Instance: "web.1", Log: zerolog.Nop()})
	run := rulesRun(`[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`)
	_, err := r.Reconcile(context.Background(), run)
	require.NoError(t, err)
	drv.mu.Lock()
	runs, execs := drv.runs, drv.execs
	drv.mu.Unlock()
	for i := 0; i < 3; i++ {
		_, err := r.Reconcile(context.Background(), run)
		require.NoError(t, err)
	}
	drv.mu.Lock()
	runs2, execs2 := drv.runs, drv.execs
	drv.mu.Unlock()
	require.Equal(t, 0, runs, "one-shot containers while applying")
	require.Equal(t, 0, runs2, "one-shot containers on steady passes")
	require.Greater(t, execs2, execs, "steady passes compare with the kernel")
	require.NoError(t, r.Teardown(context.Background()))
}

// failingDriver: every iptables command fails.
type failingDriver struct{ driver.Driver }

func (failingDriver) Run(context.Context, driver.Spec, io.Reader) (driver.Result, error) {
	return driver.Result{ExitCode: 4, Stderr: []byte("iptables: Permission denied")}, nil
}

// A firewall that cannot apply its rules after it was ready is known down: fw.ready is withdrawn
// (un-set, not false) and the orchestrator withdraws net.services.enabled.
func TestFailedApplyWithdrawsReadiness(t *testing.T) {
	fp := &fakeParams{set: map[string]string{}}
	r := New(role.Env{Params: fp, Driver: failingDriver{}, Instance: "web.1", Exec: true, Log: zerolog.Nop()})
	run := rulesRun(`[]`)
	run.Put("web.1:"+params.FWReady, "true")
	ready, err := r.Reconcile(context.Background(), run)
	require.Error(t, err)
	require.False(t, ready)
	v, ok := fp.set[params.FWReady]
	require.True(t, ok, "fw.ready withdrawn")
	require.Equal(t, "", v, "un-set, not false")
	require.True(t, r.Down())
}

// The anti-lockout waiver is pinned on first use: a VM writing lockout_ok=true into another VM's
// parameters later gets nothing; set from the start it holds, cleared it is followed, and the pin
// survives a restart of the role.
func TestLockoutWaiverPinnedOnFirstUse(t *testing.T) {
	dir := t.TempDir()
	run := func(v string) *roletest.Snapshot {
		r := rulesRun(`[{"policy":"denyall"}]`)
		if v != "" {
			for _, in := range []string{"web.1", "web.2"} {
				r.Put(in+":"+params.FWLockoutOK, v)
			}
		}
		return r
	}
	r := New(role.Env{Instance: "web.1", StateDir: dir, Log: zerolog.Nop()})
	ctx := context.Background()
	require.False(t, r.options(ctx, run("")).NoAntiLockout)
	require.False(t, r.options(ctx, run("true")).NoAntiLockout, "a waiver written later is refused")
	r = New(role.Env{Instance: "web.1", StateDir: dir, Log: zerolog.Nop()}) // restarted
	require.False(t, r.options(ctx, run("true")).NoAntiLockout, "still refused after a restart")

	dir2 := t.TempDir()
	r = New(role.Env{Instance: "web.2", StateDir: dir2, Log: zerolog.Nop()})
	require.True(t, r.options(ctx, run("true")).NoAntiLockout, "set from the start: waived")
	require.True(t, r.options(ctx, run("true")).NoAntiLockout)
	require.False(t, r.options(ctx, run("")).NoAntiLockout, "cleared: the anti-lockout is back")
	require.False(t, r.options(ctx, run("true")).NoAntiLockout, "and a new waiver is refused")
}
