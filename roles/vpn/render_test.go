package vpn

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(p, []byte(got), 0o644))
	}
	want, err := os.ReadFile(p)
	require.NoError(t, err, "run go test -update to create %s", p)
	assert.Equal(t, string(want), got, "golden file %s (go test -update to rewrite)", p)
}

func testServerConfig(t *testing.T, device, s4, s6 string, port int) ServerConfig {
	v4, v6, err := ParsePrefixes(s4, s6)
	require.NoError(t, err)
	a, err := OpenAllocator(filepath.Join(t.TempDir(), "a.json"), v4, v6)
	require.NoError(t, err)
	return ServerConfig{Dir: DefaultServerDir, Device: device, Port: port, V4: v4, V6: v6, Server: a.Server(), MgmtPort: DefaultMgmtPort}
}

func TestRenderGolden(t *testing.T) {
	tap := testServerConfig(t, "tap", "198.19.240.0/24", "2001:db8:f0::/64", DefaultPort)
	golden(t, "server_tap", RenderServer(tap))
	tun := testServerConfig(t, "tun", "198.19.200.0/24", "2001:db8:c5e0::/64", 11940)
	golden(t, "server_tun_test_subnets", RenderServer(tun))

	a, err := OpenAllocator(filepath.Join(t.TempDir(), "a.json"), tun.V4, tun.V6)
	require.NoError(t, err)
	as, err := a.Assign("web.1")
	require.NoError(t, err)
	golden(t, "ccd_web.1", RenderCCD(tun, as))
	golden(t, "ccd_revoked", RenderCCDDisabled())

	golden(t, "client_tap", RenderClient(ClientConfig{Dir: DefaultClientDir, Device: "tap", Host: "198.18.3.4", Port: 1194}))
	golden(t, "client_tun_ipv6_endpoint", RenderClient(ClientConfig{Dir: DefaultClientDir, Device: "tun", Host: "2001:db8:1::4", Port: 11940}))
}

func TestRenderProperties(t *testing.T) {
	for _, dev := range []string{"tap", "tun"} {
		c := testServerConfig(t, dev, "198.19.240.0/24", "2001:db8:f0::/64", 1194)
		s := RenderServer(c)
		for _, want := range []string{
			"dev-type " + dev, "port 1194", "proto udp", "client-to-client", "keepalive 5 20",
			"data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305", "tls-version-min 1.2", "dh none",
			"crl-verify /var/lib/cnsmo/vpn/server/crl.pem", "ccd-exclusive",
			"management 127.0.0.1 7505 /var/lib/cnsmo/vpn/server/mgmt.pw",
			"ifconfig 198.19.240.1 255.255.255.0", "ifconfig-ipv6 2001:db8:f0::1/64 2001:db8:f0::2",
			// Clients must present client certificates; OpenVPN gives up root once started.
			"remote-cert-tls client", "user nobody", "group nogroup",
		} {
			assert.Contains(t, s, want+"\n", dev)
		}
		assert.Equal(t, dev == "tun", strings.Contains(s, "topology subnet"), dev)
		cl := RenderClient(ClientConfig{Dir: DefaultClientDir, Device: dev, Host: "198.18.0.9", Port: 1194})
		for _, want := range []string{"client", "remote 198.18.0.9 1194", "remote-cert-tls server", "verify-x509-name cnsmo-vpn-server name", "nobind", "user nobody", "group nogroup"} {
			assert.Contains(t, cl, want+"\n", dev)
		}
		assert.NotContains(t, s+cl, "PRIVATE KEY")
	}
}

func TestParseInputs(t *testing.T) {
	in, err := ParseInputs(func(string) string { return "" })
	require.NoError(t, err)
	assert.Equal(t, Inputs{Engine: EngineOpenVPN, Device: "tap", Port: 1194, WGPort: DefaultWGPort, V4: in.V4, V6: in.V6, Domain: DefaultDomain}, in)
	assert.Equal(t, DefaultSubnet, in.V4.String())
	for k, v := range map[string]string{params.VPNDevice: "tcp", params.VPNPort: "70000", params.VPNSubnet: "198.19.200.0/33",
		params.VPNEngine: "ipsec", params.VPNWGPort: "0", params.VPNDomain: "under_score.example"} {
		_, err := ParseInputs(func(key string) string {
			if key == k {
				return v
			}
			return ""
		})
		require.Error(t, err, k)
		assert.Contains(t, err.Error(), k)
	}
}

func TestEndpoint(t *testing.T) {
	assert.Equal(t, "198.18.0.1:1194/udp", Endpoint("198.18.0.1", 1194))
	assert.Equal(t, "[2001:db8::1]:1194/udp", Endpoint("2001:db8::1", 1194))
	for _, e := range []string{"198.18.0.1:1194/udp", "198.18.0.1:1194", "[2001:db8::1]:1194/udp"} {
		_, p, err := ParseEndpoint(e)
		require.NoError(t, err, e)
		assert.Equal(t, 1194, p)
	}
	for _, e := range []string{"", "198.18.0.1", "198.18.0.1:0/udp", "198.18.0.1:1194/tcp", ":1194",
		"[x\nredirect-gateway def1\nremote evil]:1194", "[a b]:1194", "[host;x]:1194"} { // nothing but a host goes into a configuration
		_, _, err := ParseEndpoint(e)
		assert.Error(t, err, e)
	}
}
