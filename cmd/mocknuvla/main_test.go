package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/testutil"
)

// lockedBuffer collects a process's stderr while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func buildBinary(t *testing.T) string {
	t.Helper()
	testutil.RequireBinary(t, "go")
	bin := filepath.Join(t.TempDir(), "mocknuvla")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, string(out))
	return bin
}

var readyRE = regexp.MustCompile(`^mocknuvla: listening on (http://127\.0\.0\.1:\d+) run ([0-9a-f-]{36}) admin (http://127\.0\.0\.1:\d+)$`)

type proc struct {
	cmd    *exec.Cmd
	url    string
	uuid   string
	admin  string // the admin API's own listener
	stderr *lockedBuffer
	exited chan struct{} // closed when the process has been waited for
	err    error         // its exit status, valid once exited is closed
}

// start runs the binary and waits (bounded) for its ready line.
func start(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	stdout, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, stdout)
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	select {
	case line, ok := <-lines:
		require.True(t, ok, "no ready line; stderr: %s", p.stderr.String())
		m := readyRE.FindStringSubmatch(line)
		require.NotNil(t, m, "ready line %q", line)
		p.url, p.uuid, p.admin = m[1], m[2], m[3]
	case <-time.After(30 * time.Second):
		t.Fatalf("no ready line within 30s; stderr: %s", p.stderr.String())
	}
	return p
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	out, err := exec.Command("sh", "-c", `. "$1" && env`, "sh", path).Output()
	require.NoError(t, err)
	env := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(k, "SLIPSTREAM_") {
			env[k] = v
		}
	}
	return env
}

func TestBinary(t *testing.T) {
	testutil.RequireBinary(t, "sh", "curl")
	bin := buildBinary(t)
	envDir := filepath.Join(t.TempDir(), "ctx")
	p := start(t, bin, "--listen", "127.0.0.1:0",
		"--deployment", "../../mocknuvla/testdata/two-cloud-demo.json", "--env-dir", envDir, "--log-format", "json")
	url, uuid, stderr := p.url, p.uuid, p.stderr

	env := readEnv(t, filepath.Join(envDir, "web.2.env"))
	assert.Equal(t, uuid, env["SLIPSTREAM_DIID"])
	assert.Equal(t, url, env["SLIPSTREAM_SERVICEURL"])
	assert.Equal(t, "web.2", env["SLIPSTREAM_NODE_INSTANCE_NAME"])
	assert.Equal(t, "mocknuvla", env["SLIPSTREAM_USERNAME"])
	ctxFile, err := os.ReadFile(filepath.Join(envDir, "web.2", "slipstream.context"))
	require.NoError(t, err)
	assert.Contains(t, string(ctxFile), "[contextualization]\ndiid = "+uuid+"\n")
	for _, in := range []string{"cnsmo.1", "web.1"} {
		assert.FileExists(t, filepath.Join(envDir, in+".env"))
		assert.FileExists(t, filepath.Join(envDir, in, "slipstream.context"))
	}

	client := &http.Client{Timeout: 10 * time.Second}
	// Without a session: 401.
	res, err := client.Get(url + "/run/" + uuid + "/web.2:net.i2cat.cnsmo.service.fw.rules")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, res.StatusCode)

	// Log in with the instance's API key, then read a parameter.
	login, _ := json.Marshal(map[string]any{"sessionTemplate": map[string]string{
		"href": "session-template/api-key", "key": env["SLIPSTREAM_API_KEY"], "secret": env["SLIPSTREAM_API_SECRET"]}})
	res, err = client.Post(url+"/api/session", "application/json", bytes.NewReader(login))
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode)
	var cookie *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == "com.sixsq.slipstream.cookie" {
			cookie = c
		}
	}
	require.NotNil(t, cookie)
	assert.True(t, cookie.Secure)

	get := func(key string) (int, string) {
		req, _ := http.NewRequest("GET", url+"/run/"+uuid+"/"+key, nil)
		req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
		res, err := client.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := get("web.2:net.i2cat.cnsmo.service.fw.rules")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "[]", body)
	// The same with curl, as a recipe's debugging session would.
	out, err := exec.Command("curl", "-sS", "--max-time", "10", "-b", cookie.Name+"="+cookie.Value,
		url+"/run/"+uuid+"/web.2:net.i2cat.cnsmo.service.fw.rules").Output()
	require.NoError(t, err)
	assert.Equal(t, "[]", string(out))
	code, _ = get("web.2:cnsmo.server.nodeinstanceid")
	assert.Equal(t, http.StatusPreconditionFailed, code)

	// The admin API is not on the run API's listener, which every VM reaches.
	res, err = client.Post(url+"/admin/runs/"+uuid+"/nodes/web?n=1", "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusNotFound, res.StatusCode)
	// A scale up through the admin API writes the new instance's files too.
	res, err = client.Post(p.admin+"/admin/runs/"+uuid+"/nodes/web?n=1", "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusCreated, res.StatusCode)
	assert.Equal(t, "web.3", readEnv(t, filepath.Join(envDir, "web.3.env"))["SLIPSTREAM_NODE_INSTANCE_NAME"])

	// The console never shows a secret.
	assert.NotContains(t, stderr.String(), env["SLIPSTREAM_API_SECRET"])
	assert.NotContains(t, stderr.String(), cookie.Value)

	// SIGTERM: a clean exit.
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-p.exited:
		assert.NoError(t, p.err, "exit status; stderr: %s", stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatal("mocknuvla did not exit within 20s of SIGTERM")
	}
	assert.Contains(t, stderr.String(), "shutting down")
}

func TestBinaryFlagErrors(t *testing.T) {
	bin := buildBinary(t)
	bad := filepath.Join(t.TempDir(), "bad.json")
	require.NoError(t, os.WriteFile(bad, []byte(`{"nodes":[{"name":"web","cloud":"c"},{"name":"web","cloud":"c"}]}`), 0o600))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--deployment", bad}, `nodes[1] "web": duplicate node name`},
		{[]string{"--deployment", "/nonexistent.json"}, "no such file"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--env-dir", "x"}, "--env-dir needs --deployment"},
		{[]string{"--advertise", "ftp://x"}, "--advertise"},
		{[]string{"--user", "nopassword"}, "--user"},
		{[]string{"extra-arg"}, "unknown command"},
		{[]string{"--api", "nuvla3"}, "--api"},
		{[]string{"--staleness", "-1s"}, "--staleness"},
		{[]string{"--no-user-rights"}, "--no-user-rights is a Nuvla 2 option"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, bin, c.args...).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%v: %s", c.args, out)
		assert.Equal(t, 1, ee.ExitCode())
		assert.Contains(t, string(out), c.want, c.args)
	}
}

// With --api nuvla2 the deployment file makes a deployment group; every member gets an env file
// with the variables its compose file forwards (0600), and its key logs in.
func TestBinaryNuvla2(t *testing.T) {
	testutil.RequireBinary(t, "sh")
	bin := buildBinary(t)
	envDir := filepath.Join(t.TempDir(), "env")
	p := start(t, bin, "--api", "nuvla2", "--listen", "127.0.0.1:0",
		"--deployment", "../../mocknuvla/testdata/two-cloud-demo.json", "--env-dir", envDir)
	path := filepath.Join(envDir, "web.1.env")
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	out, err := exec.Command("sh", "-c", `. "$1" && env`, "sh", path).Output()
	require.NoError(t, err)
	env := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	assert.Equal(t, p.url, env["NUVLA_ENDPOINT"])
	assert.Equal(t, "deployment-set/"+p.uuid, env["NUVLA_DEPLOYMENT_GROUP_ID"])
	assert.Regexp(t, `^deployment/[0-9a-f-]{36}$`, env["NUVLA_DEPLOYMENT_ID"])
	assert.Regexp(t, `^credential/`, env["NUVLA_API_KEY"])
	assert.NotEmpty(t, env["NUVLA_API_SECRET"])
	assert.Equal(t, "web", env["CNSMO_NODE"])

	body, _ := json.Marshal(map[string]any{"template": map[string]string{"href": "session-template/api-key",
		"key": env["NUVLA_API_KEY"], "secret": env["NUVLA_API_SECRET"]}})
	res, err := http.Post(p.url+"/api/session", "application/json", bytes.NewReader(body))
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusCreated, res.StatusCode)
	res, err = http.Get(p.url + "/api/deployment-parameter")
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusForbidden, res.StatusCode, "no session: 403, never 401")
}
