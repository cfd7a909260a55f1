package vpn

import (
	"bytes"
	"context"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// fakeDriver records the functions started and the files put; every function runs once started.
type fakeDriver struct {
	driver.Driver
	mu      sync.Mutex
	started map[string]driver.Spec
	files   map[string]string
}

func newFakeDriver() *fakeDriver {
	return &fakeDriver{started: map[string]driver.Spec{}, files: map[string]string{}}
}

func (d *fakeDriver) Start(_ context.Context, spec driver.Spec) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.started[spec.Name] = spec
	return nil
}

func (d *fakeDriver) Status(_ context.Context, name string) (driver.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.started[name]; ok {
		return driver.Status{State: driver.StateRunning}, nil
	}
	return driver.Status{}, nil
}

func (d *fakeDriver) PutFiles(_ context.Context, _ string, files []driver.File) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range files {
		d.files[f.Path] = string(f.Data)
	}
	return nil
}

func (d *fakeDriver) Run(context.Context, driver.Spec, io.Reader) (driver.Result, error) {
	return driver.Result{}, nil
}

// grantedClient is a client of web.2 with its key, and a server (cnsmo.1) that granted it a
// certificate: the snapshot holds everything a client needs.
func grantedClient(t *testing.T) (*Client, *roletest.Store, *roletest.Snapshot, *pki.CA) {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	st := roletest.NewStore("web.2", nil)
	c := newClient(role.Env{Params: st, Driver: newFakeDriver(), Instance: "web.2", StateDir: t.TempDir(), Log: zerolog.Nop()})
	require.NoError(t, c.loadKey())
	cert, err := ca.Sign(c.csrPEM, "web.2")
	require.NoError(t, err)
	snap := roletest.NewSnapshot("web.2", map[string]string{
		"web.2:" + params.VPNCSR:                string(c.csrPEM),
		"web.2:" + params.ServerInstanceID:      "cnsmo.1",
		"cnsmo.1:" + params.VPNServerInstanceID: "cnsmo.1",
		"cnsmo.1:" + params.VPNCACert:           string(ca.CertPEM()),
		"cnsmo.1:" + params.VPNEndpoint:         "198.18.0.2:1194/udp",
		"web.2:" + params.VPNCert:               string(cert),
	})
	return c, st, snap, ca
}

// A client whose certificate the server revoked (its instance left the run) says so once, at
// warn level, instead of retrying silently; it starts nothing.
func TestRevokedClientSaysTheServerRefusedIt(t *testing.T) {
	c, _, snap, ca := grantedClient(t)
	var logs bytes.Buffer
	c.env.Log = zerolog.New(&logs)
	_, err := ca.RevokeInstance("web.2")
	require.NoError(t, err)
	crl, err := ca.CRLPEM()
	require.NoError(t, err)
	snap.Put("cnsmo.1:"+params.VPNCRL, string(crl))
	for i := 0; i < 3; i++ {
		ready, err := c.Reconcile(context.Background(), snap)
		require.NoError(t, err)
		require.False(t, ready)
	}
	require.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("revoked this instance's certificate")), logs.String())
	require.Contains(t, logs.String(), `"level":"warn"`)
	require.Empty(t, c.env.Driver.(*fakeDriver).started, "nothing started")
}

// The client publishes its request once, and again only when the one published is not for its key.
func TestClientPublishesItsRequest(t *testing.T) {
	c, st, snap, _ := grantedClient(t)
	require.NoError(t, c.publishCSR(context.Background(), snap))
	require.Empty(t, st.Sets(), "the published request is for its key")
	other, _, _, _ := grantedClient(t)
	snap.Put("web.2:"+params.VPNCSR, string(other.csrPEM)) // rewritten by another VM
	require.NoError(t, c.publishCSR(context.Background(), snap))
	require.Equal(t, string(c.csrPEM), st.Value(params.VPNCSR))
}

// granted waits (nil, no error) for each missing piece, refuses a CA other than the pinned one,
// and otherwise returns the grant.
func TestClientGrantStep(t *testing.T) {
	for _, missing := range []string{"web.2:" + params.ServerInstanceID, "cnsmo.1:" + params.VPNServerInstanceID,
		"cnsmo.1:" + params.VPNCACert, "cnsmo.1:" + params.VPNEndpoint, "web.2:" + params.VPNCert} {
		c, _, snap, _ := grantedClient(t)
		delete(snap.Values, missing)
		g, err := c.granted(snap)
		require.NoError(t, err, missing)
		require.Nil(t, g, "waits for %s", missing)
	}
	c, _, snap, _ := grantedClient(t)
	g, err := c.granted(snap)
	require.NoError(t, err)
	require.Equal(t, &grant{server: "cnsmo.1", caPEM: snap.Get("cnsmo.1", params.VPNCACert), certPEM: snap.Get("web.2", params.VPNCert),
		device: DefaultDevice, host: "198.18.0.2", port: 1194}, g)
	require.FileExists(t, filepath.Join(c.env.StateDir, caPinFile), "the CA is pinned on first use")

	other, err := pki.LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	snap.Put("cnsmo.1:"+params.VPNCACert, string(other.CertPEM()))
	_, err = c.granted(snap)
	require.ErrorContains(t, err, "not the CA this VM pinned on first use")
}

// spec renders the OpenVPN client with the grant's CA and certificate and the key of this VM.
func TestClientSpecStep(t *testing.T) {
	c, _, snap, _ := grantedClient(t)
	g, err := c.granted(snap)
	require.NoError(t, err)
	spec := c.spec(g)
	files := map[string]string{}
	for _, f := range spec.Files {
		files[filepath.Base(f.Path)] = string(f.Data)
	}
	require.Equal(t, g.caPEM, files["ca.crt"])
	require.Equal(t, g.certPEM, files["client.crt"])
	require.Equal(t, string(c.keyPEM), files["client.key"])
	require.Contains(t, files["client.conf"], "remote 198.18.0.2 1194")
}

// confirm publishes the client's addresses only once its device has them and the server answers.
func TestClientConfirmStep(t *testing.T) {
	c, st, snap, _ := grantedClient(t)
	g, err := c.granted(snap)
	require.NoError(t, err)
	snap.Put("cnsmo.1:"+params.VPNAddress, "198.19.0.1").Put("cnsmo.1:"+params.VPNAddress6, "2001:db8:c5e0::1")
	have := []netip.Prefix{}
	c.Addrs = func(context.Context, string) ([]netip.Prefix, error) { return have, nil }
	answers := false
	c.Ping = func(context.Context, netip.Addr) (bool, error) { return answers, nil }
	ok, err := c.confirm(context.Background(), snap, g)
	require.NoError(t, err)
	require.False(t, ok, "no addresses yet")
	have = []netip.Prefix{netip.MustParsePrefix("198.19.0.5/24"), netip.MustParsePrefix("2001:db8:c5e0::5/64")}
	ok, err = c.confirm(context.Background(), snap, g)
	require.NoError(t, err)
	require.False(t, ok, "the server does not answer")
	require.Empty(t, st.Sets())
	answers = true
	ok, err = c.confirm(context.Background(), snap, g)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "198.19.0.5", st.Value(params.VPNAddress))
	require.Equal(t, "2001:db8:c5e0::5", st.Value(params.VPNAddress6))
	require.Equal(t, "true", st.Value(params.VPNClientListening))
	require.NoError(t, c.Withdraw(context.Background()))
	require.Empty(t, st.Value(params.VPNAddress), "withdrawn")
	require.Empty(t, st.Value(params.VPNClientListening), "withdrawn")
}

// With the exec driver OpenVPN's files live under the role's state dir.
func TestExecFilesLiveUnderTheStateDir(t *testing.T) {
	dir := t.TempDir()
	env := role.Env{Instance: "web.1", StateDir: dir, Exec: true, Log: zerolog.Nop()}
	require.True(t, strings.HasPrefix(newServer(env).Dir, dir+"/"), newServer(env).Dir)
	require.True(t, strings.HasPrefix(newClient(env).Dir, dir+"/"), newClient(env).Dir)
	env.Exec = false // in the function's container
	require.Equal(t, DefaultServerDir, newServer(env).Dir)
}
