package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
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
			report, d, err := deploy.RunScenario(ctx, tb, deploy.Config{Driver: drv, Progress: &progress, Engine: vpn.EngineWireGuard, People: drv == "docker"})
			if d != nil {
				defer d.Close(ctx)
			}
			requireScenarioPassed(t, ctx, report, d, err, progress.String())
			require.NotNil(t, report.Capture)
			require.Len(t, report.Trust, 2)
			require.Eventually(t, func() bool {
				return strings.Contains(d.Param("web.1:statecustom"), "wireguard mesh, 4/4 peers with a recent handshake")
			}, time.Minute, 200*time.Millisecond, "web.1's statecustom shows its mesh: %q", d.Param("web.1:statecustom"))
			for _, in := range d.Instances() {
				_, err := d.Recipe(ctx, in, "onstop.sh")
				require.NoError(t, err, "onstop on %s", in)
			}
			requireSameState(t, ctx, tb, before, "after stop")
		})
	}
}

// The WireGuard engine's life cycle (VPN only, Docker driver, three clouds): kill -9 of the
// server's role and its wireguard-go, then of a member's role, and a restart converge with the
// same keys and addresses; a member joins without restarting anyone's device; a member scaled in
// is removed from every peer list (it reaches nobody) and its addresses go to the next member.
func TestWireGuardLifecycle(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, vpn.WGImage)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l := startVPNLab(t, ctx, vpn.EngineWireGuard)
	d := l.d
	defer d.Close(context.Background())
	members := []string{"cnsmo.1", "web.1", "web.2"}
	require.NoError(t, d.WaitMesh(ctx, members, time.Minute))
	require.Equal(t, "true", l.param("cnsmo.1:"+params.VPNReady))
	keys, addr := map[string]string{}, map[string][2]string{}
	for _, in := range members {
		keys[in] = l.param(in + ":" + params.VPNWGKey)
		addr[in] = [2]string{l.param(in + ":" + params.VPNAddress), l.param(in + ":" + params.VPNAddress6)}
	}
	same := func(ins ...string) {
		t.Helper()
		for _, in := range ins {
			require.Equal(t, keys[in], l.param(in+":"+params.VPNWGKey), "%s keeps its key", in)
			require.Equal(t, addr[in], [2]string{l.param(in + ":" + params.VPNAddress), l.param(in + ":" + params.VPNAddress6)}, "%s keeps its addresses", in)
		}
	}
	kill := func(in string, fn bool) {
		t.Helper()
		_, _, err := d.VMOf(in).Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
		require.NoError(t, err, "kill -9 the role of %s", in)
		if fn {
			ids := l.functions(ctx, in, vpn.WGFunction)
			require.Len(t, ids, 1, "one wireguard-go on %s", in)
			_, err = hoststate.Host(ctx, "docker", "kill", "-s", "KILL", ids[0])
			require.NoError(t, err)
		}
		require.NoError(t, d.Mock.SetParam(d.Run.UUID, in+":"+params.ServicesEnabled, ""))
		require.NoError(t, d.Launch(ctx, in))
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		l.requireEnabled(wctx, in)
		wcancel()
	}
	// The server's role and its wireguard-go die: a new device, the same keys and addresses.
	kill("cnsmo.1", true)
	require.NoError(t, d.WaitMesh(ctx, members, time.Minute))
	same(members...)
	l.pingsEventually(ctx, "web.1", addr["web.2"][0], 30*time.Second)
	l.pingsEventually(ctx, "web.2", addr["cnsmo.1"][1], 30*time.Second)
	// A member's role alone: its device keeps running, the restarted role takes it over.
	kill("web.1", false)
	same(members...)
	require.NoError(t, l.ping(ctx, "web.1", addr["web.2"][1]))

	// Scale out: the others' devices are neither restarted nor replaced.
	untouched := map[string]string{}
	for _, in := range members {
		untouched[in] = l.started(ctx, in, vpn.WGFunction)
	}
	third := l.scaleOut(ctx, "web3", members...)
	all := append(slices.Clone(members), third)
	require.NoError(t, d.WaitMesh(ctx, all, time.Minute))
	for _, in := range members {
		require.Equal(t, untouched[in], l.started(ctx, in, vpn.WGFunction), "%s's wireguard-go untouched by a join", in)
		require.NoError(t, l.ping(ctx, third, addr[in][0]), "%s -> %s", third, in)
		require.NoError(t, l.ping(ctx, in, l.param(third+":"+params.VPNAddress6)), "%s -> %s (IPv6)", in, third)
	}

	// Scale in web.2: its role dies with its VM, its wireguard-go keeps running with its key. Every
	// member removes it; it reaches nobody; the mesh is whole again without it.
	_, _, err := d.VMOf("web.2").Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
	require.NoError(t, err)
	require.NoError(t, d.Mock.ScaleDown(d.Run.UUID, "web", []int{2}))
	require.NoError(t, d.Mock.SetState(d.Run.UUID, "Ready"))
	rest := []string{"cnsmo.1", "web.1", third}
	for _, o := range rest {
		_, err := d.Recipe(ctx, o, "onvmremove.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS=web.2", "SLIPSTREAM_SCALING_ACTION=vm_remove")
		require.NoError(t, err)
	}
	require.NoError(t, d.WaitMesh(ctx, rest, time.Minute), "every member dropped web.2")
	for _, to := range rest {
		require.Error(t, l.ping(ctx, "web.2", l.param(to+":"+params.VPNAddress)), "the removed instance reaches %s", to)
	}
	require.NoError(t, l.ping(ctx, "web.1", l.param(third+":"+params.VPNAddress)), "the others still reach each other")
	require.Eventually(t, func() bool { return l.param("cnsmo.1:"+params.VPNReady) == "true" }, time.Minute, 200*time.Millisecond)
	l.requireNameGone(ctx, "web-2", rest...)
	for _, id := range l.functions(ctx, "web.2", vpn.WGFunction) { // the "destroyed" VM's leftover
		_, err := hoststate.Host(ctx, "docker", "rm", "-f", id)
		require.NoError(t, err)
	}
	// The next new member gets web.2's freed addresses.
	fourth := l.scaleOut(ctx, "web4", rest...)
	require.Equal(t, addr["web.2"], [2]string{l.param(fourth + ":" + params.VPNAddress), l.param(fourth + ":" + params.VPNAddress6)},
		"%s reuses the addresses freed by web.2", fourth)
	require.NoError(t, d.WaitMesh(ctx, append(rest, fourth), time.Minute))
	require.NoError(t, l.ping(ctx, "web.1", addr["web.2"][0]), "web.1 reaches %s at the reused address", fourth)

	leaks, scanned, err := d.KeyLeaks(ctx)
	require.NoError(t, err)
	require.Empty(t, leaks, "private key material in parameters")
	t.Logf("no private key in the %d parameters of the run", scanned)
}
