// Package drivertest is the one test suite every driver runs: the same cases, so the Docker and
// the exec drivers behave alike for the roles.
package drivertest

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
)

// Config adapts the suite to one driver.
type Config struct {
	// New returns a driver for an owner; the suite calls Cleanup itself.
	New func(t *testing.T, owner driver.Owner) driver.Driver
	// Image is the image of the specs (Docker); ignored by the exec driver.
	Image string
	// Leftovers lists what the owner still has (containers, state dirs, processes): empty after Cleanup.
	Leftovers func(t *testing.T, owner driver.Owner) []string
}

// Run runs every case.
func Run(t *testing.T, cfg Config) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	owner := driver.Owner{Run: "suite-run-" + strings.ReplaceAll(t.Name(), "/", "-"), Instance: "web.1"}
	other := driver.Owner{Run: owner.Run, Instance: "web.2"}
	d, d2 := cfg.New(t, owner), cfg.New(t, other)
	t.Cleanup(func() { _ = d.Cleanup(context.Background()); _ = d2.Cleanup(context.Background()) })

	long := func(name, marker string) driver.Spec {
		return driver.Spec{Name: name, Service: "test", Image: cfg.Image,
			Cmd: []string{"sh", "-c", "echo " + marker + "; trap 'exit 0' TERM; while :; do sleep 0.2; done"}}
	}

	t.Run("one-shot with stdin and exit code", func(t *testing.T) {
		res, err := d.Run(ctx, driver.Spec{Name: "cat", Service: "test", Image: cfg.Image, Cmd: []string{"cat"}}, strings.NewReader("hello\nworld\n"))
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode)
		require.Equal(t, "hello\nworld\n", string(res.Stdout))
		res, err = d.Run(ctx, driver.Spec{Name: "fail", Service: "test", Image: cfg.Image, Cmd: []string{"sh", "-c", "echo oops >&2; exit 3"}}, nil)
		require.NoError(t, err)
		require.Equal(t, 3, res.ExitCode)
		require.Equal(t, "oops\n", string(res.Stderr))
	})

	t.Run("a one-shot's files are there for it and gone after it", func(t *testing.T) {
		dir := "/tmp/cnsmo-suite-oneshot-" + owner.Instance
		path := dir + "/sub/check.cfg"
		res, err := d.Run(ctx, driver.Spec{Name: "check", Service: "test", Image: cfg.Image, Cmd: []string{"cat", path},
			Files: []driver.File{{Path: path, Data: []byte("checked\n")}}}, nil)
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode, "%s", res.Stderr)
		require.Equal(t, "checked\n", string(res.Stdout))
		if cfg.Leftovers != nil {
			for _, l := range cfg.Leftovers(t, owner) {
				require.NotContains(t, l, dir, "the one-shot left %s", l)
			}
		}
	})

	t.Run("start is idempotent, a changed spec replaces", func(t *testing.T) {
		require.NoError(t, d.Start(ctx, long("fn", "first")))
		require.Eventually(t, func() bool { l, _ := d.Logs(ctx, "fn"); return strings.Contains(l, "first") }, 20*time.Second, 20*time.Millisecond, "first output")
		require.NoError(t, d.Start(ctx, long("fn", "first")))
		l, err := d.Logs(ctx, "fn")
		require.NoError(t, err)
		require.Equal(t, 1, strings.Count(l, "first"), "the same spec is not restarted")
		require.NoError(t, d.Start(ctx, long("fn", "second")))
		require.Eventually(t, func() bool { l, _ := d.Logs(ctx, "fn"); return strings.Contains(l, "second") }, 20*time.Second, 20*time.Millisecond, "replaced")
		st, err := d.Status(ctx, "fn")
		require.NoError(t, err)
		require.Equal(t, driver.StateRunning, st.State)
	})

	t.Run("exec in a running function: stdin, output, exit code; not found when it does not run", func(t *testing.T) {
		res, err := d.Exec(ctx, "fn", []string{"sh", "-c", "cat; echo err >&2; exit 4"}, strings.NewReader("in\n"))
		require.NoError(t, err)
		require.Equal(t, 4, res.ExitCode)
		require.Equal(t, "in\n", string(res.Stdout))
		require.Equal(t, "err\n", string(res.Stderr))
		res, err = d.Exec(ctx, "fn", []string{"echo", "no stdin"}, nil)
		require.NoError(t, err)
		require.Equal(t, 0, res.ExitCode)
		require.Equal(t, "no stdin\n", string(res.Stdout))
		_, err = d.Exec(ctx, "nothing-here", []string{"true"}, nil)
		require.True(t, errors.Is(err, driver.ErrNotFound), "got %v", err)
	})

	t.Run("stop, then status exited; remove, then absent", func(t *testing.T) {
		require.NoError(t, d.Stop(ctx, "fn"))
		st, err := d.Status(ctx, "fn")
		require.NoError(t, err)
		require.Equal(t, driver.StateExited, st.State)
		require.NoError(t, d.Stop(ctx, "fn"), "idempotent")
		require.NoError(t, d.Remove(ctx, "fn"))
		require.NoError(t, d.Remove(ctx, "fn"), "idempotent")
		st, err = d.Status(ctx, "fn")
		require.NoError(t, err)
		require.Equal(t, driver.StateAbsent, st.State)
	})

	t.Run("a crash shows as exited", func(t *testing.T) {
		require.NoError(t, d.Start(ctx, long("crashy", "up")))
		require.Eventually(t, func() bool { l, _ := d.Logs(ctx, "crashy"); return strings.Contains(l, "up") }, 20*time.Second, 20*time.Millisecond, "running")
		require.NoError(t, d.Signal(ctx, "crashy", syscall.SIGKILL))
		require.Eventually(t, func() bool { st, _ := d.Status(ctx, "crashy"); return st.State == driver.StateExited }, 20*time.Second, 20*time.Millisecond, "exited")
		require.NoError(t, d.Start(ctx, long("crashy", "up")), "start after a crash restarts it")
		require.Eventually(t, func() bool { st, _ := d.Status(ctx, "crashy"); return st.State == driver.StateRunning }, 20*time.Second, 20*time.Millisecond, "running again")
	})

	t.Run("files and signals", func(t *testing.T) {
		spec := driver.Spec{Name: "files", Service: "test", Image: cfg.Image,
			Files: []driver.File{{Path: "/tmp/cnsmo-suite-" + owner.Instance + "/conf", Mode: 0o600, Data: []byte("v1")}},
			Cmd:   []string{"sh", "-c", "trap 'cat /tmp/cnsmo-suite-" + owner.Instance + "/conf; echo' HUP; echo ready; while :; do sleep 0.1; done"}}
		require.NoError(t, d.Start(ctx, spec))
		require.Eventually(t, func() bool { l, _ := d.Logs(ctx, "files"); return strings.Contains(l, "ready") }, 20*time.Second, 20*time.Millisecond, "ready")
		require.NoError(t, d.PutFiles(ctx, "files", []driver.File{{Path: spec.Files[0].Path, Mode: 0o600, Data: []byte("v2")}}))
		require.NoError(t, d.Signal(ctx, "files", syscall.SIGHUP))
		require.Eventually(t, func() bool { l, _ := d.Logs(ctx, "files"); return strings.Contains(l, "v2") }, 20*time.Second, 20*time.Millisecond, "reload saw v2")
		err := d.PutFiles(ctx, "nothing-here", nil)
		require.True(t, errors.Is(err, driver.ErrNotFound), "got %v", err)
	})

	t.Run("cleanup removes this owner's functions only", func(t *testing.T) {
		require.NoError(t, d2.Start(ctx, long("neighbour", "n")))
		require.NoError(t, d.Cleanup(ctx))
		require.Empty(t, cfg.Leftovers(t, owner))
		st, err := d2.Status(ctx, "neighbour")
		require.NoError(t, err)
		require.Equal(t, driver.StateRunning, st.State, "another owner's function survives")
		require.NoError(t, d2.Cleanup(ctx))
		require.Empty(t, cfg.Leftovers(t, other))
	})
}
