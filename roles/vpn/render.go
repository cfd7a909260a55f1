package vpn

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"

	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// Device is the name of the overlay's tap (or tun) device on every member. One OpenVPN process
// per VM (server or client) uses it.
const Device = "cnsmo-vpn"

// Defaults of the inputs and of the local management interface.
const (
	DefaultPort     = 1194
	DefaultDevice   = "tap" // as the original; "tun" is selectable with vpn.device
	DefaultMgmtPort = 7505  // OpenVPN's management interface, on 127.0.0.1 only, password protected
)

// Data-channel ciphers: AEAD only, AES-GCM first (AES-NI), ChaCha20-Poly1305 for CPUs without it.
const dataCiphers = "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305"

// Throughput tuning, measured by TestBenchVPN (iperf3 client to client through the server, tap,
// AES-256-GCM, user-space OpenVPN, 2 shared cores): 320-400 Mbit/s with the settings below,
// 160-290 Mbit/s without fast-io and the socket buffers (same machine, same run conditions).
// Client-to-client traffic crosses the server's OpenVPN twice, so about half of what one
// client-server tunnel carries is expected.
//   - fast-io: OpenVPN writes UDP without a poll() round first (UDP on Linux).
//   - sndbuf/rcvbuf 4 MiB on both ends (pushed to clients too): fewer drops under bursts. OpenVPN
//     runs as root and forces the size past net.core.wmem_max/rmem_max (its log shows 8 MiB).
//   - txqueuelen 1000 on the device.
//
// Not shipped: a 9000-byte tunnel MTU roughly triples throughput between namespaces but makes
// every big packet an IP-fragmented UDP datagram on the underlay, which clouds' networks often
// drop. DCO (kernel data channel) is used by OpenVPN by itself with tun where the module exists;
// tap (the default, as the original) always runs in user space.
const sockBuf = 4 << 20

// ServerConfig is what the server's OpenVPN configuration is rendered from.
type ServerConfig struct {
	Dir      string // directory of the configuration, keys, CRL and ccd/ in the function's filesystem
	Device   string // "tap" or "tun"
	Port     int
	V4, V6   netip.Prefix
	Server   Assignment // the server's own overlay addresses
	MgmtPort int
}

// Paths of the server's files under ServerConfig.Dir.
func (c ServerConfig) path(name string) string { return path.Join(c.Dir, name) }

// ConfigPath is the server's configuration file.
func (c ServerConfig) ConfigPath() string { return c.path("server.conf") }

// CCDDir is the client-config-dir.
func (c ServerConfig) CCDDir() string { return c.path("ccd") }

// CRLPath is the CRL OpenVPN checks on every connection.
func (c ServerConfig) CRLPath() string { return c.path("crl.pem") }

// MgmtPasswordPath is the management interface's password file.
func (c ServerConfig) MgmtPasswordPath() string { return c.path("mgmt.pw") }

func netmask(p netip.Prefix) string {
	return net.IP(net.CIDRMask(p.Bits(), 32)).String()
}

// RenderServer renders the OpenVPN 2.6 server configuration. It is pure: same input, same text.
//
// Choices: `mode server` + `tls-server` with the server's own address set explicitly instead of
// the `server` helper, so there is no dynamic pool: every client gets its fixed address from its
// client-config-dir file, and `ccd-exclusive` refuses any client without one (the server writes
// one only for instances it signed a certificate for, and turns it into `disable` on revocation;
// the CRL remains the real guard). `dh none` + `tls-groups X25519:prime256v1`: ECDHE only, no DH file (`ecdh-curve` is ignored by
// OpenVPN builds with OpenSSL 3, `tls-groups` replaces it).
func RenderServer(c ServerConfig) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# cnsmo VPN server (OpenVPN 2.6), rendered by cnsmo-role: do not edit")
	w("mode server")
	w("tls-server")
	w("dev %s", Device)
	w("dev-type %s", c.Device)
	w("proto udp")
	w("port %d", c.Port)
	if c.Device == "tun" {
		w("topology subnet")
		w(`push "topology subnet"`)
	}
	w("ifconfig %s %s", c.Server.V4, netmask(c.V4))
	w("ifconfig-ipv6 %s/%d %s", c.Server.V6, c.V6.Bits(), hostAddr(c.V6, serverIndex+1))
	w("client-config-dir %s", c.CCDDir())
	w("ccd-exclusive")
	w("client-to-client")
	// keepalive 5 20 (pushed to clients): a client notices a server that died without notice
	// (kill -9, VM crash) within 20 s and reconnects; the server drops a silent client after
	// 40 s. One small packet per 5 s and client is the price. A clean server stop tells clients
	// at once (explicit-exit-notify).
	w("keepalive 5 20")
	w("explicit-exit-notify 1")
	w("data-ciphers %s", dataCiphers)
	w("tls-version-min 1.2")
	w("dh none")
	w("tls-groups X25519:prime256v1") // ECDHE groups (ecdh-curve is ignored with OpenSSL 3)
	w("ca %s", c.path("ca.crt"))
	w("cert %s", c.path("server.crt"))
	w("key %s", c.path("server.key"))
	w("remote-cert-tls client") // a server certificate of the same CA is no client
	w("crl-verify %s", c.CRLPath())
	w("management 127.0.0.1 %d %s", c.MgmtPort, c.MgmtPasswordPath())
	w("status %s 10", c.path("status.log"))
	w("status-version 3")
	w("persist-key")
	w("persist-tun")
	w("fast-io")
	w("sndbuf %d", sockBuf)
	w("rcvbuf %d", sockBuf)
	w(`push "sndbuf %d"`, sockBuf)
	w(`push "rcvbuf %d"`, sockBuf)
	w("txqueuelen 1000")
	dropRoot(w)
	w("verb 3")
	return b.String()
}

// dropRoot makes OpenVPN give up root once its device, sockets and files are open (persist-key
// and persist-tun keep them across a restart). What it reads later (the server's CRL and
// client-config-dir on each connection) is world-readable in a traversable directory.
func dropRoot(w func(string, ...any)) {
	w("user nobody")
	w("group nogroup")
}

// RenderCCD renders a client's client-config-dir file: its fixed addresses.
func RenderCCD(c ServerConfig, a Assignment) string {
	return fmt.Sprintf("# cnsmo: fixed overlay addresses of this client\nifconfig-push %s %s\nifconfig-ipv6-push %s/%d %s\n",
		a.V4, netmask(c.V4), a.V6, c.V6.Bits(), c.Server.V6)
}

// RenderCCDDisabled renders the client-config-dir file of a revoked client.
func RenderCCDDisabled() string {
	return "# cnsmo: revoked (scaled in); the CRL refuses its certificate too\ndisable\n"
}

// ClientConfig is what a client's OpenVPN configuration is rendered from.
type ClientConfig struct {
	Dir    string // directory of the configuration and keys in the function's filesystem
	Device string // "tap" or "tun", as the server
	Host   string // the server's public address
	Port   int
}

func (c ClientConfig) path(name string) string { return path.Join(c.Dir, name) }

// ConfigPath is the client's configuration file.
func (c ClientConfig) ConfigPath() string { return c.path("client.conf") }

// RenderClient renders the OpenVPN 2.6 client configuration: it checks the server's certificate
// (`remote-cert-tls server` and its name with `verify-x509-name`) and takes its addresses from
// the server (ifconfig-push from the server's client-config-dir).
func RenderClient(c ClientConfig) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# cnsmo VPN client (OpenVPN 2.6), rendered by cnsmo-role: do not edit")
	w("client")
	w("dev %s", Device)
	w("dev-type %s", c.Device)
	w("proto udp")
	w("remote %s %d", c.Host, c.Port)
	w("nobind")
	w("resolv-retry infinite")
	w("connect-retry 1 5")
	w("remote-cert-tls server")
	w("verify-x509-name %s name", pki.ServerCN)
	w("data-ciphers %s", dataCiphers)
	w("tls-version-min 1.2")
	w("ca %s", c.path("ca.crt"))
	w("cert %s", c.path("client.crt"))
	w("key %s", c.path("client.key"))
	w("keepalive 5 20")
	w("explicit-exit-notify 1")
	w("persist-key")
	w("persist-tun")
	w("fast-io")
	w("sndbuf %d", sockBuf)
	w("rcvbuf %d", sockBuf)
	w("txqueuelen 1000")
	dropRoot(w)
	w("verb 3")
	return b.String()
}
