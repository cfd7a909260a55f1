package vpn

import (
	"context"
	"path"
	"testing"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

// openServer is the server of cnsmo.1 with its CA and allocator open, in a deployment with
// web.1 and web.2.
func openServer(t *testing.T) (*Server, *roletest.Store, *roletest.Snapshot, *serverPass) {
	t.Helper()
	st := roletest.NewStore("cnsmo.1", nil)
	s := newServer(role.Env{Params: st, Driver: newFakeDriver(), Instance: "cnsmo.1", StateDir: t.TempDir(), Log: zerolog.Nop()})
	in, err := ParseInputs(func(string) string { return "" })
	require.NoError(t, err)
	require.NoError(t, s.open(in))
	snap := roletest.NewSnapshot("cnsmo.1", nil).AddNode("cnsmo", "cnsmo.1").AddNode("web", "web.1", "web.2")
	return s, st, snap, &serverPass{in: in, cfg: s.config(in), files: map[string]string{}, current: clients(snap, "cnsmo.1")}
}

func csrOf(t *testing.T, instance string) string {
	t.Helper()
	_, _, csr, err := pki.LoadOrCreateClientKey(path.Join(t.TempDir(), "client.key"), instance)
	require.NoError(t, err)
	return string(csr)
}

// issue signs each current client's request, assigns it addresses (a ccd entry) and publishes its
// certificate; a later request with another key for the same instance is refused, said once, and
// the client keeps its certificate.
func TestServerIssueStep(t *testing.T) {
	s, st, snap, p := openServer(t)
	snap.Put("web.1:"+params.VPNCSR, csrOf(t, "web.1"))
	require.Equal(t, []string{"web.1", "web.2"}, p.current)
	require.NoError(t, s.issue(context.Background(), snap, p))
	cert := st.Value("web.1:" + params.VPNCert)
	require.Contains(t, cert, "BEGIN CERTIFICATE")
	require.Empty(t, st.Value("web.2:"+params.VPNCert), "web.2 asked for nothing")
	require.Contains(t, p.files, path.Join(p.cfg.CCDDir(), "web.1"))
	require.Empty(t, p.problems)

	snap.Put("web.1:"+params.VPNCert, cert).Put("web.1:"+params.VPNCSR, csrOf(t, "web.1")) // a forged request
	for i := 0; i < 2; i++ {
		p.files = map[string]string{}
		require.NoError(t, s.issue(context.Background(), snap, p))
	}
	require.Equal(t, cert, st.Value("web.1:"+params.VPNCert), "the pinned key keeps its certificate")
	require.Len(t, st.Displays(), 1, "refused once, said once")
	require.Contains(t, st.Displays()[0], "refused a certificate request for web.1")
	require.Contains(t, p.files, path.Join(p.cfg.CCDDir(), "web.1"), "its address stays")

	snap.Put("web.2:"+params.VPNCSR, "not a request")
	require.NoError(t, s.issue(context.Background(), snap, p))
	require.Len(t, p.problems, 1)
	require.ErrorContains(t, p.problems[0], "web.2: vpn.csr")
}

// revoke revokes an instance that left, once the load balancer no longer holds it, and disables
// its ccd entry; one that is only missing from a read is left alone.
func TestServerRevokeStep(t *testing.T) {
	s, _, snap, p := openServer(t)
	snap.Put("web.2:"+params.VPNCSR, csrOf(t, "web.2"))
	require.NoError(t, s.issue(context.Background(), snap, p))
	snap.Members["web"] = []string{"web.1"} // web.2 is scaled in
	p = &serverPass{in: p.in, cfg: p.cfg, files: map[string]string{}, current: clients(snap, "cnsmo.1")}
	require.NoError(t, s.revoke(snap, p))
	require.Empty(t, p.toKill, "web.2 still has parameters and no scale-in state: not gone")

	snap.Left["web.2"] = true
	held := true
	s.Hold = func(string) bool { return held }
	require.NoError(t, s.revoke(snap, p))
	require.Empty(t, p.toKill, "held while the load balancer serves it")
	held = false
	require.NoError(t, s.revoke(snap, p))
	require.Equal(t, []string{"web.2"}, p.toKill)
	require.Equal(t, RenderCCDDisabled(), p.files[path.Join(p.cfg.CCDDir(), "web.2")])
	require.Contains(t, p.files[p.cfg.CRLPath()], "BEGIN X509 CRL")
	require.Empty(t, s.ca.Active())
}

// Withdraw un-sets the server's outputs.
func TestServerWithdraw(t *testing.T) {
	s, st, _, _ := openServer(t)
	for _, k := range []string{params.VPNReady, params.VPNServerListening, params.VPNAddress, params.VPNAddress6} {
		require.NoError(t, st.Set(context.Background(), "cnsmo.1", k, "x"))
	}
	require.NoError(t, s.Withdraw(context.Background()))
	for _, k := range []string{params.VPNReady, params.VPNServerListening, params.VPNAddress, params.VPNAddress6} {
		require.Empty(t, st.Value(k), k)
	}
}
