package vpn

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/roles/role"
)

// A membership entry: what the server grants one member (both engines), signed with the server's
// Ed25519 key (whose public half every member pins on first use), published in that member's own
// vpn.member (a person's in its slot's grant). One line of public data, about 250 characters:
//
//	cnsmo-vpn1 gen=<n> inst=<instance> key=<base64> ep=<host:port> v4=<addr> v6=<addr> sig=<base64>
//
// key and ep are "-" where there is none: the OpenVPN engine's entries only attest the addresses
// (for names), and a person (behind NAT) has no endpoint.
// The signature covers everything before " sig=". gen is the server's counter at the time it
// signed: a member refuses an entry of an instance older than the newest it has seen, so an old
// entry (an earlier key or endpoint) cannot be replayed.
const entryMagic = "cnsmo-vpn1"

// Entry is one member of the overlay, as the server granted it.
type Entry struct {
	Gen      uint64
	Instance string
	Key      wgtypes.Key // the zero key: none (OpenVPN)
	Endpoint string      // host:port (the member's hostname parameter and vpn.wg.port); "": none
	V4, V6   netip.Addr
}

func (e Entry) body() string {
	key, ep := e.Key.String(), e.Endpoint
	if e.Key == (wgtypes.Key{}) {
		key = "-"
	}
	if ep == "" {
		ep = "-"
	}
	return fmt.Sprintf("%s gen=%d inst=%s key=%s ep=%s v4=%s v6=%s", entryMagic, e.Gen, e.Instance,
		key, ep, e.V4, e.V6)
}

// Same reports whether two entries grant the same thing (the generation aside).
func (e Entry) Same(o Entry) bool {
	return e.Instance == o.Instance && e.Key == o.Key && e.Endpoint == o.Endpoint && e.V4 == o.V4 && e.V6 == o.V6
}

// Sign renders the entry signed with key.
func (e Entry) Sign(key ed25519.PrivateKey) string { return sign(e.body(), key) }

// ErrBadEntry is wrapped by every refusal of ParseEntry.
var ErrBadEntry = errors.New("not a valid membership entry")

// ParseEntry parses a signed entry and checks its signature with signer. Every field is checked:
// the order, the instance name, the key, the endpoint, the addresses (v4 an IPv4, v6 an IPv6).
func ParseEntry(v string, signer ed25519.PublicKey) (Entry, error) {
	var e Entry
	bad := func(format string, a ...any) (Entry, error) {
		return Entry{}, fmt.Errorf("%w: %s", ErrBadEntry, fmt.Sprintf(format, a...))
	}
	body, m, sig, err := splitSigned(v, entryMagic, "gen", "inst", "key", "ep", "v4", "v6")
	if err != nil {
		return bad("%v", err)
	}
	vals := []string{"", m["gen"], m["inst"], m["key"], m["ep"], m["v4"], m["v6"]}
	if e.Gen, err = strconv.ParseUint(vals[1], 10, 64); err != nil || e.Gen == 0 {
		return bad("gen %q", vals[1])
	}
	if !validInstance(vals[2]) {
		return bad("instance %q", vals[2])
	}
	e.Instance = vals[2]
	if vals[3] != "-" {
		if e.Key, err = wgtypes.ParseKey(vals[3]); err != nil {
			return bad("key: %v", err)
		}
		if e.Key == (wgtypes.Key{}) {
			return bad("the all-zero key")
		}
	}
	if vals[4] != "-" {
		host, port, err := net.SplitHostPort(vals[4])
		if err != nil || host == "" {
			return bad("endpoint %q", vals[4])
		}
		if _, err := role.Port(port); err != nil {
			return bad("endpoint %q: %v", vals[4], err)
		}
		e.Endpoint = vals[4]
	}
	if e.V4, err = netip.ParseAddr(vals[5]); err != nil || !e.V4.Is4() {
		return bad("v4 %q", vals[5])
	}
	if e.V6, err = netip.ParseAddr(vals[6]); err != nil || !e.V6.Is6() || e.V6.Is4In6() || e.V6.Zone() != "" {
		return bad("v6 %q", vals[6])
	}
	if e.body() != body {
		return bad("not in canonical form") // one text per meaning: 0::0 is written ::, gen=01 gen=1
	}
	if !verifySigned(signer, body, sig) {
		return bad("signature does not verify with the pinned server key")
	}
	return e, nil
}

// validInstance accepts the instance names of both platforms (node.N, node.8hex): letters, digits,
// '.', '-', '_', at most 128 characters.
func validInstance(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// ParseSigner parses the server's published signing key (vpn.signer, base64).
func ParseSigner(v string) (ed25519.PublicKey, error) {
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
	if err != nil || len(raw) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("not a base64 Ed25519 public key")
	}
	return ed25519.PublicKey(raw), nil
}

// FormatSigner is the published form of a signing key.
func FormatSigner(k ed25519.PublicKey) string { return base64.StdEncoding.EncodeToString(k) }

// loadOrCreate reads the secret in file, or makes one with gen and writes it (0600) first.
func loadOrCreate(file string, gen func() ([]byte, error)) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err == nil {
		return b, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vpn: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("vpn: %w", err)
	}
	if b, err = gen(); err != nil {
		return nil, err
	}
	return b, atomicfile.Write(file, b, 0o600)
}

// LoadOrCreateWGKey returns the WireGuard private key kept in file (base64, 0600), made on first use.
func LoadOrCreateWGKey(file string) (wgtypes.Key, error) {
	b, err := loadOrCreate(file, func() ([]byte, error) {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return nil, fmt.Errorf("vpn: wireguard key: %w", err)
		}
		return []byte(k.String() + "\n"), nil
	})
	if err != nil {
		return wgtypes.Key{}, err
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("vpn: %s: %w", file, err)
	}
	return k, nil
}

// LoadOrCreateSigner returns the server's Ed25519 signing key kept in file (seed, base64, 0600).
func LoadOrCreateSigner(file string) (ed25519.PrivateKey, error) {
	b, err := loadOrCreate(file, func() ([]byte, error) {
		seed := make([]byte, ed25519.SeedSize)
		if _, err := rand.Read(seed); err != nil {
			return nil, fmt.Errorf("vpn: signing key: %w", err)
		}
		return []byte(base64.StdEncoding.EncodeToString(seed) + "\n"), nil
	})
	if err != nil {
		return nil, err
	}
	seed, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("vpn: %s: not a signing key", file)
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

// jsonFile loads v from file (absent: left as is) and saves it atomically (0600).
type jsonFile string

func (f jsonFile) load(v any) error {
	b, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vpn: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("vpn: %s: %w", f, err)
	}
	return nil
}

func (f jsonFile) save(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(string(f)), 0o700); err != nil {
		return fmt.Errorf("vpn: %w", err)
	}
	return atomicfile.Write(string(f), append(b, '\n'), 0o600)
}
