package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

// The demo's deployment with vpn.engine=wireguard: the ping matrices over IPv4 and IPv6 between
// VMs in four clouds, a capture at the internet router showing a ping between two application
// VMs only as WireGuard UDP between their public addresses, the firewall and the load balancer
// over the mesh, a scale out, forged keys and entries refused, no secret in any parameter; then
// every role stops and each VM is as before. With both drivers.
func TestWireGuardDeployment(t *testing.T) {
	for _, drv := range []string{"docker", "exec"} {
		t.Run(drv, func(t *testing.T) {
			requireBin(t)
			testutil.RequireImage(t, vpn.WGImage)
			testutil.RequireImage(t, "cnsmo/fw:latest")
			testutil.RequireImage(t, "cnsmo/haproxy:latest")
			tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			before := state(t, ctx, tb)
			var progress strings.Builder
			report, d, err := deploy.RunScenario(ctx, tb, deploy.Config{Driver: drv, Progress: &progress, Engine: vpn.EngineWireGuard})
			if d != nil {
				defer d.Close(ctx)
			}
			requireScenarioPassed(t, ctx, report, d, err, progress.String())
			require.NotNil(t, report.Capture)
			require.Len(t, report.Trust, 2)
			for _, in := range d.Instances() {
				_, err := d.Recipe(ctx, in, "onstop.sh")
				require.NoError(t, err, "onstop on %s", in)
			}
			requireSameState(t, ctx, tb, before, "after stop")
		})
	}
}
