// Package pki is the VPN's certificate authority, built on Go's crypto/x509 with ECDSA P-256
// keys: the CA and the server's key are created on the CNSMO server VM and never leave it; every
// client creates its own key and sends only a certificate request (CSR). The CA signs a CSR only
// when its subject names the instance that published it, hands out one certificate per
// instance and public key (the same CSR submitted again returns the same certificate, so a role
// that crashed after signing converges without duplicates), and revokes certificates into a
// CRL that OpenVPN re-reads on every connection (crl-verify).
//
// Everything lives in one directory (0700): ca.key and server.key (0600), ca.crt, server.crt,
// crl.pem and state.json (issued certificates, next serial, revocations), all written atomically.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cnsmo/cnsmo/internal/atomicfile"
)

// ServerCN is the subject common name of the OpenVPN server's certificate; clients check it
// with `verify-x509-name cnsmo-vpn-server name` besides `remote-cert-tls server`.
const ServerCN = "cnsmo-vpn-server"

// Validity of the CA, of issued certificates and of each CRL. OpenVPN refuses every client when
// the CRL has expired, so the CRL's next update is as far away as the CA's own expiry; it is
// re-issued (with a fresh next update) on every revocation and on every start.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 5 * 365 * 24 * time.Hour
	CRLValidity  = 5 * 365 * 24 * time.Hour
)

// Files in the CA directory.
const (
	caKeyFile     = "ca.key"
	caCertFile    = "ca.crt"
	serverKeyFile = "server.key"
	serverCrtFile = "server.crt"
	crlFile       = "crl.pem"
	stateFile     = "state.json"
)

// ErrSubject is returned (wrapped) when a CSR's subject is not the instance that submitted it.
var ErrSubject = errors.New("certificate request subject does not match the instance")

// ErrBadCSR is returned (wrapped) when a CSR cannot be parsed, its signature is wrong or its key
// is not acceptable.
var ErrBadCSR = errors.New("invalid certificate request")

// Issued is one certificate the CA signed for a client.
type Issued struct {
	Instance  string    `json:"instance"`
	Serial    string    `json:"serial"`             // decimal
	KeyID     string    `json:"key_id"`             // hex SHA-256 of the subject public key info
	CertPEM   string    `json:"cert_pem"`           // the certificate, to hand out again
	Revoked   bool      `json:"revoked"`            // listed in the CRL
	RevokedAt time.Time `json:"revoked_at"`         // when it was revoked
	Released  bool      `json:"released,omitempty"` // its key no longer pins the name (Release)
}

type state struct {
	NextSerial int64     `json:"next_serial"` // kept for older state files; serials are random now
	CRLNumber  int64     `json:"crl_number"`
	Issued     []*Issued `json:"issued"`
	// Left lists the instances that left the run: their names are never signed again
	// (SlipStream never reuses an instance index).
	Left []string `json:"left,omitempty"`
}

// CA is a certificate authority persisted in a directory. Its methods are safe for concurrent use.
type CA struct {
	dir  string
	mu   sync.Mutex
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
	st   state
	now  func() time.Time
}

// LoadOrCreateCA opens the CA in dir, creating the directory (0700), the CA key and certificate,
// the server's key and certificate and an empty CRL when they do not exist yet.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: ca dir %s: %w", dir, err)
	}
	ca := &CA{dir: dir, now: time.Now, st: state{NextSerial: 2, CRLNumber: 1}}
	keyPath, certPath := filepath.Join(dir, caKeyFile), filepath.Join(dir, caCertFile)
	_, kerr := os.Stat(keyPath)
	_, cerr := os.Stat(certPath)
	switch {
	case kerr == nil && cerr == nil:
		if err := ca.load(); err != nil {
			return nil, err
		}
	case errors.Is(kerr, os.ErrNotExist) && errors.Is(cerr, os.ErrNotExist):
		if b, err := os.ReadFile(filepath.Join(dir, stateFile)); err == nil {
			var st state
			if json.Unmarshal(b, &st) == nil && (len(st.Issued) > 0 || len(st.Left) > 0) {
				// A new CA would drop every pinned key and every name that left.
				return nil, fmt.Errorf("pki: %s and %s are missing while %s holds issued certificates: restore the CA's key and certificate from a backup, or remove the whole directory %s to start a new CA (every member then gets a new certificate)",
					filepath.Join(dir, caKeyFile), caCertFile, stateFile, dir)
			}
		}
		if err := ca.create(); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("pki: %s: one of %s and %s is missing; refusing to replace a CA half-way", dir, caKeyFile, caCertFile)
	}
	if err := ca.ensureServer(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, crlFile)); errors.Is(err, os.ErrNotExist) {
		ca.mu.Lock()
		err = ca.writeCRLLocked()
		ca.mu.Unlock()
		if err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func (ca *CA) create() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: ca key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return err
	}
	now := ca.now()
	ski := keyID(&key.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "cnsmo VPN CA", Organization: []string{"cnsmo"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		SubjectKeyId:          ski[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("pki: ca certificate: %w", err)
	}
	keyPEM, err := MarshalKey(key)
	if err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	// The state first, then the certificate, the key last: a crash in between leaves no key
	// without its certificate (LoadOrCreateCA refuses a half CA instead of replacing it).
	if err := writeJSON(filepath.Join(ca.dir, stateFile), ca.st); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(ca.dir, caCertFile), certPEM, 0o644); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(ca.dir, caKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return ca.load()
}

func (ca *CA) load() error {
	keyPEM, err := os.ReadFile(filepath.Join(ca.dir, caKeyFile))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return fmt.Errorf("pki: %s: %w", filepath.Join(ca.dir, caKeyFile), err)
	}
	certPEM, err := os.ReadFile(filepath.Join(ca.dir, caCertFile))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	cert, err := ParseCert(certPEM)
	if err != nil {
		return fmt.Errorf("pki: %s: %w", filepath.Join(ca.dir, caCertFile), err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return fmt.Errorf("pki: %s does not belong to %s", caKeyFile, caCertFile)
	}
	b, err := os.ReadFile(filepath.Join(ca.dir, stateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
		// Starting afresh would clear every revocation and every pinned key.
		return fmt.Errorf("pki: %s is missing while %s exists: the CA's issued certificates, pinned keys and revocations are lost; "+
			"restore state.json from a backup, or remove the whole directory %s to start a new CA (every member then gets a new certificate)",
			filepath.Join(ca.dir, stateFile), caKeyFile, ca.dir)
	case err != nil:
		return fmt.Errorf("pki: %w", err)
	default:
		if err := json.Unmarshal(b, &ca.st); err != nil {
			return fmt.Errorf("pki: %s: %w", filepath.Join(ca.dir, stateFile), err)
		}
	}
	if ca.st.NextSerial < 2 {
		ca.st.NextSerial = 2
	}
	ca.key, ca.cert, ca.pem = key, cert, certPEM
	return nil
}

// ensureServer creates the OpenVPN server's key and certificate unless a valid pair exists.
func (ca *CA) ensureServer() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	keyPath, crtPath := filepath.Join(ca.dir, serverKeyFile), filepath.Join(ca.dir, serverCrtFile)
	if kb, err := os.ReadFile(keyPath); err == nil {
		if cb, err := os.ReadFile(crtPath); err == nil {
			k, kerr := ParseKey(kb)
			c, cerr := ParseCert(cb)
			if kerr == nil && cerr == nil && k.PublicKey.Equal(c.PublicKey) && c.CheckSignatureFrom(ca.cert) == nil {
				return nil
			}
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: server key: %w", err)
	}
	tmpl, err := ca.leafTemplateLocked(ServerCN, x509.ExtKeyUsageServerAuth)
	if err != nil {
		return err
	}
	tmpl.DNSNames = []string{ServerCN}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return fmt.Errorf("pki: server certificate: %w", err)
	}
	keyPEM, err := MarshalKey(key)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(keyPath, keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(crtPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// leafTemplateLocked returns a template for an end-entity certificate with a random 128-bit
// serial (never reused, even by a CA whose state was restored from an old backup).
func (ca *CA) leafTemplateLocked(cn string, eku x509.ExtKeyUsage) (*x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := ca.now()
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{eku},
		BasicConstraintsValid: true,
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}, nil
}

// Dir is the CA's directory.
func (ca *CA) Dir() string { return ca.dir }

// CertPEM is the CA certificate (public: it goes into vpn.ca.cert).
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.pem...) }

// Cert is the parsed CA certificate.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// ServerPair returns the OpenVPN server's certificate and key (PEM). The key stays on this VM.
func (ca *CA) ServerPair() (certPEM, keyPEM []byte, err error) {
	certPEM, err = os.ReadFile(filepath.Join(ca.dir, serverCrtFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	keyPEM, err = os.ReadFile(filepath.Join(ca.dir, serverKeyFile))
	if err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	return certPEM, keyPEM, nil
}

// CRLPEM returns the current CRL.
func (ca *CA) CRLPEM() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(ca.dir, crlFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	return b, nil
}

// CheckCSR parses csrPEM and checks its signature, its key and that its subject common name is
// exactly instance. It returns the request.
func CheckCSR(csrPEM []byte, instance string) (*x509.CertificateRequest, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrBadCSR, k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("%w: key type %T (want ECDSA P-256)", ErrBadCSR, csr.PublicKey)
	}
	if csr.Subject.CommonName != instance || instance == "" {
		return nil, fmt.Errorf("%w: subject CN %q, published by %q", ErrSubject, csr.Subject.CommonName, instance)
	}
	if instance == ServerCN {
		return nil, fmt.Errorf("%w: %q is the server's name", ErrSubject, instance)
	}
	return csr, nil
}

// Sign issues a client certificate (clientAuth) for the CSR published by instance. It refuses a
// CSR whose subject CN is not instance, or whose signature or key is bad. The first key signed for
// an instance is pinned: the same key gets the same certificate again (persisted, so a role that
// crashed after signing converges without duplicates), another key is refused (ErrKeyPinned) and
// changes nothing. A name that left the run is never signed again (ErrLeft).
func (ca *CA) Sign(csrPEM []byte, instance string) (certPEM []byte, err error) {
	csr, err := CheckCSR(csrPEM, instance)
	if err != nil {
		return nil, err
	}
	kid := keyID(csr.PublicKey)
	kidHex := hex.EncodeToString(kid)
	ca.mu.Lock()
	defer ca.mu.Unlock()
	if slices.Contains(ca.st.Left, instance) {
		return nil, fmt.Errorf("pki: %s: %w: its name is never signed again (a new instance of the node gets a new name)", instance, ErrLeft)
	}
	for _, is := range ca.st.Issued {
		if is.Instance != instance || is.Released {
			continue
		}
		if is.KeyID != kidHex {
			return nil, fmt.Errorf("pki: %s: %w (key %.16s…, the request's is %.16s…): request refused, nothing changed; "+
				"a member that lost its own key recovers by being scaled in and replaced by a new instance", instance, ErrKeyPinned, is.KeyID, kidHex)
		}
		if !is.Revoked {
			return []byte(is.CertPEM), nil
		}
	}
	tmpl, err := ca.leafTemplateLocked(instance, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	tmpl.SubjectKeyId = kid[:20]
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, csr.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("pki: sign %s: %w", instance, err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	ca.st.Issued = append(ca.st.Issued, &Issued{Instance: instance, Serial: tmpl.SerialNumber.String(), KeyID: kidHex, CertPEM: string(certPEM)})
	if err := writeJSON(filepath.Join(ca.dir, stateFile), ca.st); err != nil {
		return nil, err
	}
	return certPEM, nil
}

// ActiveCert returns the certificate of instance that is not revoked (PEM), or nil.
func (ca *CA) ActiveCert(instance string) []byte {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for _, is := range ca.st.Issued {
		if is.Instance == instance && !is.Revoked {
			return []byte(is.CertPEM)
		}
	}
	return nil
}

// IssuedTo returns the certificates issued to instance (revoked ones included), oldest first.
func (ca *CA) IssuedTo(instance string) []Issued {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	var out []Issued
	for _, is := range ca.st.Issued {
		if is.Instance == instance {
			out = append(out, *is)
		}
	}
	return out
}

// Active returns the instances that hold a certificate not revoked, sorted.
func (ca *CA) Active() []string {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, is := range ca.st.Issued {
		if !is.Revoked && !seen[is.Instance] {
			seen[is.Instance] = true
			out = append(out, is.Instance)
		}
	}
	sort.Strings(out)
	return out
}

// Release lets a name that left be signed again, for a new key too: its certificates stay
// revoked (and in the CRL) but no longer pin it. For people (cnsmo-role join), whose leave the
// server verified and who may join again; never for instances.
func (ca *CA) Release(instance string) error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for _, is := range ca.st.Issued {
		if is.Instance == instance && !is.Revoked {
			return fmt.Errorf("pki: release %s: it holds a certificate not revoked", instance)
		}
	}
	for _, is := range ca.st.Issued {
		if is.Instance == instance {
			is.Released = true
		}
	}
	ca.st.Left = slices.DeleteFunc(ca.st.Left, func(s string) bool { return s == instance })
	return writeJSON(filepath.Join(ca.dir, stateFile), ca.st)
}

// Revoke revokes the certificate with serial (decimal) and re-issues the CRL. Revoking an
// already revoked serial changes nothing; an unknown serial is an error.
func (ca *CA) Revoke(serial string) error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for _, is := range ca.st.Issued {
		if is.Serial != serial {
			continue
		}
		if is.Revoked {
			return nil
		}
		is.Revoked, is.RevokedAt = true, ca.now()
		if err := writeJSON(filepath.Join(ca.dir, stateFile), ca.st); err != nil {
			return err
		}
		return ca.writeCRLLocked()
	}
	return fmt.Errorf("pki: revoke: no certificate with serial %s", serial)
}

// RevokeInstance is called when instance has left the run: it revokes every certificate of
// instance and records that the name is never signed again. It reports whether a certificate
// was revoked now.
func (ca *CA) RevokeInstance(instance string) (bool, error) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	changed, left := false, slices.Contains(ca.st.Left, instance)
	for _, is := range ca.st.Issued {
		if is.Instance == instance && !is.Revoked {
			is.Revoked, is.RevokedAt, changed = true, ca.now(), true
		}
	}
	if !left {
		ca.st.Left = append(ca.st.Left, instance)
	}
	if !changed && left {
		return false, nil
	}
	if err := writeJSON(filepath.Join(ca.dir, stateFile), ca.st); err != nil {
		return false, err
	}
	if !changed {
		return false, nil
	}
	return true, ca.writeCRLLocked()
}

// RefreshCRL re-issues the CRL with a fresh next-update time (call it on start).
func (ca *CA) RefreshCRL() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.writeCRLLocked()
}

func (ca *CA) writeCRLLocked() error {
	now := ca.now()
	tmpl := &x509.RevocationList{
		Number:     big.NewInt(ca.st.CRLNumber),
		ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(CRLValidity),
	}
	for _, is := range ca.st.Issued {
		if !is.Revoked {
			continue
		}
		n, ok := new(big.Int).SetString(is.Serial, 10)
		if !ok {
			return fmt.Errorf("pki: state: bad serial %q", is.Serial)
		}
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: is.RevokedAt.UTC()})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		return fmt.Errorf("pki: crl: %w", err)
	}
	ca.st.CRLNumber++
	if err := writeJSON(filepath.Join(ca.dir, stateFile), ca.st); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(ca.dir, crlFile), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), 0o644)
}

// RevokedSerials parses a CRL (PEM) signed by the CA and returns its revoked serials (decimal).
func (ca *CA) RevokedSerials(crlPEM []byte) ([]string, error) {
	return RevokedSerialsBy(ca.cert, crlPEM)
}

// RevokedSerialsBy parses a CRL (PEM), checks that the CA certificate ca signed it, and returns
// its revoked serials (decimal).
func RevokedSerialsBy(ca *x509.Certificate, crlPEM []byte) ([]string, error) {
	blk, _ := pem.Decode(crlPEM)
	if blk == nil || blk.Type != "X509 CRL" {
		return nil, errors.New("pki: not a PEM X509 CRL")
	}
	crl, err := x509.ParseRevocationList(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: crl: %w", err)
	}
	if err := crl.CheckSignatureFrom(ca); err != nil {
		return nil, fmt.Errorf("pki: crl signature: %w", err)
	}
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, e.SerialNumber.String())
	}
	return out, nil
}

// --- client side -----------------------------------------------------------------------------

// NewKey creates an ECDSA P-256 private key.
func NewKey() (*ecdsa.PrivateKey, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: key: %w", err)
	}
	return k, nil
}

// NewCSR creates a certificate request for instance (subject CN = instance) signed by key.
func NewCSR(key crypto.Signer, instance string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: instance}}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: csr for %s: %w", instance, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// LoadOrCreateClientKey returns the client key kept at path (0600), creating it when absent,
// and a CSR for instance made from it.
func LoadOrCreateClientKey(path, instance string) (key *ecdsa.PrivateKey, keyPEM, csrPEM []byte, err error) {
	keyPEM, err = os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		key, err = NewKey()
		if err != nil {
			return nil, nil, nil, err
		}
		if keyPEM, err = MarshalKey(key); err != nil {
			return nil, nil, nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, nil, nil, fmt.Errorf("pki: %w", err)
		}
		if err := atomicfile.Write(path, keyPEM, 0o600); err != nil {
			return nil, nil, nil, err
		}
	case err != nil:
		return nil, nil, nil, fmt.Errorf("pki: %w", err)
	default:
		if key, err = ParseKey(keyPEM); err != nil {
			return nil, nil, nil, fmt.Errorf("pki: %s: %w", path, err)
		}
	}
	csrPEM, err = NewCSR(key, instance)
	if err != nil {
		return nil, nil, nil, err
	}
	return key, keyPEM, csrPEM, nil
}

// VerifyClientCert checks that certPEM is a client certificate for instance, signed by the CA
// caPEM, and that it certifies pub. It returns the parsed certificate.
func VerifyClientCert(certPEM, caPEM []byte, instance string, pub crypto.PublicKey) (*x509.Certificate, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, err
	}
	ca, err := ParseCert(caPEM)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return nil, fmt.Errorf("pki: certificate of %s: %w", instance, err)
	}
	if cert.Subject.CommonName != instance {
		return nil, fmt.Errorf("pki: certificate CN %q, want %q", cert.Subject.CommonName, instance)
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if e, ok := pub.(equaler); !ok || !e.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: certificate of %s is for another key", instance)
	}
	return cert, nil
}

// --- encoding --------------------------------------------------------------------------------

// MarshalKey encodes an ECDSA private key as PEM (PKCS#8).
func MarshalKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("pki: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKey decodes a PEM ECDSA private key (PKCS#8 or SEC 1).
func ParseKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("pki: no PEM key")
	}
	if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
		if ek, ok := k.(*ecdsa.PrivateKey); ok {
			return ek, nil
		}
		return nil, fmt.Errorf("pki: key type %T, want ECDSA", k)
	}
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse key: %w", err)
	}
	return k, nil
}

// ParseCert decodes one PEM certificate.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("pki: not a PEM CERTIFICATE")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parse certificate: %w", err)
	}
	return c, nil
}

func keyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return make([]byte, 32)
	}
	s := sha256.Sum256(der)
	return s[:]
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// SamePEM reports whether two PEM texts hold the same bytes ignoring surrounding whitespace.
func SamePEM(a, b []byte) bool { return bytes.Equal(bytes.TrimSpace(a), bytes.TrimSpace(b)) }

// ErrKeyPinned is returned (wrapped) when a CSR for an instance carries another key than the one
// the CA first signed for it.
var ErrKeyPinned = errors.New("another key is pinned for this instance")

// ErrLeft is returned (wrapped) when a CSR names an instance that has left the run.
var ErrLeft = errors.New("the instance has left the run")
