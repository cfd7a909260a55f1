package vpn

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// PingFunc reports whether addr answers one ICMP echo through the namespace of the functions.
type PingFunc func(ctx context.Context, addr netip.Addr) (bool, error)

// Client is the VPN client service of an application VM.
type Client struct {
	env   role.Env
	Image string
	Dir   string
	// RemoveKey makes Teardown delete the client's key too (by default it stays in the state
	// dir: a restarted role presents the same key and gets the same certificate back).
	RemoveKey bool
	Addrs     AddrsFunc
	DelLink   DelLinkFunc
	// Ping checks that the server answers through the tunnel; default: `ping -c1 -W1` as a
	// one-shot function of the driver (in the OpenVPN image, or the host's ping with exec).
	Ping PingFunc

	key         *ecdsa.PrivateKey
	keyPEM      []byte
	csrPEM      []byte
	confirmed   string // hash of the spec whose tunnel was confirmed and published
	saidRevoked bool   // the revocation of this instance's certificate was logged
}

// NewClient returns the VPN client service of the instance described by env.
func NewClient(env role.Env) role.Service { return newClient(env) }

func newClient(env role.Env) *Client {
	c := &Client{env: env, Image: DefaultImage, Dir: DefaultClientDir}
	if env.Exec && env.StateDir != "" { // on this VM's filesystem: under the role's state dir
		c.Dir = filepath.Join(env.StateDir, "openvpn")
	}
	return c
}

// Name implements role.Service.
func (c *Client) Name() string { return "vpn" }

func (c *Client) ping(ctx context.Context, addr netip.Addr) (bool, error) {
	if c.Ping != nil {
		return c.Ping(ctx, addr)
	}
	cmd := []string{"ping", "-c1", "-W1"}
	if addr.Is6() {
		cmd = append(cmd, "-6")
	}
	res, err := c.env.Driver.Run(ctx, driver.Spec{Name: "vpn-ping", Service: "vpn", Image: c.Image, Cmd: append(cmd, addr.String())}, nil)
	if err != nil {
		return false, fmt.Errorf("vpn: ping %s: %w", addr, err)
	}
	return res.ExitCode == 0, nil
}

// loadKey loads or creates the client's key and its CSR (both kept in the state dir; the CSR is
// kept too so the published text stays the same across restarts).
func (c *Client) loadKey() error {
	if c.key != nil {
		return nil
	}
	if err := os.MkdirAll(c.env.StateDir, 0o700); err != nil {
		return fmt.Errorf("vpn: state dir: %w", err)
	}
	key, keyPEM, csr, err := pki.LoadOrCreateClientKey(filepath.Join(c.env.StateDir, "client.key"), c.env.Instance)
	if err != nil {
		return err
	}
	csrPath := filepath.Join(c.env.StateDir, "client.csr")
	if old, err := os.ReadFile(csrPath); err == nil {
		if r, err := pki.CheckCSR(old, c.env.Instance); err == nil && key.PublicKey.Equal(r.PublicKey) {
			csr = old
		}
	}
	if err := atomicfile.Write(csrPath, csr, 0o644); err != nil {
		return err
	}
	c.key, c.keyPEM, c.csrPEM = key, keyPEM, csr
	return nil
}

// Reconcile publishes the client's CSR, waits for its certificate, the CA and the server's
// endpoint, runs the OpenVPN client, and reports ready (publishing vpn.address, vpn.address6
// and client.listening) once its device has its addresses and the server answers through the
// tunnel.
func (c *Client) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	if err := c.loadKey(); err != nil {
		return false, err
	}
	if err := c.publishCSR(ctx, s); err != nil {
		return false, err
	}
	g, err := c.granted(s)
	if g == nil || err != nil {
		return false, err
	}
	spec := c.spec(g)
	hash := driver.Hash(spec)
	if up, err := c.run(ctx, spec, hash, g); up || err != nil {
		return up, err
	}
	c.confirmed = ""
	ok, err := c.confirm(ctx, s, g)
	if ok {
		c.confirmed = hash
	}
	return ok, err
}

// grant is what the server has granted this client, checked: its certificate, signed by the
// pinned CA, not revoked, and where the server listens.
type grant struct {
	server         string // the VPN server's instance
	caPEM, certPEM string
	device         string // tun or tap
	host           string
	port           int
}

// publishCSR publishes this client's certificate request, unless the one published is for its key.
func (c *Client) publishCSR(ctx context.Context, s role.Snapshot) error {
	me := c.env.Instance
	if pub := s.Get(me, params.VPNCSR); pub != "" && sameKeyCSR(pub, c.key, me) {
		return nil
	}
	if err := c.env.Params.Set(ctx, me, params.VPNCSR, string(c.csrPEM)); err != nil {
		return fmt.Errorf("vpn: publish %s: %w", params.VPNCSR, err)
	}
	c.env.Log.Info().Msg("vpn: certificate request published")
	return nil
}

// granted returns what the server has granted this client; nil (and no error) while something
// is missing: the server, its CA or endpoint, a certificate for this key, or a certificate the
// server has not revoked.
func (c *Client) granted(s role.Snapshot) (*grant, error) {
	me := c.env.Instance
	srv := s.Get(me, params.ServerInstanceID)
	if srv == "" {
		return nil, nil
	}
	if srv = s.Get(srv, params.VPNServerInstanceID); srv == "" {
		return nil, nil // the VPN server has not published itself yet
	}
	g := &grant{server: srv, caPEM: s.Get(srv, params.VPNCACert), certPEM: s.Get(me, params.VPNCert)}
	endpoint := s.Get(srv, params.VPNEndpoint)
	if g.caPEM == "" || endpoint == "" || g.certPEM == "" {
		return nil, nil
	}
	if err := c.pinCA(g.caPEM, srv); err != nil {
		return nil, err
	}
	cert, err := pki.VerifyClientCert([]byte(g.certPEM), []byte(g.caPEM), me, &c.key.PublicKey)
	if err != nil {
		// A certificate for an older key, or not yet re-signed: wait for the server.
		c.env.Log.Debug().Err(err).Msg("vpn: waiting for a certificate for this key")
		return nil, nil
	}
	if c.revoked(cert, g.caPEM, s.Get(srv, params.VPNCRL)) {
		return nil, nil
	}
	in, err := ParseInputs(func(k string) string { return s.Get(srv, k) })
	if err != nil {
		return nil, nil // the server aborts the run with the message
	}
	g.device = in.Device
	if g.host, g.port, err = ParseEndpoint(endpoint); err != nil {
		return nil, fmt.Errorf("vpn: %s: %w", srv, err)
	}
	return g, nil
}

// spec is the OpenVPN client function for a grant.
func (c *Client) spec(g *grant) driver.Spec {
	cfg := ClientConfig{Dir: c.Dir, Device: g.device, Host: g.host, Port: g.port}
	return driver.Spec{
		Name: ClientFunction, Service: "vpn", Image: c.Image,
		Cmd:    []string{"openvpn", "--config", cfg.ConfigPath()},
		CapAdd: []string{"NET_ADMIN"}, Devices: []string{"/dev/net/tun"},
		Files: []driver.File{
			{Path: cfg.ConfigPath(), Mode: 0o644, Data: []byte(RenderClient(cfg))},
			{Path: path.Join(cfg.Dir, "ca.crt"), Mode: 0o644, Data: []byte(g.caPEM)},
			{Path: path.Join(cfg.Dir, "client.crt"), Mode: 0o644, Data: []byte(g.certPEM)},
			{Path: path.Join(cfg.Dir, "client.key"), Mode: 0o600, Data: c.keyPEM},
		},
	}
}

// run makes the client function run spec; up reports that it runs the spec already confirmed.
func (c *Client) run(ctx context.Context, spec driver.Spec, hash string, g *grant) (up bool, err error) {
	st, err := c.env.Driver.Status(ctx, ClientFunction)
	if err != nil {
		return false, fmt.Errorf("vpn: status of %s: %w", ClientFunction, err)
	}
	if st.State == driver.StateRunning && c.confirmed == hash {
		return true, nil
	}
	if st.State == driver.StateExited {
		logTail(ctx, c.env, ClientFunction, st)
	}
	if err := c.env.Driver.Start(ctx, spec); err != nil {
		return false, fmt.Errorf("vpn: start openvpn client: %w", err)
	}
	if c.confirmed != "" && c.confirmed != hash || st.State != driver.StateRunning {
		c.env.Log.Info().Str("server", net.JoinHostPort(g.host, strconv.Itoa(g.port))).Str("device", g.device).Msg("vpn: openvpn client (re)started")
	}
	return false, nil
}

// confirm reports whether the tunnel is up: the device has the addresses the server pushed, and
// the server answers through it; then it publishes the client's addresses and listening flag.
func (c *Client) confirm(ctx context.Context, s role.Snapshot, g *grant) (bool, error) {
	addrs := c.Addrs
	if addrs == nil {
		addrs = defaultAddrs
	}
	have, err := addrs(ctx, Device)
	if err != nil {
		return false, err
	}
	v4, v6 := pick(have)
	srv4, err4 := netip.ParseAddr(s.Get(g.server, params.VPNAddress))
	srv6, err6 := netip.ParseAddr(s.Get(g.server, params.VPNAddress6))
	if err4 != nil || err6 != nil {
		return false, nil // the server publishes its addresses once its device has them
	}
	if !v4.IsValid() || !v4.Contains(srv4) || !v6.IsValid() || !v6.Contains(srv6) {
		return false, nil // not pushed yet, or IPv6 duplicate address detection not done
	}
	for _, a := range []netip.Addr{srv4, srv6} {
		if ok, err := c.ping(ctx, a); err != nil || !ok {
			return false, err
		}
	}
	me := c.env.Instance
	for _, kv := range [][2]string{
		{params.VPNAddress, v4.Addr().String()},
		{params.VPNAddress6, v6.Addr().String()},
		{params.VPNClientListening, "true"},
	} {
		if err := role.Publish(ctx, c.env.Params, s, me, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("vpn: %w", err)
		}
	}
	c.env.Log.Info().Str("address", v4.Addr().String()).Str("address6", v6.Addr().String()).Msg("vpn: tunnel up, server answers")
	return true, nil
}

// Withdraw un-sets the client's addresses and listening flag.
func (c *Client) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, c.env.Params, params.VPNClientListening, params.VPNAddress, params.VPNAddress6)
}

// Leave waits, for at most 30 s, until the VPN server has withdrawn its overlay address before
// the client is dropped: the overlay closes from the hub, once the server's load balancer no
// longer sends to overlay addresses.
func (c *Client) Leave(ctx context.Context, st role.Store) {
	srv, err := st.Get(ctx, c.env.Instance, params.ServerInstanceID)
	if err != nil || srv == "" {
		return
	}
	_ = wait.Backoff{Limit: 30 * time.Second}.Until(ctx, func(ctx context.Context) (bool, error) {
		v, err := st.Get(ctx, srv, params.VPNAddress)
		return errors.Is(err, role.ErrNotSet) || err == nil && v == "", nil
	})
}

// revoked reports whether the server's published CRL (signed by the pinned CA) lists this
// client's certificate: the server refuses it (its instance left the run). Said once.
func (c *Client) revoked(cert *x509.Certificate, caPEM, crlPEM string) bool {
	if crlPEM == "" {
		return false
	}
	ca, err := pki.ParseCert([]byte(caPEM))
	if err != nil {
		return false
	}
	serials, err := pki.RevokedSerialsBy(ca, []byte(crlPEM))
	if err != nil || !slices.Contains(serials, cert.SerialNumber.String()) {
		return false
	}
	if !c.saidRevoked {
		c.env.Log.Warn().Str("serial", cert.SerialNumber.String()).
			Msg("vpn: the server revoked this instance's certificate (the instance left the run) and refuses it: it cannot rejoin; a new instance of the node takes its place")
		c.saidRevoked = true
	}
	return true
}

// caPinFile keeps the CA this client first trusted, in its state dir.
const caPinFile = "ca.pin.pem"

// pinCA trusts the first valid CA certificate it sees and refuses any other later: a VM of the
// run that rewrites vpn.ca.cert (or points vpn.server.nodeinstanceid elsewhere) cannot make this
// client follow a CA of its own. `cnsmo-role stop --purge` forgets the pin.
func (c *Client) pinCA(caPEM, srv string) error {
	p := filepath.Join(c.env.StateDir, caPinFile)
	pinned, err := os.ReadFile(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		ca, err := pki.ParseCert([]byte(caPEM))
		if err != nil || !ca.IsCA {
			return fmt.Errorf("vpn: %s:%s is not a CA certificate (%v): not trusted", srv, params.VPNCACert, err)
		}
		if err := atomicfile.Write(p, []byte(caPEM), 0o644); err != nil {
			return err
		}
		c.env.Log.Info().Str("server", srv).Msg("vpn: CA pinned on first use")
		return nil
	case err != nil:
		return fmt.Errorf("vpn: %w", err)
	case !pki.SamePEM(pinned, []byte(caPEM)):
		return fmt.Errorf("vpn: %s:%s is not the CA this VM pinned on first use (%s): refused, the tunnel stays with the pinned CA; "+
			"if the CNSMO server was really re-created, run `cnsmo-role stop --purge` on this VM and start the role again", srv, params.VPNCACert, p)
	}
	return nil
}

func sameKeyCSR(csrPEM string, key *ecdsa.PrivateKey, instance string) bool {
	r, err := pki.CheckCSR([]byte(csrPEM), instance)
	return err == nil && key.PublicKey.Equal(r.PublicKey)
}

// Teardown removes the OpenVPN client, its device and its files; the key stays in the state
// dir unless RemoveKey is set.
func (c *Client) Teardown(ctx context.Context) error {
	del := c.DelLink
	if del == nil {
		del = defaultDelLink
	}
	var errs []error
	if err := c.env.Driver.Remove(ctx, ClientFunction); err != nil && !errors.Is(err, driver.ErrNotFound) {
		errs = append(errs, fmt.Errorf("vpn: remove %s: %w", ClientFunction, err))
	}
	if err := del(ctx, Device); err != nil {
		errs = append(errs, err)
	}
	if c.env.Exec {
		_ = os.Remove(c.Dir)
	}
	if c.RemoveKey && c.env.StateDir != "" {
		for _, f := range []string{"client.key", "client.csr", caPinFile} {
			if err := os.Remove(filepath.Join(c.env.StateDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		c.key = nil
	}
	c.confirmed = ""
	return errors.Join(errs...)
}
