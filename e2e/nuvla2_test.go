package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

// The demo's scenario on Nuvla 2 (mocknuvla's Nuvla 2 API, search staleness on): a deployment group
// of the CNSMO server and three members, each on a VM of its own cloud and each started from its
// compose file (cnsmo-role in its container on the VM's network: with the Docker driver through the
// host's engine, with the exec driver its functions as processes of that container), VPN, firewall
// with the seed's rules and load balancer; a fourth member joins; then the group is stopped and
// every VM is as before.
func TestNuvla2Deployment(t *testing.T) {
	for _, c := range []struct{ drv, engine string }{{"docker", "openvpn"}, {"exec", "openvpn"}, {"docker", "wireguard"}} {
		drv := c.drv
		t.Run(drv+"-"+c.engine, func(t *testing.T) {
			requireBin(t)
			testutil.RequireBinary(t, "docker-compose")
			testutil.RequireImage(t, "cnsmo/role:latest")
			testutil.RequireImage(t, "cnsmo/fw:latest")
			testutil.RequireImage(t, "cnsmo/haproxy:latest")
			tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			before := state(t, ctx, tb)
			var progress strings.Builder
			report, d, err := deploy.RunScenario(ctx, tb, deploy.Config{Driver: drv, API: "nuvla2", Compose: true, Progress: &progress, Engine: c.engine, People: drv == "docker" && c.engine == "openvpn"})
			if d != nil {
				defer d.Close(ctx)
			}
			requireScenarioPassed(t, ctx, report, d, err, progress.String())
			require.NotEmpty(t, report.LBURL, "the deployment's url.service is published")
			require.Len(t, report.Addresses, 5)
			t0 := time.Now()
			require.NoError(t, d.Stop(ctx))
			require.Less(t, time.Since(t0), 60*time.Second)
			requireSameState(t, ctx, tb, before, "after the group stopped")
			for _, in := range []string{"web.1", "web.4"} {
				require.Equal(t, "left", d.Param(in+":cnsmo.state"), "%s said goodbye when its deployment stopped", in)
			}
		})
	}
}

// Through 20 % of 5xx answers and 200 ms of latency on every request, a group converges within 60 s.
func TestNuvla2ConvergesUnderFaults(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: []testbed.CloudSpec{{Name: "cloud-a", VMs: []string{"cnsmo1"}}, {Name: "cloud-b", VMs: []string{"web1", "web2"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	setMultiplicity(def, "web", 2)
	f := faults()
	f.DropRatio = 0
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Driver: "exec", API: "nuvla2", Faults: &f,
		Placement: map[string]string{"cnsmo.1": "cnsmo1", "web.1": "web1", "web.2": "web2"}})
	require.NoError(t, err)
	defer d.Close(ctx)
	all := []string{"cnsmo.1", "web.1", "web.2"}
	for _, w := range all[1:] { // the load balancer's backends
		require.NoError(t, deploy.ServeName(ctx, d.VMOf(w), w, deploy.WebPort, deploy.BlockedPort))
	}
	t0 := time.Now()
	for _, in := range all {
		require.NoError(t, d.Launch(ctx, in))
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	err = d.WaitEnabled(wctx, all...)
	wcancel()
	if err != nil {
		var b strings.Builder
		for _, in := range all {
			b.WriteString("\n-- " + in + "\n" + d.Logs(ctx, in))
		}
		t.Fatalf("not converged within 60 s under faults: %v%s", err, b.String())
	}
	t.Logf("converged under faults in %s", time.Since(t0).Round(time.Millisecond))
	require.NoError(t, d.Stop(ctx))
}

// A member whose application does not ask for user rights cannot reach the CNSMO server's
// deployment: its role stops at once saying which right is missing and how to grant it.
func TestNuvla2MissingRightsAreSaid(t *testing.T) {
	requireBin(t)
	tb := testbed.New(t, testbed.Options{Clouds: []testbed.CloudSpec{{Name: "cloud-a", VMs: []string{"cnsmo1"}}, {Name: "cloud-b", VMs: []string{"web1"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	setMultiplicity(def, "web", 1)
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Driver: "exec", API: "nuvla2", NoUserRights: true,
		Placement: map[string]string{"cnsmo.1": "cnsmo1", "web.1": "web1"}})
	require.NoError(t, err)
	defer d.Close(ctx)
	require.NoError(t, d.Launch(ctx, "cnsmo.1"))
	out, errOut, err := d.VMOf("web.1").Exec(ctx, "sh", "-c", ". "+deploy.EnvFile+"; exec /opt/cnsmo/bin/cnsmo-role agent")
	require.Error(t, err, "the agent cannot run")
	require.Contains(t, out+errOut, "requires-user-rights: true", out+errOut)
	require.Empty(t, d.Param("web.1:"+params.ServicesEnabled))
	require.NoError(t, d.Stop(ctx))
}

func setMultiplicity(def *mocknuvla.Deployment, node string, n int) {
	for i := range def.Nodes {
		if def.Nodes[i].Name == node {
			def.Nodes[i].Multiplicity = n
		}
	}
}

// A member started from its compose file (recipes/nuvla2/app-member.yml, with Debian's
// docker-compose, cnsmo-role in the cnsmo/role image on its VM's network; with the exec driver the
// functions are processes of that container, with the Docker driver containers of the host's engine
// through the mounted socket) joins the group's VPN and firewall; `docker-compose
// down` stops it, and it removes what it created. A container stopped without its deployment
// stopping (a reboot, an update) does not leave the group.
func TestNuvla2MemberFromComposeFile(t *testing.T) {
	for _, c := range []struct{ drv, engine string }{{"exec", vpn.EngineOpenVPN}, {"docker", vpn.EngineOpenVPN}, {"exec", vpn.EngineWireGuard}} {
		t.Run(c.drv+"-"+c.engine, func(t *testing.T) { memberFromComposeFile(t, c.drv, c.engine) })
	}
}

func memberFromComposeFile(t *testing.T, drv, engine string) {
	requireBin(t)
	testutil.RequireBinary(t, "docker-compose")
	testutil.RequireImage(t, "cnsmo/role:latest")
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: []testbed.CloudSpec{{Name: "cloud-a", VMs: []string{"cnsmo1"}}, {Name: "cloud-b", VMs: []string{"web1"}}}})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	setMultiplicity(def, "web", 1)
	require.NoError(t, def.SetValue("cnsmo", params.VPNEngine, engine))
	require.NoError(t, def.SetValue("cnsmo", params.VPNEngine, engine))
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Driver: "exec", API: "nuvla2",
		Placement: map[string]string{"cnsmo.1": "cnsmo1"}})
	require.NoError(t, err)
	defer d.Close(ctx)
	web1 := tb.VM("web1")
	require.NoError(t, deploy.ServeName(ctx, web1, "web.1", deploy.WebPort, deploy.BlockedPort))
	before := vmState(t, ctx, web1)
	require.NoError(t, d.Launch(ctx, "cnsmo.1"))

	env, err := d.PlaceFromCompose("web.1", "web1")
	require.NoError(t, err)
	env["CNSMO_NETWORK_MODE"] = "container:" + web1.Container
	env["CNSMO_DOCKER_NETWORK"] = "container:" + web1.Container // the functions join the VM too
	env["CNSMO_DRIVER"] = drv
	env["CNSMO_IMAGE"] = "cnsmo/role:latest"
	env["CNSMO_WG_RUN_DIR"], err = web1.WireGuardRunDirOnHost(ctx)
	require.NoError(t, err)
	project := tb.Prefix() + "member" + drv + engine
	compose := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, "docker-compose", append([]string{"-f", "../recipes/nuvla2/app-member.yml", "-p", project}, args...)...)
		cmd.Env = os.Environ()
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() { _, _ = compose("down", "-v", "--timeout", "20") })
	out, err := compose("up", "-d", "cnsmo")
	require.NoError(t, err, out)

	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	err = d.WaitEnabled(wctx, "cnsmo.1", "web.1")
	wcancel()
	if err != nil {
		logs, _ := compose("logs", "--no-color", "--tail", "40")
		t.Fatalf("not enabled: %v\n-- cnsmo.1\n%s\n-- web.1 (compose)\n%s", err, d.Logs(ctx, "cnsmo.1"), logs)
	}
	for _, p := range d.PingMatrix(ctx, []string{"cnsmo.1", "web.1"}, false) {
		require.True(t, p.OK, "%s pings %s at %s through the overlay", p.From, p.To, p.Addr)
	}
	body, err := deploy.Get(ctx, d.VMOf("cnsmo.1"), web1.PublicAddr, deploy.BlockedPort)
	require.Error(t, err, "the member's firewall drops %d (got %q)", deploy.BlockedPort, body)

	out, err = compose("down", "-v", "--timeout", "20")
	require.NoError(t, err, out)
	require.Empty(t, deploy.StateDiff(map[string]hoststate.Snapshot{"web1": before}, map[string]hoststate.Snapshot{"web1": vmState(t, ctx, web1)}),
		"the member removed what it created")
	require.Equal(t, "joined", d.Param("web.1:cnsmo.state"), "a container stop is not a leave")
	require.NoError(t, d.Stop(ctx))
}
