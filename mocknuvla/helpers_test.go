package mocknuvla_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

// fixture is a mock served by httptest with one run.
type fixture struct {
	t   *testing.T
	srv *mocknuvla.Server
	hs  *httptest.Server
	adm *httptest.Server // the admin API's own listener
	ri  *mocknuvla.RunInfo
}

func load(t *testing.T, file string) *mocknuvla.Deployment {
	t.Helper()
	d, err := mocknuvla.LoadDeployment("testdata/" + file)
	require.NoError(t, err)
	return d
}

func newFixture(t *testing.T, d *mocknuvla.Deployment, opts mocknuvla.Options) *fixture {
	t.Helper()
	hs := httptest.NewUnstartedServer(nil)
	opts.ServiceURL = "http://" + hs.Listener.Addr().String()
	srv := mocknuvla.New(opts)
	hs.Config.Handler = srv
	hs.Start()
	t.Cleanup(hs.Close)
	adm := httptest.NewServer(srv.Admin())
	t.Cleanup(adm.Close)
	ri, err := srv.CreateRun(d)
	require.NoError(t, err)
	return &fixture{t: t, srv: srv, hs: hs, adm: adm, ri: ri}
}

// demo is the two-cloud demo run (mutable, Ready), served without auth.
func demo(t *testing.T) *fixture {
	return newFixture(t, load(t, "two-cloud-demo.json"), mocknuvla.Options{NoAuth: true})
}

type resp struct {
	code int
	body string
	hdr  http.Header
}

// do sends a request; path is relative to the run ("web.1:x", "", "web") unless it starts with "/".
func (f *fixture) do(method, path, body string, headers ...string) resp {
	f.t.Helper()
	if !strings.HasPrefix(path, "/") {
		path = "/run/" + f.ri.UUID + "/" + path
		path = strings.TrimSuffix(path, "/")
	}
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	base := f.hs.URL
	if strings.HasPrefix(path, "/admin") {
		base = f.adm.URL
	}
	req, err := http.NewRequest(method, base+path, rd)
	require.NoError(f.t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := f.hs.Client().Do(req)
	require.NoError(f.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(f.t, err)
	return resp{code: res.StatusCode, body: string(b), hdr: res.Header}
}

func (f *fixture) param(key string) (string, bool) {
	f.t.Helper()
	v, set, err := f.srv.Param(f.ri.UUID, key)
	require.NoError(f.t, err)
	return v, set
}

func (f *fixture) mustSet(key, value string) {
	f.t.Helper()
	require.NoError(f.t, f.srv.SetParam(f.ri.UUID, key, value))
}

func (f *fixture) state() string {
	f.t.Helper()
	st, err := f.srv.State(f.ri.UUID)
	require.NoError(f.t, err)
	return st
}
