package rolecmd

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/ssclient"
)

func testRun(vals map[string]string) *ssclient.Run {
	r := &ssclient.Run{Params: map[string]ssclient.Param{
		"ss:groups": {Value: "cloud-a:cnsmo,cloud-b:web", IsSet: true},
		"cnsmo:ids": {Value: "1", IsSet: true},
		"web:ids":   {Value: "1,2", IsSet: true},
	}}
	for k, v := range vals {
		r.Params[k] = ssclient.Param{Value: v, IsSet: true}
	}
	return r
}

func TestValidateRunNamesTheInstanceAndParameter(t *testing.T) {
	all := []string{"vpn", "fw", "lb"}
	good := map[string]string{
		"cnsmo.1:" + params.LBPort: "8080", "cnsmo.1:" + params.LBNode: "web",
		"cnsmo.1:" + params.VPNSubnet: "198.19.200.0/24", "cnsmo.1:" + params.VPNSubnet6: "2001:db8:c5e0::/64",
		"web.1:" + params.FWRules: `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`,
		"web.2:" + params.FWRules: `[]`,
	}
	require.NoError(t, ValidateRun(testRun(good), all, "cnsmo.1"))
	for _, c := range []struct {
		name     string
		key, val string
		services []string
		want     string // "" = valid
	}{
		{"bad rule on another instance", "web.2:" + params.FWRules, `[{"direction":"in","dst_port":"1","action":"drop"}]`, all,
			"web.2: " + params.FWRules + "[0]"},
		{"bad rule, fw not enabled", "web.2:" + params.FWRules, `[{"direction":"sideways","action":"drop"}]`, []string{"vpn", "lb"}, ""},
		{"bad lb.mode", "cnsmo.1:" + params.LBMode, "fastest", all, `cnsmo.1: lb.mode: "fastest" is not one of roundrobin`},
		{"bad lb.mode, lb not enabled", "cnsmo.1:" + params.LBMode, "fastest", []string{"vpn", "fw"}, ""},
		{"lb.node not in the run", "cnsmo.1:" + params.LBNode, "db", all, `cnsmo.1: lb.node: node "db" is not in the run`},
		{"bad vpn.subnet", "cnsmo.1:" + params.VPNSubnet, "198.19.200.0/33", all, "cnsmo.1: vpn.subnet"},
		{"bad vpn.device", "cnsmo.1:" + params.VPNDevice, "wg", all, `cnsmo.1: vpn.device: "wg" is not tap or tun`},
		{"bad vpn.port, vpn not enabled", "cnsmo.1:" + params.VPNPort, "0", []string{"fw", "lb"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			vals := map[string]string{}
			for k, v := range good {
				vals[k] = v
			}
			vals[c.key] = c.val
			err := ValidateRun(testRun(vals), c.services, "cnsmo.1")
			if c.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
		})
	}
}
