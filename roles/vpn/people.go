package vpn

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/roles/role"
)

// People (cnsmo-role join): a person's computer makes an Ed25519 identity key and a VPN key
// (WireGuard) or key and certificate request (OpenVPN) and writes a request signed by the
// identity into a free slot vpn.user.<i> of the CNSMO server's instance:
//
//	cnsmo-join1 name=<label> id=<base64> key=<base64|-> csr=<base64 DER|-> t=<unix milliseconds> sig=<base64>
//
// The server pins the name to the identity (and the VPN key) on first use, assigns addresses from
// the people's block and answers in vpn.user.<i>.grant with a signed entry (inst=<name>.users,
// ep=-), followed for OpenVPN by the certificate (PEM, on the next lines). A leave is the same
// slot holding
//
//	cnsmo-leave1 name=<label> id=<base64> t=<unix milliseconds> sig=<base64>
//
// signed by the pinned identity, newer than the join: so no VM of the run can evict a person or
// take its name. A refusal is "refused: <name>: <reason>" in the grant (unsigned: it only ends a
// join early).
const (
	joinMagic    = "cnsmo-join1"
	leaveMagic   = "cnsmo-leave1"
	grantRefused = "refused:"
	// MaxPersonName is the longest person name.
	MaxPersonName = 32
)

// Request is a person's join or leave.
type Request struct {
	Leave bool
	Name  string
	ID    ed25519.PublicKey
	Key   wgtypes.Key // WireGuard: the person's public key (zero: none)
	CSR   []byte      // OpenVPN: the certificate request (DER; nil: none)
	T     int64       // when it was made (unix milliseconds): a leave must be newer than the join
}

// Instance is the person's instance name in entries and the ledger: <name>.users.
func (r Request) Instance() string { return r.Name + PeopleSuffix }

func (r Request) body() string {
	id := base64.StdEncoding.EncodeToString(r.ID)
	if r.Leave {
		return fmt.Sprintf("%s name=%s id=%s t=%d", leaveMagic, r.Name, id, r.T)
	}
	key, csr := "-", "-"
	if r.Key != (wgtypes.Key{}) {
		key = r.Key.String()
	}
	if r.CSR != nil {
		csr = base64.StdEncoding.EncodeToString(r.CSR)
	}
	return fmt.Sprintf("%s name=%s id=%s key=%s csr=%s t=%d", joinMagic, r.Name, id, key, csr, r.T)
}

// Sign renders the request signed with the person's identity key.
func (r Request) Sign(id ed25519.PrivateKey) string { return sign(r.body(), id) }

// ErrBadRequest is wrapped by every refusal of ParseRequest.
var ErrBadRequest = errors.New("not a valid join or leave request")

// ValidPersonName checks a person's name: a DNS label of lower-case letters, digits and '-', at
// most MaxPersonName characters.
func ValidPersonName(n string) error {
	if len(n) > MaxPersonName || !validLabel(n) {
		return fmt.Errorf("%q: a person's name is 1-%d lower-case letters, digits and '-' (not first or last)", n, MaxPersonName)
	}
	return nil
}

// ParseRequest parses a join or leave and checks its signature with the identity it names. Every
// field is checked, and the text must be canonical (one text per meaning).
func ParseRequest(v string) (Request, error) {
	bad := func(format string, a ...any) (Request, error) {
		return Request{}, fmt.Errorf("%w: %s", ErrBadRequest, fmt.Sprintf(format, a...))
	}
	var r Request
	magic, names := joinMagic, []string{"name", "id", "key", "csr", "t"}
	if strings.HasPrefix(v, leaveMagic+" ") {
		r.Leave, magic, names = true, leaveMagic, []string{"name", "id", "t"}
	}
	body, vals, sig, err := splitSigned(v, magic, names...)
	if err != nil {
		return bad("%v", err)
	}
	if err := ValidPersonName(vals["name"]); err != nil {
		return bad("%v", err)
	}
	r.Name = vals["name"]
	id, err := base64.StdEncoding.DecodeString(vals["id"])
	if err != nil || len(id) != ed25519.PublicKeySize {
		return bad("id is not a base64 Ed25519 public key")
	}
	r.ID = id
	if r.T, err = strconv.ParseInt(vals["t"], 10, 64); err != nil || r.T <= 0 {
		return bad("t %q", vals["t"])
	}
	if !r.Leave {
		if k := vals["key"]; k != "-" {
			if r.Key, err = wgtypes.ParseKey(k); err != nil || r.Key == (wgtypes.Key{}) {
				return bad("key is not a WireGuard public key")
			}
		}
		if c := vals["csr"]; c != "-" {
			if r.CSR, err = base64.StdEncoding.DecodeString(c); err != nil {
				return bad("csr is not base64")
			}
			csr, err := x509.ParseCertificateRequest(r.CSR)
			if err != nil || csr.CheckSignature() != nil {
				return bad("csr is not a signed certificate request")
			}
		}
		if r.Key == (wgtypes.Key{}) && r.CSR == nil {
			return bad("neither a key nor a csr")
		}
	}
	if r.body() != body {
		return bad("not in canonical form")
	}
	if !verifySigned(r.ID, body, sig) {
		return bad("the signature does not verify with the request's id")
	}
	return r, nil
}

// Refusal is the grant that refuses name's request.
func Refusal(name, reason string) string { return grantRefused + " " + name + ": " + reason }

// ParseRefusal returns the name and reason of a refusal.
func ParseRefusal(v string) (name, reason string, ok bool) {
	rest, ok := strings.CutPrefix(v, grantRefused+" ")
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, ": ")
}

// csrPublicKey is the public key (PKIX DER) of a certificate request.
func csrPublicKey(der []byte) ([]byte, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, err
	}
	return x509.MarshalPKIXPublicKey(csr.PublicKey)
}

// The roster: what the server vouches for besides the entries, signed with its key, in its own
// vpn.roster. Members take the people they name from it (a person that left is in no newer
// roster, so an old grant replayed in a slot names nobody); a person takes the overlay's prefixes,
// domain, engine and device, the CA's fingerprint and OpenVPN's endpoint from it (none of the
// unsigned inputs).
//
//	cnsmo-roster1 gen=<n> srv=<instance> eng=<engine> dev=<tap|tun> v4=<prefix> v6=<prefix> domain=<d> ca=<sha256 hex|-> ep=<host:port|-> people=<a,b|-> sig=<base64>
const rosterMagic = "cnsmo-roster1"

// Roster is the server's signed description of the overlay.
type Roster struct {
	Gen      uint64
	Server   string
	Engine   string
	Device   string
	V4, V6   netip.Prefix
	Domain   string
	CA       string // hex SHA-256 of the CA certificate's DER (OpenVPN); "" none
	Endpoint string // OpenVPN's host:port; "" none
	People   []string
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (r Roster) body() string {
	return fmt.Sprintf("%s gen=%d srv=%s eng=%s dev=%s v4=%s v6=%s domain=%s ca=%s ep=%s people=%s", rosterMagic, r.Gen, r.Server,
		r.Engine, r.Device, r.V4, r.V6, r.Domain, dash(r.CA), dash(r.Endpoint), dash(strings.Join(r.People, ",")))
}

// Sign renders the roster signed with key.
func (r Roster) Sign(key ed25519.PrivateKey) string { return sign(r.body(), key) }

// ErrBadRoster is wrapped by every refusal of ParseRoster.
var ErrBadRoster = errors.New("not a valid roster")

// ParseRoster parses a signed roster and checks its signature with signer.
func ParseRoster(v string, signer ed25519.PublicKey) (Roster, error) {
	bad := func(format string, a ...any) (Roster, error) {
		return Roster{}, fmt.Errorf("%w: %s", ErrBadRoster, fmt.Sprintf(format, a...))
	}
	body, vals, sig, err := splitSigned(v, rosterMagic, "gen", "srv", "eng", "dev", "v4", "v6", "domain", "ca", "ep", "people")
	if err != nil {
		return bad("%v", err)
	}
	var r Roster
	if r.Gen, err = strconv.ParseUint(vals["gen"], 10, 64); err != nil || r.Gen == 0 {
		return bad("gen %q", vals["gen"])
	}
	if r.Server = vals["srv"]; !validInstance(r.Server) {
		return bad("srv %q", r.Server)
	}
	if r.Engine = vals["eng"]; r.Engine != EngineOpenVPN && r.Engine != EngineWireGuard {
		return bad("eng %q", r.Engine)
	}
	if r.Device = vals["dev"]; r.Device != "tap" && r.Device != "tun" {
		return bad("dev %q", r.Device)
	}
	if r.V4, r.V6, err = ParsePrefixes(vals["v4"], vals["v6"]); err != nil {
		return bad("%v", err)
	}
	if r.Domain, err = ParseDomain(vals["domain"]); err != nil {
		return bad("%v", err)
	}
	if c := vals["ca"]; c != "-" {
		if b, err := hex.DecodeString(c); err != nil || len(b) != sha256.Size {
			return bad("ca %q", c)
		}
		r.CA = c
	}
	if e := vals["ep"]; e != "-" {
		host, port, err := net.SplitHostPort(e)
		if err != nil || validHost(host) != nil {
			return bad("ep %q", e)
		}
		if _, err := role.Port(port); err != nil {
			return bad("ep %q", e)
		}
		r.Endpoint = e
	}
	if p := vals["people"]; p != "-" {
		r.People = strings.Split(p, ",")
		for i, n := range r.People {
			if ValidPersonName(n) != nil || i > 0 && r.People[i-1] >= n {
				return bad("people %q: names sorted, once each", p)
			}
		}
	}
	if r.body() != body {
		return bad("not in canonical form")
	}
	if !verifySigned(signer, body, sig) {
		return bad("the signature does not verify with the pinned server key")
	}
	return r, nil
}

// CAFingerprint is the roster's form of a CA certificate (PEM): hex SHA-256 of its DER.
func CAFingerprint(caPEM []byte) string {
	b, _ := pem.Decode(caPEM)
	if b == nil {
		return ""
	}
	sum := sha256.Sum256(b.Bytes)
	return hex.EncodeToString(sum[:])
}

// A left record: the server's signed word that a person's proven leave is done (the person's
// tool deletes its keys only then).
const leftMagic = "cnsmo-left1"

// LeftRecord is the signed record of name's leave made at t by identity id.
func LeftRecord(name, id string, t int64, key ed25519.PrivateKey) string {
	return sign(fmt.Sprintf("%s name=%s id=%s t=%d", leftMagic, name, id, t), key)
}

// IsLeftRecord reports whether v is the signed record of r's leave.
func IsLeftRecord(v string, r Request, signer ed25519.PublicKey) bool {
	body, _, sig, err := splitSigned(v, leftMagic, "name", "id", "t")
	return err == nil && body == fmt.Sprintf("%s name=%s id=%s t=%d", leftMagic, r.Name, PersonID(r.ID), r.T) && verifySigned(signer, body, sig)
}
