package vpn

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// Defaults of the function.
const (
	DefaultImage     = "cnsmo/openvpn:latest"
	ServerFunction   = "vpn-server"
	ClientFunction   = "vpn-client"
	DefaultServerDir = "/var/lib/cnsmo/vpn/server" // in the OpenVPN container; <state dir>/openvpn with exec
	DefaultClientDir = "/var/lib/cnsmo/vpn/client"
)

// Server is the VPN server service of the CNSMO server VM.
type Server struct {
	env role.Env
	// Image of the OpenVPN function (Docker driver); Dir is where its files go.
	Image string
	Dir   string
	// MgmtPort is the management interface's port on 127.0.0.1.
	MgmtPort int
	// RemoveCA makes Teardown delete the CA, the issued certificates and the address
	// assignments too. By default they stay in the state dir, so that a restarted role (or a
	// re-deployment on the same VM) keeps the same CA and addresses.
	RemoveCA bool
	// Hold, when set, reports whether an instance that left must keep its tunnel a little longer
	// (the load balancer still serves it); its revocation waits for a later pass.
	Hold func(instance string) bool
	// Hooks for the namespace the function runs in (defaults: this process's namespace).
	Dial    DialFunc
	Addrs   AddrsFunc
	DelLink DelLinkFunc

	ca      *pki.CA
	alloc   *Allocator
	led     *ledger // the signed entries that attest each member's addresses (for names)
	desk    *desk   // the people (cnsmo-role join)
	pw      string
	specKey string            // driver.Hash of the spec last started
	written map[string]string // files put into the running function: path -> content
	refused map[string]string // instance -> the refused request last said
}

// NewServer returns the VPN server service of the instance described by env.
func NewServer(env role.Env) *Server { return newServer(env) }

func newServer(env role.Env) *Server {
	s := &Server{env: env, Image: DefaultImage, Dir: DefaultServerDir, MgmtPort: DefaultMgmtPort}
	if env.Exec && env.StateDir != "" { // on this VM's filesystem: under the role's state dir
		s.Dir = filepath.Join(env.StateDir, "openvpn")
	}
	return s
}

// Name implements role.Service.
func (s *Server) Name() string { return "vpn" }

// Assigned returns the overlay IPv4 address this server assigned to instance (the load balancer
// serves a backend there, never at the address the instance claims).
func (s *Server) Assigned(instance string) (netip.Addr, bool) { return s.alloc.V4Of(instance) }

// Inputs are the server's validated inputs.
type Inputs struct {
	Engine string // EngineOpenVPN or EngineWireGuard
	Device string
	Port   int
	WGPort int
	V4, V6 netip.Prefix
	Domain string // vpn.domain: the suffix of the members' names
}

// The VPN engines (vpn.engine).
const (
	EngineOpenVPN   = "openvpn"
	EngineWireGuard = "wireguard"
	DefaultWGPort   = 51820
)

// ParseInputs validates vpn.engine, vpn.device, vpn.port, vpn.wg.port, vpn.domain, vpn.subnet
// and vpn.subnet6 as read by get.
func ParseInputs(get func(string) string) (Inputs, error) {
	in := Inputs{Device: strings.ToLower(strings.TrimSpace(get(params.VPNDevice))), Port: DefaultPort, WGPort: DefaultWGPort}
	switch e := strings.ToLower(strings.TrimSpace(get(params.VPNEngine))); e {
	case "", EngineOpenVPN:
		in.Engine = EngineOpenVPN
	case EngineWireGuard:
		in.Engine = EngineWireGuard
	default:
		return in, role.Invalid(params.VPNEngine, "", "%q is not openvpn or wireguard", get(params.VPNEngine))
	}
	if p := strings.TrimSpace(get(params.VPNWGPort)); p != "" {
		n, err := role.ParsePort(params.VPNWGPort, p)
		if err != nil {
			return in, err
		}
		in.WGPort = n
	}
	if in.Device == "" {
		in.Device = DefaultDevice
	}
	if in.Device != "tap" && in.Device != "tun" {
		return in, role.Invalid(params.VPNDevice, "", "%q is not tap or tun", get(params.VPNDevice))
	}
	if p := strings.TrimSpace(get(params.VPNPort)); p != "" {
		n, err := role.ParsePort(params.VPNPort, p)
		if err != nil {
			return in, err
		}
		in.Port = n
	}
	var err error
	if in.Domain, err = ParseDomain(get(params.VPNDomain)); err != nil {
		return in, err
	}
	in.V4, in.V6, err = ParsePrefixes(strings.TrimSpace(get(params.VPNSubnet)), strings.TrimSpace(get(params.VPNSubnet6)))
	return in, err
}

func (s *Server) hooks() (DialFunc, AddrsFunc, DelLinkFunc) {
	d, a, l := s.Dial, s.Addrs, s.DelLink
	if d == nil {
		d = defaultDial
	}
	if a == nil {
		a = defaultAddrs
	}
	if l == nil {
		l = defaultDelLink
	}
	return d, a, l
}

func (s *Server) config(in Inputs) ServerConfig {
	return ServerConfig{Dir: s.Dir, Device: in.Device, Port: in.Port, V4: in.V4, V6: in.V6, Server: s.alloc.Server(), MgmtPort: s.MgmtPort}
}

// open loads (or creates) the CA, the allocator, the management password and the seed CRL.
func (s *Server) open(in Inputs) error {
	if err := os.MkdirAll(s.env.StateDir, 0o700); err != nil {
		return fmt.Errorf("vpn: state dir: %w", err)
	}
	if s.env.Exec {
		if err := traversable(s.Dir, filepath.Dir(s.env.StateDir)); err != nil {
			return role.Terminal(err)
		}
	}
	if s.ca == nil {
		ca, err := pki.LoadOrCreateCA(filepath.Join(s.env.StateDir, "ca"))
		if err != nil {
			return err
		}
		if err := ca.RefreshCRL(); err != nil {
			return err
		}
		s.ca = ca
	}
	if s.led == nil {
		l, err := openLedger(s.env.StateDir)
		if err != nil {
			return err
		}
		s.env.Log.Info().Str("signer", FormatSigner(l.signer.Public().(ed25519.PublicKey))).Msg("vpn: the server's signing key (members pin it; people check it with cnsmo-role join --signer)")
		s.led = l
	}
	if s.desk == nil {
		d, err := openDesk(s.env.StateDir)
		if err != nil {
			return err
		}
		s.desk = d
	}
	a, err := reopen(s.alloc, s.env.StateDir, in)
	if err != nil {
		return err
	}
	s.alloc = a
	if s.pw == "" {
		p := filepath.Join(s.env.StateDir, "mgmt.pw")
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			r := make([]byte, 24)
			if _, err := rand.Read(r); err != nil {
				return fmt.Errorf("vpn: management password: %w", err)
			}
			b = []byte(hex.EncodeToString(r))
			if err := atomicfile.Write(p, b, 0o600); err != nil {
				return err
			}
		} else if err != nil {
			return fmt.Errorf("vpn: management password: %w", err)
		}
		s.pw = strings.TrimSpace(string(b))
	}
	return nil
}

// reopen returns the allocator of the state dir for the inputs' prefixes: cur when it has them,
// else the one kept in addresses.json (shared by both engines). Changed prefixes while addresses
// are assigned abort the run.
func reopen(cur *Allocator, stateDir string, in Inputs) (*Allocator, error) {
	if cur != nil {
		if v4, v6 := cur.Prefixes(); v4 == in.V4 && v6 == in.V6 {
			return cur, nil
		}
	}
	a, err := OpenAllocator(filepath.Join(stateDir, "addresses.json"), in.V4, in.V6)
	if errors.Is(err, ErrSubnetChanged) {
		return nil, role.Terminal(fmt.Errorf("%s/%s: %w", params.VPNSubnet, params.VPNSubnet6, err))
	}
	return a, err
}

// serverInputs are the VPN server's validated inputs (invalid: a terminal error) and its VM's
// hostname ("" while the platform has not set it: wait).
func serverInputs(snap role.Snapshot, env role.Env) (Inputs, string, error) {
	me := env.Instance
	in, err := ParseInputs(func(k string) string { return snap.Get(me, k) })
	if err != nil {
		return in, "", role.Terminal(err)
	}
	host := strings.TrimSpace(snap.Get(me, params.Hostname))
	if host == "" {
		env.Log.Debug().Msg("vpn: waiting for this VM's hostname parameter")
	}
	return in, host, nil
}

// traversable makes sure OpenVPN, once it dropped root to nobody, can reach the files it reads
// on every connection (the CRL and client-config-dir) in dir: every directory above dir needs
// the execute bit for others. Directories under own (the role's state dir) get it (0711: no
// listing, and every secret in them is 0600); any other directory without it is an error that
// names it.
func traversable(dir, own string) error {
	own = filepath.Clean(own)
	for d := filepath.Dir(filepath.Clean(dir)); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return fmt.Errorf("vpn: %w", err)
		case st.Mode().Perm()&0o001 == 0:
			if d != own && !strings.HasPrefix(d, own+string(filepath.Separator)) {
				return fmt.Errorf("vpn: %s (mode %04o) is not traversable by others: OpenVPN runs as nobody once started and reads its CRL and client configs under %s; chmod o+x %s",
					d, st.Mode().Perm(), dir, d)
			}
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("vpn: %w", err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// seedCRL is the CRL the function starts with: fixed at the first start so that the start spec
// (and the driver's hash of it) does not change with each revocation, which would restart the
// server and drop every client. The current CRL is put over it right after the start.
func (s *Server) seedCRL() ([]byte, error) {
	p := filepath.Join(s.env.StateDir, "seed-crl.pem")
	b, err := os.ReadFile(p)
	if err == nil {
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vpn: %w", err)
	}
	b, err = s.ca.CRLPEM()
	if err != nil {
		return nil, err
	}
	return b, atomicfile.Write(p, b, 0o600)
}

func (s *Server) spec(cfg ServerConfig) (driver.Spec, error) {
	crt, key, err := s.ca.ServerPair()
	if err != nil {
		return driver.Spec{}, err
	}
	seed, err := s.seedCRL()
	if err != nil {
		return driver.Spec{}, err
	}
	return driver.Spec{
		Name: ServerFunction, Service: "vpn", Image: s.Image,
		Cmd:    []string{"openvpn", "--config", cfg.ConfigPath()},
		CapAdd: []string{"NET_ADMIN"}, Devices: []string{"/dev/net/tun"},
		Files: []driver.File{
			{Path: cfg.ConfigPath(), Mode: 0o644, Data: []byte(RenderServer(cfg))},
			{Path: path.Join(cfg.Dir, "ca.crt"), Mode: 0o644, Data: s.ca.CertPEM()},
			{Path: path.Join(cfg.Dir, "server.crt"), Mode: 0o644, Data: crt},
			{Path: path.Join(cfg.Dir, "server.key"), Mode: 0o600, Data: key},
			{Path: cfg.MgmtPasswordPath(), Mode: 0o600, Data: []byte(s.pw + "\n")},
			{Path: cfg.CRLPath(), Mode: 0o644, Data: seed},
			{Path: path.Join(cfg.CCDDir(), ".keep"), Mode: 0o644, Data: []byte("# client-config-dir of the cnsmo VPN\n")},
		},
	}, nil
}

// clients returns the current instances of the deployment other than the server, sorted.
func clients(snap role.Snapshot, me string) []string {
	var out []string
	for _, n := range snap.Nodes() {
		for _, in := range snap.Instances(n) {
			if in != me {
				out = append(out, in)
			}
		}
	}
	sort.Strings(out)
	return out
}

// Endpoint formats the server's endpoint as published in vpn.server.endpoint.
func Endpoint(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port)) + "/udp"
}

// ParseEndpoint parses vpn.server.endpoint ("host:port/udp").
func ParseEndpoint(v string) (host string, port int, err error) {
	hp, proto, _ := strings.Cut(strings.TrimSpace(v), "/")
	if proto != "" && proto != "udp" {
		return "", 0, fmt.Errorf("%s: %q: only udp is supported", params.VPNEndpoint, v)
	}
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("%s: %q: %w", params.VPNEndpoint, v, err)
	}
	if h == "" {
		return "", 0, fmt.Errorf("%s: %q: no host", params.VPNEndpoint, v)
	}
	if err := validHost(h); err != nil { // it goes into OpenVPN's configuration: nothing but a host
		return "", 0, fmt.Errorf("%s: %w", params.VPNEndpoint, err)
	}
	if port, err = role.Port(p); err != nil {
		return "", 0, fmt.Errorf("%s: %q: %w", params.VPNEndpoint, v, err)
	}
	return h, port, nil
}

// Reconcile brings the server to what the run asks for: OpenVPN running with the CA and server
// certificate, a certificate and a fixed address for every current client that published a
// valid request, revocation of the instances that left, and the parameters published. It
// reports ready when OpenVPN listens and every current client is connected.
func (s *Server) Reconcile(ctx context.Context, snap role.Snapshot) (bool, error) {
	me := s.env.Instance
	in, host, err := serverInputs(snap, s.env)
	if host == "" || err != nil {
		return false, err
	}
	if err := s.open(in); err != nil {
		return false, err
	}
	p := &serverPass{in: in, cfg: s.config(in), files: map[string]string{}, current: clients(snap, me)}
	if err := s.run(ctx, p); err != nil {
		return false, err
	}
	if err := s.issue(ctx, snap, p); err != nil {
		return false, err
	}
	op := &ovpnPeople{s: s, p: p}
	info := rosterInfo{in: in, ca: CAFingerprint(s.ca.CertPEM()), ep: net.JoinHostPort(host, strconv.Itoa(in.Port))}
	if err := s.desk.pass(ctx, s.env, snap, s.alloc, s.led, op, info); err != nil {
		return false, err
	}
	op.ccds()
	if err := s.revoke(snap, p); err != nil {
		return false, err
	}
	if err := s.putFiles(ctx, p.files); err != nil {
		return false, err
	}
	connected, err := s.connections(ctx, p)
	if err != nil {
		return false, err
	}
	if connected == nil { // the management interface does not answer yet
		return false, errors.Join(p.problems...)
	}
	ready, err := s.publish(ctx, snap, p, host, connected)
	if err != nil {
		return false, err
	}
	return ready, errors.Join(p.problems...)
}

// serverPass is what one pass of the server works out, step by step.
type serverPass struct {
	in       Inputs
	cfg      ServerConfig
	files    map[string]string // function files to write (ccd entries, CRL)
	current  []string          // the deployment's current clients
	problems []error           // clients whose request failed (the VPN is not ready)
	toKill   []string          // clients that left: connection closed, address freed
	crl      []byte
}

// run starts the OpenVPN server function, or leaves it alone when it runs with this spec.
func (s *Server) run(ctx context.Context, p *serverPass) error {
	spec, err := s.spec(p.cfg)
	if err != nil {
		return err
	}
	st, err := s.env.Driver.Status(ctx, ServerFunction)
	if err != nil {
		return fmt.Errorf("vpn: status of %s: %w", ServerFunction, err)
	}
	if st.State == driver.StateExited {
		logTail(ctx, s.env, ServerFunction, st)
	}
	if h := driver.Hash(spec); st.State != driver.StateRunning || h != s.specKey {
		if err := s.env.Driver.Start(ctx, spec); err != nil {
			return fmt.Errorf("vpn: start openvpn server: %w", err)
		}
		if st.State != driver.StateRunning || s.specKey != "" {
			s.env.Log.Info().Str("device", p.in.Device).Int("port", p.in.Port).Str("subnet", p.in.V4.String()).Str("subnet6", p.in.V6.String()).Msg("vpn: openvpn server started")
		}
		s.specKey, s.written = h, map[string]string{}
	}
	return nil
}

// issue signs every current client's request (the first key of an instance is pinned), assigns
// its addresses, writes its ccd entry and publishes its certificate.
func (s *Server) issue(ctx context.Context, snap role.Snapshot, p *serverPass) error {
	signed := map[string]string{}
	for _, c := range p.current {
		csr := snap.Get(c, params.VPNCSR)
		if csr == "" {
			continue
		}
		cert, err := s.ca.Sign([]byte(csr), c)
		if errors.Is(err, pki.ErrKeyPinned) {
			// Someone wrote a request with another key into c's vpn.csr: refused, said once per
			// request; c keeps its certificate and address, and the VPN stays ready.
			if s.refused[c] != csr {
				s.env.Log.Warn().Err(err).Str("client", c).Msg("vpn: certificate request refused")
				_ = s.env.Params.Display(ctx, fmt.Sprintf("cnsmo: vpn: refused a certificate request for %s: %v", c, err))
				if s.refused == nil {
					s.refused = map[string]string{}
				}
				s.refused[c] = csr
			}
			if cert = s.ca.ActiveCert(c); cert == nil {
				continue
			}
		} else if err != nil {
			s.env.Log.Error().Err(err).Str("client", c).Msg("vpn: certificate request refused")
			p.problems = append(p.problems, fmt.Errorf("%s: %s: %w", c, params.VPNCSR, err))
			continue
		}
		as, err := s.alloc.Assign(c)
		if err != nil {
			p.problems = append(p.problems, err)
			continue
		}
		p.files[path.Join(p.cfg.CCDDir(), c)] = RenderCCD(p.cfg, as)
		if !pki.SamePEM([]byte(snap.Get(c, params.VPNCert)), cert) {
			if err := s.env.Params.Set(ctx, c, params.VPNCert, string(cert)); err != nil {
				return fmt.Errorf("vpn: publish %s of %s: %w", params.VPNCert, c, err)
			}
			s.env.Log.Info().Str("client", c).Str("address", as.V4.String()).Str("address6", as.V6.String()).Msg("vpn: certificate issued")
		}
		// The entry attesting the addresses (the names on every member follow it); an entry a
		// WireGuard run granted keeps its key and endpoint, it only drops them.
		_, signed[c] = s.led.grant(Entry{Instance: c, V4: as.V4, V6: as.V6})
	}
	return publishEntries(ctx, s.env, snap, s.led, signed)
}

// publishEntries saves the ledger, then publishes each signed entry in its instance's vpn.member.
func publishEntries(ctx context.Context, env role.Env, snap role.Snapshot, led *ledger, signed map[string]string) error {
	if err := led.save(); err != nil {
		return err
	}
	for _, c := range slices.Sorted(maps.Keys(signed)) {
		if snap.Get(c, params.VPNMember) == signed[c] {
			continue
		}
		if err := env.Params.Set(ctx, c, params.VPNMember, signed[c]); err != nil {
			return fmt.Errorf("vpn: publish %s of %s: %w", params.VPNMember, c, err)
		}
	}
	return nil
}

// revoke revokes the certificates of the instances that left the deployment (once the load
// balancer no longer sends to them), disables their ccd entries, and renders the CRL.
func (s *Server) revoke(snap role.Snapshot, p *serverPass) error {
	leaving := map[string]bool{}
	for _, c := range append(s.ca.Active(), s.alloc.Members()...) {
		if strings.HasSuffix(c, PeopleSuffix) {
			continue // people leave by a proven leave (desk)
		}
		if !slices.Contains(p.current, c) && snap.Gone(c) {
			if s.Hold != nil && s.Hold(c) {
				// The load balancer still sends to it (or its old worker may): its tunnel closes
				// once that is over, so that no request in flight fails.
				s.env.Log.Debug().Str("client", c).Msg("vpn: revocation held while the load balancer still serves it")
				continue
			}
			leaving[c] = true
		}
	}
	for c := range leaving {
		revoked, err := s.ca.RevokeInstance(c)
		if err != nil {
			return err
		}
		p.files[path.Join(p.cfg.CCDDir(), c)] = RenderCCDDisabled()
		p.toKill = append(p.toKill, c)
		s.led.forget(c)
		if revoked {
			s.env.Log.Info().Str("client", c).Msg("vpn: instance left the run: certificate revoked")
		}
	}
	sort.Strings(p.toKill)
	if err := s.led.save(); err != nil {
		return err
	}
	crl, err := s.ca.CRLPEM()
	if err != nil {
		return err
	}
	p.crl = crl
	// Revoked instances of earlier passes keep their disabled ccd file (a fresh container has
	// none, and ccd-exclusive refuses them then anyway).
	p.files[p.cfg.CRLPath()] = string(crl)
	return nil
}

// connections asks the management interface which clients are connected, after closing the
// connections of the clients that left and freeing their addresses. nil: it does not answer yet.
func (s *Server) connections(ctx context.Context, p *serverPass) (map[string]bool, error) {
	dial, _, _ := s.hooks()
	mg := &Mgmt{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.MgmtPort)), Password: s.pw, Dial: dial}
	status, err := mg.Status(ctx)
	if err != nil {
		s.env.Log.Debug().Err(err).Msg("vpn: management interface not answering yet")
		return nil, nil
	}
	for _, c := range p.toKill {
		killed, err := mg.Kill(ctx, c)
		if err != nil {
			return nil, err
		}
		if killed {
			s.env.Log.Info().Str("client", c).Msg("vpn: connection of a removed instance closed")
		}
		if err := s.alloc.Free(c); err != nil {
			return nil, err
		}
	}
	if len(p.toKill) > 0 { // the kills above may have raced a reconnect: read the status again
		if status, err = mg.Status(ctx); err != nil {
			return nil, err
		}
	}
	connected := map[string]bool{}
	for _, c := range status {
		connected[c.CN] = true
	}
	return connected, nil
}

// publish publishes what clients need (public data only), then the server's own readiness:
// ready when its device has both overlay addresses and every current client is connected and has
// confirmed its tunnel.
func (s *Server) publish(ctx context.Context, snap role.Snapshot, p *serverPass, host string, connected map[string]bool) (bool, error) {
	me := s.env.Instance
	srv := s.alloc.Server()
	_, own := s.led.grant(Entry{Instance: me, V4: srv.V4, V6: srv.V6})
	if err := s.led.save(); err != nil {
		return false, err
	}
	pub := [][2]string{
		{params.VPNServerInstanceID, me},
		{params.VPNCACert, string(s.ca.CertPEM())},
		{params.VPNEndpoint, Endpoint(host, p.in.Port)},
		{params.VPNSigner, FormatSigner(s.led.signer.Public().(ed25519.PublicKey))},
		{params.VPNMember, own},
	}
	if len(p.crl) <= role.MaxValueLen {
		pub = append(pub, [2]string{params.VPNCRL, string(p.crl)})
	} else {
		s.env.Log.Warn().Int("bytes", len(p.crl)).Msg("vpn: CRL too long for a parameter; not published (OpenVPN uses the file)")
	}
	_, addrs, _ := s.hooks()
	have, err := addrs(ctx, Device)
	if err != nil {
		return false, err
	}
	// The device has both overlay addresses (IPv6 once its duplicate address detection is done).
	has4, has6 := false, false
	for _, a := range have {
		has4 = has4 || a.Addr() == srv.V4
		has6 = has6 || a.Addr() == srv.V6
	}
	devOK := has4 && has6
	if devOK {
		pub = append(pub, [2]string{params.VPNAddress, srv.V4.String()}, [2]string{params.VPNAddress6, srv.V6.String()},
			[2]string{params.VPNServerListening, "true"})
	}
	// A client counts once it is connected and has confirmed its tunnel (vpn.address published
	// with vpn.client.listening): then every service after the VPN in this pass, such as the
	// load balancer, sees every client's overlay address.
	var missing []string
	for _, c := range p.current {
		if !connected[c] || snap.Get(c, params.VPNClientListening) != "true" {
			missing = append(missing, c)
		}
	}
	ready := devOK && len(missing) == 0 && len(p.problems) == 0
	if ready {
		pub = append(pub, [2]string{params.VPNReady, "true"})
	} else {
		pub = append(pub, [2]string{params.VPNReady, ""}) // not ready: un-set, never false
	}
	for _, kv := range pub {
		if (kv[0] == params.VPNCACert || kv[0] == params.VPNCRL) && pki.SamePEM([]byte(snap.Get(me, kv[0])), []byte(kv[1])) {
			continue
		}
		if err := role.Publish(ctx, s.env.Params, snap, me, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("vpn: %w", err)
		}
	}
	if !ready {
		s.env.Log.Debug().Strs("waiting_for", missing).Bool("device", devOK).Msg("vpn: not every client is connected yet")
	}
	return ready, nil
}

// Withdraw un-sets the server's readiness, listening flag and addresses.
func (s *Server) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, s.env.Params, params.VPNServerListening, params.VPNReady, params.VPNAddress, params.VPNAddress6)
}

// Validate checks the VPN's inputs on the CNSMO server's instance, without side effects.
func Validate(snap role.Snapshot, server string) error {
	if _, err := ParseInputs(func(k string) string { return snap.Get(server, k) }); err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	return nil
}

// putFiles writes the files whose content differs from what this process last put there.
func (s *Server) putFiles(ctx context.Context, files map[string]string) error {
	var list []driver.File
	var paths []string
	for p, data := range files {
		if s.written[p] == data {
			continue
		}
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		list = append(list, driver.File{Path: p, Mode: 0o644, Data: []byte(files[p])})
	}
	if len(list) == 0 {
		return nil
	}
	if err := s.env.Driver.PutFiles(ctx, ServerFunction, list); err != nil {
		return fmt.Errorf("vpn: update server files: %w", err)
	}
	for _, p := range paths {
		s.written[p] = files[p]
	}
	return nil
}

// Teardown removes the OpenVPN server, its device and its files. The CA, the issued
// certificates, the address assignments and the management password stay in the state dir
// unless RemoveCA is set.
func (s *Server) Teardown(ctx context.Context) error {
	_, _, del := s.hooks()
	var errs []error
	if err := s.env.Driver.Remove(ctx, ServerFunction); err != nil && !errors.Is(err, driver.ErrNotFound) {
		errs = append(errs, fmt.Errorf("vpn: remove %s: %w", ServerFunction, err))
	}
	if err := del(ctx, Device); err != nil {
		errs = append(errs, err)
	}
	if s.env.Exec {
		// The exec driver removes the files it wrote; the directory and what OpenVPN wrote stay.
		_ = os.Remove(path.Join(s.Dir, "status.log"))
		_ = os.Remove(path.Join(s.Dir, "ccd"))
		_ = os.Remove(s.Dir)
	}
	if s.RemoveCA && s.env.StateDir != "" {
		if err := os.RemoveAll(s.env.StateDir); err != nil {
			errs = append(errs, fmt.Errorf("vpn: remove state: %w", err))
		}
		s.ca, s.alloc, s.pw, s.led, s.desk = nil, nil, "", nil, nil
	}
	s.specKey, s.written = "", nil
	return errors.Join(errs...)
}

// ovpnPeople admits people to the OpenVPN hub: a certificate for <name>.users and a ccd entry
// with its addresses; a proven leave revokes the certificate and closes the connection.
type ovpnPeople struct {
	s *Server
	p *serverPass
}

func (o *ovpnPeople) admit(r Request, as Assignment) (string, error) {
	if r.CSR == nil {
		return "", errors.New("the VPN runs OpenVPN: the request needs a csr (join again with this cnsmo-role)")
	}
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: r.CSR})
	cert, err := o.s.ca.Sign(csr, r.Instance())
	if errors.Is(err, pki.ErrLeft) { // a person that left joins again (the desk checked it is no replay)
		if err = o.s.ca.Release(r.Instance()); err == nil {
			cert, err = o.s.ca.Sign(csr, r.Instance())
		}
	}
	if err != nil {
		return "", err
	}
	return string(cert), nil
}

func (o *ovpnPeople) drop(_ context.Context, name string) error {
	inst := name + PeopleSuffix
	if _, err := o.s.ca.RevokeInstance(inst); err != nil {
		return err
	}
	o.p.files[path.Join(o.p.cfg.CCDDir(), inst)] = RenderCCDDisabled()
	o.p.toKill = append(o.p.toKill, inst)
	return nil
}

// ccds writes every current person's ccd entry (its fixed addresses).
func (o *ovpnPeople) ccds() {
	for name := range o.s.desk.st.People {
		if as, ok := o.s.alloc.Get(name + PeopleSuffix); ok {
			o.p.files[path.Join(o.p.cfg.CCDDir(), name+PeopleSuffix)] = RenderCCD(o.p.cfg, as)
		}
	}
}
