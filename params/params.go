// Package params is the one place where every run parameter cnsmo reads or writes is named,
// with who writes it, who reads it and its format. The README's parameter table and the
// application definition in recipes/ are checked against this table by tests.
package params

import "strconv"

// Integrated deployment.
const (
	ServicesEnable   = "net.services.enable"         // server input: JSON list of "vpn", "fw", "lb"
	ServicesEnabled  = "net.services.enabled"        // every instance: "true" when all its services are ready
	ServerInstanceID = "cnsmo.server.nodeinstanceid" // server output, agents' mapped input
	CoreReady        = "net.i2cat.cnsmo.core.ready"  // server output
	Generation       = "cnsmo.generation"            // server output: bumped when anything agents depend on changed
	Statecustom      = "statecustom"                 // progress shown in the Nuvla UI
	Hostname         = "hostname"                    // set by SlipStream: the VM's address
)

// VPN.
const (
	VPNServerInstanceID = "vpn.server.nodeinstanceid"
	VPNServerListening  = "net.i2cat.cnsmo.service.vpn.server.listening"
	VPNClientListening  = "net.i2cat.cnsmo.service.vpn.client.listening"
	VPNReady            = "net.i2cat.cnsmo.service.vpn.ready"
	VPNAddress          = "vpn.address"
	VPNAddress6         = "vpn.address6"
	VPNSubnet           = "vpn.subnet"
	VPNSubnet6          = "vpn.subnet6"
	VPNPort             = "vpn.port"
	VPNDevice           = "vpn.device"
	VPNEndpoint         = "vpn.server.endpoint"
	VPNCACert           = "vpn.ca.cert"
	VPNCRL              = "vpn.crl"
	VPNCSR              = "vpn.csr"
	VPNCert             = "vpn.cert"
	VPNEngine           = "vpn.engine"
	VPNWGPort           = "vpn.wg.port"
	VPNWGKey            = "vpn.wg.pubkey"
	VPNSigner           = "vpn.signer"
	VPNMember           = "vpn.member"
	VPNWGHandshakes     = "vpn.wg.handshakes"
	VPNDomain           = "vpn.domain"
	VPNRoster           = "vpn.roster"
)

// People in the overlay (cnsmo-role join): UserSlots declared slots on the CNSMO server's
// instance, vpn.user.<i> (the person's request, then its leave) and vpn.user.<i>.grant (the
// server's answer).
const UserSlots = 8

// UserSlot is the key of slot i's request (1 <= i <= UserSlots).
func UserSlot(i int) string { return "vpn.user." + strconv.Itoa(i) }

// UserGrant is the key of slot i's grant.
func UserGrant(i int) string { return UserSlot(i) + ".grant" }

// Firewall.
const (
	FWRules     = "net.i2cat.cnsmo.service.fw.rules"
	FWReady     = "net.i2cat.cnsmo.service.fw.ready"
	FWLockoutOK = "net.i2cat.cnsmo.service.fw.lockout_ok"
)

// Load balancer.
const (
	LBPort        = "lb.port"
	LBMode        = "lb.mode"
	LBNode        = "lb.node"
	LBBackendPort = "lb.backend.port"
	LBCheckInter  = "lb.check.inter"
	LBCheckFall   = "lb.check.fall"
	LBCheckRise   = "lb.check.rise"
	LBReady       = "net.i2cat.cnsmo.service.lb.ready"
	URLService    = "url.service"
	SSURLService  = "ss:url.service"
)

// Spec documents one parameter: the README's table is checked against this list.
type Spec struct {
	Name   string
	Writer string // who sets it
	Reader string // who reads it
	Format string
}

// Table lists every parameter cnsmo reads or writes (SlipStream's own standard parameters aside).
var Table = []Spec{
	{ServicesEnable, "developer (input of the CNSMO server component)", "server, agents", `JSON list of "vpn", "fw", "lb"`},
	{ServerInstanceID, "server (its own instance name)", "agents (mapped input `cnsmo:cnsmo.server.nodeinstanceid`)", "instance name, e.g. `cnsmo.1`"},
	{CoreReady, "server", "agents", "`true`"},
	{Generation, "server, whenever anything an agent depends on changed", "agents (at steady state the only key they read)", "a counter: 1, 2, …"},
	{ServicesEnabled, "server and every agent, when all its services are ready (un-set while one is known down, and by a role that starts again until it has found every service ready)", "recipes (`ss-get net.services.enabled`)", "`true`"},
	{VPNServerInstanceID, "VPN server", "VPN clients", "instance name"},
	{VPNServerListening, "VPN server, when OpenVPN listens", "VPN clients", "`true`"},
	{VPNEndpoint, "VPN server", "VPN clients", "`host:port/proto` of the OpenVPN server"},
	{VPNCACert, "VPN server", "VPN clients", "PEM certificate of the VPN's CA"},
	{VPNCRL, "VPN server", "VPN clients, operators", "PEM certificate revocation list"},
	{VPNCSR, "VPN client (on its own instance)", "VPN server", "PEM certificate request, CN = the instance name"},
	{VPNCert, "VPN server (on the client's instance)", "VPN client", "PEM certificate signed by the VPN's CA"},
	{VPNClientListening, "VPN client, when the server answers through the tunnel", "VPN server", "`true`"},
	{VPNReady, "VPN server, when every current client is connected and has confirmed its tunnel (wireguard: and has a recent handshake with every other member); un-set while one is missing", "agents, recipes", "`true`"},
	{VPNAddress, "VPN client, once its interface has it and the server answers through the tunnel (the server: its own)", "application, load balancer", "IPv4 address in the overlay, stable across restarts"},
	{VPNAddress6, "VPN client, with vpn.address (the server: its own)", "application", "IPv6 address in the overlay, same host index as vpn.address"},
	{VPNSubnet, "developer (input of the CNSMO server component)", "VPN server", "IPv4 prefix, /8 to /29; default 100.96.0.0/16 (in 100.64.0.0/10, clear of clouds' private ranges)"},
	{VPNSubnet6, "developer (input of the CNSMO server component)", "VPN server", "IPv6 prefix, /64 to /124; default fd63:6e73:6d6f::/64 (a ULA prefix)"},
	{VPNPort, "developer (input of the CNSMO server component)", "VPN server", "UDP port; default 1194"},
	{VPNDevice, "developer (input of the CNSMO server component)", "VPN server and clients", "`tap` (default) or `tun`"},
	{VPNEngine, "developer (input of the CNSMO server component)", "VPN server and clients", "`openvpn` (default: the hub, layer 2 with tap) or `wireguard` (a direct full mesh, layer 3)"},
	{VPNWGPort, "developer (input of the CNSMO server component)", "VPN server and clients (wireguard)", "UDP port every member listens on; default 51820"},
	{VPNWGKey, "every VPN member, on its own instance (wireguard)", "VPN server", "WireGuard public key (base64); the private key never leaves the VM"},
	{VPNSigner, "VPN server", "VPN members and people (pinned on first use)", "Ed25519 public key (base64) that signs the membership entries"},
	{VPNMember, "VPN server, on each member's instance and its own", "every VPN member (wireguard: its peers; both engines: the names)", "signed entry: `cnsmo-vpn1 gen=… inst=… key=… ep=host:port v4=… v6=… sig=…` (key and ep `-` with openvpn)"},
	{VPNDomain, "developer (input of the CNSMO server component)", "VPN server and members", "DNS suffix of the members' names (`web-1.<domain>`, people `<name>.users.<domain>`); default `cnsmo.internal`"},
	{VPNRoster, "VPN server, on its own instance", "every VPN member (the people it names), people (cnsmo-role join)", "signed: `cnsmo-roster1 gen=… srv=… eng=… dev=… v4=… v6=… domain=… ca=<sha256>|- ep=<host:port>|- people=<names>|- sig=…`"},
	{"vpn.user.<i>", "a person (cnsmo-role join / leave), on the CNSMO server's instance; slots 1 to 8", "VPN server", "signed request: `cnsmo-join1 name=… id=… key=… csr=… t=… sig=…`, later `cnsmo-leave1 name=… id=… t=… sig=…` (public keys only)"},
	{"vpn.user.<i>.grant", "VPN server, on its own instance", "the person, every VPN member (names)", "the person's signed entry (`inst=<name>.users`, `ep=-`; OpenVPN: then its certificate), `cnsmo-left1 …` (signed) once a proven leave is done, or `refused: <name>: <reason>`"},
	{VPNWGHandshakes, "every VPN member (wireguard)", "operators", "`<n>/<peers>`: peers with a handshake in the last 3 minutes"},
	{FWRules, "developer (input of each application component)", "agent", "JSON list of rules (see Firewall)"},
	{FWLockoutOK, "developer (input of each application component)", "agent", "`true` to waive the anti-lockout rules"},
	{FWReady, "agent, once the rules are in place", "recipes, operators", "`true`; un-set after a failed apply"},
	{LBPort, "developer (input of the CNSMO server component)", "server", "TCP port 1-65535"},
	{LBMode, "developer (input of the CNSMO server component)", "server", "roundrobin, static-rr, leastconn (default), first, source, random"},
	{LBNode, "developer (input of the CNSMO server component)", "server", "node name, comma-separated names or a JSON list"},
	{LBBackendPort, "developer (input of the CNSMO server component)", "server", "TCP port of the backends; default lb.port"},
	{LBCheckInter, "developer (input of the CNSMO server component)", "server", "health-check interval in ms; default 2000"},
	{LBCheckFall, "developer (input of the CNSMO server component)", "server", "failed checks before a backend is DOWN, 1-100; default 2"},
	{LBCheckRise, "developer (input of the CNSMO server component)", "server", "passed checks before a DOWN backend is UP again, 1-100; default 2"},
	{LBReady, "server, when HAProxy accepts connections and a backend has passed a health check", "recipes, operators", "`true`; un-set while every backend is known down"},
	{URLService, "server (load balancer)", "users", "`host:port` of the load balancer"},
	{SSURLService, "server (load balancer)", "Nuvla UI", "`host:port` of the load balancer"},
}

// Row is s as a row of the README's parameter table.
func (s Spec) Row() string {
	return "| `" + s.Name + "` | " + s.Writer + " | " + s.Reader + " | " + s.Format + " |"
}
