package e2e

import (
	"context"
	"encoding/json"
	"fmt"
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

// Abort in the middle of the deployment: every role tears down within 10 s, and every VM's
// tables, links and namespaces, and the host's tables, links and containers (every container in a
// VM's namespace, whatever its labels) are as before the run.
func TestAbortMidDeployment(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	before := state(t, ctx, tb)
	creates := watchCreates(t, tb)
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Placement: deploy.FullPlacement, Driver: "docker"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Stop(context.Background()); d.Close(context.Background()) })
	for _, in := range []string{"cnsmo.1", "web.1", "web.2"} {
		require.NoError(t, d.Launch(ctx, in))
	}
	// Mid-deployment: web.1 has its tunnel and its rules, web.3's role has just started.
	require.NoError(t, d.WaitParam(ctx, params.FWReady, "true", "web.1"))
	require.NoError(t, d.Launch(ctx, "web.3"))
	fns, err := tb.Functions(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, fns, "functions run in the VMs when the run is aborted")
	require.Empty(t, d.Param("web.3:"+params.ServicesEnabled), "web.3 is still deploying")
	require.NoError(t, d.Mock.Abort(d.Run.UUID, "operator: abort for the test"))
	aborted := time.Now()
	for _, in := range []string{"cnsmo.1", "web.1", "web.2", "web.3"} {
		require.True(t, roleGone(ctx, d.VMOf(in)), "the role of %s exits after the abort", in)
	}
	took := time.Since(aborted)
	t.Logf("every role torn down %s after the abort (functions before: %v)", took.Round(time.Millisecond), fns)
	require.Less(t, took, 10*time.Second, "every role removes what it created within 10 s of the abort")
	requireSameState(t, ctx, tb, before, "after the abort")
	require.Empty(t, ownedContainers(t, ctx, d.Run.UUID), "no function container of the run is left")
	// The engine's event stream saw them created (the check TestBadInputsAbortTheRun relies on).
	require.NotEmpty(t, creates(d.Run.UUID, ""), "functions were created for the run")
}

// ownedContainers lists the containers the drivers created for a run (label cnsmo.run).
func ownedContainers(t *testing.T, ctx context.Context, run string) []string {
	names, err := listOwned(ctx, run)
	require.NoError(t, err)
	return names
}

// listOwned is ownedContainers for callers that handle the error (inside Eventually).
func listOwned(ctx context.Context, run string) ([]string, error) {
	out, err := hoststate.Host(ctx, "docker", "ps", "-a", "--filter", "label=cnsmo.run="+run, "--format", "{{.Names}}")
	return strings.Fields(out), err
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
	d.Mock.ResetCounters()
	d.Mock.SetFaults(d.Run.UUID, faults())
	for _, in := range all {
		require.NoError(t, d.Launch(ctx, in))
	}
	require.NoError(t, d.WaitEnabled(ctx, all...), "converges under faults")
	d.Mock.SetFaults(d.Run.UUID, noFaults())
	// The faults really hit the roles: answers replaced by 5xx, dropped connections, latency.
	injected := d.Mock.FaultCounters()
	t.Logf("faults injected during the deployment: %v", injected)
	for _, f := range []string{"5xx", "drop", "latency"} {
		require.Positive(t, injected[f], "mocknuvla injected %s faults: %v", f, injected)
	}
	requireNoDuplicates(t, ctx, d, all[1:])
	counts, err := deploy.Distribution(ctx, tb.VM("web1"), tb.VM("cnsmo1").PublicAddr, deploy.WebPort, 100)
	require.NoError(t, err)
	for i := 1; i <= 5; i++ {
		require.InDelta(t, 20, counts[fmt.Sprintf("web.%d", i)], 3, "each backend once in the LB: %v", counts)
	}
}

// vpnState is what the VPN server recorded: the certificates it issued and the addresses it
// assigned (its state dir on the server VM).
type vpnState struct {
	Issued []struct {
		Instance string `json:"instance"`
		Serial   string `json:"serial"`
		Revoked  bool   `json:"revoked"`
	}
	Members map[string]struct {
		V4 string `json:"v4"`
		V6 string `json:"v6"`
	}
}

func readVPNState(t *testing.T, ctx context.Context, d *deploy.Deployment) vpnState {
	t.Helper()
	var st vpnState
	vm := d.VMOf("cnsmo.1")
	out, _, err := vm.Exec(ctx, "cat", deploy.StateDir+"/vpn/ca/state.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	out, _, err = vm.Exec(ctx, "cat", deploy.StateDir+"/vpn/addresses.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	return st
}

// requireNoDuplicates: one certificate per client ever issued, one address pair per member,
// no address twice, and the published addresses are the assigned ones.
func requireNoDuplicates(t *testing.T, ctx context.Context, d *deploy.Deployment, clients []string) vpnState {
	t.Helper()
	st := readVPNState(t, ctx, d)
	certs := map[string]int{}
	for _, c := range st.Issued {
		certs[c.Instance]++
	}
	seen := map[string]string{}
	for _, in := range clients {
		require.Equal(t, 1, certs[in], "one certificate issued for %s: %+v", in, st.Issued)
		m, ok := st.Members[in]
		require.True(t, ok, "%s has an address", in)
		require.Equal(t, m.V4, d.Param(in+":"+params.VPNAddress), "%s publishes its assigned address", in)
		require.Equal(t, m.V6, d.Param(in+":"+params.VPNAddress6), "%s publishes its assigned IPv6 address", in)
	}
	require.Len(t, st.Issued, len(clients), "no certificate beyond one per client")
	for in, m := range st.Members {
		for _, a := range []string{m.V4, m.V6} {
			other, dup := seen[a]
			require.False(t, dup, "%s and %s share %s", in, other, a)
			seen[a] = in
		}
	}
	return st
}

// Crash: kill -9 a role at four distinct phases of the deployment (an agent before its VPN is
// ready, an agent right after its certificate is issued, an agent after its firewall is applied,
// the server after the load balancer started) and start each again through the recipe: the
// deployment converges with no duplicate certificate, address, rule, jump or container; a second
// crash of every role afterwards keeps every address.
func TestCrashAndRestartConverges(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", nil, false)
	require.NoError(t, err)
	all := []string{"cnsmo.1", "web.1", "web.2", "web.3"}
	webs := all[1:]
	// readyPasses counts the role log's "all services ready" lines of instance: each process logs
	// one on its way up, so a restarted role that converged adds one.
	readyPasses := func(in string) int {
		n, err := d.ReadyPasses(ctx, in)
		require.NoError(t, err)
		return n
	}
	restarted := map[string]int{} // instance -> ready passes logged before its last crash
	crash := func(in string, killed ...func()) {
		t.Helper()
		restarted[in] = readyPasses(in)
		_, _, err := d.VMOf(in).Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
		require.NoError(t, err, "kill -9 the role of %s", in)
		for _, f := range killed {
			f()
		}
		// A killed role leaves its parameters (net.services.enabled stays as it was) and its
		// pid file; the recipe starts it again.
		require.NoError(t, d.Launch(ctx, in))
	}
	converged := func(what string) {
		t.Helper()
		require.NoError(t, d.WaitEnabled(ctx, all...), what)
		for in, n := range restarted {
			require.Eventually(t, func() bool { return readyPasses(in) > n }, 2*time.Minute, 250*time.Millisecond,
				"%s: the restarted role of %s has every service ready", what, in)
		}
	}
	for _, phase := range []struct {
		name, instance, key string
		unset               string // a parameter not yet set when the role is killed
	}{
		{"before its VPN is ready (CSR published)", "web.2", params.VPNCSR, params.VPNAddress},
		{"after its certificate is issued", "web.1", params.VPNCert, ""},
		{"after its firewall is applied", "web.3", params.FWReady, ""},
		{"after the load balancer started", "cnsmo.1", params.LBReady, ""},
	} {
		require.NoError(t, d.WaitSet(ctx, phase.key, phase.instance), phase.name)
		t.Logf("kill -9 %s %s", phase.instance, phase.name)
		crash(phase.instance, func() {
			if phase.unset != "" {
				require.Empty(t, d.Param(phase.instance+":"+phase.unset), "%s was killed %s: %s not yet set", phase.instance, phase.name, phase.unset)
			}
		})
	}
	converged("converges after the crashes")
	st := requireNoDuplicates(t, ctx, d, webs)
	requireOnce := func(what string) {
		t.Helper()
		for _, w := range webs {
			out, _, err := d.VMOf(w).Exec(ctx, "iptables", "-S")
			require.NoError(t, err)
			require.Equal(t, 1, strings.Count(out, "-A INPUT -j CNSMO-INPUT"), "%s: one jump on %s, not two:\n%s", what, w, out)
			require.Equal(t, 1, strings.Count(out, "-A OUTPUT -j CNSMO-OUTPUT"), "%s: one jump on %s, not two:\n%s", what, w, out)
			require.Equal(t, 1, strings.Count(out, "--dport 8081 -j DROP"), "%s: the rule once on %s:\n%s", what, w, out)
		}
		fns := map[string]int{}
		for _, n := range ownedContainers(t, ctx, d.Run.UUID) {
			for _, f := range []string{"lb-haproxy", vpn.ServerFunction, vpn.ClientFunction} {
				if strings.Contains(n, f) && !strings.Contains(n, "check") {
					fns[f]++
				}
			}
		}
		require.Equal(t, map[string]int{"lb-haproxy": 1, vpn.ServerFunction: 1, vpn.ClientFunction: 3}, fns, "%s: one container per function", what)
		for _, p := range d.PingMatrix(ctx, all, false) {
			require.True(t, p.OK, "%s: %s pings %s at %s", what, p.From, p.To, p.Addr)
		}
		counts, err := deploy.Distribution(ctx, d.VMOf("web.2"), d.VMOf("cnsmo.1").PublicAddr, deploy.WebPort, 30)
		require.NoError(t, err)
		require.Equal(t, 0, counts[""], "%s: the load balancer serves: %v", what, counts)
	}
	requireOnce("after the crashes")

	// Every role crashes once more and comes back: same addresses, no new certificate, still
	// one rule, jump and container each.
	addrs := map[string]string{}
	for _, in := range all {
		addrs[in] = d.Param(in+":"+params.VPNAddress) + " " + d.Param(in+":"+params.VPNAddress6)
		crash(in)
	}
	converged("converges after every role crashed")
	for _, in := range all {
		require.Equal(t, addrs[in], d.Param(in+":"+params.VPNAddress)+" "+d.Param(in+":"+params.VPNAddress6), "%s keeps its addresses", in)
	}
	require.Equal(t, st, requireNoDuplicates(t, ctx, d, webs), "the server's certificates and addresses are unchanged")
	requireOnce("after every role crashed")
}
