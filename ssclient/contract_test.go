package ssclient_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/ssclient"
)

const def = `{"name":"t","mutable":true,"nodes":[
 {"name":"cnsmo","cloud":"a","multiplicity":1,"parameters":[{"name":"cnsmo.server.nodeinstanceid"},{"name":"flag"}]},
 {"name":"web","cloud":"b","multiplicity":3,"parameters":[
   {"name":"cnsmo.server.nodeinstanceid","mapping":"cnsmo:cnsmo.server.nodeinstanceid"},{"name":"flag"},{"name":"in","value":"preset"}]}]}`

type env struct {
	srv *mocknuvla.Server
	url string
	ri  *mocknuvla.RunInfo
}

func setup(t *testing.T, opts mocknuvla.Options) *env {
	t.Helper()
	srv := mocknuvla.New(opts)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	d, err := mocknuvla.ParseDeployment([]byte(def))
	require.NoError(t, err)
	ri, err := srv.CreateRun(d)
	require.NoError(t, err)
	return &env{srv: srv, url: hs.URL, ri: ri}
}

func (e *env) client(t *testing.T, inst string, opts ...ssclient.Option) *ssclient.Client {
	t.Helper()
	cfg := ssclient.Config{ServiceURL: e.url, RunUUID: e.ri.UUID, NodeInstance: inst}
	for _, in := range e.ri.Instances {
		if in.Name == inst {
			cfg.APIKey, cfg.APISecret = in.APIKey, in.APISecret
		}
	}
	opts = append([]ssclient.Option{ssclient.WithPoll(10*time.Millisecond, 100*time.Millisecond), ssclient.WithRetry(5 * time.Second)}, opts...)
	c, err := ssclient.New(cfg, opts...)
	require.NoError(t, err)
	return c
}

func TestGetSetUnsetAndMapping(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	srv, web := e.client(t, "cnsmo.1"), e.client(t, "web.2")

	_, err := web.Get(ctx, "flag")
	require.ErrorIs(t, err, ssclient.ErrNotSet)
	v, err := web.Get(ctx, "in")
	require.NoError(t, err)
	require.Equal(t, "preset", v)

	require.NoError(t, srv.Set(ctx, "cnsmo.server.nodeinstanceid", "cnsmo.1"))
	v, err = web.Get(ctx, "cnsmo.server.nodeinstanceid") // mapped input, copied on set
	require.NoError(t, err)
	require.Equal(t, "cnsmo.1", v)
	v, err = web.Get(ctx, "cnsmo:cnsmo.server.nodeinstanceid") // node:key -> node.1:key
	require.NoError(t, err)
	require.Equal(t, "cnsmo.1", v)

	require.NoError(t, web.Set(ctx, "flag", "  yes \n"))
	v, err = srv.Get(ctx, "web.2:flag")
	require.NoError(t, err)
	require.Equal(t, "yes", v, "values are stripped as the reference client does")
	require.NoError(t, web.Unset(ctx, "flag"))
	_, err = srv.Get(ctx, "web.2:flag")
	require.ErrorIs(t, err, ssclient.ErrNotSet)

	ids, err := web.Get(ctx, "ids")
	require.NoError(t, err)
	require.Equal(t, "1,2,3", ids)
}

func TestWaitAndTimeout(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	web := e.client(t, "web.1")
	go func() {
		c := e.client(t, "web.3")
		for i := 0; i < 3; i++ { // let the waiter poll a few times first
			_, _ = c.Get(context.Background(), "in")
		}
		_ = c.Set(context.Background(), "flag", "up")
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := web.Wait(ctx, "web.3:flag")
	require.NoError(t, err)
	require.Equal(t, "up", v)

	short, cancel2 := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel2()
	_, err = web.Wait(short, "flag")
	require.ErrorIs(t, err, ssclient.ErrTimeout)
}

func TestUnknownKeyAbortsTheRunThenConflict(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	web := e.client(t, "web.1")
	_, err := web.Get(ctx, "no.such.key")
	require.ErrorIs(t, err, ssclient.ErrUnknownKey)
	_, err = web.Get(ctx, "in")
	require.ErrorIs(t, err, ssclient.ErrAborted)
	v, err := web.IgnoreAbort().Get(ctx, "ss:abort")
	require.NoError(t, err)
	require.Contains(t, v, "no.such.key")
	require.NoError(t, web.CancelAbort(ctx))
	_, err = web.Get(ctx, "in")
	require.NoError(t, err)
}

func TestAbortAndDisplay(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	web := e.client(t, "web.2")
	require.NoError(t, web.Display(ctx, "working"))
	v, _, _ := e.srv.Param(e.ri.UUID, "web.2:statecustom")
	require.Equal(t, "working", v)
	require.NoError(t, web.Abort(ctx, "fw.rules[0]: bad"))
	v, _, _ = e.srv.Param(e.ri.UUID, "ss:abort")
	require.Equal(t, "fw.rules[0]: bad", v)
	err := web.Set(ctx, "flag", "x")
	require.ErrorIs(t, err, ssclient.ErrAborted)
}

// An over-long reason is cut in the middle as the reference client does (truncate_middle with
// "\n(truncated)\n": the first and last 2041 characters stay).
func TestAbortTruncatesTheReasonInTheMiddle(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	reason := "HEAD" + strings.Repeat("a", 3000) + strings.Repeat("b", 3000) + "TAIL"
	require.NoError(t, e.client(t, "web.1").Abort(ctx, reason))
	v, _, _ := e.srv.Param(e.ri.UUID, "ss:abort")
	require.Equal(t, reason[:2041]+"\n(truncated)\n"+reason[len(reason)-2041:], v)
	require.Len(t, v, 4095)
}

func TestTooLongRefusedLocallyAndByServer(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	web := e.client(t, "web.1")
	long := strings.Repeat("x", ssclient.MaxValueLen+1)
	e.srv.ResetCounters()
	require.ErrorIs(t, web.Set(ctx, "flag", long), ssclient.ErrTooLong)
	require.Zero(t, e.srv.Counters()["PUT /run/{uuid}/{key}"], "refused before sending")
	require.NoError(t, web.Set(ctx, "flag", strings.Repeat("y", ssclient.MaxValueLen)))
}

func TestWholeRunAndBarrier(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	webs := []string{"web.1", "web.2", "web.3"}
	run, err := e.client(t, "cnsmo.1").Run(ctx)
	require.NoError(t, err)
	require.Equal(t, e.ri.UUID, run.UUID)
	require.Equal(t, []string{"cnsmo", "web"}, run.Nodes())
	require.Equal(t, webs, run.Instances("web"))
	v, ok := run.Value("web.2:in")
	require.True(t, ok)
	require.Equal(t, "preset", v)

	go func() {
		for _, w := range webs {
			_ = e.client(t, w).Set(context.Background(), "flag", "ready-"+w)
		}
	}()
	e.srv.ResetCounters()
	got, err := e.client(t, "cnsmo.1").WaitAll(ctx, "flag", webs, func(v string) bool { return strings.HasPrefix(v, "ready") })
	require.NoError(t, err)
	require.Equal(t, "ready-web.3", got["web.3"])
	require.Zero(t, e.srv.Counters()["GET /run/{uuid}/{key}"], "the barrier reads only the whole run")
}

func TestScaleAndComplete(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	c := e.client(t, "cnsmo.1")
	names, err := c.ScaleUp(ctx, "web", 2)
	require.NoError(t, err)
	require.Equal(t, []string{"web.4", "web.5"}, names)
	_, err = c.ScaleUp(ctx, "web", 1) // Provisioning now: 409
	require.ErrorIs(t, err, ssclient.ErrConflict)
	require.NoError(t, e.srv.SetState(e.ri.UUID, "Ready"))
	require.NoError(t, c.ScaleDown(ctx, "web", []int{1}, false))
	ids, err := c.Get(ctx, "web:ids")
	require.NoError(t, err)
	require.Equal(t, "2,3,4,5", ids)
}

// The server marks its cookie Secure; over plain http to a non-loopback address a cookie jar
// would drop it. The client must still authenticate.
func TestSecureCookieOverPlainHTTPAndRelogin(t *testing.T) {
	srv := mocknuvla.New(mocknuvla.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { hs.Close() })
	d, _ := mocknuvla.ParseDeployment([]byte(def))
	ri, err := srv.CreateRun(d)
	require.NoError(t, err)
	in := ri.Instances[0]
	// Without credentials: 401, typed.
	anon, err := ssclient.New(ssclient.Config{ServiceURL: "http://" + ln.Addr().String(), RunUUID: ri.UUID, NodeInstance: in.Name})
	require.NoError(t, err)
	_, err = anon.Get(context.Background(), "flag")
	require.ErrorIs(t, err, ssclient.ErrUnauthorized)
	// With an API key, through a name that is not "localhost" (so no jar would send a Secure cookie).
	c, err := ssclient.New(ssclient.Config{ServiceURL: "http://" + ln.Addr().String(), RunUUID: ri.UUID, NodeInstance: in.Name,
		APIKey: in.APIKey, APISecret: in.APISecret})
	require.NoError(t, err)
	require.NoError(t, c.Set(context.Background(), "flag", "1"))
	srv.ResetCounters()
	require.NoError(t, c.Set(context.Background(), "flag", "2"))
	require.Zero(t, srv.Counters()["POST /api/session"], "the session is reused")
	// Wrong secret: a clear typed error.
	bad, _ := ssclient.New(ssclient.Config{ServiceURL: "http://" + ln.Addr().String(), RunUUID: ri.UUID, NodeInstance: in.Name,
		APIKey: in.APIKey, APISecret: "wrong"})
	_, err = bad.Get(context.Background(), "flag")
	require.ErrorIs(t, err, ssclient.ErrUnauthorized)
}

func TestFaultsRetriedWithinBoundThenTyped(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	ctx := context.Background()
	e.srv.SetFaults(e.ri.UUID, mocknuvla.Faults{Error5xxRatio: 0.3, DropRatio: 0.2, Latency: 20 * time.Millisecond})
	c := e.client(t, "web.1", ssclient.WithRetry(time.Minute))
	for i := 0; i < 10; i++ {
		require.NoError(t, c.Set(ctx, "flag", "v"), "attempt %d", i)
		v, err := c.Get(ctx, "flag")
		require.NoError(t, err)
		require.Equal(t, "v", v)
	}
	e.srv.SetFaults(e.ri.UUID, mocknuvla.Faults{Error5xxRatio: 1})
	short := e.client(t, "web.1", ssclient.WithRetry(700*time.Millisecond))
	start := time.Now()
	_, err := short.Get(ctx, "flag")
	require.Error(t, err)
	var se *ssclient.StatusError
	require.True(t, errors.As(err, &se), "got %v", err)
	require.GreaterOrEqual(t, se.Code, 500)
	require.Less(t, time.Since(start), 30*time.Second, "the retry bound holds")
}

func TestConfigFromContextFileAndEnv(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "slipstream.context"), []byte(
		"[contextualization]\ndiid = run-1\nserviceurl = http://198.18.0.1:8080\nnode_instance_name = web.1\napi_key = k\napi_secret = s\n"), 0o600))
	env := map[string]string{}
	cfg, err := ssclient.LoadConfigFrom([]string{t.TempDir(), dir}, func(k string) string { return env[k] })
	require.NoError(t, err)
	require.Equal(t, "run-1", cfg.RunUUID)
	require.Equal(t, "web.1", cfg.NodeInstance)
	require.Equal(t, filepath.Join(dir, "slipstream.context"), cfg.ContextFile)
	env["SLIPSTREAM_NODE_INSTANCE_NAME"] = "web.2"
	cfg, err = ssclient.LoadConfigFrom([]string{dir}, func(k string) string { return env[k] })
	require.NoError(t, err)
	require.Equal(t, "web.2", cfg.NodeInstance, "the environment wins")
	_, err = ssclient.LoadConfigFrom([]string{t.TempDir()}, func(string) string { return "" })
	require.ErrorContains(t, err, "SLIPSTREAM_DIID")
}

func TestQualify(t *testing.T) {
	for in, want := range map[string]string{
		"hostname":               "web.2:hostname",
		"multiplicity":           "web:multiplicity",
		"ids":                    "web:ids",
		"cnsmo:vpn.port":         "cnsmo.1:vpn.port",
		"web.3:vpn.address":      "web.3:vpn.address",
		"ss:abort":               "ss:abort",
		"orchestrator-a:x":       "orchestrator-a:x",
		"machine:x":              "machine:x",
		"web:ids":                "web:ids",
		"net.services.enabled":   "web.2:net.services.enabled",
		"cnsmo.1:net.services.x": "cnsmo.1:net.services.x",
	} {
		require.Equal(t, want, ssclient.Qualify("web.2", in), in)
	}
}

// Retries through 5xx answers are logged at warn level (an operator sees a failing store), with
// the key and the status.
func TestRetriesAreWarned(t *testing.T) {
	e := setup(t, mocknuvla.Options{})
	var buf bytes.Buffer
	web := e.client(t, "web.1", ssclient.WithRetry(600*time.Millisecond), ssclient.WithLogger(zerolog.New(&buf).Level(zerolog.WarnLevel)))
	_, err := web.Get(context.Background(), "in") // logged in
	require.NoError(t, err)
	e.srv.SetFaults(e.ri.UUID, mocknuvla.Faults{Error5xxRatio: 1})
	_, err = web.Get(context.Background(), "in")
	require.Error(t, err)
	require.Contains(t, buf.String(), `"level":"warn"`)
	require.Contains(t, buf.String(), `"key":"web.1:in"`)
	require.Contains(t, buf.String(), `"status":50`)
}
