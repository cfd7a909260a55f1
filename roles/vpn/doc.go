// Package vpn is the multi-cloud VPN: an OpenVPN 2.6 hub on the CNSMO server VM and one client
// on every application VM, with client-to-client routing. No private key leaves its VM: the
// server's CA (package pki, ECDSA P-256) signs the certificate request each client publishes in
// its own vpn.csr, and only if its subject is that instance. Each member gets a stable address
// (IPv4 and IPv6, same host index) from the overlay prefixes; scale-in revokes the removed
// instance's certificate (CRL re-read by OpenVPN on every connection), closes its connection and
// frees its address for the next new client.
//
// # Parameters (names in package params)
//
//	server instance: vpn.server.nodeinstanceid, vpn.ca.cert, vpn.crl, vpn.server.endpoint
//	                 ("host:port/udp", host = its hostname parameter), vpn.address, vpn.address6
//	                 (its own overlay addresses, the first host of each prefix),
//	                 net.i2cat.cnsmo.service.vpn.server.listening (OpenVPN answers on its
//	                 management interface and the device has both addresses),
//	                 net.i2cat.cnsmo.service.vpn.ready ("true" when every current client is
//	                 connected and has confirmed its tunnel with vpn.client.listening, back to
//	                 "false" while one is missing);
//	                 inputs vpn.subnet (default 100.96.0.0/16), vpn.subnet6 (default
//	                 fd63:6e73:6d6f::/64), vpn.port (default 1194), vpn.device (tap, default, or tun).
//	client instance: vpn.csr (written by the client), vpn.cert (written by the server), and, once
//	                 the device has both addresses and the server's overlay addresses answer a
//	                 ping through the tunnel: vpn.address, vpn.address6 and
//	                 net.i2cat.cnsmo.service.vpn.client.listening (written by the client).
//
// The server assigns addresses (client-config-dir, pushed by OpenVPN); the client publishes the
// addresses its device really has. Every instance of every node of the run other than the
// server is a client. Only public data goes into parameters (CSRs, certificates, CRL,
// addresses); the CRL is not published when it outgrows a parameter (4096 characters, about 60
// revocations): OpenVPN reads the file.
//
// # Choices
//
//   - Overlay defaults: a /16 of 100.64.0.0/10 (RFC 6598, as Tailscale) and a ULA /64, so they do
//     not collide with clouds' private VPC ranges. IPv6 is always configured: the VMs need IPv6
//     enabled (net.ipv6.conf.all.disable_ipv6=0), otherwise OpenVPN exits (its log says so in
//     the role's log).
//   - No dynamic pool: `ccd-exclusive`; a client without a client-config-dir file (one the
//     server did not sign) is refused; a revoked one gets `disable` in its file besides the CRL.
//   - keepalive 5 20: clients reconnect within 20 s to a server that died without notice.
//   - The management interface (status, kill) listens on 127.0.0.1 only, with a random password
//     kept in the state dir (0600).
//   - State dir (0700): ca/ (CA and server keys 0600, issued certificates, serials, CRL),
//     addresses.json, mgmt.pw on the server; client.key (0600) and client.csr on a client. A
//     restarted role reuses them: same CA, same certificates, same addresses.
//   - Teardown removes the OpenVPN function (container or process), its device and its files;
//     the state dir stays (set Server.RemoveCA or Client.RemoveKey to delete it too). Changing
//     vpn.subnet or vpn.subnet6 while addresses are assigned aborts the run (not supported).
//   - Functions: image cnsmo/openvpn:latest with NET_ADMIN and /dev/net/tun; files under
//     /var/lib/cnsmo/vpn/{server,client} in the function's filesystem (the VM's with the exec
//     driver). The role must run in the namespace of its functions (host network on a VM,
//     container:<vm> on the testbed); the readiness ping runs as a one-shot of the driver.
package vpn
