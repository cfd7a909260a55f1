package vpn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// Person is one person's side of one run's overlay (cnsmo-role join and leave): its keys, its pin
// of the VPN server and its request live in Dir on the person's own computer; only public halves
// go into the run.
type Person struct {
	Name   string
	Dir    string     // 0700: identity.key, wg.key or openvpn.key, server.pin, request
	Server string     // the CNSMO server's instance; "" finds it (the instance naming itself the VPN server)
	Signer string     // the server's signing key (base64), learnt out of band; "" trusts the first one seen
	Store  role.Store // the run, with the person's own credentials
	Say    func(msg string)
	Poll   wait.Backoff
	now    func() time.Time
}

// Joined is what the server granted a person.
type Joined struct {
	Engine string
	Inputs Inputs
	Self   Entry  // the person's entry: its addresses
	Server Entry  // the server's entry: its WireGuard key and endpoint
	Cert   string // OpenVPN: the person's certificate (PEM)
	CA     string // OpenVPN: the CA's certificate
	Host   string // OpenVPN: the server's endpoint
	Port   int
	Slot   int
	Roster Roster // what the server signed about the overlay
	Config string // the configuration file (wg-quick or .ovpn), holding the private key
}

// Files of a person's directory.
const (
	personIdentity = "identity.key"
	personWGKey    = "wg.key"
	personOVPNKey  = "openvpn.key"
	personPin      = "server.pin"
	personRequest  = "request"
	personSlot     = "slot" // the slot last written (a leave goes there when no grant is found)
)

func (p *Person) say(format string, a ...any) {
	if p.Say != nil {
		p.Say(fmt.Sprintf(format, a...))
	}
}

func (p *Person) file(name string) string { return filepath.Join(p.Dir, name) }

func (p *Person) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// identity returns the person's Ed25519 identity (made on first use).
func (p *Person) identity() (ed25519.PrivateKey, error) {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	return LoadOrCreateSigner(p.file(personIdentity))
}

// server finds the CNSMO server and its signing key: pinned in server.pin after the first join.
func (p *Person) server(s role.Snapshot) (string, ed25519.PublicKey, error) {
	if b, err := os.ReadFile(p.file(personPin)); err == nil {
		f := strings.Fields(string(b))
		if len(f) != 2 {
			return "", nil, fmt.Errorf("join: %s: not \"<instance> <signing key>\"", p.file(personPin))
		}
		k, err := ParseSigner(f[1])
		if err != nil {
			return "", nil, fmt.Errorf("join: %s: %w", p.file(personPin), err)
		}
		if v := s.Get(f[0], params.VPNSigner); v != "" && v != f[1] {
			p.say("warning: %s publishes another signing key than the one pinned at the first join: ignored (if the run was re-created, remove %s)", f[0], p.Dir)
		}
		return f[0], k, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", nil, fmt.Errorf("join: %w", err)
	}
	srv := p.Server
	if srv == "" {
		srv = s.Get(s.Self(), params.ServerInstanceID) // a platform's anchor (Nuvla 2: only the server writes it)
	}
	if srv == "" {
		var found []string
		for _, n := range s.Nodes() {
			for _, inst := range s.Instances(n) {
				if s.Get(inst, params.VPNServerInstanceID) == inst {
					found = append(found, inst)
				}
			}
		}
		switch len(found) {
		case 0:
			return "", nil, nil // not yet
		case 1:
			srv = found[0]
		default:
			return "", nil, fmt.Errorf("join: several instances claim to be the VPN server (%s): name it with --server", strings.Join(found, ", "))
		}
	}
	v := s.Get(srv, params.VPNSigner)
	if v == "" {
		return "", nil, nil
	}
	k, err := ParseSigner(v)
	if err != nil {
		return "", nil, fmt.Errorf("join: %s:%s: %w", srv, params.VPNSigner, err)
	}
	if p.Signer != "" && strings.TrimSpace(p.Signer) != v {
		return "", nil, fmt.Errorf("join: %s publishes the signing key %s, not the one given with --signer: refused (is a VM of the run posing as the server?)", srv, v)
	}
	if err := atomicfile.Write(p.file(personPin), []byte(srv+" "+v+"\n"), 0o600); err != nil {
		return "", nil, err
	}
	p.say("the VPN server %s and its signing key %s pinned (first join; compare it with the server's log, or give it with --signer)", srv, v)
	return srv, k, nil
}

// look reads the run and finds the pinned server: srv "" (and no error) while either is not there
// yet (a failed read is said and retried; s is nil then).
func (p *Person) look(ctx context.Context) (s role.Snapshot, srv string, signer ed25519.PublicKey, err error) {
	if s, err = p.Store.Read(ctx); err != nil {
		p.say("reading the run: %v (retrying)", err)
		return nil, "", nil, nil
	}
	srv, signer, err = p.server(s)
	return s, srv, signer, err
}

// request returns the person's signed join (kept, so that running join again sends the same).
func (p *Person) request(in Inputs, id ed25519.PrivateKey) (string, any, error) {
	r := Request{Name: p.Name, ID: id.Public().(ed25519.PublicKey), T: p.clock().UnixMilli()}
	var secret any
	if in.Engine == EngineWireGuard {
		k, err := LoadOrCreateWGKey(p.file(personWGKey))
		if err != nil {
			return "", nil, err
		}
		r.Key, secret = k.PublicKey(), k
	} else {
		key, _, csrPEM, err := pki.LoadOrCreateClientKey(p.file(personOVPNKey), r.Instance())
		if err != nil {
			return "", nil, err
		}
		blk, _ := pem.Decode(csrPEM)
		if blk == nil {
			return "", nil, errors.New("join: certificate request: not PEM")
		}
		r.CSR, secret = blk.Bytes, key
	}
	if b, err := os.ReadFile(p.file(personRequest)); err == nil {
		if old, err := ParseRequest(strings.TrimSpace(string(b))); err == nil && !old.Leave && old.Name == p.Name &&
			bytes.Equal(old.ID, r.ID) && old.Key == r.Key && bytes.Equal(old.CSR, r.CSR) {
			return strings.TrimSpace(string(b)), secret, nil
		}
	}
	v := r.Sign(id)
	return v, secret, atomicfile.Write(p.file(personRequest), []byte(v+"\n"), 0o600)
}

// Join asks the run's VPN server for access and waits until it is granted (or refused): the
// request goes into a free slot and moves to another when a concurrent join overwrote it.
func (p *Person) Join(ctx context.Context) (*Joined, error) {
	if err := ValidPersonName(p.Name); err != nil {
		return nil, fmt.Errorf("join: name %w", err)
	}
	id, err := p.identity()
	if err != nil {
		return nil, err
	}
	var (
		j       *Joined
		slot    int
		req     string
		secret  any
		waiting string
	)
	err = p.Poll.Until(ctx, func(ctx context.Context) (bool, error) {
		s, srv, signer, err := p.look(ctx)
		if err != nil || srv == "" {
			if err == nil && s != nil && waiting != "server" {
				waiting = "server"
				p.say("waiting for the CNSMO server to publish its VPN")
			}
			return false, err
		}
		// The overlay as the server signed it (not the inputs, which any VM can rewrite).
		ro, err := ParseRoster(s.Get(srv, params.VPNRoster), signer)
		if err != nil || ro.Server != srv {
			if waiting != "roster" {
				waiting = "roster"
				p.say("waiting for the server's signed roster (%s:%s)", srv, params.VPNRoster)
			}
			return false, nil
		}
		in := Inputs{Engine: ro.Engine, Device: ro.Device, V4: ro.V4, V6: ro.V6, Domain: ro.Domain}
		if req == "" {
			if req, secret, err = p.request(in, id); err != nil {
				return false, err
			}
		}
		r, _ := ParseRequest(req)
		// Granted in the slot that holds this request (a grant follows its request)?
		for i := 1; i <= params.UserSlots; i++ {
			if s.Get(srv, params.UserSlot(i)) != req {
				continue
			}
			if g, ok := p.granted(s.Get(srv, params.UserGrant(i)), signer, r); ok {
				g.Engine, g.Inputs, g.Slot, g.Roster = in.Engine, in, i, ro
				if err := p.complete(s, srv, signer, g, r); err != nil {
					return false, err
				}
				j = g
				return true, nil
			}
		}
		if slot > 0 && s.Get(srv, params.UserSlot(slot)) == req {
			g := s.Get(srv, params.UserGrant(slot))
			if name, reason, ok := ParseRefusal(g); ok && name == p.Name {
				return false, fmt.Errorf("join: refused by the VPN server: %s", reason)
			}
			if waiting != "grant" {
				waiting = "grant"
				p.say("request in %s:%s; waiting for the server's grant", srv, params.UserSlot(slot))
			}
			return false, nil
		}
		if slot > 0 {
			p.say("%s was taken by another join meanwhile: moving", params.UserSlot(slot))
		}
		slot = 0
		for i := 1; i <= params.UserSlots; i++ {
			if v := s.Get(srv, params.UserSlot(i)); v == req || v == "" {
				slot = i
				break
			}
		}
		if slot == 0 {
			if waiting != "slot" {
				waiting = "slot"
				p.say("all %d slots are taken: waiting for one to free up", params.UserSlots)
			}
			return false, nil
		}
		if err := p.Store.Set(ctx, srv, params.UserSlot(slot), req); err != nil {
			return false, fmt.Errorf("join: write %s:%s: %w", srv, params.UserSlot(slot), err)
		}
		return false, atomicfile.Write(p.file(personSlot), []byte(strconv.Itoa(slot)+"\n"), 0o600)
	})
	if err != nil {
		return nil, err
	}
	return j, p.render(j, secret)
}

// granted parses a grant for r: the entry signed by the pinned server, for r's name and key.
func (p *Person) granted(v string, signer ed25519.PublicKey, r Request) (*Joined, bool) {
	line, rest, _ := strings.Cut(v, "\n")
	e, err := ParseEntry(line, signer)
	if err != nil || e.Instance != r.Instance() || e.Key != r.Key {
		return nil, false
	}
	g := &Joined{Self: e}
	if r.CSR != nil {
		blk, _ := pem.Decode([]byte(rest))
		if blk == nil {
			return nil, false
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		want, _ := csrPublicKey(r.CSR)
		if err != nil {
			return nil, false
		}
		got, _ := x509.MarshalPKIXPublicKey(cert.PublicKey)
		if !bytes.Equal(got, want) {
			return nil, false
		}
		g.Cert = rest
	}
	return g, true
}

// complete adds what the configuration needs from the server: its entry (WireGuard), or the CA
// whose fingerprint the roster signed and the endpoint it names (OpenVPN). Certificates are
// written out re-encoded from what was verified, never as the text read.
func (p *Person) complete(s role.Snapshot, srv string, signer ed25519.PublicKey, g *Joined, r Request) error {
	if g.Engine == EngineWireGuard {
		e, err := ParseEntry(s.Get(srv, params.VPNMember), signer)
		if err != nil || e.Instance != srv || e.Key == (wgtypes.Key{}) || e.Endpoint == "" {
			return fmt.Errorf("join: the server's own entry (%s:%s) does not verify: %v", srv, params.VPNMember, err)
		}
		g.Server = e
		return nil
	}
	ca, err := onePEM(s.Get(srv, params.VPNCACert))
	if err != nil || CAFingerprint([]byte(ca)) != g.Roster.CA || g.Roster.CA == "" {
		return fmt.Errorf("join: the run's CA (%s:%s) is not the one the server's roster vouches for", srv, params.VPNCACert)
	}
	cert, err := onePEM(g.Cert)
	if err != nil {
		return fmt.Errorf("join: the certificate: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(r.CSR)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	if _, err := pki.VerifyClientCert([]byte(cert), []byte(ca), g.Self.Instance, csr.PublicKey); err != nil {
		return fmt.Errorf("join: the certificate does not verify with the run's CA: %w", err)
	}
	g.CA, g.Cert = ca, cert
	if g.Roster.Endpoint == "" {
		return errors.New("join: the server's roster names no OpenVPN endpoint")
	}
	host, port, _ := net.SplitHostPort(g.Roster.Endpoint)
	g.Host = host
	g.Port, err = strconv.Atoi(port)
	return err
}

// onePEM is the first PEM block of v, alone, re-encoded: nothing else of v goes into a file.
func onePEM(v string) (string, error) {
	b, _ := pem.Decode([]byte(v))
	if b == nil || b.Type != "CERTIFICATE" {
		return "", errors.New("not a PEM certificate")
	}
	if _, err := x509.ParseCertificate(b.Bytes); err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b.Bytes})), nil
}

// render writes the configuration text for the grant.
func (p *Person) render(j *Joined, secret any) error {
	if j.Engine == EngineWireGuard {
		k := secret.(wgtypes.Key)
		j.Config = RenderWGQuick(k, j)
		return nil
	}
	key, ok := secret.(*ecdsa.PrivateKey)
	if !ok {
		return errors.New("join: no OpenVPN key")
	}
	keyPEM, err := pki.MarshalKey(key)
	if err != nil {
		return err
	}
	j.Config = RenderPersonOVPN(j, string(keyPEM))
	return nil
}

// RenderWGQuick is a person's wg-quick configuration. No DNS= line: wg-quick would send every
// lookup to the server, which answers only for the overlay's domain.
func RenderWGQuick(k wgtypes.Key, j *Joined) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# cnsmo: %s in the overlay of the run (server %s); keep this file private (0600)\n", j.Self.Instance, j.Server.Instance)
	fmt.Fprintf(&b, "[Interface]\nPrivateKey = %s\nAddress = %s, %s\n\n", k.String(),
		netip.PrefixFrom(j.Self.V4, j.Inputs.V4.Bits()), netip.PrefixFrom(j.Self.V6, j.Inputs.V6.Bits()))
	fmt.Fprintf(&b, "[Peer]\nPublicKey = %s\nEndpoint = %s\nAllowedIPs = %s, %s\nPersistentKeepalive = %d\n",
		j.Server.Key.String(), j.Server.Endpoint, j.Inputs.V4, j.Inputs.V6, int(WGKeepalive.Seconds()))
	return b.String()
}

// RenderPersonOVPN is a person's OpenVPN client configuration: the members' own (render.go),
// with the CA, certificate and key inline, the interface named cnsmo0, and no user/group switch
// (group names differ between distributions).
func RenderPersonOVPN(j *Joined, keyPEM string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# cnsmo: %s in the overlay of the run; keep this file private (0600)\n", j.Self.Instance)
	for _, l := range strings.Split(RenderClient(ClientConfig{Device: j.Inputs.Device, Host: j.Host, Port: j.Port}), "\n") {
		switch {
		case strings.HasPrefix(l, "#"), l == "", l == "user nobody", l == "group nogroup":
		case l == "dev "+Device:
			b.WriteString("dev cnsmo0\n")
		case l == "ca ca.crt":
			fmt.Fprintf(&b, "<ca>\n%s</ca>\n", ensureNL(j.CA))
		case l == "cert client.crt":
			fmt.Fprintf(&b, "<cert>\n%s</cert>\n", ensureNL(j.Cert))
		case l == "key client.key":
			fmt.Fprintf(&b, "<key>\n%s</key>\n", ensureNL(keyPEM))
		default:
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

func ensureNL(s string) string {
	if strings.HasSuffix(s, "\n") {
		return s
	}
	return s + "\n"
}

// Leave removes the person from the run: a leave signed by its identity goes into the slot of its
// grant; once the server answers there with its signed record of the leave, the slot is cleared
// and the person's keys are deleted from Dir (never before: a grant that merely vanished proves
// nothing).
func (p *Person) Leave(ctx context.Context) error {
	id, err := p.identity()
	if err != nil {
		return err
	}
	b, err := os.ReadFile(p.file(personRequest))
	if err != nil {
		return fmt.Errorf("leave: %s has not joined from this computer (%v)", p.Name, err)
	}
	join, err := ParseRequest(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("leave: %s: %w", p.file(personRequest), err)
	}
	last := 0
	if sb, err := os.ReadFile(p.file(personSlot)); err == nil {
		last, _ = strconv.Atoi(strings.TrimSpace(string(sb)))
	}
	t := p.clock().UnixMilli()
	if t <= join.T {
		t = join.T + 1
	}
	lr := Request{Leave: true, Name: p.Name, ID: id.Public().(ed25519.PublicKey), T: t}
	leave := lr.Sign(id)
	said := false
	err = p.Poll.Until(ctx, func(ctx context.Context) (bool, error) {
		s, srv, signer, err := p.look(ctx)
		if err != nil || srv == "" {
			return false, err
		}
		slot := 0
		for i := 1; i <= params.UserSlots; i++ {
			v, g := s.Get(srv, params.UserSlot(i)), s.Get(srv, params.UserGrant(i))
			if v == leave && IsLeftRecord(g, lr, signer) { // done: free the slot
				if err := p.Store.Set(ctx, srv, params.UserSlot(i), ""); err != nil {
					return false, fmt.Errorf("leave: clear %s: %w", params.UserSlot(i), err)
				}
				return true, nil
			}
			if v == leave || v == strings.TrimSpace(string(b)) {
				slot = i // the slot holding this person's join (or its leave already)
			}
		}
		if slot == 0 {
			slot = last
		}
		if slot < 1 || slot > params.UserSlots {
			return false, fmt.Errorf("leave: no grant of %s in the run and no slot recorded in %s", p.Name, p.Dir)
		}
		if s.Get(srv, params.UserSlot(slot)) != leave {
			if err := p.Store.Set(ctx, srv, params.UserSlot(slot), leave); err != nil {
				return false, fmt.Errorf("leave: write %s: %w", params.UserSlot(slot), err)
			}
		}
		if !said {
			said = true
			p.say("leave in %s:%s; waiting for the server's signed record of it", srv, params.UserSlot(slot))
		}
		return false, nil
	})
	if err != nil {
		return err
	}
	for _, f := range []string{personWGKey, personOVPNKey, personRequest, personSlot, personPin, personIdentity} {
		if err := os.Remove(p.file(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("leave: %w", err)
		}
	}
	_ = os.Remove(p.Dir)
	return nil
}
