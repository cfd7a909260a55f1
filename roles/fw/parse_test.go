package fw

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const p = "net.i2cat.cnsmo.service.fw.rules"

func TestParseErrorsNameIndexAndField(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`[{"direction":"in","protocol":"tcp","dst_port":"70000","action":"drop"}]`, p + "[0].dst_port: 70000 is out of range 1-65535"},
		{`[{"policy":"denyall"},{"direction":"in","protocol":"tcp","dst_port":"80","action":"drop"},{"direction":"in","protocol":"tcp","dst_port":"1","action":"acpt"},{"direction":"in","protocol":"tcp","dst_port":70000,"action":"drop"}]`, p + "[3].dst_port: 70000 is out of range 1-65535"},
		{`[{"direction":"up","action":"drop"}]`, p + `[0].direction: "up" is not in or out`},
		{`[{"action":"drop"}]`, p + "[0].direction: is required (in or out)"},
		{`[{"direction":"in","protocol":"sctp","action":"drop"}]`, p + `[0].protocol: "sctp" is not tcp, udp, icmp or all`},
		{`[{"direction":"in","protocol":"icmp","dst_port":"1","action":"drop"}]`, p + `[0].dst_port: ports need protocol tcp or udp, not "icmp"`},
		{`[{"direction":"in","protocol":"tcp","dst_port":"90:80","action":"drop"}]`, p + "[0].dst_port: range 90:80 is reversed"},
		{`[{"direction":"in","protocol":"tcp","dst_port":"http","action":"drop"}]`, p + `[0].dst_port: "http" is not a port number`},
		{`[{"direction":"in","protocol":"tcp","src_port":"0","action":"drop"}]`, p + "[0].src_port: 0 is out of range 1-65535"},
		{`[{"direction":"in","ip_range":"300.1.1.1/8","action":"drop"}]`, p + `[0].ip_range: "300.1.1.1/8" is not an IPv4 or IPv6 address or CIDR range`},
		{`[{"direction":"in","dst_src":"both","action":"drop"}]`, p + `[0].dst_src: "both" is not src or dst`},
		{`[{"direction":"in","action":"bounce"}]`, p + `[0].action: "bounce" is not accept, acpt, drop or reject`},
		{`[{"direction":"in"}]`, p + "[0].action: is required (accept, acpt, drop or reject)"},
		{`[{"direction":"in","action":"drop","port":"1"}]`, p + "[0].port: unknown field"},
		{`[{"policy":"allowall"}]`, p + `[0].policy: "allowall" is not a policy (known: denyall)`},
		{`[{"policy":"denyall","action":"drop"}]`, p + "[0].policy: a policy rule has no other fields"},
		{`[{"direction":1,"action":"drop"}]`, p + "[0].direction: must be a string, not 1"},
		{`{"direction":"in"}`, p + ": not a JSON list of rule objects"},
		{`[] []`, p + ": text after the JSON list"},
		{`[[]]`, p + `[0]: a rule must be a JSON object such as {"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"} or {"policy":"denyall"}, not []`},
		{`[{"direction":"in","action":"drop"},"drop"]`, p + `[1]: a rule must be a JSON object such as`},
		{`[{"policy":"denyall"},{"direction":"in","action":"drop"},{"policy":"denyall"}]`, p + "[2].policy: a second policy (the first is rule 0); a list has at most one"},
		{"[" + strings.Repeat(" ", 5000) + "]", p + ": value is 5002 characters, over the 4096 limit"},
	} {
		_, err := ParseRules(c.in)
		require.Error(t, err, c.in)
		require.True(t, strings.HasPrefix(err.Error(), c.want), "%s\n got  %s\n want %s", c.in, err, c.want)
	}
}

func TestParseFormats(t *testing.T) {
	rules, err := ParseRules(`[
	 {"direction":"in","protocol":"tcp","dst_port":"8081","ip_range":"0.0.0.0/0","action":"drop"},
	 {"direction":"in","protocol":"TCP","dst_port":8080,"ip_range":"198.18.0.7","dst_src":"src","action":"acpt"},
	 {"direction":"out","protocol":"udp","dst_port":"5000:5010","ip_range":"2001:db8::/32","dst_src":"dst","action":"reject"},
	 {"direction":"in","protocol":"all","action":"accept"},
	 {"policy":"denyall"}]`)
	require.NoError(t, err)
	require.Len(t, rules, 5)
	require.Equal(t, "8081", rules[0].DstPorts)
	require.Equal(t, "198.18.0.7/32", rules[1].Range.String())
	require.Equal(t, "ACCEPT", rules[1].Action)
	require.Equal(t, "5000:5010", rules[2].DstPorts)
	require.False(t, rules[2].MatchSrc)
	v4, v6 := rules[2].Family()
	require.False(t, v4)
	require.True(t, v6)
	require.True(t, rules[4].DenyAll)
	for _, empty := range []string{"", "[]", " [ ] "} {
		rules, err := ParseRules(empty)
		require.NoError(t, err)
		require.Empty(t, rules)
	}
}

func TestRenderGolden(t *testing.T) {
	for name, c := range map[string]struct {
		rules string
		opts  Options
	}{
		"seed_drop_8081":    {`[{"direction":"in","protocol":"tcp","dst_port":"8081","ip_range":"0.0.0.0/0","action":"drop"}]`, Options{}},
		"original_format":   {`[{"direction":"in","protocol":"tcp","dst_port":"22:25","ip_range":"198.18.0.0/15","dst_src":"src","action":"acpt"},{"direction":"out","protocol":"udp","src_port":"53","ip_range":"2001:db8::1","dst_src":"dst","action":"reject"}]`, Options{}},
		"denyall_vpn":       {`[{"direction":"in","protocol":"tcp","dst_port":"443","action":"accept"},{"direction":"in","protocol":"icmp","action":"accept"},{"policy":"denyall"}]`, Options{VPNPort: 1194, VPNDevice: "cnsmo-vpn", Resolvers: []netip.Addr{netip.MustParseAddr("198.19.0.53"), netip.MustParseAddr("2001:db8:53::1")}, Endpoints: []netip.Addr{netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("2001:db8::1")}, EndpointPort: 8080}},
		"denyall_wireguard": {`[{"policy":"denyall"}]`, Options{VPNPort: 51820, VPNMesh: true, VPNDevice: "cnsmo-vpn"}},
		"lockout_waived":    {`[{"policy":"denyall"}]`, Options{NoAntiLockout: true}},
		"docker_published":  {`[{"direction":"in","protocol":"tcp","dst_port":"8080:8090","ip_range":"198.18.0.0/15","action":"accept"},{"direction":"in","protocol":"udp","dst_port":"53","ip_range":"2001:db8::/32","dst_src":"dst","action":"reject"},{"direction":"in","protocol":"icmp","action":"drop"},{"direction":"out","protocol":"tcp","dst_port":"25","action":"drop"},{"direction":"in","protocol":"tcp","src_port":"1024:65535","action":"drop"},{"policy":"denyall"}]`, Options{}},
	} {
		t.Run(name, func(t *testing.T) {
			rules, err := ParseRules(c.rules)
			require.NoError(t, err)
			got := "# iptables\n" + RestoreInput(Render(rules, c.opts, false), Jumps{}) +
				"# ip6tables\n" + RestoreInput(Render(rules, c.opts, true), Jumps{}) +
				"# iptables, where Docker made DOCKER-USER\n" + RestoreInput(append(Render(rules, c.opts, false), RenderDocker(rules, c.opts, false)...), Jumps{DockerUser: true}) +
				"# ip6tables, where Docker made DOCKER-USER\n" + RestoreInput(append(Render(rules, c.opts, true), RenderDocker(rules, c.opts, true)...), Jumps{DockerUser: true})
			path := filepath.Join("testdata", name+".golden")
			if *update {
				require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(want), got)
		})
	}
}

// FuzzParseRules: the parser never panics, and what it accepts renders to rules that only touch
// cnsmo's chains. A longer run: go test -run XXX -fuzz FuzzParseRules -fuzztime 60s ./roles/fw
func FuzzParseRules(f *testing.F) {
	for _, s := range []string{`[]`, `[{"policy":"denyall"}]`,
		`[{"direction":"in","protocol":"tcp","dst_port":"8081","ip_range":"0.0.0.0/0","action":"drop"}]`,
		`[{"direction":"out","protocol":"udp","dst_port":5000,"ip_range":"2001:db8::/32","dst_src":"dst","action":"acpt"}]`,
		`[{"direction":"in","protocol":"tcp","dst_port":"1:65535","action":"reject"}]`, `[{"x":1}]`, `{`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rules, err := ParseRules(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), p) {
				t.Fatalf("error does not name the parameter: %v", err)
			}
			return
		}
		for _, v6 := range []bool{false, true} {
			for _, l := range Render(rules, Options{}, v6) {
				if !strings.HasPrefix(l, "-A "+ChainIn+" ") && !strings.HasPrefix(l, "-A "+ChainOut+" ") && !strings.HasPrefix(l, "-N CNSMO-") {
					t.Fatalf("rule outside cnsmo's chains: %q", l)
				}
				if strings.ContainsAny(l, "\n;&|`$") {
					t.Fatalf("unexpected character in %q", l)
				}
			}
		}
	})
}
