package mocknuvla

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
