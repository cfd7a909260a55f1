package vpn

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
	"github.com/cnsmo/cnsmo/ssclient"
)

type recParams struct {
	ssclient.Params
	set map[string]string
}

func (p *recParams) Set(_ context.Context, k, v string) error { p.set[k] = v; return nil }

// A client whose certificate the server revoked (its instance left the run) says so once, at
// warn level, instead of retrying silently; it starts nothing.
func TestRevokedClientSaysTheServerRefusedIt(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(t.TempDir())
	require.NoError(t, err)
	var logs bytes.Buffer
	p := &recParams{set: map[string]string{}}
	c := newClient(role.Env{Params: p, Instance: "web.2", StateDir: t.TempDir(), Log: zerolog.New(&logs)})
	run := &ssclient.Run{Params: map[string]ssclient.Param{}}
	put := func(k, v string) { run.Params[k] = ssclient.Param{Value: v, IsSet: true} }
	ready, err := c.Reconcile(context.Background(), run) // publishes its CSR
	require.NoError(t, err)
	require.False(t, ready)
	cert, err := ca.Sign([]byte(p.set[params.VPNCSR]), "web.2")
	require.NoError(t, err)
	_, err = ca.RevokeInstance("web.2")
	require.NoError(t, err)
	crl, err := ca.CRLPEM()
	require.NoError(t, err)
	put("web.2:"+params.VPNCSR, p.set[params.VPNCSR])
	put("web.2:"+params.ServerInstanceID, "cnsmo.1")
	put("cnsmo.1:"+params.VPNServerInstanceID, "cnsmo.1")
	put("cnsmo.1:"+params.VPNCACert, string(ca.CertPEM()))
	put("cnsmo.1:"+params.VPNEndpoint, "198.18.0.2:1194/udp")
	put("cnsmo.1:"+params.VPNCRL, string(crl))
	put("web.2:"+params.VPNCert, string(cert))
	for i := 0; i < 3; i++ {
		ready, err := c.Reconcile(context.Background(), run)
		require.NoError(t, err)
		require.False(t, ready)
	}
	require.Equal(t, 1, bytes.Count(logs.Bytes(), []byte("revoked this instance's certificate")), logs.String())
	require.Contains(t, logs.String(), `"level":"warn"`)
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
