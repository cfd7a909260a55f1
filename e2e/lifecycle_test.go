package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/testbed"
)

// roleGone polls until the role of a VM has torn down and exited (its pid file is removed last).
func roleGone(ctx context.Context, vm *testbed.VM) bool {
	for i := 0; i < 300; i++ {
		if _, _, err := vm.Exec(ctx, "test", "-e", deploy.StateDir+"/role.pid"); err != nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
	}
	return false
}

// Abort in the middle of the deployment: every role tears down, within 10 s, and every VM's
// tables, links and the host's containers are as before the run.
func TestAbortMidDeployment(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	before := map[string]hoststate.Snapshot{}
	for _, vm := range tb.VMs() {
		before[vm.Name] = vmState(t, ctx, vm)
	}
	d, err := start(t, tb, "docker", nil, false)
	require.NoError(t, err)
	// Mid-deployment: as soon as the server has published itself.
	require.NoError(t, d.WaitParam(ctx, params.CoreReady, "true", "cnsmo.1"))
	require.NoError(t, d.Mock.Abort(d.Run.UUID, "operator: abort for the test"))
	aborted := time.Now()
	for _, in := range []string{"cnsmo.1", "web.1", "web.2", "web.3"} {
		require.True(t, roleGone(ctx, d.VMOf(in)), "the role of %s exits after the abort", in)
	}
	t.Logf("every role torn down %s after the abort", time.Since(aborted).Round(time.Millisecond))
	require.Less(t, time.Since(aborted), 15*time.Second, "teardown within the poll interval + 10 s")
	for _, vm := range tb.VMs() {
		require.Empty(t, hoststate.Diff(before[vm.Name], vmState(t, ctx, vm)), "VM %s after the abort", vm.Name)
	}
	require.Empty(t, ownedContainers(t, ctx, d.Run.UUID), "no function container of the run is left")
}

// ownedContainers lists the containers the drivers created for a run (label cnsmo.run).
func ownedContainers(t *testing.T, ctx context.Context, run string) []string {
	out, err := hoststate.Host(ctx, "docker", "ps", "-a", "--filter", "label=cnsmo.run="+run, "--format", "{{.Names}}")
	require.NoError(t, err)
	return strings.Fields(out)
}

// Faults: with mocknuvla answering 20% of requests with 5xx, 200 ms latency and dropped
// connections, a server and five agents still converge, and the load balancer lists each backend
// once.
func TestConvergesUnderFaults(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	clouds := []testbed.CloudSpec{{Name: "cloud-a", VMs: []string{"cnsmo1", "web1"}}, {Name: "cloud-b", VMs: []string{"web2", "web3"}}, {Name: "cloud-c", VMs: []string{"web4", "web5"}}}
	tb := testbed.New(t, testbed.Options{Clouds: clouds})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	for i := range def.Nodes {
		if def.Nodes[i].Name == "web" {
			def.Nodes[i].Multiplicity = 5
		}
	}
	place := map[string]string{"cnsmo.1": "cnsmo1"}
	all := []string{"cnsmo.1"}
	for i := 1; i <= 5; i++ {
		place[fmt.Sprintf("web.%d", i)] = fmt.Sprintf("web%d", i)
		all = append(all, fmt.Sprintf("web.%d", i))
	}
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Placement: place, Driver: "docker"})
	require.NoError(t, err)
	defer d.Close(ctx)
	defer d.Stop(context.Background()) //nolint:errcheck
	for i := 1; i <= 5; i++ {
		require.NoError(t, deploy.ServeName(ctx, tb.VM(fmt.Sprintf("web%d", i)), fmt.Sprintf("web.%d", i), deploy.WebPort))
	}
	d.Mock.SetFaults(d.Run.UUID, faults())
	for _, in := range all {
		require.NoError(t, d.Launch(ctx, in))
	}
	require.NoError(t, d.WaitEnabled(ctx, all...), "converges under faults")
	d.Mock.SetFaults(d.Run.UUID, noFaults())
	counts, err := deploy.Distribution(ctx, tb.VM("web1"), tb.VM("cnsmo1").PublicAddr, deploy.WebPort, 100)
	require.NoError(t, err)
	for i := 1; i <= 5; i++ {
		require.InDelta(t, 20, counts[fmt.Sprintf("web.%d", i)], 3, "each backend once in the LB: %v", counts)
	}
}

// Crash: kill -9 the roles at distinct phases (an agent after its firewall is applied, the server
// after the load balancer started) and start them again through the recipes: the deployment
// converges again with no duplicate rule, jump or container.
func TestCrashAndRestartConverges(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", nil, true)
	require.NoError(t, err)
	for _, in := range []string{"web.1", "cnsmo.1"} {
		vm := d.VMOf(in)
		_, _, err := vm.Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
		require.NoError(t, err, "kill -9 the role of %s", in)
		// The pid file stays behind a killed role; the recipe starts it again.
		require.NoError(t, d.Mock.SetParam(d.Run.UUID, in+":"+params.ServicesEnabled, ""))
		require.NoError(t, d.Launch(ctx, in))
	}
	require.NoError(t, d.WaitEnabled(ctx, "cnsmo.1", "web.1", "web.2", "web.3"), "converges after the crashes")
	out, _, err := d.VMOf("web.1").Exec(ctx, "iptables", "-S")
	require.NoError(t, err)
	require.Equal(t, 1, strings.Count(out, "-A INPUT -j CNSMO-INPUT"), "one jump, not two:\n%s", out)
	require.Equal(t, 1, strings.Count(out, "--dport 8081 -j DROP"), "the rule once:\n%s", out)
	lbs := 0
	for _, n := range ownedContainers(t, ctx, d.Run.UUID) {
		if strings.Contains(n, "lb-haproxy") {
			lbs++
		}
	}
	require.Equal(t, 1, lbs, "one HAProxy container")
	counts, err := deploy.Distribution(ctx, d.VMOf("web.2"), d.VMOf("cnsmo.1").PublicAddr, deploy.WebPort, 30)
	require.NoError(t, err)
	require.Equal(t, 0, counts[""], "the load balancer serves: %v", counts)
}
