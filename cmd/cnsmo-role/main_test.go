package main_test

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The ss-* tools, as processes (through links named ss-get etc.), against the real mocknuvla
// binary started from a deployment file: outputs and exit codes of the reference tools.
func TestSSToolsAgainstMocknuvlaBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: builds and runs binaries (-short)")
	}
	dir := t.TempDir()
	for _, pkg := range []string{"github.com/cnsmo/cnsmo/cmd/cnsmo-role", "github.com/cnsmo/cnsmo/cmd/mocknuvla"} {
		out, err := exec.Command("go", "build", "-o", dir+"/", pkg).CombinedOutput()
		require.NoError(t, err, string(out))
	}
	for _, tool := range []string{"ss-get", "ss-set", "ss-display", "ss-abort", "ss-random"} {
		require.NoError(t, os.Symlink(filepath.Join(dir, "cnsmo-role"), filepath.Join(dir, tool)))
	}
	ctxDir := filepath.Join(dir, "ctx")
	mock := exec.Command(filepath.Join(dir, "mocknuvla"), "--listen", "127.0.0.1:0",
		"--deployment", "../../recipes/application.json", "--env-dir", ctxDir)
	stdout, err := mock.StdoutPipe()
	require.NoError(t, err)
	mock.Stderr = &bytes.Buffer{}
	require.NoError(t, mock.Start())
	t.Cleanup(func() { _ = mock.Process.Signal(syscall.SIGTERM); _ = mock.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err, "mocknuvla's ready line; stderr: %s", mock.Stderr)
	require.True(t, strings.HasPrefix(line, "mocknuvla: listening on http://"), line)

	// run executes a tool as instance inst with the SLIPSTREAM_* variables of its env file.
	run := func(inst, tool string, args ...string) (string, string, int) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(ctxDir, inst+".env"))
		require.NoError(t, err)
		var env []string
		for _, l := range strings.Split(string(b), "\n") {
			l = strings.TrimPrefix(l, "export ")
			if k, v, ok := strings.Cut(l, "="); ok {
				env = append(env, k+"="+strings.Trim(v, "'"))
			}
		}
		cmd := exec.Command(filepath.Join(dir, tool), args...)
		cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+dir)
		cmd.Dir = dir
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			require.NoError(t, err)
		}
		return o.String(), e.String(), code
	}

	out, _, code := run("web.1", "ss-get", "--noblock", "net.services.enabled")
	require.Equal(t, 0, code)
	require.Equal(t, "\n", out, "--noblock prints an empty line when unset")

	start := time.Now()
	_, errOut, code := run("web.1", "ss-get", "--timeout", "1", "net.services.enabled")
	require.Equal(t, 9, code, "timeout")
	require.Contains(t, errOut, "Waiting for web.1:net.services.enabled")
	require.Less(t, time.Since(start), 20*time.Second)

	_, _, code = run("cnsmo.1", "ss-set", "cnsmo.server.nodeinstanceid", "cnsmo.1")
	require.Equal(t, 0, code)
	out, _, code = run("web.2", "ss-get", "cnsmo.server.nodeinstanceid")
	require.Equal(t, 0, code)
	require.Equal(t, "cnsmo.1\n", out, "mapped input, value + newline")

	_, _, code = run("web.1", "ss-display", "cnsmo: working")
	require.Equal(t, 0, code)
	out, _, _ = run("web.2", "ss-get", "web.1:statecustom")
	require.Equal(t, "cnsmo: working\n", out)

	out, _, code = run("web.1", "ss-random", "-s", "20")
	require.Equal(t, 0, code)
	require.Len(t, strings.TrimSpace(out), 20)

	_, _, code = run("web.1", "ss-set", "vpn.csr", strings.Repeat("x", 4097))
	require.Equal(t, 3, code, "too long: value error")

	_, _, code = run("web.1", "ss-get")
	require.Equal(t, 2, code, "usage")

	_, errOut, code = run("web.1", "ss-get", "no.such.param")
	require.Equal(t, 7, code, "unknown key: client error; stderr %s", errOut)
	_, _, code = run("web.2", "ss-get", "net.services.enabled")
	require.Equal(t, 8, code, "the unknown key aborted the run")
	out, _, code = run("web.2", "ss-get", "--ignore-abort", "ss:abort")
	require.Equal(t, 0, code)
	require.Contains(t, out, "no.such.param")

	_, _, code = run("web.1", "ss-abort", "--cancel")
	require.Equal(t, 0, code)
	_, _, code = run("web.1", "ss-abort", "stop here")
	require.Equal(t, 0, code)
	out, _, _ = run("web.2", "ss-get", "--ignore-abort", "ss:abort")
	require.Equal(t, "stop here\n", out)
	// As SlipStream's own ss-abort (no ignoreabort): aborting an aborted run is refused, exit 8.
	_, _, code = run("web.2", "ss-abort", "again")
	require.Equal(t, 8, code, "ss-abort on an aborted run")
	out, _, _ = run("web.2", "ss-get", "--ignore-abort", "ss:abort")
	require.Equal(t, "stop here\n", out, "the first reason stays")

	_, errOut, code = run("web.1", "cnsmo-role", "agent", "--driver", "podman")
	require.Equal(t, 2, code, "a bad --driver is a usage error")
	require.Contains(t, errOut, `--driver: "podman" is not docker or exec`)

	out, _, code = run("web.1", "cnsmo-role", "version")
	require.Equal(t, 0, code)
	require.Contains(t, out, "cnsmo-role")
}

// Without any context (no slipstream.context, no SLIPSTREAM_* variables) the ss-* tools end as
// the reference client does, with exit code 1, and say what is missing; so does the role.
func TestNoContextExitsOne(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command("go", "build", "-o", dir+"/cnsmo-role", ".").CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.Symlink(filepath.Join(dir, "cnsmo-role"), filepath.Join(dir, "ss-get")))
	for _, args := range [][]string{{"ss-get", "net.services.enabled"}, {"cnsmo-role", "ss-get", "x"}, {"cnsmo-role", "agent", "--state-dir", filepath.Join(dir, "state")}} {
		cmd := exec.Command(filepath.Join(dir, args[0]), args[1:]...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
		cmd.Dir = dir
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v", args)
		require.Equal(t, 1, ee.ExitCode(), "%v: %s", args, stderr.String())
		require.Contains(t, stderr.String(), "slipstream.context", "%v", args)
	}
}
