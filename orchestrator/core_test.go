package orchestrator

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

// The digest moves with what agents depend on (a member's WireGuard entry, its rules, the server's
// outputs) and not with what is written for operators (progress text, handshake counts) or with
// an agent's own outputs.
func TestDigestFollowsWhatAgentsRead(t *testing.T) {
	base := func() *roletest.Snapshot {
		return roletest.NewSnapshot("cnsmo.1", map[string]string{"cnsmo.1:" + params.VPNReady: "true"}).
			AddNode("cnsmo", "cnsmo.1").AddNode("web", "web.1", "web.2")
	}
	d0 := Digest(base())
	for k, moves := range map[string]bool{
		"web.1:" + params.VPNMember:         true,
		"web.1:" + params.FWRules:           true,
		"cnsmo.1:" + params.VPNSigner:       true,
		"cnsmo.1:" + params.VPNReady:        true,
		"cnsmo.1:" + params.Statecustom:     false,
		"cnsmo.1:" + params.VPNWGHandshakes: false,
		"web.1:" + params.VPNWGHandshakes:   false,
		"web.1:" + params.VPNAddress:        false,
		"web.1:" + params.VPNWGKey:          false,
	} {
		s := base().Put(k, "changed")
		require.Equal(t, moves, Digest(s) != d0, k)
	}
}
