package testutil

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/cnsmo/cnsmo/driver"
)

// RunCommand runs cmd with stdin to completion and returns it as a driver's one-shot Result: a
// non-zero exit is an exit code, not an error (fakes of drivers that run commands on the host or
// in a namespace use it).
func RunCommand(cmd *exec.Cmd, stdin io.Reader) (driver.Result, error) {
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return driver.Result{ExitCode: ee.ExitCode(), Stdout: out.Bytes(), Stderr: errOut.Bytes()}, nil
	}
	return driver.Result{Stdout: out.Bytes(), Stderr: errOut.Bytes()}, err
}

// InNS runs fn on a thread switched into the network namespace ns (sockets made there stay
// there); the thread is discarded afterwards.
func InNS(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		h, err := netns.GetFromName(ns)
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// LockHost serialises the tests that change the host's own firewall tables (they create Docker
// networks with published ports, or cnsmo's chains in the host's namespace) with the tests that
// compare those tables before and after, across test packages running side by side. The lock is
// held until the test ends.
func LockHost(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "cnsmo-host-tables.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatalf("host lock: %v", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		t.Fatalf("host lock: %v", err)
	}
	t.Cleanup(func() { f.Close() })
}
