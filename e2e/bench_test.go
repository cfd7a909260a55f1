package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

// deployOnce deploys the server and n agents with every service through the recipes and returns
// the time from the roles' start to every net.services.enabled and the API requests it took.
func deployOnce(t *testing.T, ctx context.Context, tb *testbed.Testbed, n int) (*deploy.Deployment, time.Duration, int64) {
	t.Helper()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	for i := range def.Nodes {
		if def.Nodes[i].Name == "web" {
			def.Nodes[i].Multiplicity = n
		}
	}
	place := map[string]string{"cnsmo.1": "cnsmo1"}
	all := []string{"cnsmo.1"}
	for i := 1; i <= n; i++ {
		in := fmt.Sprintf("web.%d", i)
		place[in] = fmt.Sprintf("web%d", i)
		all = append(all, in)
	}
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Placement: place, Driver: "docker"})
	require.NoError(t, err)
	for _, in := range all[1:] {
		require.NoError(t, deploy.ServeName(ctx, d.VMOf(in), in, deploy.WebPort))
	}
	before := sum(d.Mock.Counters())
	start := time.Now()
	for _, in := range all {
		require.NoError(t, d.Launch(ctx, in))
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	require.NoError(t, d.WaitEnabled(wctx, all...))
	took := time.Since(start)
	return d, took, sum(d.Mock.Counters()) - before
}

func sum(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// rssMB is the resident memory of pid (a host pid) in MiB.
func rssMB(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			require.NoError(t, err)
			return kb / 1024
		}
	}
	t.Fatalf("no VmRSS for pid %d", pid)
	return 0
}

// TestBenchDeploy measures a server + 10 agents deployment with every service (VPN, FW, LB)
// against a server + 1 agent deployment on the same testbed, then the agents' footprint at
// steady state: resident memory of cnsmo-role beside its own OpenVPN client, and API requests
// per second of an agent beside the server's.
func TestBenchDeploy(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("benchmark: set CNSMO_BENCH=1")
	}
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	clouds := []testbed.CloudSpec{
		{Name: "cloud-a", VMs: []string{"cnsmo1", "web1", "web2", "web3"}},
		{Name: "cloud-b", VMs: []string{"web4", "web5", "web6", "web7"}},
		{Name: "cloud-c", VMs: []string{"web8", "web9", "web10"}},
	}
	tb := testbed.New(t, testbed.Options{Clouds: clouds})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	d1, took1, req1 := deployOnce(t, ctx, tb, 1)
	require.NoError(t, d1.Stop(ctx))
	d1.Close(ctx)
	t.Logf("1+1: %s, %d requests", took1.Round(time.Millisecond), req1)

	d, took, reqs := deployOnce(t, ctx, tb, 10)
	defer d.Close(context.Background())
	defer d.Stop(context.Background()) //nolint:errcheck
	t.Logf("1+10: %s, %d requests", took.Round(time.Millisecond), reqs)

	// Steady state: every role has logged that all its services are ready (its loop then polls
	// every 3 s); count each client's requests over a fixed window.
	steady := []string{"cnsmo.1"}
	for i := 1; i <= 10; i++ {
		steady = append(steady, fmt.Sprintf("web.%d", i))
	}
	for _, in := range steady {
		require.Eventually(t, func() bool { n, err := d.ReadyPasses(ctx, in); return err == nil && n > 0 },
			2*time.Minute, 250*time.Millisecond, "%s at steady state", in)
	}
	const window = 30 * time.Second
	c0 := d.Mock.ClientCounters()
	w := time.NewTimer(window)
	<-w.C
	c1 := d.Mock.ClientCounters()
	rate := func(in string) float64 {
		a := d.VMOf(in).PublicAddr
		return float64(c1[a]-c0[a]) / window.Seconds()
	}
	var agentRate, agentRSS, vpnRSS float64
	for i := 1; i <= 10; i++ {
		in := fmt.Sprintf("web.%d", i)
		agentRate += rate(in) / 10
		out, _, err := d.VMOf(in).Exec(ctx, "cat", deploy.StateDir+"/role.pid")
		require.NoError(t, err)
		inner, err := strconv.Atoi(strings.TrimSpace(out))
		require.NoError(t, err)
		agentRSS += rssMB(t, hostPid(t, ctx, d.VMOf(in), inner)) / 10
		pid, err := hoststate.Host(ctx, "docker", "ps", "-q", "--filter", "label=cnsmo.run="+d.Run.UUID,
			"--filter", "label=cnsmo.instance="+in, "--filter", "label=cnsmo.name="+vpn.ClientFunction)
		require.NoError(t, err)
		hp, err := hoststate.Host(ctx, "docker", "inspect", "-f", "{{.State.Pid}}", strings.TrimSpace(pid))
		require.NoError(t, err)
		p, err := strconv.Atoi(strings.TrimSpace(hp))
		require.NoError(t, err)
		vpnRSS += rssMB(t, p) / 10
	}
	benchreport.Report(t,
		benchreport.Figure{Name: "deploy_1plus10_s", Value: took.Seconds(), Baseline: "deploy_1plus1_s", BaselineValue: took1.Seconds(),
			Note: "server + 10 agents, VPN + FW + LB, Docker driver, through the recipes on the testbed: roles started to every net.services.enabled; vs server + 1 agent"},
		benchreport.Figure{Name: "deploy_1plus10_requests", Value: float64(reqs), Baseline: "deploy_1plus1_requests", BaselineValue: float64(req1),
			Note: "requests to the run API (mocknuvla's counters) during that deployment; vs server + 1 agent"},
		benchreport.Figure{Name: "agent_idle_rss_mb", Value: agentRSS, Baseline: "agent_openvpn_rss_mb", BaselineValue: vpnRSS,
			Note: "resident memory of cnsmo-role agent at steady state (mean of 10), vs its own OpenVPN client process"},
		benchreport.Figure{Name: "agent_idle_requests_per_s", Value: agentRate, Baseline: "server_idle_requests_per_s", BaselineValue: rate("cnsmo.1"),
			Note: "run API requests per second of one agent at steady state (mean of 10, 30 s window), vs the CNSMO server's"},
	)
}

// hostPid maps a pid inside a VM's pid namespace to the host's (the NSpid line of the host's
// /proc lists the pid in every namespace, innermost last).
func hostPid(t *testing.T, ctx context.Context, vm *testbed.VM, inner int) int {
	root, err := hoststate.Host(ctx, "docker", "inspect", "-f", "{{.State.Pid}}", vm.Container)
	require.NoError(t, err)
	rootPid := strings.TrimSpace(root)
	ents, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		var nspid []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "NSpid:") {
				nspid = strings.Fields(l)[1:]
			}
		}
		if len(nspid) >= 2 && nspid[len(nspid)-1] == strconv.Itoa(inner) && sameNS(rootPid, pid) {
			return pid
		}
	}
	t.Fatalf("no host pid for pid %d in VM %s", inner, vm.Name)
	return 0
}

func sameNS(a string, b int) bool {
	x, err1 := os.Readlink("/proc/" + a + "/ns/pid")
	y, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", b))
	return err1 == nil && err2 == nil && x == y
}
