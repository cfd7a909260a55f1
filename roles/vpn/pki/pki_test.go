package pki

import (
	"crypto/x509"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCAPersistedWithPrivateKeysOnly0600(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	c := ca.Cert()
	assert.True(t, c.IsCA)
	assert.True(t, c.BasicConstraintsValid)
	assert.NotZero(t, c.KeyUsage&x509.KeyUsageCertSign)
	assert.NotZero(t, c.KeyUsage&x509.KeyUsageCRLSign)
	assert.Equal(t, x509.ECDSAWithSHA256, c.SignatureAlgorithm)

	st, err := os.Stat(dir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm())
	for _, f := range []string{caKeyFile, serverKeyFile, stateFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err, f)
		assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	for _, f := range []string{caCertFile, serverCrtFile, crlFile} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.NotContains(t, string(b), "PRIVATE KEY", f)
	}

	// A restart reuses the same CA and server certificate.
	srvCert, srvKey, err := ca.ServerPair()
	require.NoError(t, err)
	again, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	assert.Equal(t, ca.CertPEM(), again.CertPEM())
	c2, k2, err := again.ServerPair()
	require.NoError(t, err)
	assert.Equal(t, srvCert, c2)
	assert.Equal(t, srvKey, k2)
}

func TestHalfCARefused(t *testing.T) {
	dir := t.TempDir()
	_, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, caKeyFile)))
	_, err = LoadOrCreateCA(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "refusing to replace")
}

func TestServerCertificate(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	certPEM, keyPEM, err := ca.ServerPair()
	require.NoError(t, err)
	cert, err := ParseCert(certPEM)
	require.NoError(t, err)
	key, err := ParseKey(keyPEM)
	require.NoError(t, err)
	assert.True(t, key.PublicKey.Equal(cert.PublicKey))
	assert.Equal(t, ServerCN, cert.Subject.CommonName)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, cert.ExtKeyUsage)
	assert.NotZero(t, cert.KeyUsage&x509.KeyUsageDigitalSignature)
	assert.False(t, cert.IsCA)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert())
	_, err = cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	require.NoError(t, err)
}

func TestSignClientCSR(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	keyPath := filepath.Join(t.TempDir(), "client.key")
	key, keyPEM, csr, err := LoadOrCreateClientKey(keyPath, "web.1")
	require.NoError(t, err)
	st, err := os.Stat(keyPath)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	assert.NotContains(t, string(csr), "PRIVATE KEY")

	certPEM, err := ca.Sign(csr, "web.1")
	require.NoError(t, err)
	cert, err := VerifyClientCert(certPEM, ca.CertPEM(), "web.1", &key.PublicKey)
	require.NoError(t, err)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cert.ExtKeyUsage)
	assert.NotZero(t, cert.KeyUsage&x509.KeyUsageDigitalSignature)
	// The server certificate is not a client certificate and vice versa.
	srv, _, _ := ca.ServerPair()
	_, err = VerifyClientCert(srv, ca.CertPEM(), ServerCN, &key.PublicKey)
	require.Error(t, err)

	// The key is reused after a restart: same CSR key, same certificate.
	key2, keyPEM2, csr2, err := LoadOrCreateClientKey(keyPath, "web.1")
	require.NoError(t, err)
	assert.Equal(t, keyPEM, keyPEM2)
	assert.True(t, key.PublicKey.Equal(&key2.PublicKey))
	again, err := ca.Sign(csr2, "web.1")
	require.NoError(t, err)
	assert.Equal(t, string(certPEM), string(again), "same instance and key: same certificate")

	// ...also through a reloaded CA (a crash after signing).
	ca2, err := LoadOrCreateCA(ca.Dir())
	require.NoError(t, err)
	again, err = ca2.Sign(csr, "web.1")
	require.NoError(t, err)
	assert.Equal(t, string(certPEM), string(again))
	assert.Len(t, ca2.IssuedTo("web.1"), 1)
}

func TestSignRefusesAnotherInstancesSubject(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	key, err := NewKey()
	require.NoError(t, err)
	csr, err := NewCSR(key, "web.2")
	require.NoError(t, err)
	_, err = ca.Sign(csr, "web.1") // web.1 published a CSR naming web.2
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrSubject), "%v", err)
	assert.Contains(t, err.Error(), `"web.2"`)
	assert.Empty(t, ca.IssuedTo("web.1"))
	assert.Empty(t, ca.IssuedTo("web.2"))

	// Nobody gets a certificate named like the server.
	csr, err = NewCSR(key, ServerCN)
	require.NoError(t, err)
	_, err = ca.Sign(csr, ServerCN)
	assert.True(t, errors.Is(err, ErrSubject), "%v", err)
}

func TestSignRefusesBadCSR(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	key, err := NewKey()
	require.NoError(t, err)
	csr, err := NewCSR(key, "web.1")
	require.NoError(t, err)
	// Flip a byte inside the signature (the end of the DER): the signature no longer verifies.
	blk := strings.Split(strings.TrimSpace(string(csr)), "\n")
	line := []byte(blk[len(blk)-2])
	if line[5] == 'A' {
		line[5] = 'B'
	} else {
		line[5] = 'A'
	}
	blk[len(blk)-2] = string(line)
	_, err = ca.Sign([]byte(strings.Join(blk, "\n")+"\n"), "web.1")
	require.Error(t, err)
	assert.True(t, errors.Is(err, ErrBadCSR), "%v", err)

	for _, bad := range []string{"", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		_, err = ca.Sign([]byte(bad), "web.1")
		assert.True(t, errors.Is(err, ErrBadCSR), "%q: %v", bad, err)
	}
}

func TestSerialsUniqueAndPersisted(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	seen := map[string]bool{}
	srv, _, _ := ca.ServerPair()
	sc, _ := ParseCert(srv)
	seen[sc.SerialNumber.String()] = true
	for i, in := range []string{"web.1", "web.2", "web.3", "db.1"} {
		if i == 2 { // reload half-way: serials continue
			ca, err = LoadOrCreateCA(dir)
			require.NoError(t, err)
		}
		k, _ := NewKey()
		csr, _ := NewCSR(k, in)
		p, err := ca.Sign(csr, in)
		require.NoError(t, err)
		c, err := ParseCert(p)
		require.NoError(t, err)
		s := c.SerialNumber.String()
		assert.False(t, seen[s], "serial %s reused", s)
		seen[s] = true
	}
}

func TestRevokeAndCRL(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	crl, err := ca.CRLPEM()
	require.NoError(t, err)
	serials, err := ca.RevokedSerials(crl)
	require.NoError(t, err)
	assert.Empty(t, serials)

	k1, _ := NewKey()
	csr1, _ := NewCSR(k1, "web.1")
	p1, err := ca.Sign(csr1, "web.1")
	require.NoError(t, err)
	c1, _ := ParseCert(p1)
	k2, _ := NewKey()
	csr2, _ := NewCSR(k2, "web.2")
	_, err = ca.Sign(csr2, "web.2")
	require.NoError(t, err)

	require.NoError(t, ca.Revoke(c1.SerialNumber.String()))
	require.NoError(t, ca.Revoke(c1.SerialNumber.String()), "idempotent")
	require.Error(t, ca.Revoke("999999"))
	crl, err = ca.CRLPEM()
	require.NoError(t, err)
	serials, err = ca.RevokedSerials(crl)
	require.NoError(t, err)
	assert.Equal(t, []string{c1.SerialNumber.String()}, serials)
	assert.Equal(t, []string{"web.2"}, ca.Active())

	// Persisted: a reloaded CA keeps the revocation; a revoked instance that comes back with the
	// same key gets a new certificate (new serial), not the revoked one.
	ca, err = LoadOrCreateCA(dir)
	require.NoError(t, err)
	crl2, _ := ca.CRLPEM()
	serials, _ = ca.RevokedSerials(crl2)
	assert.Equal(t, []string{c1.SerialNumber.String()}, serials)
	p1b, err := ca.Sign(csr1, "web.1")
	require.NoError(t, err)
	c1b, _ := ParseCert(p1b)
	assert.NotEqual(t, c1.SerialNumber.String(), c1b.SerialNumber.String())

	// RevokeInstance revokes what the instance holds; a second time it reports nothing new.
	changed, err := ca.RevokeInstance("web.2")
	require.NoError(t, err)
	assert.True(t, changed)
	changed, err = ca.RevokeInstance("web.2")
	require.NoError(t, err)
	assert.False(t, changed)
	crl3, _ := ca.CRLPEM()
	serials, _ = ca.RevokedSerials(crl3)
	assert.Len(t, serials, 2)
}

// An instance's first signed key is pinned: a CSR with another key for the same instance (what a
// VM writing another's vpn.csr publishes) is refused and changes nothing: no revocation, no new
// certificate, the same certificate for the pinned key.
func TestSignPinsTheFirstKey(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	k1, _ := NewKey()
	csr1, _ := NewCSR(k1, "web.1")
	p1, err := ca.Sign(csr1, "web.1")
	require.NoError(t, err)
	k2, _ := NewKey()
	csr2, _ := NewCSR(k2, "web.1")
	_, err = ca.Sign(csr2, "web.1")
	require.ErrorIs(t, err, ErrKeyPinned)
	assert.Contains(t, err.Error(), "scale")
	crl, _ := ca.CRLPEM()
	serials, err := ca.RevokedSerials(crl)
	require.NoError(t, err)
	assert.Empty(t, serials, "nothing revoked")
	assert.Equal(t, []string{"web.1"}, ca.Active())
	assert.Len(t, ca.IssuedTo("web.1"), 1)
	again, err := ca.Sign(csr1, "web.1")
	require.NoError(t, err)
	assert.Equal(t, string(p1), string(again))

	// The pin survives a restart of the CA.
	ca, err = LoadOrCreateCA(ca.Dir())
	require.NoError(t, err)
	_, err = ca.Sign(csr2, "web.1")
	require.ErrorIs(t, err, ErrKeyPinned)
}

// A name that left the run (RevokeInstance) is never signed again, whatever the key.
func TestSignRefusesAnInstanceThatLeft(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	k1, _ := NewKey()
	csr1, _ := NewCSR(k1, "web.2")
	_, err = ca.Sign(csr1, "web.2")
	require.NoError(t, err)
	revoked, err := ca.RevokeInstance("web.2")
	require.NoError(t, err)
	require.True(t, revoked)
	_, err = ca.Sign(csr1, "web.2")
	require.ErrorIs(t, err, ErrLeft)
	k2, _ := NewKey()
	csr2, _ := NewCSR(k2, "web.2")
	_, err = ca.Sign(csr2, "web.2")
	require.ErrorIs(t, err, ErrLeft)
	ca, err = LoadOrCreateCA(ca.Dir())
	require.NoError(t, err)
	_, err = ca.Sign(csr2, "web.2")
	require.ErrorIs(t, err, ErrLeft, "persisted")
	// An instance that never held a certificate and is told to leave is refused later too.
	_, err = ca.RevokeInstance("web.9")
	require.NoError(t, err)
	k3, _ := NewKey()
	csr3, _ := NewCSR(k3, "web.9")
	_, err = ca.Sign(csr3, "web.9")
	require.ErrorIs(t, err, ErrLeft)
}

// A CA whose state (issued certificates, revocations) was lost while its key stayed refuses to
// start instead of clearing every revocation; the message says what is missing and how to recover.
func TestLoadRefusesACAWithoutItsState(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	k, _ := NewKey()
	csr, _ := NewCSR(k, "web.1")
	_, err = ca.Sign(csr, "web.1")
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, "state.json")))
	_, err = LoadOrCreateCA(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "state.json")
	assert.Contains(t, err.Error(), "ca.key")
	assert.Contains(t, err.Error(), "restore")
}

// Serials are random (128 bits), never a counter that a lost state would reuse.
func TestSerialsAreRandom(t *testing.T) {
	ca, err := LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	var prev *big.Int
	for _, in := range []string{"web.1", "web.2", "web.3"} {
		k, _ := NewKey()
		csr, _ := NewCSR(k, in)
		p, err := ca.Sign(csr, in)
		require.NoError(t, err)
		c, err := ParseCert(p)
		require.NoError(t, err)
		assert.GreaterOrEqual(t, c.SerialNumber.BitLen(), 64, "serial %s", c.SerialNumber)
		if prev != nil {
			d := new(big.Int).Sub(c.SerialNumber, prev)
			assert.NotEqual(t, 0, d.Cmp(big.NewInt(1)), "consecutive serials")
		}
		prev = c.SerialNumber
	}
}

// A CA whose key and certificate were lost while its state still lists issued certificates
// refuses to start instead of making a new CA that would forget every pin.
func TestLoadRefusesAStateWithoutItsCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir)
	require.NoError(t, err)
	k, _ := NewKey()
	csr, _ := NewCSR(k, "web.1")
	_, err = ca.Sign(csr, "web.1")
	require.NoError(t, err)
	require.NoError(t, os.Remove(filepath.Join(dir, "ca.key")))
	require.NoError(t, os.Remove(filepath.Join(dir, "ca.crt")))
	_, err = LoadOrCreateCA(dir)
	require.ErrorContains(t, err, "restore the CA's key")
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	require.NoError(t, err)
	require.Contains(t, string(b), "web.1", "the state is kept")
}
