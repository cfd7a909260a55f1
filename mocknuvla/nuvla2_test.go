package mocknuvla

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
)

// The filter subset: and, or, parentheses, the operators, null, lists; a bad filter is an error.
func TestCIMIFilter(t *testing.T) {
	p := map[string]string{"parent": "deployment/a", "name": "cnsmo.node", "node-id": "web.1", "value": "web"}
	for f, want := range map[string]bool{
		"parent='deployment/a'":                               true,
		`parent="deployment/a" and name='cnsmo.node'`:         true,
		"parent='deployment/b' or name^='cnsmo.'":             true,
		"parent='deployment/b' or (name='x' and value='web')": false,
		"parent=['deployment/b','deployment/a']":              true,
		"description=null":                                    true,
		"node-id!=null and node-id!='web.2'":                  true,
		"value>='w' and value<'x'":                            true,
		"(parent='deployment/a')and(name='cnsmo.node')":       true,
		"name='cnsmo.node' and node-id='web.2'":               false,
	} {
		cf, err := parseCIMI(f)
		require.NoError(t, err, f)
		assert.Equal(t, want, cf(p), f)
	}
	for _, bad := range []string{"", "parent", "parent=", "parent='a", "parent='a' and", "(parent='a'", "parent~'a'", "parent=['a'", "parent<null", "parent^=['a']", "parent='a' or or name='b'"} {
		_, err := parseCIMI(bad)
		assert.Error(t, err, "%q", bad)
	}
}

func FuzzCIMIFilter(f *testing.F) {
	f.Add("parent='deployment/a' and (name^='cnsmo.' or node-id=null)")
	f.Add("a=['x','y'] or b!='z'")
	f.Fuzz(func(t *testing.T, s string) {
		cf, err := parseCIMI(s)
		if err == nil {
			_ = cf(map[string]string{"a": "x", "parent": "deployment/a"})
		}
	})
}

// The admin API serves Nuvla 2 groups too: members, a scale out, a deployment's state and params.
func TestNuvla2Admin(t *testing.T) {
	s := New(Options{API: "nuvla2"})
	d, err := ParseDeployment([]byte(`{"name":"app","nodes":[{"name":"cnsmo","cloud":"a"},{"name":"web","cloud":"b","multiplicity":2}]}`))
	require.NoError(t, err)
	g, err := s.CreateGroup(d, true)
	require.NoError(t, err)
	gid := strings.TrimPrefix(g.ID, "deployment-set/")
	admin := httptest.NewServer(s.Admin())
	defer admin.Close()
	do := func(method, path, body string) (int, string) {
		req, err := http.NewRequest(method, admin.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := do("GET", "/admin/nuvla2/groups/"+gid, "")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, 3, strings.Count(body, `"deployment":`))
	code, body = do("POST", "/admin/nuvla2/groups/"+gid+"/members/web", "")
	require.Equal(t, http.StatusCreated, code)
	require.Contains(t, body, `"name": "web.3"`)
	dep := strings.TrimPrefix(g.Members[1].Deployment, "deployment/")
	s.SetNuvla2Param(g.Members[1].Deployment, "", "hostname", "198.18.9.9")
	code, body = do("GET", "/admin/nuvla2/deployments/"+dep+"/params", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `":hostname": "198.18.9.9"`)
	code, _ = do("PUT", "/admin/nuvla2/deployments/"+dep+"/state", "STOPPING")
	require.Equal(t, http.StatusNoContent, code)
	code, _ = do("GET", "/admin/nuvla2/groups/00000000-0000-0000-0000-000000000000", "")
	require.Equal(t, http.StatusNotFound, code)
}

// The deployment-parameter API as the spec states it: create 201 with the computed id, 409 on a
// duplicate, 404 for an unknown parent, 400 for a schema error or a bad filter, get/put/delete by
// id, search by GET and by form PUT, 403 without a session (never 401), JSON errors.
func TestNuvla2ParameterContract(t *testing.T) {
	s := New(Options{API: "nuvla2", Staleness: -1})
	d, err := ParseDeployment([]byte(`{"name":"app","nodes":[{"name":"cnsmo","cloud":"a"}]}`))
	require.NoError(t, err)
	g, err := s.CreateGroup(d, true)
	require.NoError(t, err)
	srv := httptest.NewServer(s)
	defer srv.Close()
	m := g.Members[0]
	anon := func(method, path, ctype, body string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, body := anon("GET", "/api/deployment-parameter", "", "")
	require.Equal(t, http.StatusForbidden, code, "no session: 403")
	require.Contains(t, body, `"status": 403`)
	code, _ = anon("POST", "/api/session", "application/json", `{"template":{"href":"session-template/api-key","key":"`+m.APIKey+`","secret":"bad"}}`)
	require.Equal(t, http.StatusForbidden, code)

	jar := &http.Client{}
	var cookie string
	do := func(method, path, ctype, body string) (int, string) {
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		require.NoError(t, err)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if cookie != "" {
			req.Header.Set("Cookie", cookie)
		}
		res, err := jar.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		if c := res.Cookies(); len(c) > 0 {
			cookie = c[0].Name + "=" + c[0].Value
		}
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	code, _ = do("POST", "/api/session", "application/json", `{"template":{"href":"session-template/api-key","key":"`+m.APIKey+`","secret":"`+m.APISecret+`"}}`)
	require.Equal(t, http.StatusCreated, code)
	require.True(t, strings.HasPrefix(cookie, Nuvla2CookieName+"="))

	id := nuvla2.ParamID(m.Deployment, "web.1", "vpn.csr")
	create := `{"parent":"` + m.Deployment + `","name":"vpn.csr","node-id":"web.1","value":"PEM"}`
	code, body = do("POST", "/api/deployment-parameter", "application/json", create)
	require.Equal(t, http.StatusCreated, code, body)
	require.Contains(t, body, `"resource-id": "`+id+`"`)
	code, _ = do("POST", "/api/deployment-parameter", "application/json", create)
	require.Equal(t, http.StatusConflict, code)
	code, _ = do("POST", "/api/deployment-parameter", "application/json", `{"parent":"deployment/0000aaaa-0000-4000-8000-000000000000","name":"x"}`)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = do("POST", "/api/deployment-parameter", "application/json", `{"parent":"`+m.Deployment+`","name":"has space"}`)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = do("POST", "/api/deployment-parameter", "application/json", `{"parent":"`+m.Deployment+`","name":"x","colour":"red"}`)
	require.Equal(t, http.StatusBadRequest, code, "unknown attribute")

	code, body = do("PUT", "/api/"+id, "application/json", `{"value":"PEM2","name":"renamed"}`)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"value": "PEM2"`)
	require.Contains(t, body, `"name": "vpn.csr"`, "name cannot change")
	code, body = do("GET", "/api/"+id, "", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"node-id": "web.1"`)

	code, body = do("GET", "/api/deployment-parameter?filter="+url.QueryEscape("parent='"+m.Deployment+"' and node-id^='web.'"), "", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"count": 1`)
	code, body = do("PUT", "/api/deployment-parameter", "application/x-www-form-urlencoded", "filter="+url.QueryEscape("name=['vpn.csr','x'] or name='y'")+"&last=0")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"count": 1`)
	require.Contains(t, body, `"resources": []`, "last=0: the count only")
	code, body = do("GET", "/api/deployment-parameter?filter="+url.QueryEscape("name='unterminated"), "", "")
	require.Equal(t, http.StatusBadRequest, code)
	require.Contains(t, body, "Invalid CIMI filter")

	code, _ = do("DELETE", "/api/"+id, "", "")
	require.Equal(t, http.StatusOK, code)
	code, body = do("GET", "/api/"+id, "", "")
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, body, `"resource-id": "`+id+`"`)
	code, _ = do("POST", "/api/"+id, "", "")
	require.Equal(t, http.StatusMethodNotAllowed, code)

	code, body = do("POST", "/api/"+m.Deployment+"/stop", "", "")
	require.Equal(t, http.StatusAccepted, code)
	code, body = do("GET", "/api/"+m.Deployment, "", "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body, `"state": "STOPPING"`)
}
