package cli

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
)

// startRun serves a run of the application definition on an in-process mocknuvla and sets this
// process's SLIPSTREAM_* variables to instance's context.
func startRun(t *testing.T, instance string) (*mocknuvla.Server, *mocknuvla.RunInfo) {
	t.Helper()
	def, err := recipes.Application()
	require.NoError(t, err)
	srv := mocknuvla.New(mocknuvla.Options{})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	ri, err := srv.CreateRun(def)
	require.NoError(t, err)
	for _, in := range ri.Instances {
		if in.Name == instance {
			t.Setenv("SLIPSTREAM_API_KEY", in.APIKey)
			t.Setenv("SLIPSTREAM_API_SECRET", in.APISecret)
		}
	}
	t.Setenv("SLIPSTREAM_SERVICEURL", hs.URL)
	t.Setenv("SLIPSTREAM_DIID", ri.UUID)
	t.Setenv("SLIPSTREAM_NODE_INSTANCE_NAME", instance)
	t.Chdir(t.TempDir()) // no slipstream.context of the machine's is read
	return srv, ri
}

// A role that cannot run on its VM (here: its state dir cannot be made) aborts the run, saying
// which role on which instance and what failed, so no recipe waits for it in vain.
func TestRoleThatCannotStartAbortsTheRun(t *testing.T) {
	srv, ri := startRun(t, "web.1")
	require.NoError(t, srv.SetParam(ri.UUID, "cnsmo.1:"+params.ServerInstanceID, "cnsmo.1"))
	file := filepath.Join(t.TempDir(), "not-a-dir")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{Driver: "exec", StateDir: filepath.Join(file, "state")}, zerolog.Nop())
	require.ErrorContains(t, err, "state dir")
	reason, set, err := srv.Param(ri.UUID, "ss:abort")
	require.NoError(t, err)
	require.True(t, set, "the run is aborted")
	require.Contains(t, reason, "cnsmo agent on web.1: state dir "+filepath.Join(file, "state"))
}

// A second role on the same state dir is refused without aborting the run: the first one runs.
func TestSecondRoleOnAStateDirDoesNotAbortTheRun(t *testing.T) {
	srv, ri := startRun(t, "web.1")
	dir := t.TempDir()
	unlock, err := lockStateDir(dir)
	require.NoError(t, err)
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = Run(ctx, Options{Driver: "exec", StateDir: dir}, zerolog.Nop())
	require.ErrorIs(t, err, errAlreadyRunning)
	_, set, err := srv.Param(ri.UUID, "ss:abort")
	require.NoError(t, err)
	require.False(t, set, "the run is not aborted")
}

// A role stopped while it still waits for the CNSMO server stops; it does not abort the run.
func TestRoleStoppedWhileStartingDoesNotAbortTheRun(t *testing.T) {
	srv, ri := startRun(t, "web.1")
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{Driver: "exec", StateDir: t.TempDir()}, zerolog.Nop())
	}()
	// The agent displays that it waits for the server: it is in its startup wait.
	require.Eventually(t, func() bool {
		v, _, _ := srv.Param(ri.UUID, "web.1:"+params.Statecustom)
		return v == "cnsmo: waiting for the CNSMO server"
	}, 20*time.Second, 20*time.Millisecond)
	// SIGTERM, as `cnsmo-role stop` sends it: the role catches it (it registered before it
	// displayed anything), so this test process lives on.
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGTERM))
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the role did not stop")
	}
	_, set, err := srv.Param(ri.UUID, "ss:abort")
	require.NoError(t, err)
	require.False(t, set, "the run is not aborted")
}

// An agent whose run was aborted by another instance says so, with the reason from ss:abort,
// instead of an HTTP status.
func TestAbortedRunIsSaidWithItsReason(t *testing.T) {
	srv, ri := startRun(t, "web.1")
	require.NoError(t, srv.Abort(ri.UUID, "cnsmo on web.2: net.i2cat.cnsmo.service.fw.rules[0].dst_port: 70000 is out of range 1-65535"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, Options{Driver: "exec", StateDir: t.TempDir()}, zerolog.Nop())
	require.Error(t, err)
	require.Contains(t, err.Error(), "the run was aborted: cnsmo on web.2: net.i2cat.cnsmo.service.fw.rules[0].dst_port: 70000 is out of range")
	require.NotContains(t, err.Error(), "409")
}
