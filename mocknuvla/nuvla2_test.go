package mocknuvla

import (
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
