package cli

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// alive reports whether cmd's process has not exited (it is reaped by cmd.Wait in the cleanup).
func alive(cmd *exec.Cmd) bool { return cmd.Process.Signal(syscall.Signal(0)) == nil }

// A stale role.pid (left by a crash or a reboot) may name an unrelated live process: cnsmo-role
// stop and the recipes' kick signal nothing then, whether the lock is free or held by another
// process; only a cnsmo-role holding the state dir's lock is ever signalled.
func TestStalePidFileSignalsNothing(t *testing.T) {
	for _, lockHeld := range []bool{false, true} {
		dir := t.TempDir()
		other := exec.Command("sleep", "30")
		require.NoError(t, other.Start())
		t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
		require.NoError(t, os.WriteFile(filepath.Join(dir, "role.pid"), []byte(strconv.Itoa(other.Process.Pid)+"\n"), 0o644))
		if lockHeld { // this test process holds the lock: it is no cnsmo-role named in role.pid
			unlock, err := lockStateDir(dir)
			require.NoError(t, err)
			t.Cleanup(unlock)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		require.NoError(t, Stop(ctx, dir, 2*time.Second), "lock held: %v", lockHeld)
		require.NoError(t, Kick(dir), "lock held: %v", lockHeld)
		cancel()
		require.True(t, alive(other), "the unrelated process was signalled (lock held: %v)", lockHeld)
		pid, err := RunningPID(dir)
		require.NoError(t, err)
		require.Zero(t, pid, "no role runs (lock held: %v)", lockHeld)
	}
}

// The role that holds the lock and is named in role.pid is found (here this test process, whose
// executable name stands for cnsmo-role's).
func TestRunningPIDFindsTheLockHolder(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	old := roleExe
	roleExe = filepath.Base(exe)
	t.Cleanup(func() { roleExe = old })
	dir := t.TempDir()
	unlock, err := lockStateDir(dir)
	require.NoError(t, err)
	defer unlock()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "role.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644))
	pid, err := RunningPID(dir)
	require.NoError(t, err)
	require.Equal(t, os.Getpid(), pid)
	unlock()
	pid, err = RunningPID(dir)
	require.NoError(t, err)
	require.Zero(t, pid, "the lock is released: nothing runs")
}

func TestHoldsFlock(t *testing.T) {
	locks := "1: FLOCK  ADVISORY  WRITE 22916 fe:00:9773084 0 EOF\n2: -> FLOCK  ADVISORY  WRITE 41 fe:00:555 0 EOF\n3: POSIX  ADVISORY  WRITE 41 fe:00:555 0 EOF\n"
	require.True(t, holdsFlock(locks, 22916, 9773084))
	require.False(t, holdsFlock(locks, 22916, 555), "another inode")
	require.False(t, holdsFlock(locks, 41, 555), "a waiter and a POSIX lock hold no flock")
	require.False(t, holdsFlock("garbage\n\n1: FLOCK\n", 1, 1))
}
