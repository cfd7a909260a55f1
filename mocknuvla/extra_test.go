package mocknuvla_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

func login(t *testing.T, f *fixture, body string) *http.Response {
	t.Helper()
	res, err := f.hs.Client().Post(f.hs.URL+"/api/session", "application/json", strings.NewReader(body))
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res
}

func apiKeyBody(key, secret string) string {
	b, _ := json.Marshal(map[string]any{"sessionTemplate": map[string]string{"href": "session-template/api-key", "key": key, "secret": secret}})
	return string(b)
}

func sessionCookie(t *testing.T, res *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range res.Cookies() {
		if c.Name == mocknuvla.CookieName {
			return c
		}
	}
	t.Fatalf("no %s cookie in %v", mocknuvla.CookieName, res.Header.Values("Set-Cookie"))
	return nil
}

func TestAuth(t *testing.T) {
	f := newFixture(t, load(t, "two-cloud-demo.json"), mocknuvla.Options{Users: map[string]string{"admin": "pw"}})
	web1 := f.ri.Instances[1]
	require.Equal(t, "web.1", web1.Name)

	// No cookie: 401 on every run route.
	for _, p := range []string{"web.1:ready", "", "web"} {
		assert.Equal(t, http.StatusUnauthorized, f.do("GET", p, "").code, p)
	}
	assert.Equal(t, http.StatusUnauthorized, f.do("GET", "web.1:ready", "", "Cookie", mocknuvla.CookieName+"=forged").code)
	// No side effect without auth: an unknown key does not abort the run.
	assert.Equal(t, http.StatusUnauthorized, f.do("GET", "web.1:nope", "").code)
	_, set := f.param("ss:abort")
	assert.False(t, set)

	// Bad credentials: 403, no cookie.
	res := login(t, f, apiKeyBody(web1.APIKey, "wrong"))
	assert.Equal(t, http.StatusForbidden, res.StatusCode)
	assert.Empty(t, res.Cookies())
	assert.Equal(t, http.StatusForbidden, login(t, f, apiKeyBody("credential/none", "x")).StatusCode)
	assert.Equal(t, http.StatusBadRequest, login(t, f, `{"sessionTemplate":{"href":"session-template/other"}}`).StatusCode)
	assert.Equal(t, http.StatusBadRequest, login(t, f, `not json`).StatusCode)
	assert.Equal(t, http.StatusBadRequest, login(t, f, `{}`).StatusCode)

	// Good credentials: 201 and a Secure cookie.
	res = login(t, f, apiKeyBody(web1.APIKey, web1.APISecret))
	require.Equal(t, http.StatusCreated, res.StatusCode)
	c := sessionCookie(t, res)
	assert.True(t, c.Secure, "the cookie has the Secure flag, as the real server sets it")
	assert.True(t, c.HttpOnly)
	assert.Equal(t, "/", c.Path)
	assert.Contains(t, res.Header.Get("Set-Cookie"), "; Secure")

	// A Go cookiejar does not send a Secure cookie over plain http to a non-loopback host (the
	// testbed's 198.18 address): clients must handle that. (It does on loopback, as browsers do.)
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	u, _ := url.Parse("http://198.18.0.1:8080/run/x")
	jar.SetCookies(u, []*http.Cookie{c})
	assert.Empty(t, jar.Cookies(u))

	cookie := mocknuvla.CookieName + "=" + c.Value
	f.mustSet("web.1:ready", "yes")
	r := f.do("GET", "web.1:ready", "", "Cookie", cookie)
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "yes", r.body)
	assert.Equal(t, http.StatusOK, f.do("GET", "", "", "Cookie", cookie).code)

	// A machine credential is for its own run only.
	other, err := f.srv.CreateRun(load(t, "minimal.json"))
	require.NoError(t, err)
	assert.Equal(t, http.StatusForbidden, f.do("GET", "/run/"+other.UUID+"/node.1:vmstate", "", "Cookie", cookie).code)

	// Internal user (also with Nuvla 2's "template" name): every run.
	assert.Equal(t, http.StatusForbidden, login(t, f, `{"sessionTemplate":{"href":"session-template/internal","username":"admin","password":"bad"}}`).StatusCode)
	res = login(t, f, `{"template":{"href":"session-template/internal","username":"admin","password":"pw"}}`)
	require.Equal(t, http.StatusCreated, res.StatusCode)
	admin := mocknuvla.CookieName + "=" + sessionCookie(t, res).Value
	assert.Equal(t, http.StatusOK, f.do("GET", "/run/"+other.UUID+"/node.1:vmstate", "", "Cookie", admin).code)
	assert.Equal(t, http.StatusOK, f.do("GET", "web.1:ready", "", "Cookie", admin).code)

	// Scaled-up instances get working keys.
	names, err := f.srv.ScaleUp(f.ri.UUID, "web", 1)
	require.NoError(t, err)
	in, err := f.srv.Instance(f.ri.UUID, names[0])
	require.NoError(t, err)
	assert.Equal(t, http.StatusCreated, login(t, f, apiKeyBody(in.APIKey, in.APISecret)).StatusCode)

	// Logout.
	req, _ := http.NewRequest("DELETE", f.hs.URL+"/api/session", nil)
	req.Header.Set("Cookie", cookie)
	res, err = f.hs.Client().Do(req)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Equal(t, http.StatusUnauthorized, f.do("GET", "web.1:ready", "", "Cookie", cookie).code)
}

func TestFaults5xxAndDrop(t *testing.T) {
	f := demo(t)
	f.mustSet("web.1:ready", "yes")
	f.srv.SetFaults("", mocknuvla.Faults{Error5xxRatio: 1})
	codes := map[int]int{}
	for i := 0; i < 40; i++ {
		codes[f.do("GET", "web.1:ready", "").code]++
	}
	assert.Equal(t, 40, codes[500]+codes[503], "every answer is a 5xx: %v", codes)
	assert.Positive(t, codes[500])
	assert.Positive(t, codes[503])
	// The admin API is never faulted.
	r := f.do("GET", "/admin/runs", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, int64(40), f.srv.FaultCounters()["5xx"])

	// A run's own faults replace the global ones; Faults{} clears.
	f.srv.SetFaults(f.ri.UUID, mocknuvla.Faults{DropRatio: 1})
	_, err := f.hs.Client().Get(f.hs.URL + "/run/" + f.ri.UUID + "/web.1:ready")
	require.Error(t, err, "the connection is closed without an answer")
	// (net/http retries an idempotent request once on a reused connection: 1 or 2 drops.)
	assert.GreaterOrEqual(t, f.srv.FaultCounters()["drop"], int64(1))
	assert.Equal(t, http.StatusOK, f.do("GET", "/admin/runs/"+f.ri.UUID+"/params", "").code)

	f.srv.SetFaults(f.ri.UUID, mocknuvla.Faults{})
	f.srv.SetFaults("", mocknuvla.Faults{})
	assert.Equal(t, http.StatusOK, f.do("GET", "web.1:ready", "").code)

	// Ratios in between: both outcomes happen (bounded loop).
	f.srv.SetFaults(f.ri.UUID, mocknuvla.Faults{Error5xxRatio: 0.5})
	seen := map[bool]bool{}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		seen[f.do("GET", "web.1:ready", "").code == http.StatusOK] = true
	}
	assert.Len(t, seen, 2)
}

func TestFaultLatencyIsInterruptible(t *testing.T) {
	srv := mocknuvla.New(mocknuvla.Options{NoAuth: true})
	ri, err := srv.CreateRun(load(t, "minimal.json"))
	require.NoError(t, err)
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	srv.SetFaults(ri.UUID, mocknuvla.Faults{Latency: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", hs.URL+"/run/"+ri.UUID+"/node.1:vmstate", nil)
	_, err = hs.Client().Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// The handler returns once the client went away: Close (which waits for handlers) ends.
	done := make(chan struct{})
	go func() { hs.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the latency sleep did not end when the client went away")
	}
	assert.Equal(t, int64(1), srv.Counters()["GET /run/{uuid}/{key}"])

	// Another run is not delayed by this run's faults.
	f2, err := srv.GetFaults(ri.UUID)
	require.NoError(t, err)
	assert.Equal(t, time.Hour, f2.Latency)
	g, _ := srv.GetFaults("")
	assert.Zero(t, g)
}

func TestFaultLatencyApplies(t *testing.T) {
	f := demo(t)
	f.srv.SetFaults("", mocknuvla.Faults{Latency: 20 * time.Millisecond})
	assert.Equal(t, http.StatusOK, f.do("GET", "web.1:vmstate", "").code)
	assert.Equal(t, int64(1), f.srv.FaultCounters()["latency"])
}

func TestCounters(t *testing.T) {
	f := demo(t)
	f.do("GET", "web.1:vmstate", "")
	f.do("GET", "web.1:vmstate", "")
	f.do("PUT", "web.1:ready", "x")
	f.do("DELETE", "web.1:ready", "")
	f.do("POST", "web.1:complete", "")
	f.do("GET", "", "")
	f.do("DELETE", "/run/"+f.ri.UUID+"/web", "ids=1")
	f.do("GET", "web", "")
	f.do("POST", "/api/session", "{}")
	f.do("GET", "/admin/runs", "")
	f.do("GET", "/elsewhere", "")
	want := map[string]int64{
		"GET /run/{uuid}/{key}": 2, "PUT /run/{uuid}/{key}": 1, "DELETE /run/{uuid}/{key}": 1,
		"POST /run/{uuid}/{key}": 1, "GET /run/{uuid}": 1, "DELETE /run/{uuid}/{node}": 1,
		"GET /run/{uuid}/{node}": 1, "POST /api/session": 1, "GET (unknown route)": 1,
	}
	assert.Equal(t, want, f.srv.Counters(), "admin requests are not counted")
	r := f.do("GET", "/admin/counters", "")
	var got struct {
		Routes  map[string]int64 `json:"routes"`
		Clients map[string]int64 `json:"clients"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &got))
	assert.Equal(t, want, got.Routes)
	assert.Equal(t, map[string]int64{"127.0.0.1": 10}, got.Clients, "the same requests, by client address")
	assert.Equal(t, http.StatusNoContent, f.do("DELETE", "/admin/counters", "").code)
	assert.Empty(t, f.srv.Counters())
	assert.Empty(t, f.srv.ClientCounters())
	f.do("GET", "web.1:vmstate", "")
	f.srv.ResetCounters()
	assert.Empty(t, f.srv.Counters())
}

func TestDeploymentValidation(t *testing.T) {
	node := func(extra string) string {
		return `{"name":"d","nodes":[{"name":"a","cloud":"c","parameters":[{"name":"p"}]}` + extra + `]}`
	}
	cases := []struct{ name, json, want string }{
		{"not json", `{`, "decode JSON"},
		{"unknown top field", `{"name":"d","nodez":[]}`, `unknown field "nodez"`},
		{"unknown param field", `{"nodes":[{"name":"z","cloud":"c"},{"name":"a","cloud":"c","parameters":[{"name":"q"},{"name":"p","maping":"x:y"}]}]}`, `nodes[1] "a": parameters[1] "p": unknown field "maping"`},
		{"unknown node field", `{"nodes":[{"name":"a","cloud":"c","multiplicty":2}]}`, `nodes[0] "a": unknown field "multiplicty"`},
		{"wrong type", `{"nodes":[{"name":"a","cloud":"c","multiplicity":"2"}]}`, `nodes[0] "a": multiplicity: a string where a number goes`},
		{"object for a list", `{"nodes":[{"name":"a","cloud":"c","parameters":{}}]}`, `nodes[0] "a": parameters: an object where a list goes`},
		{"no nodes", `{"name":"d","nodes":[]}`, "at least one node"},
		{"empty node name", `{"nodes":[{"cloud":"c"}]}`, "nodes[0]: name is empty"},
		{"dotted node name", `{"nodes":[{"name":"a.b","cloud":"c"}]}`, `nodes[0] "a.b": name`},
		{"reserved node", `{"nodes":[{"name":"ss","cloud":"c"}]}`, "reserved"},
		{"orchestrator node", `{"nodes":[{"name":"orchestrator-x","cloud":"c"}]}`, "reserved"},
		{"duplicate node", node(`,{"name":"a","cloud":"c"}`), `nodes[1] "a": duplicate node name`},
		{"no cloud", `{"nodes":[{"name":"a"}]}`, `nodes[0] "a": cloud is empty`},
		{"bad cloud", `{"nodes":[{"name":"a","cloud":"c:1"}]}`, `cloud "c:1"`},
		{"negative multiplicity", `{"nodes":[{"name":"a","cloud":"c","multiplicity":-1}]}`, `nodes[0] "a": multiplicity -1 is negative`},
		{"huge multiplicity", `{"nodes":[{"name":"a","cloud":"c","multiplicity":100000}]}`, "more than 1000"},
		{"empty param name", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"value":"x"}]}]}`, `nodes[0] "a": parameters[0]: name is empty`},
		{"colon param", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"name":"x:y"}]}]}`, `parameters[0] "x:y": name`},
		{"managed param", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"name":"abort"}]}]}`, "managed by the server"},
		{"duplicate param", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"name":"p"},{"name":"p"}]}]}`, `parameters[1] "p": duplicate parameter`},
		{"value too long", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"name":"p","value":"` + strings.Repeat("v", 4097) + `"}]}]}`, "4097 characters"},
		{"mapping syntax", node(`,{"name":"b","cloud":"c","parameters":[{"name":"q","mapping":"nocolon"}]}`), `nodes[1] "b": parameters[0] "q": mapping "nocolon"`},
		{"mapping unknown node", node(`,{"name":"b","cloud":"c","parameters":[{"name":"q","mapping":"z:p"}]}`), `mapping "z:p": node "z" does not exist`},
		{"mapping unknown param", node(`,{"name":"b","cloud":"c","parameters":[{"name":"q","mapping":"a:nope"}]}`), `mapping "a:nope": parameter "nope" is not declared in node "a"`},
		{"mapping bad index", node(`,{"name":"b","cloud":"c","parameters":[{"name":"q","mapping":"a.x:p"}]}`), `instance index "x"`},
		{"mapping absent instance", node(`,{"name":"b","cloud":"c","parameters":[{"name":"q","mapping":"a.3:p"}]}`), "instance a.3 does not exist"},
		{"self mapping", `{"nodes":[{"name":"a","cloud":"c","parameters":[{"name":"p","mapping":"a:p"}]}]}`, "cannot map to itself"},
		{"bad state", `{"state":"Running","nodes":[{"name":"a","cloud":"c"}]}`, `state "Running"`},
		{"trailing", `{"nodes":[{"name":"a","cloud":"c"}]} {}`, "trailing data"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := mocknuvla.ParseDeployment([]byte(c.json))
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}

func TestDeploymentFiles(t *testing.T) {
	files, err := filepath.Glob("testdata/*.json")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		d, err := mocknuvla.LoadDeployment(file)
		require.NoError(t, err, file)
		_, err = mocknuvla.New(mocknuvla.Options{}).CreateRun(d)
		require.NoError(t, err, file)
	}
	// The application definition in recipes/ is a deployment file too.
	if _, err := os.Stat("../recipes/application.json"); err == nil {
		_, err := mocknuvla.LoadDeployment("../recipes/application.json")
		require.NoError(t, err)
	}
	_, err = mocknuvla.LoadDeployment("testdata/absent.json")
	require.Error(t, err)

	d := load(t, "minimal.json")
	assert.Equal(t, 1, d.Nodes[0].Multiplicity, "an absent multiplicity means 1")
	d, err = mocknuvla.ParseDeployment([]byte(`{"nodes":[{"name":"a","cloud":"c","multiplicity":0}]}`))
	require.NoError(t, err)
	assert.Equal(t, 0, d.Nodes[0].Multiplicity)
}

func TestDeploymentSetValue(t *testing.T) {
	d := load(t, "two-cloud-demo.json")
	require.NoError(t, d.SetValue("web", "net.i2cat.cnsmo.service.fw.rules", `[{"policy":"denyall"}]`))
	require.NoError(t, d.SetValue("web", "hostname", "198.18.0.5"))
	assert.Error(t, d.SetValue("web", "undeclared", "x"))
	assert.Error(t, d.SetValue("nope", "x", "y"))
	assert.Error(t, d.SetValue("web", "abort", "y"))
	assert.Error(t, d.SetValue("web", "ready", strings.Repeat("x", 4097)))
	srv := mocknuvla.New(mocknuvla.Options{})
	ri, err := srv.CreateRun(d)
	require.NoError(t, err)
	v, _, _ := srv.Param(ri.UUID, "web.2:net.i2cat.cnsmo.service.fw.rules")
	assert.Equal(t, `[{"policy":"denyall"}]`, v)
	v, _, _ = srv.Param(ri.UUID, "web.1:hostname")
	assert.Equal(t, "198.18.0.5", v)
	// The run does not share the caller's deployment.
	require.NoError(t, d.SetValue("web", "hostname", "198.18.0.6"))
	names, err := srv.ScaleUp(ri.UUID, "web", 1)
	require.NoError(t, err)
	v, _, _ = srv.Param(ri.UUID, names[0]+":hostname")
	assert.Equal(t, "198.18.0.5", v)
	_, err = srv.CreateRun(&mocknuvla.Deployment{})
	assert.Error(t, err)
}

func TestEnvDir(t *testing.T) {
	f := demo(t)
	dir := filepath.Join(t.TempDir(), "env")
	url := "http://198.18.0.1:8080"
	require.NoError(t, mocknuvla.WriteEnvDir(dir, url, f.ri))
	for _, in := range f.ri.Instances {
		env := filepath.Join(dir, in.Name+".env")
		st, err := os.Stat(env)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
		// Sourceable by a POSIX shell.
		out, err := exec.Command("sh", "-c", `. "$1" && printf '%s|%s|%s|%s|%s|%s' "$SLIPSTREAM_DIID" "$SLIPSTREAM_SERVICEURL" "$SLIPSTREAM_NODE_INSTANCE_NAME" "$SLIPSTREAM_API_KEY" "$SLIPSTREAM_API_SECRET" "$SLIPSTREAM_USERNAME"`, "sh", env).Output()
		require.NoError(t, err)
		assert.Equal(t, strings.Join([]string{f.ri.UUID, url, in.Name, in.APIKey, in.APISecret, "mocknuvla"}, "|"), string(out))

		ctx, err := os.ReadFile(filepath.Join(dir, in.Name, "slipstream.context"))
		require.NoError(t, err)
		ini := parseINI(t, string(ctx))
		assert.Equal(t, map[string]string{"diid": f.ri.UUID, "serviceurl": url, "node_instance_name": in.Name,
			"api_key": in.APIKey, "api_secret": in.APISecret, "username": "mocknuvla"}, ini)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2*len(f.ri.Instances), "no orchestrator files, no temp files left")

	// Env finds instances created after the RunInfo was returned.
	names, err := f.srv.ScaleUp(f.ri.UUID, "web", 1)
	require.NoError(t, err)
	env := f.ri.Env(url, names[0])
	require.Len(t, env, 6)
	assert.Contains(t, env, "SLIPSTREAM_NODE_INSTANCE_NAME="+names[0])
	assert.Nil(t, f.ri.Env(url, "web.99"))
}

func parseINI(t *testing.T, s string) map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	require.Equal(t, "[contextualization]", lines[0])
	out := map[string]string{}
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, "=")
		require.True(t, ok, l)
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out
}

func TestOnInstancesHook(t *testing.T) {
	var mu sync.Mutex
	var got []string
	f := newFixture(t, load(t, "two-cloud-demo.json"), mocknuvla.Options{NoAuth: true, OnInstances: func(uuid string, in []mocknuvla.InstanceInfo) {
		mu.Lock()
		defer mu.Unlock()
		for _, i := range in {
			got = append(got, uuid+"/"+i.Name)
		}
	}})
	require.Equal(t, http.StatusCreated, f.do("POST", "web", "n=2").code)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []string{f.ri.UUID + "/web.3", f.ri.UUID + "/web.4"}, got)
}

func TestGoAPIErrors(t *testing.T) {
	f := demo(t)
	_, _, err := f.srv.Param("nope", "x:y")
	assert.ErrorIs(t, err, mocknuvla.ErrUnknownRun)
	_, _, err = f.srv.Param(f.ri.UUID, "web.1:nope")
	assert.ErrorIs(t, err, mocknuvla.ErrUnknownKey)
	_, set := f.param("ss:abort")
	assert.False(t, set, "the Go API never aborts the run")
	assert.ErrorIs(t, f.srv.SetParam(f.ri.UUID, "web.1:nope", "x"), mocknuvla.ErrUnknownKey)
	assert.ErrorIs(t, f.srv.SetParam(f.ri.UUID, "web.1:ready", strings.Repeat("x", 4097)), mocknuvla.ErrBadRequest)
	assert.ErrorIs(t, f.srv.SetState(f.ri.UUID, "Bogus"), mocknuvla.ErrBadRequest)
	assert.ErrorIs(t, f.srv.SetState("nope", "Ready"), mocknuvla.ErrUnknownRun)
	_, err = f.srv.ScaleUp(f.ri.UUID, "nope", 1)
	assert.ErrorIs(t, err, mocknuvla.ErrUnknownNode)
	assert.ErrorIs(t, f.srv.ScaleDown(f.ri.UUID, "web", []int{7}), mocknuvla.ErrBadRequest)
	_, err = f.srv.Instance(f.ri.UUID, "web.9")
	assert.Error(t, err)
	var se *mocknuvla.StatusError
	require.True(t, errors.As(f.srv.SetParam("nope", "a:b", ""), &se))
	assert.Equal(t, http.StatusNotFound, se.Code)

	// SetParam of ss:state accepts any state; of an abort key raises ss:abort.
	require.NoError(t, f.srv.SetParam(f.ri.UUID, "ss:state", "Executing"))
	assert.Equal(t, "Executing", f.state())
	require.NoError(t, f.srv.SetParam(f.ri.UUID, "web.2:abort", "bad"))
	v, _ := f.param("ss:abort")
	assert.Equal(t, "bad", v)
	require.NoError(t, f.srv.SetParam(f.ri.UUID, "web.2:abort", "ignored: the first reason stays"))
	v, _ = f.param("web.2:abort")
	assert.Equal(t, "bad", v)
	require.NoError(t, f.srv.SetParam(f.ri.UUID, "ss:abort", ""))
	_, set = f.param("ss:abort")
	assert.False(t, set, "SetParam of an abort key with \"\" clears the abort")
	require.NoError(t, f.srv.SetParam(f.ri.UUID, "web.2:abort", ""))
	_, set = f.param("web.2:abort")
	assert.False(t, set)
	st, err := f.srv.Complete(f.ri.UUID, "web.1")
	require.NoError(t, err)
	assert.Equal(t, "Executing", st)
	assert.Equal(t, []string{f.ri.UUID}, f.srv.Runs())
}

func TestConcurrentUse(t *testing.T) {
	f := newFixture(t, load(t, "barrier100.json"), mocknuvla.Options{NoAuth: true})
	var wg sync.WaitGroup
	for w := 1; w <= 20; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			key := fmt.Sprintf("worker.%d:ready", w)
			for i := 0; i < 20; i++ {
				req, _ := http.NewRequest("PUT", f.hs.URL+"/run/"+f.ri.UUID+"/"+key, strings.NewReader(fmt.Sprint(i)))
				if res, err := f.hs.Client().Do(req); err == nil {
					res.Body.Close()
				}
				if res, err := f.hs.Client().Get(f.hs.URL + "/run/" + f.ri.UUID); err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				_, _ = f.srv.Params(f.ri.UUID)
				_ = f.srv.Counters()
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 10; i++ {
			f.mustSet("coordinator.1:go", fmt.Sprint(i))
			if _, err := f.srv.ScaleUp(f.ri.UUID, "worker", 1); err == nil {
				_ = f.srv.SetState(f.ri.UUID, mocknuvla.StateReady)
			}
			f.srv.SetFaults("", mocknuvla.Faults{})
		}
	}()
	wg.Wait()
	for w := 1; w <= 20; w++ {
		v, _ := f.param(fmt.Sprintf("worker.%d:ready", w))
		assert.Equal(t, "19", v)
	}
	v, _ := f.param("worker.110:go")
	assert.Equal(t, "9", v, "the last scaled-up worker follows the coordinator's go")
	m, _ := f.param("worker:multiplicity")
	assert.Equal(t, "110", m)
}
