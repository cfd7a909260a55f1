package mocknuvla_test

import (
	"encoding/json"
	"encoding/xml"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

func TestGetPutUnset(t *testing.T) {
	f := demo(t)
	r := f.do("GET", "web.1:ready", "")
	assert.Equal(t, http.StatusPreconditionFailed, r.code)
	assert.Equal(t, "412 - Precondition Failed\nkey web.1:ready not yet set", r.body)

	r = f.do("PUT", "web.1:ready", "true")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Empty(t, r.body)

	r = f.do("GET", "web.1:ready", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "true", r.body, "raw value, no trailing newline")
	assert.True(t, strings.HasPrefix(r.hdr.Get("Content-Type"), "text/plain"))

	// A value with newlines and markup comes back byte for byte.
	val := "line1\nline2 <a & b> \"q\"\n"
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:ready", val).code)
	assert.Equal(t, val, f.do("GET", "web.1:ready", "").body)

	// Empty PUT un-sets.
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:ready", "").code)
	assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.1:ready", "").code)
	_, set := f.param("web.1:ready")
	assert.False(t, set)

	// A declared default is set from the start.
	r = f.do("GET", "web.2:net.i2cat.cnsmo.service.fw.rules", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "[]", r.body)
}

func TestVmstateNever412(t *testing.T) {
	f := demo(t)
	r := f.do("GET", "web.1:vmstate", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "Unknown", r.body)
	_, set := f.param("web.1:vmstate")
	assert.False(t, set)
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:vmstate", "Running").code)
	assert.Equal(t, "Running", f.do("GET", "web.1:vmstate", "").body)
}

func TestUnknownRun(t *testing.T) {
	f := demo(t)
	for _, p := range []string{"/run/nope/web.1:ready", "/run/nope", "/run/nope/web"} {
		r := f.do("GET", p, "")
		assert.Equal(t, http.StatusNotFound, r.code, p)
		assert.Contains(t, r.body, "Unknown run id nope")
	}
	assert.Equal(t, http.StatusNotFound, f.do("PUT", "/run/nope/web.1:ready", "x").code)
	_, set := f.param("ss:abort")
	assert.False(t, set, "an unknown run aborts nothing")
	assert.Equal(t, http.StatusNotFound, f.do("GET", "/nothing/here", "").code)
}

func TestUnknownKeyAbortsTheRun(t *testing.T) {
	f := demo(t)
	r := f.do("GET", "web.1:no.such.key", "")
	assert.Equal(t, http.StatusNotFound, r.code)
	assert.Equal(t, "404 - Not Found\nUnknown key web.1:no.such.key", r.body)

	abort, set := f.param("ss:abort")
	assert.True(t, set, "the run is aborted")
	assert.Contains(t, abort, "web.1:no.such.key", "the abort message names the key")
	nodeAbort, set := f.param("web.1:abort")
	assert.True(t, set, "the instance's abort is set")
	assert.Contains(t, nodeAbort, "web.1:no.such.key")
	_, set = f.param("web.2:abort")
	assert.False(t, set)

	// Every later request without ignoreabort: 409.
	for _, m := range []string{"GET", "PUT", "DELETE", "POST"} {
		r = f.do(m, "web.2:ready", "x")
		assert.Equal(t, http.StatusConflict, r.code, m)
		assert.Equal(t, "409 - Conflict\nAbort flag raised!", r.body, m)
	}
	assert.Equal(t, http.StatusConflict, f.do("POST", "web", "n=1").code)
	assert.Equal(t, http.StatusConflict, f.do("DELETE", "web", "ids=1").code)
	assert.Equal(t, http.StatusConflict, f.do("GET", "web", "").code)
	assert.Equal(t, http.StatusOK, f.do("GET", "web?ignoreabort=true", "").code)
	// The whole-run read still works: that is how clients see the abort.
	assert.Equal(t, http.StatusOK, f.do("GET", "", "").code)

	// ignoreabort=true gets through.
	r = f.do("GET", "ss:abort?ignoreabort=true", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, abort, r.body)
	assert.Equal(t, http.StatusOK, f.do("PUT", "web.2:ready?ignoreabort=true", "yes").code)
	assert.Equal(t, "yes", f.do("GET", "web.2:ready?ignoreabort=TRUE", "").body)

	// A second unknown key keeps the first reason.
	assert.Equal(t, http.StatusNotFound, f.do("GET", "web.2:other", "").code)
	again, _ := f.param("ss:abort")
	assert.Equal(t, abort, again)
	v, _ := f.param("web.2:abort")
	assert.Contains(t, v, "web.2:other", "the instance abort of the second key is set")
}

func TestUnknownKeyOfUnknownInstance(t *testing.T) {
	f := demo(t)
	assert.Equal(t, http.StatusNotFound, f.do("PUT", "web.9:ready", "x").code)
	abort, set := f.param("ss:abort")
	assert.True(t, set)
	assert.Equal(t, "Unknown key web.9:ready", abort)
}

func TestNodeRouteUnknownNode(t *testing.T) {
	f := demo(t)
	assert.Equal(t, http.StatusNotFound, f.do("GET", "nosuchnode", "").code)
	assert.Equal(t, http.StatusBadRequest, f.do("POST", "nosuchnode", "n=1").code)
	assert.Equal(t, http.StatusBadRequest, f.do("DELETE", "nosuchnode", "ids=1").code)
	_, set := f.param("ss:abort")
	assert.False(t, set, "a node route does not abort the run")
	r := f.do("GET", "web", "")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, "web.1,web.2", r.body)
	assert.Equal(t, http.StatusMethodNotAllowed, f.do("PATCH", "web", "").code)
	assert.Equal(t, http.StatusMethodNotAllowed, f.do("PATCH", "web.1:ready", "").code)
	assert.Equal(t, http.StatusMethodNotAllowed, f.do("PUT", "", "").code)
}

func TestValueLength(t *testing.T) {
	f := demo(t)
	ok := strings.Repeat("a", mocknuvla.MaxValueLen)
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:ready", ok).code)
	assert.Equal(t, ok, f.do("GET", "web.1:ready", "").body)

	r := f.do("PUT", "web.1:ready", ok+"b")
	assert.Equal(t, http.StatusBadRequest, r.code)
	assert.Contains(t, r.body, "Value too long (4097)")
	v, _ := f.param("web.1:ready")
	assert.Equal(t, ok, v, "a refused value changes nothing")

	// Characters, not bytes: 4096 two-byte characters are accepted.
	wide := strings.Repeat("é", mocknuvla.MaxValueLen)
	assert.Equal(t, http.StatusOK, f.do("PUT", "web.1:ready", wide).code)
	assert.Equal(t, http.StatusBadRequest, f.do("PUT", "web.1:ready", wide+"é").code)
	_, set := f.param("ss:abort")
	assert.False(t, set, "a too long value does not abort the run")
}

func TestAbortKeys(t *testing.T) {
	f := demo(t)
	long := "HEAD" + strings.Repeat("x", 6000) + "TAIL"
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:abort", long).code, "abort keys are truncated, not refused")
	v, set := f.param("web.1:abort")
	require.True(t, set)
	assert.Equal(t, mocknuvla.MaxValueLen, utf8.RuneCountInString(v))
	assert.True(t, strings.HasPrefix(v, "HEADxxx"))
	assert.True(t, strings.HasSuffix(v, "xxxTAIL"))
	assert.Contains(t, v, "\n(truncated)\n")
	g, set := f.param("ss:abort")
	assert.True(t, set, "an instance abort raises ss:abort")
	assert.Equal(t, v, g)

	// Only if not already set: a second abort keeps the first message.
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:abort?ignoreabort=true", "second").code)
	v2, _ := f.param("web.1:abort")
	assert.Equal(t, v, v2)
	// Another instance's abort is recorded, ss:abort keeps the first reason.
	require.Equal(t, http.StatusOK, f.do("PUT", "web.2:abort?ignoreabort=true", "web.2 failed").code)
	v3, _ := f.param("web.2:abort")
	assert.Equal(t, "web.2 failed", v3)
	g2, _ := f.param("ss:abort")
	assert.Equal(t, g, g2)
}

func TestGlobalAbortPut(t *testing.T) {
	f := demo(t)
	require.Equal(t, http.StatusOK, f.do("PUT", "ss:abort", "stop it").code)
	v, set := f.param("ss:abort")
	assert.True(t, set)
	assert.Equal(t, "stop it", v)
	assert.Equal(t, http.StatusConflict, f.do("PUT", "ss:abort", "again").code)
	assert.Equal(t, http.StatusOK, f.do("PUT", "ss:abort?ignoreabort=true", "again").code)
	v, _ = f.param("ss:abort")
	assert.Equal(t, "stop it", v)
}

func TestDeleteResetsAbort(t *testing.T) {
	f := demo(t)
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateProvisioning))
	require.Equal(t, http.StatusOK, f.do("PUT", "web.1:abort", "boom").code)
	rm, _ := f.param("ss:recovery.mode")
	assert.Equal(t, "true", rm, "an abort in Provisioning turns recovery mode on")

	assert.Equal(t, http.StatusConflict, f.do("DELETE", "web.1:abort", "").code, "the abort check applies to DELETE")
	r := f.do("DELETE", "web.1:abort?ignoreabort=true", "")
	assert.Equal(t, http.StatusNoContent, r.code)
	_, set := f.param("web.1:abort")
	assert.False(t, set)
	_, set = f.param("ss:abort")
	assert.False(t, set)
	rm, _ = f.param("ss:recovery.mode")
	assert.Equal(t, "false", rm)
	assert.Equal(t, http.StatusOK, f.do("GET", "web.1:vmstate", "").code, "no more 409")

	// DELETE of any key un-sets it and resets the aborts of its instance (SlipStream's abortOrReset).
	f.mustSet("web.2:ready", "yes")
	require.Equal(t, http.StatusOK, f.do("PUT", "web.2:abort", "again").code)
	assert.Equal(t, http.StatusNoContent, f.do("DELETE", "web.2:ready?ignoreabort=true", "").code)
	_, set = f.param("web.2:ready")
	assert.False(t, set)
	_, set = f.param("web.2:abort")
	assert.False(t, set)
	_, set = f.param("ss:abort")
	assert.False(t, set)
	assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.2:ready", "").code)
}

func TestStatePut(t *testing.T) {
	f := demo(t)
	for _, bad := range []string{"Executing", "Done", "Nonsense", ""} {
		r := f.do("PUT", "ss:state", bad)
		assert.Equal(t, http.StatusBadRequest, r.code, bad)
	}
	assert.Equal(t, mocknuvla.StateReady, f.state())
	r := f.do("PUT", "ss:state", "Provisioning")
	assert.Equal(t, http.StatusOK, r.code)
	assert.Equal(t, mocknuvla.StateProvisioning, f.state())
	// Only from Ready.
	assert.Equal(t, http.StatusBadRequest, f.do("PUT", "ss:state", "Provisioning").code)

	// Never on an immutable run.
	g := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	require.NoError(t, g.srv.SetState(g.ri.UUID, mocknuvla.StateReady))
	r = g.do("PUT", "ss:state", "Provisioning")
	assert.Equal(t, http.StatusBadRequest, r.code)
	assert.Contains(t, r.body, "mutable")
	assert.Equal(t, mocknuvla.StateReady, g.state())
}

func complete(t *testing.T, f *fixture, inst string) string {
	t.Helper()
	r := f.do("POST", inst+":complete?ignoreabort=true", "reset")
	require.Equal(t, http.StatusOK, r.code, r.body)
	return r.body
}

func TestStateMachineImmutable(t *testing.T) {
	f := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	assert.Equal(t, mocknuvla.StateInitializing, f.state())
	orchs := []string{"orchestrator-cloud-a", "orchestrator-cloud-b"}
	apps := []string{"db.1", "app.1", "app.2"}

	// Initializing: only the orchestrators take part.
	assert.Equal(t, "Initializing", complete(t, f, "app.1"))
	assert.Equal(t, "Initializing", complete(t, f, orchs[0]))
	assert.Equal(t, "Provisioning", complete(t, f, orchs[1]))
	v, _ := f.param("app.1:complete")
	assert.Equal(t, "false", v, "completes are reset when the state advances")

	for _, want := range []string{"Executing", "SendingReports", "Ready", "Finalizing"} {
		all := append(append([]string{}, orchs...), apps...)
		for i, in := range all {
			got := complete(t, f, in)
			if i < len(all)-1 {
				assert.NotEqual(t, want, got, "advanced before %s completed", all[len(all)-1])
			} else {
				assert.Equal(t, want, got)
			}
		}
		assert.Equal(t, want, f.state())
	}
	// Finalizing: orchestrators only, then Done.
	assert.Equal(t, "Finalizing", complete(t, f, orchs[0]))
	assert.Equal(t, "Done", complete(t, f, orchs[1]))
	r := f.do("POST", "db.1:complete", "")
	assert.Equal(t, http.StatusConflict, r.code, "no transition from a final state")
	vm, _ := f.param("db.1:vmstate")
	assert.Equal(t, "Terminated", vm)
}

func TestStateMachineAbortedAndRecovery(t *testing.T) {
	f := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateProvisioning))
	require.NoError(t, f.srv.Abort(f.ri.UUID, "failed"))
	assert.Equal(t, http.StatusConflict, f.do("POST", "app.1:complete", "").code)
	// Recovery mode: only orchestrators are waited for.
	require.NoError(t, f.srv.Abort(f.ri.UUID, "x")) // kept
	rm, _ := f.param("ss:recovery.mode")
	require.Equal(t, "true", rm)
	assert.Equal(t, "Provisioning", complete(t, f, "orchestrator-cloud-a"))
	assert.Equal(t, "Executing", complete(t, f, "orchestrator-cloud-b"))

	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateFinalizing))
	complete(t, f, "orchestrator-cloud-a")
	assert.Equal(t, "Aborted", complete(t, f, "orchestrator-cloud-b"), "Finalizing with ss:abort set ends Aborted")
	assert.Equal(t, http.StatusConflict, f.do("POST", "app.1:complete?ignoreabort=true", "").code)
}

func TestStateMachineMutableStaysReady(t *testing.T) {
	f := demo(t)
	all := []string{"orchestrator-cloud-a", "orchestrator-cloud-b", "cnsmo.1", "web.1", "web.2"}
	for _, in := range all {
		assert.Equal(t, "Ready", complete(t, f, in))
	}
	for _, in := range all {
		v, _ := f.param(in + ":complete")
		assert.Equal(t, "false", v, "completes reset after the barrier: %s", in)
	}
	// complete of a non-instance key: 409.
	assert.Equal(t, http.StatusConflict, f.do("POST", "ss:complete", "").code)
	assert.Equal(t, http.StatusConflict, f.do("POST", "web:ids", "").code)
}

func TestScaleUp(t *testing.T) {
	f := demo(t)
	f.mustSet("cnsmo.1:cnsmo.server.nodeinstanceid", "cnsmo.1")
	r := f.do("POST", "web", "n=2", "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusCreated, r.code, r.body)
	assert.Equal(t, "web.3,web.4", r.body)
	assert.Equal(t, mocknuvla.StateProvisioning, f.state())
	ids, _ := f.param("web:ids")
	assert.Equal(t, "1,2,3,4", ids)
	m, _ := f.param("web:multiplicity")
	assert.Equal(t, "4", m)
	assert.Equal(t, "web.1,web.2,web.3,web.4", f.do("GET", "web", "").body)

	// The new instances have the node's declared parameters (defaults and mapped values) and
	// the standard ones.
	assert.Equal(t, "[]", f.do("GET", "web.4:net.i2cat.cnsmo.service.fw.rules", "").body)
	assert.Equal(t, "cnsmo.1", f.do("GET", "web.3:cnsmo.server.nodeinstanceid", "").body)
	assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.3:ready", "").code)
	for k, want := range map[string]string{"nodename": "web", "id": "4", "cloudservice": "cloud-b", "is.orchestrator": "false", "scale.state": "creating", "complete": "false"} {
		assert.Equal(t, want, f.do("GET", "web.4:"+k, "").body, k)
	}
	for _, k := range []string{"statecustom", "abort", "url.ssh", "url.service", "hostname"} {
		assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.4:"+k, "").code, k)
	}
	_, set := f.param("ss:abort")
	assert.False(t, set)

	// Not in Ready: 409.
	r = f.do("POST", "web", "n=1")
	assert.Equal(t, http.StatusConflict, r.code)
	assert.Contains(t, r.body, "Incompatible state Provisioning")

	// Empty body = 1, any content type.
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	r = f.do("POST", "web", "")
	require.Equal(t, http.StatusCreated, r.code, r.body)
	assert.Equal(t, "web.5", r.body)
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	r = f.do("POST", "web", "n=1", "Content-Type", "text/plain")
	assert.Equal(t, "web.6", r.body)
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	r = f.do("POST", "web", "n=1", "Content-Type", "application/json")
	assert.Equal(t, "web.7", r.body)
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))

	for _, bad := range []string{"n=two", "m=1", "n=-1", "n=100000"} {
		assert.Equal(t, http.StatusBadRequest, f.do("POST", "web", bad).code, bad)
	}
	assert.Equal(t, mocknuvla.StateReady, f.state(), "a refused scale changes nothing")
	ids, _ = f.param("web:ids")
	assert.Equal(t, "1,2,3,4,5,6,7", ids)
}

func TestScaleUpImmutable(t *testing.T) {
	f := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	r := f.do("POST", "app", "n=1")
	assert.Equal(t, http.StatusConflict, r.code)
	assert.Contains(t, r.body, "not mutable")
	_, err := f.srv.ScaleUp(f.ri.UUID, "app", 1)
	assert.ErrorIs(t, err, mocknuvla.ErrConflict)
}

func TestScaleDown(t *testing.T) {
	f := demo(t)
	f.mustSet("web.1:ready", "yes")
	r := f.do("DELETE", "web", "ids=1", "Content-Type", "application/x-www-form-urlencoded")
	require.Equal(t, http.StatusNoContent, r.code, r.body)
	ids, _ := f.param("web:ids")
	assert.Equal(t, "2", ids)
	m, _ := f.param("web:multiplicity")
	assert.Equal(t, "1", m)
	assert.Equal(t, mocknuvla.StateProvisioning, f.state())
	assert.Equal(t, "removing", f.do("GET", "web.1:scale.state", "").body)
	assert.Equal(t, "yes", f.do("GET", "web.1:ready", "").body, "removed instances' parameters stay readable")
	assert.Equal(t, "web.2", f.do("GET", "web", "").body)

	// JSON whole run flags them.
	var run mocknuvla.RunJSON
	require.NoError(t, json.Unmarshal([]byte(f.do("GET", "", "", "Accept", "application/json").body), &run))
	assert.True(t, run.RuntimeParameters["web.1:ready"].Removed)
	assert.False(t, run.RuntimeParameters["web.2:ready"].Removed)

	// The removed instance is not waited for; leaving Provisioning marks it removed.
	for _, in := range []string{"orchestrator-cloud-a", "orchestrator-cloud-b", "cnsmo.1", "web.2"} {
		complete(t, f, in)
	}
	assert.Equal(t, mocknuvla.StateExecuting, f.state())
	assert.Equal(t, "removed", f.do("GET", "web.1:scale.state", "").body)

	// Not in Ready: 409; delete-ids-only needs neither Ready nor changes the state.
	assert.Equal(t, http.StatusConflict, f.do("DELETE", "web", "ids=2").code)
	require.Equal(t, http.StatusNoContent, f.do("DELETE", "web", "ids=2&delete-ids-only=true").code)
	assert.Equal(t, mocknuvla.StateExecuting, f.state())
	ids, set := f.param("web:ids")
	assert.Equal(t, "", ids)
	assert.False(t, set)
	m, _ = f.param("web:multiplicity")
	assert.Equal(t, "0", m)

	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	for _, bad := range []string{"", "ids=", "ids=x", "ids=9", "ids=1"} {
		assert.Equal(t, http.StatusBadRequest, f.do("DELETE", "web", bad).code, bad)
	}
	// ids are never reused.
	names, err := f.srv.ScaleUp(f.ri.UUID, "web", 1)
	require.NoError(t, err)
	assert.Equal(t, []string{"web.3"}, names)
}

func TestScaleDownImmutable(t *testing.T) {
	f := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	assert.Equal(t, http.StatusConflict, f.do("DELETE", "app", "ids=1").code)
	assert.ErrorIs(t, f.srv.ScaleDown(f.ri.UUID, "app", []int{1}), mocknuvla.ErrConflict)
}

func TestMapping(t *testing.T) {
	f := demo(t)
	// Unset source: targets unset (ss-get on them blocks).
	assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.1:cnsmo.server.nodeinstanceid", "").code)
	require.Equal(t, http.StatusOK, f.do("PUT", "cnsmo.1:cnsmo.server.nodeinstanceid", "cnsmo.1").code)
	for _, in := range []string{"web.1", "web.2"} {
		assert.Equal(t, "cnsmo.1", f.do("GET", in+":cnsmo.server.nodeinstanceid", "").body)
	}
	// Scale up: the new instance gets the current value; later sets reach it too.
	names, err := f.srv.ScaleUp(f.ri.UUID, "web", 1)
	require.NoError(t, err)
	assert.Equal(t, "cnsmo.1", f.do("GET", names[0]+":cnsmo.server.nodeinstanceid", "").body)
	require.NoError(t, f.srv.SetState(f.ri.UUID, mocknuvla.StateReady))
	require.Equal(t, http.StatusOK, f.do("PUT", "cnsmo.1:cnsmo.server.nodeinstanceid", "moved").code)
	for _, in := range []string{"web.1", "web.2", names[0]} {
		assert.Equal(t, "moved", f.do("GET", in+":cnsmo.server.nodeinstanceid", "").body, in)
	}
	// Un-setting the source un-sets the targets.
	require.Equal(t, http.StatusOK, f.do("PUT", "cnsmo.1:cnsmo.server.nodeinstanceid", "").code)
	assert.Equal(t, http.StatusPreconditionFailed, f.do("GET", "web.2:cnsmo.server.nodeinstanceid", "").code)
	// The Go API applies mappings too.
	f.mustSet("cnsmo.1:cnsmo.server.nodeinstanceid", "again")
	v, _ := f.param("web.1:cnsmo.server.nodeinstanceid")
	assert.Equal(t, "again", v)
}

func TestMappingDefaultsChainAndIndex(t *testing.T) {
	d, err := mocknuvla.ParseDeployment([]byte(`{"name":"m","mutable":true,"nodes":[
	 {"name":"a","cloud":"c1","multiplicity":2,"parameters":[{"name":"p","value":"from-a"},{"name":"q"}]},
	 {"name":"b","cloud":"c1","multiplicity":1,"parameters":[{"name":"p","mapping":"a:p"},{"name":"q2","mapping":"a.2:q"}]},
	 {"name":"c","cloud":"c2","multiplicity":1,"parameters":[{"name":"p","mapping":"b:p"},{"name":"h","mapping":"a:hostname"}]}]}`))
	require.NoError(t, err)
	f := newFixture(t, d, mocknuvla.Options{NoAuth: true})
	v, _ := f.param("b.1:p")
	assert.Equal(t, "from-a", v, "a mapped input starts with its source's default")
	v, _ = f.param("c.1:p")
	assert.Equal(t, "from-a", v, "mappings chain")
	f.mustSet("a.1:p", "new")
	v, _ = f.param("c.1:p")
	assert.Equal(t, "new", v)
	f.mustSet("a.1:q", "one")
	_, set := f.param("b.1:q2")
	assert.False(t, set, "b.1:q2 follows a.2:q, not a.1:q")
	f.mustSet("a.2:q", "two")
	v, _ = f.param("b.1:q2")
	assert.Equal(t, "two", v)
	f.mustSet("a.1:hostname", "198.18.0.10")
	v, _ = f.param("c.1:h")
	assert.Equal(t, "198.18.0.10", v, "standard parameters can be mapping sources")
}

func TestStandardParams(t *testing.T) {
	f := demo(t)
	params, err := f.srv.Params(f.ri.UUID)
	require.NoError(t, err)
	for _, k := range []string{"ss:category", "ss:complete", "ss:abort", "ss:state", "ss:groups", "ss:url.service", "ss:tags", "ss:recovery.mode"} {
		assert.Contains(t, params, k)
	}
	for _, in := range []string{"cnsmo.1", "web.1", "web.2", "orchestrator-cloud-a", "orchestrator-cloud-b"} {
		for _, k := range []string{"statecustom", "vmstate", "abort", "complete", "url.ssh", "url.service", "is.orchestrator", "scale.state", "nodename", "id", "cloudservice", "hostname", "instanceid"} {
			assert.Contains(t, params, in+":"+k)
		}
	}
	want := map[string]string{
		"ss:groups": "cloud-a:cnsmo,cloud-b:web", "ss:state": "Ready", "ss:category": "Deployment",
		"ss:recovery.mode": "false", "web:ids": "1,2", "web:multiplicity": "2", "cnsmo:ids": "1",
		"cnsmo:multiplicity": "1", "web.2:id": "2", "web.2:nodename": "web", "web.2:cloudservice": "cloud-b",
		"orchestrator-cloud-a:is.orchestrator": "true", "web.1:is.orchestrator": "false", "web.1:scale.state": "operational",
	}
	for k, v := range want {
		assert.Equal(t, mocknuvla.ParamValue{Value: v, IsSet: true}, params[k], k)
	}
	assert.False(t, params["ss:abort"].IsSet)
	assert.NotContains(t, params, "web.3:id")
	assert.Len(t, f.ri.Instances, 3)
	assert.Len(t, f.ri.Orchestrators, 2)
}

func TestErrorFormatsByAccept(t *testing.T) {
	f := demo(t)
	r := f.do("GET", "web.1:ready", "", "Accept", "application/json")
	assert.Equal(t, http.StatusPreconditionFailed, r.code)
	var j struct {
		Error struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
			Detail string `json:"detail"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.body), &j), r.body)
	assert.Equal(t, 412, j.Error.Code)
	assert.Equal(t, "Precondition Failed", j.Error.Reason)
	assert.Equal(t, "key web.1:ready not yet set", j.Error.Detail)

	r = f.do("GET", "web.1:ready", "", "Accept", "application/xml")
	var x struct {
		XMLName xml.Name `xml:"error"`
		Code    int      `xml:"code,attr"`
		Reason  string   `xml:"reason,attr"`
		Detail  string   `xml:"detail,attr"`
	}
	require.NoError(t, xml.Unmarshal([]byte(r.body), &x), r.body)
	assert.Equal(t, 412, x.Code)
	assert.Equal(t, "Precondition Failed", x.Reason)
	assert.Equal(t, "key web.1:ready not yet set", x.Detail)

	r = f.do("GET", "web.1:ready", "", "Accept", "text/plain")
	assert.Equal(t, "412 - Precondition Failed\nkey web.1:ready not yet set", r.body)
	assert.True(t, strings.HasPrefix(r.hdr.Get("Content-Type"), "text/plain"))
}

type xmlRun struct {
	XMLName xml.Name `xml:"run"`
	UUID    string   `xml:"uuid,attr"`
	State   string   `xml:"state,attr"`
	Entries []struct {
		Key   string `xml:"string"`
		Param struct {
			Key   string `xml:"key,attr"`
			IsSet bool   `xml:"isSet,attr"`
			Group string `xml:"group,attr"`
			Value string `xml:",chardata"`
		} `xml:"runtimeParameter"`
	} `xml:"runtimeParameters>entry"`
}

func TestWholeRunXMLAndJSON(t *testing.T) {
	f := demo(t)
	val := "a<b>&\"c\"\n\td'"
	f.mustSet("web.2:ready", val)
	r := f.do("GET", "", "")
	require.Equal(t, http.StatusOK, r.code)
	assert.Contains(t, r.hdr.Get("Content-Type"), "xml")
	var x xmlRun
	require.NoError(t, xml.Unmarshal([]byte(r.body), &x))
	assert.Equal(t, f.ri.UUID, x.UUID)
	assert.Equal(t, "Ready", x.State)
	got := map[string]mocknuvla.ParamValue{}
	groups := map[string]string{}
	for _, e := range x.Entries {
		assert.Equal(t, e.Key, e.Param.Key)
		got[e.Key] = mocknuvla.ParamValue{Value: e.Param.Value, IsSet: e.Param.IsSet}
		groups[e.Key] = e.Param.Group
	}
	all, err := f.srv.Params(f.ri.UUID)
	require.NoError(t, err)
	assert.Equal(t, all, got, "the XML carries every parameter exactly")
	assert.Equal(t, val, got["web.2:ready"].Value)
	assert.Equal(t, "web.2", groups["web.2:ready"])
	assert.Equal(t, "Global", groups["ss:state"])
	assert.Equal(t, "web", groups["web:ids"])

	// A character XML 1.0 cannot carry is replaced in the XML (the document stays parseable);
	// the single-key GET and the JSON form keep it.
	f.mustSet("web.1:ready", "a\x1bb")
	var x2 xmlRun
	require.NoError(t, xml.Unmarshal([]byte(f.do("GET", "", "").body), &x2))
	for _, e := range x2.Entries {
		if e.Key == "web.1:ready" {
			assert.Equal(t, "a\uFFFDb", e.Param.Value)
		}
	}
	assert.Equal(t, "a\x1bb", f.do("GET", "web.1:ready", "").body)

	r = f.do("GET", "", "", "Accept", "application/json")
	require.Equal(t, http.StatusOK, r.code)
	var j mocknuvla.RunJSON
	require.NoError(t, json.Unmarshal([]byte(r.body), &j))
	assert.Equal(t, f.ri.UUID, j.UUID)
	assert.Equal(t, "demo", j.Name)
	assert.True(t, j.Mutable)
	assert.Equal(t, val, j.RuntimeParameters["web.2:ready"].Value)
	assert.Equal(t, "a\x1bb", j.RuntimeParameters["web.1:ready"].Value)
	assert.Len(t, j.RuntimeParameters, len(all))
}

func TestTerminateRun(t *testing.T) {
	f := demo(t)
	assert.Equal(t, http.StatusNoContent, f.do("DELETE", "", "").code)
	assert.Equal(t, mocknuvla.StateDone, f.state())
	assert.Equal(t, http.StatusNoContent, f.do("DELETE", "", "").code, "idempotent")
	assert.Equal(t, "Terminated", f.do("GET", "web.1:vmstate", "").body)

	g := newFixture(t, load(t, "initializing.json"), mocknuvla.Options{NoAuth: true})
	assert.Equal(t, http.StatusNoContent, g.do("DELETE", "", "").code)
	assert.Equal(t, mocknuvla.StateCancelled, g.state())

	h := demo(t)
	require.NoError(t, h.srv.Abort(h.ri.UUID, "x"))
	assert.Equal(t, http.StatusNoContent, h.do("DELETE", "", "").code)
	assert.Equal(t, mocknuvla.StateAborted, h.state())
}
