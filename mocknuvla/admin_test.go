package mocknuvla_test

import (
	"encoding/json"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

func TestAdminAPI(t *testing.T) {
	// Auth on: the admin API needs no session.
	f := newFixture(t, load(t, "minimal.json"), mocknuvla.Options{})
	body, err := os.ReadFile("testdata/two-cloud-demo.json")
	require.NoError(t, err)

	// Create a run.
	r := f.do("POST", "/admin/runs", string(body))
	require.Equal(t, http.StatusCreated, r.code, r.body)
	var ri mocknuvla.RunInfo
	require.NoError(t, json.Unmarshal([]byte(r.body), &ri))
	require.Len(t, ri.Instances, 3)
	assert.Equal(t, "cnsmo.1", ri.Instances[0].Name)
	assert.NotEmpty(t, ri.Instances[0].APIKey)
	assert.NotEmpty(t, ri.Instances[0].APISecret)
	uuid := ri.UUID
	base := "/admin/runs/" + uuid

	bad := f.do("POST", "/admin/runs", `{"nodes":[{"name":"a","cloud":"c","multiplicity":-2}]}`)
	assert.Equal(t, http.StatusBadRequest, bad.code)
	assert.Contains(t, bad.body, "multiplicity -2 is negative")

	// List.
	r = f.do("GET", "/admin/runs", "")
	require.Equal(t, http.StatusOK, r.code)
	var list []struct {
		UUID, Name, State string
		Instances         int
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &list))
	require.Len(t, list, 2)
	assert.Equal(t, uuid, list[1].UUID)
	assert.Equal(t, "demo", list[1].Name)
	assert.Equal(t, "Ready", list[1].State)
	assert.Equal(t, 3, list[1].Instances)

	// One run, its parameters, one parameter.
	assert.Equal(t, http.StatusOK, f.do("GET", base, "").code)
	assert.Equal(t, http.StatusNotFound, f.do("GET", "/admin/runs/nope", "").code)
	r = f.do("GET", base+"/params", "")
	var rj mocknuvla.RunJSON
	require.NoError(t, json.Unmarshal([]byte(r.body), &rj))
	assert.Equal(t, "[]", rj.RuntimeParameters["web.1:net.i2cat.cnsmo.service.fw.rules"].Value)

	// Set (mapping applied), read, un-set.
	require.Equal(t, http.StatusNoContent, f.do("PUT", base+"/params/cnsmo.1:cnsmo.server.nodeinstanceid", "cnsmo.1").code)
	r = f.do("GET", base+"/params/web.2:cnsmo.server.nodeinstanceid", "")
	var pv struct {
		Key   string `json:"key"`
		Value string `json:"value"`
		IsSet bool   `json:"isSet"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &pv))
	assert.Equal(t, "cnsmo.1", pv.Value)
	assert.True(t, pv.IsSet)
	require.Equal(t, http.StatusNoContent, f.do("DELETE", base+"/params/cnsmo.1:cnsmo.server.nodeinstanceid", "").code)
	_, set, _ := f.srv.Param(uuid, "web.2:cnsmo.server.nodeinstanceid")
	assert.False(t, set)
	assert.Equal(t, http.StatusNotFound, f.do("PUT", base+"/params/web.1:nope", "x").code)
	_, set, _ = f.srv.Param(uuid, "ss:abort")
	assert.False(t, set, "the admin API never aborts the run")
	assert.Equal(t, http.StatusBadRequest, f.do("PUT", base+"/params/web.1:ready", strings.Repeat("x", 4097)).code)

	// State.
	require.Equal(t, http.StatusNoContent, f.do("PUT", base+"/state", "Executing\n").code)
	assert.Equal(t, "Executing", f.do("GET", base+"/state", "").body)
	assert.Equal(t, http.StatusBadRequest, f.do("PUT", base+"/state", "Bogus").code)
	assert.Equal(t, http.StatusConflict, f.do("POST", base+"/nodes/web?n=1", "").code, "scale needs Ready")
	require.Equal(t, http.StatusNoContent, f.do("PUT", base+"/state", "Ready").code)

	// Scale up and down.
	r = f.do("POST", base+"/nodes/web?n=2", "")
	require.Equal(t, http.StatusCreated, r.code, r.body)
	assert.JSONEq(t, `{"instances":["web.3","web.4"]}`, r.body)
	require.Equal(t, http.StatusNoContent, f.do("PUT", base+"/state", "Ready").code)
	require.Equal(t, http.StatusNoContent, f.do("DELETE", base+"/nodes/web?ids=1,3", "").code)
	ids, _, _ := f.srv.Param(uuid, "web:ids")
	assert.Equal(t, "2,4", ids)
	assert.Equal(t, http.StatusBadRequest, f.do("DELETE", base+"/nodes/web?ids=x", "").code)

	// Instance, env and context of a scaled-up instance.
	r = f.do("GET", base+"/instances/web.4", "")
	var in mocknuvla.InstanceInfo
	require.NoError(t, json.Unmarshal([]byte(r.body), &in))
	assert.Equal(t, "web", in.Node)
	assert.Equal(t, 4, in.Index)
	r = f.do("GET", base+"/instances/web.4/env?serviceurl=http://198.18.0.1:9", "")
	require.Equal(t, http.StatusOK, r.code)
	assert.Contains(t, r.body, "export SLIPSTREAM_NODE_INSTANCE_NAME='web.4'\n")
	assert.Contains(t, r.body, "export SLIPSTREAM_SERVICEURL='http://198.18.0.1:9'\n")
	assert.Contains(t, r.body, "export SLIPSTREAM_API_SECRET='"+in.APISecret+"'\n")
	r = f.do("GET", base+"/instances/web.4/context", "")
	assert.Contains(t, r.body, "serviceurl = "+f.hs.URL+"\n", "default service URL: Options.ServiceURL, the run API's")
	assert.Equal(t, http.StatusNotFound, f.do("GET", base+"/instances/web.99/env", "").code)

	// Complete and abort.
	assert.Equal(t, "Provisioning", f.do("POST", base+"/complete/web.2", "").body, "after the scale down")
	require.Equal(t, http.StatusNoContent, f.do("POST", base+"/abort", "operator said stop").code)
	v, _, _ := f.srv.Param(uuid, "ss:abort")
	assert.Equal(t, "operator said stop", v)

	// Faults, per run and global.
	r = f.do("PUT", base+"/faults", `{"latency":"5ms","error5xxRatio":0.25,"dropRatio":0.1}`)
	require.Equal(t, http.StatusOK, r.code, r.body)
	assert.JSONEq(t, `{"latency":"5ms","error5xxRatio":0.25,"dropRatio":0.1}`, r.body)
	fl, _ := f.srv.GetFaults(uuid)
	assert.Equal(t, mocknuvla.Faults{Latency: 5e6, Error5xxRatio: 0.25, DropRatio: 0.1}, fl)
	assert.JSONEq(t, `{"latency":"5ms","error5xxRatio":0.25,"dropRatio":0.1}`, f.do("GET", base+"/faults", "").body)
	require.Equal(t, http.StatusOK, f.do("DELETE", base+"/faults", "").code)
	fl, _ = f.srv.GetFaults(uuid)
	assert.Zero(t, fl)
	for _, b := range []string{`{"error5xxRatio":2}`, `{"dropRatio":-1}`, `{"latency":"soon"}`, `{"latency":"-1s"}`, `{"jitter":1}`} {
		assert.Equal(t, http.StatusBadRequest, f.do("PUT", "/admin/faults", b).code, b)
	}
	require.Equal(t, http.StatusOK, f.do("PUT", "/admin/faults", `{"error5xxRatio":1}`).code)
	g, _ := f.srv.GetFaults("")
	assert.Equal(t, 1.0, g.Error5xxRatio)
	assert.Equal(t, http.StatusOK, f.do("GET", "/admin/runs", "").code, "admin routes are never faulted")
	assert.GreaterOrEqual(t, f.do("GET", "/run/"+uuid+"/web.1:vmstate", "").code, 500)
	require.Equal(t, http.StatusOK, f.do("DELETE", "/admin/faults", "").code)
	assert.Equal(t, http.StatusNotFound, f.do("PUT", "/admin/runs/nope/faults", `{}`).code)

	// Unknown admin route.
	assert.Equal(t, http.StatusNotFound, f.do("GET", "/admin/nothing", "").code)
	assert.Empty(t, f.srv.Counters()["GET /admin/runs"])
	// Requests are also counted per client address (the run API only).
	assert.Equal(t, int64(1), f.srv.ClientCounters()["127.0.0.1"], "the one run request of this test, from loopback")
}

// The run API's listener, which every VM reaches, serves no admin route: the admin API (no
// login) has a listener of its own.
func TestAdminNotOnTheRunListener(t *testing.T) {
	f := demo(t)
	for _, p := range []string{"/admin/runs", "/admin/runs/" + f.ri.UUID + "/params", "/admin/faults", "/admin/counters"} {
		res, err := f.hs.Client().Get(f.hs.URL + p)
		require.NoError(t, err)
		res.Body.Close()
		assert.Equal(t, http.StatusNotFound, res.StatusCode, p)
	}
	res, err := f.hs.Client().Post(f.hs.URL+"/admin/runs/"+f.ri.UUID+"/nodes/web?n=1", "text/plain", nil)
	require.NoError(t, err)
	res.Body.Close()
	assert.Equal(t, http.StatusNotFound, res.StatusCode)
}

// The bytes of the answers are counted per client too (status line, headers and body), so
// that a client's traffic is measured where it is served.
func TestBytesAreCountedPerClient(t *testing.T) {
	f := demo(t)
	r1 := f.do("GET", "web.1:vmstate", "")
	r2 := f.do("GET", "", "", "Accept", "application/xml")
	require.Equal(t, http.StatusOK, r2.code)
	got := f.srv.ClientBytes()["127.0.0.1"]
	bodies := int64(len(r1.body) + len(r2.body))
	assert.Greater(t, got, bodies+2*int64(len("HTTP/1.1 200 OK\r\n\r\n")), "bodies, status lines and headers")
	assert.Less(t, got, bodies+2*400, "headers are a few hundred bytes")
	var c struct {
		ClientBytes map[string]int64 `json:"client_bytes"`
	}
	require.NoError(t, json.Unmarshal([]byte(f.do("GET", "/admin/counters", "").body), &c))
	assert.Equal(t, got, c.ClientBytes["127.0.0.1"])
	f.srv.ResetCounters()
	assert.Empty(t, f.srv.ClientBytes())
}
