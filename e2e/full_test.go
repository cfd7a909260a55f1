// Package e2e runs whole deployments: mocknuvla on the host, the real recipes and cnsmo-role on
// simulated VMs of the testbed.
package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

func requireBin(t *testing.T) {
	t.Helper()
	if os.Getenv("CNSMO_BIN") == "" {
		if os.Getenv("CNSMO_REQUIRE_ALL") == "1" {
			t.Fatal("CNSMO_BIN is not set (make test sets it to the built bin/)")
		}
		t.Skip("skipping: needs CNSMO_BIN, the built binaries (make test sets it)")
	}
}

// vmState is what a role could leave behind inside a VM.
func vmState(t *testing.T, ctx context.Context, vm *testbed.VM) hoststate.Snapshot {
	s, err := hoststate.Take(ctx, func(ctx context.Context, argv ...string) (string, error) {
		out, _, err := vm.Exec(ctx, argv...)
		return out, err
	}, false)
	require.NoError(t, err)
	return s
}

// The seed's deployment, automated: a CNSMO server and three application VMs in three clouds,
// firewall and load balancer through the real recipes; then a fourth VM joins by scale-out; then
// every role stops and each VM is as before.
func TestFullDeployment(t *testing.T) {
	for _, drv := range []string{"docker", "exec"} {
		t.Run(drv, func(t *testing.T) {
			requireBin(t)
			testutil.RequireImage(t, "cnsmo/fw:latest")
			testutil.RequireImage(t, "cnsmo/haproxy:latest")
			tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			before := map[string]hoststate.Snapshot{}
			for _, vm := range tb.VMs() {
				before[vm.Name] = vmState(t, ctx, vm)
			}
			var progress strings.Builder
			report, d, err := deploy.RunFull(ctx, tb, drv, &progress)
			if d != nil {
				defer d.Close(ctx)
			}
			if err != nil || !report.Pass() {
				var b strings.Builder
				report.Print(&b)
				if d != nil {
					for _, in := range d.Instances() {
						b.WriteString("\n-- " + in + "\n" + d.Logs(ctx, in))
					}
				}
				t.Fatalf("deployment: %v\nfailures: %v\n%s\n%s", err, report.Failures, progress.String(), b.String())
			}
			require.NotEmpty(t, report.LBURL, "ss:url.service is published")
			require.NoError(t, d.Stop(ctx))
			for _, vm := range tb.VMs() {
				require.Empty(t, hoststate.Diff(before[vm.Name], vmState(t, ctx, vm)), "VM %s after stop", vm.Name)
			}
		})
	}
}
