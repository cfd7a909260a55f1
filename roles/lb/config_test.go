package lb

import (
	"errors"
	"flag"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func getter(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestParseConfig(t *testing.T) {
	nodes := []string{"cnsmo", "web", "api"}
	tests := []struct {
		name    string
		in      map[string]string
		want    Config
		wantErr string
	}{
		{name: "defaults", in: map[string]string{params.LBPort: "80", params.LBNode: "web"},
			want: Config{Port: 80, BackendPort: 80, Mode: "leastconn", Nodes: []string{"web"}, CheckInter: 2000, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort}},
		{name: "all inputs", in: map[string]string{params.LBPort: "8080", params.LBBackendPort: "9000", params.LBMode: "roundrobin", params.LBNode: "web, api", params.LBCheckInter: "500"},
			want: Config{Port: 8080, BackendPort: 9000, Mode: "roundrobin", Nodes: []string{"web", "api"}, CheckInter: 500, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort}},
		{name: "json node list deduplicated", in: map[string]string{params.LBPort: "80", params.LBNode: `["api","web","api"]`},
			want: Config{Port: 80, BackendPort: 80, Mode: "leastconn", Nodes: []string{"api", "web"}, CheckInter: 2000, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort}},
		{name: "bad mode", in: map[string]string{params.LBPort: "80", params.LBNode: "web", params.LBMode: "fastest"},
			wantErr: `lb.mode: "fastest" is not one of roundrobin, static-rr, leastconn, first, source, random`},
		{name: "port missing", in: map[string]string{params.LBNode: "web"}, wantErr: "lb.port: is not set (a TCP port from 1 to 65535)"},
		{name: "port range", in: map[string]string{params.LBPort: "70000", params.LBNode: "web"}, wantErr: "lb.port: 70000 is out of range 1-65535"},
		{name: "port zero", in: map[string]string{params.LBPort: "0", params.LBNode: "web"}, wantErr: "lb.port: 0 is out of range 1-65535"},
		{name: "port text", in: map[string]string{params.LBPort: "http", params.LBNode: "web"}, wantErr: `lb.port: "http" is not a port number`},
		{name: "backend port range", in: map[string]string{params.LBPort: "80", params.LBBackendPort: "-1", params.LBNode: "web"}, wantErr: "lb.backend.port: -1 is out of range 1-65535"},
		{name: "unknown node", in: map[string]string{params.LBPort: "80", params.LBNode: "db"}, wantErr: `lb.node: node "db" is not in the run (nodes: cnsmo, web, api)`},
		{name: "node missing", in: map[string]string{params.LBPort: "80"}, wantErr: "lb.node: is not set (the node whose instances are the backends)"},
		{name: "node empty list", in: map[string]string{params.LBPort: "80", params.LBNode: " , "}, wantErr: "lb.node: names no node"},
		{name: "node bad json", in: map[string]string{params.LBPort: "80", params.LBNode: `["web"`}, wantErr: "lb.node: not a JSON list of node names: unexpected end of JSON input"},
		{name: "fall and rise", in: map[string]string{params.LBPort: "80", params.LBNode: "web", params.LBCheckFall: "3", params.LBCheckRise: "5"},
			want: Config{Port: 80, BackendPort: 80, Mode: "leastconn", Nodes: []string{"web"}, CheckInter: 2000, Fall: 3, Rise: 5, StatsPort: DefaultStatsPort}},
		{name: "front port on the runtime API's port", in: map[string]string{params.LBPort: "9999", params.LBNode: "web"},
			want: Config{Port: 9999, BackendPort: 9999, Mode: "leastconn", Nodes: []string{"web"}, CheckInter: 2000, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort - 1}},
		{name: "fall zero", in: map[string]string{params.LBPort: "80", params.LBNode: "web", params.LBCheckFall: "0"}, wantErr: `lb.check.fall: "0" is not a number of checks from 1 to 100`},
		{name: "rise text", in: map[string]string{params.LBPort: "80", params.LBNode: "web", params.LBCheckRise: "often"}, wantErr: `lb.check.rise: "often" is not a number of checks from 1 to 100`},
		{name: "check inter", in: map[string]string{params.LBPort: "80", params.LBNode: "web", params.LBCheckInter: "5"}, wantErr: `lb.check.inter: "5" is not a whole number of milliseconds from 100 to 3600000`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig(getter(tt.in), nodes)
			if tt.wantErr != "" {
				require.EqualError(t, err, tt.wantErr)
				var ie *role.InputError
				require.True(t, errors.As(err, &ie), "error is an *InputError naming the parameter")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func renderCases() map[string]struct {
	cfg      Config
	backends []Backend
} {
	bk := []Backend{
		{Instance: "web.10", Addr: netip.MustParseAddr("198.18.2.10")},
		{Instance: "web.2", Addr: netip.MustParseAddr("198.18.1.2")},
		{Instance: "api.1", Addr: netip.MustParseAddr("198.18.3.1")},
	}
	base := Config{Port: 8080, BackendPort: 8080, CheckInter: 2000, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort}
	out := map[string]struct {
		cfg      Config
		backends []Backend
	}{}
	for _, m := range Modes {
		c := base
		c.Mode = m
		out["mode_"+m] = struct {
			cfg      Config
			backends []Backend
		}{c, bk}
	}
	c := base
	c.Mode, c.BackendPort, c.CheckInter = "roundrobin", 9000, 500
	out["backend_port_and_check"] = struct {
		cfg      Config
		backends []Backend
	}{c, bk[:1]}
	c = base
	c.Mode, c.Fall, c.Rise = "source", 3, 5
	out["fall_and_rise"] = struct {
		cfg      Config
		backends []Backend
	}{c, bk}
	c = base
	c.Mode, c.Port, c.BackendPort, c.StatsPort = "roundrobin", DefaultStatsPort, DefaultStatsPort, DefaultStatsPort-1
	out["front_on_the_default_stats_port"] = struct {
		cfg      Config
		backends []Backend
	}{c, bk[:2]}
	c = base
	c.Mode = "leastconn"
	out["no_backends"] = struct {
		cfg      Config
		backends []Backend
	}{c, nil}
	c.Mode = "roundrobin"
	out["ipv6_backend"] = struct {
		cfg      Config
		backends []Backend
	}{c, []Backend{{Instance: "web.1", Addr: netip.MustParseAddr("2001:db8::5")}}}
	return out
}

func TestRenderGolden(t *testing.T) {
	for name, tc := range renderCases() {
		t.Run(name, func(t *testing.T) {
			got := Render(tc.cfg, tc.backends)
			path := filepath.Join("testdata", name+".cfg.golden")
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err, "golden file missing: run go test ./roles/lb -update")
			assert.Equal(t, string(want), got)
			assert.Equal(t, got, Render(tc.cfg, tc.backends), "render is deterministic")
		})
	}
}

// TestRenderedConfigsPassHAProxyCheck runs the real `haproxy -c` on every golden config.
func TestRenderedConfigsPassHAProxyCheck(t *testing.T) {
	testutil.RequireBinary(t, "haproxy")
	for name, tc := range renderCases() {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "haproxy.cfg")
			require.NoError(t, os.WriteFile(path, []byte(Render(tc.cfg, tc.backends)), 0o644))
			out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput()
			require.NoError(t, err, "haproxy -c: %s", out)
		})
	}
}
