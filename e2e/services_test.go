package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

// start deploys the application definition (with overrides) on the full scenario's VMs and
// launches every role; it returns once every instance is enabled, or the error.
func start(t *testing.T, tb *testbed.Testbed, drv string, overrides [][3]string, wait bool) (*deploy.Deployment, error) {
	t.Helper()
	return startPrepared(t, tb, drv, overrides, nil, wait)
}

// startPrepared is start with prepare run on the deployment before any role is launched.
func startPrepared(t *testing.T, tb *testbed.Testbed, drv string, overrides [][3]string, prepare func(*deploy.Deployment), wait bool) (*deploy.Deployment, error) {
	t.Helper()
	ctx := context.Background()
	def, err := deploy.AppDefinition()
	require.NoError(t, err)
	for _, o := range overrides {
		require.NoError(t, def.SetValue(o[0], o[1], o[2]))
	}
	d, err := deploy.Start(ctx, tb, deploy.Config{Definition: def, Placement: deploy.FullPlacement, Driver: drv})
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Stop(context.Background()); d.Close(context.Background()) })
	for _, w := range []string{"web.1", "web.2", "web.3"} {
		require.NoError(t, deploy.ServeName(ctx, d.VMOf(w), w, deploy.WebPort, deploy.BlockedPort))
	}
	if prepare != nil {
		prepare(d)
	}
	for _, in := range []string{"cnsmo.1", "web.1", "web.2", "web.3"} {
		require.NoError(t, d.Launch(ctx, in))
	}
	if !wait {
		return d, nil
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	return d, d.WaitEnabled(wctx, "cnsmo.1", "web.1", "web.2", "web.3")
}

// Bad inputs: each aborts the run with a message naming the parameter, and nothing is applied.
func TestBadInputsAbortTheRun(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	for _, c := range []struct {
		name      string
		overrides [][3]string
		want      string
		prepare   func(*deploy.Deployment)
		instance  string // where nothing may have been started ("" = anywhere in the run)
	}{
		{name: "unknown service", overrides: [][3]string{{"cnsmo", params.ServicesEnable, `["fw","dns"]`}}, want: `net.services.enable[1]: unknown service "dns" (known: vpn, fw, lb)`},
		{name: "invalid rules", overrides: [][3]string{{"web", params.FWRules, `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"},{"direction":"in","protocol":"tcp","dst_port":"70000","action":"drop"}]`}},
			want: params.FWRules + "[1].dst_port: 70000 is out of range 1-65535"},
		{name: "invalid lb.mode", overrides: [][3]string{{"cnsmo", params.LBMode, "fastest"}},
			want: `lb.mode: "fastest" is not one of roundrobin, static-rr, leastconn, first, source, random`},
		{name: "invalid vpn.subnet", overrides: [][3]string{{"cnsmo", params.VPNSubnet, "198.19.200.0/33"}}, want: "vpn.subnet: "},
		// The developer's recipe hands cnsmo a rule file too long for a parameter: the recipe
		// aborts the run naming the parameter, before the agent starts.
		{name: "value over 4096 characters", want: params.FWRules + ": /srv/rules.json is 4", instance: "web.1",
			prepare: func(d *deploy.Deployment) {
				rule := `{"direction":"in","protocol":"tcp","dst_port":"9000","ip_range":"198.18.0.0/15","action":"drop"},`
				long := "[" + strings.Repeat(rule, 4200/len(rule)+1) + rule[:len(rule)-1] + "]"
				vm := d.VMOf("web.1")
				require.NoError(t, vm.WriteFile(context.Background(), "/srv/rules.json", []byte(long), 0o644))
				_, _, err := vm.Exec(context.Background(), "sh", "-c", "echo 'export CNSMO_FW_RULES_FILE=/srv/rules.json' >> "+deploy.EnvFile)
				require.NoError(t, err)
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			before := state(t, ctx, tb)
			creates := watchCreates(t, tb)
			d, err := startPrepared(t, tb, "docker", c.overrides, c.prepare, true)
			require.ErrorIs(t, err, deploy.ErrAborted)
			require.Contains(t, d.Param("ss:abort"), c.want)
			for _, in := range []string{"cnsmo.1", "web.1", "web.2", "web.3"} {
				require.True(t, roleGone(ctx, d.VMOf(in)), "the role of %s exits after the abort", in)
			}
			// Nothing was applied: every role validates every input of the run before it starts
			// anything, so no function was ever created for the run. A rule file is known only
			// to its own VM's recipe, which refuses it before that VM's role starts.
			require.Empty(t, creates(d.Run.UUID, c.instance), "no function created (%s)", c.name)
			require.NoError(t, d.Stop(ctx))
			requireSameState(t, ctx, tb, before, c.name)
		})
	}
}

// The seed's Appendix B, automated, with both drivers: drop 8081, then the parameter changes at
// run time to drop 8080 instead and the result flips.
func TestFirewallLiveUpdate(t *testing.T) {
	for _, drv := range []string{"docker", "exec"} {
		t.Run(drv, func(t *testing.T) {
			requireBin(t)
			testutil.RequireImage(t, "cnsmo/fw:latest")
			tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
			ctx := context.Background()
			before := map[string]string{}
			for _, vm := range tb.VMs() {
				before[vm.Name] = vmState(t, ctx, vm)["iptables"] + vmState(t, ctx, vm)["ip6tables"]
			}
			d, err := start(t, tb, drv, [][3]string{{"cnsmo", params.ServicesEnable, `["fw"]`}}, true)
			require.NoError(t, err)
			client := d.VMOf("cnsmo.1")
			for _, w := range []string{"web.1", "web.2"} {
				_, err := deploy.Get(ctx, client, d.VMOf(w).PublicAddr, deploy.WebPort)
				require.NoError(t, err, "8080 allowed on %s", w)
				_, err = deploy.Get(ctx, client, d.VMOf(w).PublicAddr, deploy.BlockedPort)
				require.Error(t, err, "8081 dropped on %s", w)
			}
			require.NoError(t, d.Mock.SetParam(d.Run.UUID, "web.1:"+params.FWRules,
				`[{"direction":"in","protocol":"tcp","dst_port":"8080","ip_range":"0.0.0.0/0","action":"drop"}]`))
			flipped := false
			for i := 0; i < 100 && !flipped; i++ { // the agent polls; each probe takes up to 2 s
				_, e1 := deploy.Get(ctx, client, d.VMOf("web.1").PublicAddr, deploy.BlockedPort)
				flipped = e1 == nil
			}
			require.True(t, flipped, "8081 opened after the change")
			_, err = deploy.Get(ctx, client, d.VMOf("web.1").PublicAddr, deploy.WebPort)
			require.Error(t, err, "8080 dropped after the change")
			_, err = deploy.Get(ctx, client, d.VMOf("web.2").PublicAddr, deploy.BlockedPort)
			require.Error(t, err, "web.2's rules did not change")

			// Teardown: every VM's iptables-save and ip6tables-save as before.
			require.NoError(t, d.Stop(ctx))
			for _, vm := range tb.VMs() {
				require.Equal(t, before[vm.Name], vmState(t, ctx, vm)["iptables"]+vmState(t, ctx, vm)["ip6tables"], "tables of %s after teardown", vm.Name)
			}
		})
	}
}

// The load balancer follows the backends, with backends at their hostname (VPN off) and at
// their vpn.address (VPN on): 300 roundrobin requests split evenly; a stopped backend VM is taken
// out by the health checks (no failed request afterwards); a fourth backend added by scale-out
// receives traffic (also while the stopped VM's tunnel is down); scaled in, it stops.
func TestLoadBalancerFollowsBackends(t *testing.T) {
	for _, c := range []struct{ name, services string }{{"hostname", `["lb"]`}, {"vpn", `["vpn","lb"]`}} {
		t.Run(c.name, func(t *testing.T) { testLBFollows(t, c.services, c.name == "vpn") })
	}
}

func testLBFollows(t *testing.T, services string, useVPN bool) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", [][3]string{{"cnsmo", params.ServicesEnable, services}}, true)
	require.NoError(t, err)
	server, client := d.VMOf("cnsmo.1"), d.VMOf("web.1")
	counts, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 300)
	require.NoError(t, err)
	for _, w := range []string{"web.1", "web.2", "web.3"} {
		require.InDelta(t, 100, counts[w], 10, "roundrobin share of %s: %v", w, counts)
	}
	require.Equal(t, "true", d.Param("cnsmo.1:"+params.LBReady))
	require.Equal(t, server.PublicAddr+":8080", d.Param("ss:url.service"))

	// The backends' addresses in the running HAProxy's configuration.
	conf := haproxyConfig(t, ctx, d)
	for _, w := range []string{"web.1", "web.2", "web.3"} {
		want, other := d.VMOf(w).PublicAddr, d.Param(w+":"+params.VPNAddress)
		if useVPN {
			want, other = other, want
			require.NotEmpty(t, want, "%s has a vpn.address", w)
		}
		require.Contains(t, conf, " "+want+":8080 check", "%s addressed at %s", w, want)
		if other != "" {
			require.NotContains(t, conf, " "+other+":", "%s not addressed at %s", w, other)
		}
	}

	// Stop web.3's VM: after the health checks (inter 500 ms, fall 2) no request fails.
	require.NoError(t, d.VMOf("web.3").Stop(ctx))
	var last map[string]int
	for i := 0; i < 30; i++ {
		last, err = deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 20)
		require.NoError(t, err)
		if last["web.3"] == 0 && last[""] == 0 {
			break
		}
	}
	after, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 100)
	require.NoError(t, err)
	require.Zero(t, after[""], "no request fails once the backend is marked down: %v", after)
	require.Zero(t, after["web.3"])

	// The server's role dies and starts again (kill -9, as a reboot would) while web.3 is down:
	// the instance was enabled, so the load balancer follows at once, without waiting for web.3.
	_, _, err = server.Exec(ctx, "sh", "-c", "kill -9 $(cat "+deploy.StateDir+"/role.pid)")
	require.NoError(t, err)
	require.NoError(t, d.Launch(ctx, "cnsmo.1"))

	// Scale out: web.4 joins (web.3 is still in the run, its tunnel down) and receives traffic.
	names, err := d.Mock.ScaleUp(d.Run.UUID, "web", 1)
	require.NoError(t, err)
	require.NoError(t, d.Mock.SetState(d.Run.UUID, "Ready"))
	joined := names[0]
	require.NoError(t, d.Adopt(ctx, joined, "web4"))
	require.NoError(t, deploy.ServeName(ctx, d.VMOf(joined), joined, deploy.WebPort, deploy.BlockedPort))
	require.NoError(t, d.Launch(ctx, joined))
	_, err = d.Recipe(ctx, "cnsmo.1", "onvmadd.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS="+joined)
	require.NoError(t, err)
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	require.NoError(t, d.WaitEnabled(wctx, joined))
	wcancel()
	failed := 0
	for i := 0; i < 30; i++ {
		last, err = deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 20)
		require.NoError(t, err)
		failed += last[""]
		if last[joined] > 0 {
			break
		}
	}
	require.Positive(t, last[joined], "the new backend %s receives traffic: %v", joined, last)
	require.Zero(t, failed, "no request fails while it joins")

	// Scale in the new backend while it still serves: the load balancer drops it from its
	// configuration (not the health checks: it answers), and it receives no more requests.
	require.NoError(t, d.Mock.ScaleDown(d.Run.UUID, "web", []int{4}))
	require.NoError(t, d.Mock.SetState(d.Run.UUID, "Ready"))
	_, err = d.Recipe(ctx, "cnsmo.1", "onvmremove.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS="+joined)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		conf, err := haproxyConfigE(ctx, d)
		return err == nil && !strings.Contains(conf, joined)
	}, time.Minute, 200*time.Millisecond, "the scaled-in backend leaves HAProxy's configuration")
	if !useVPN { // with the VPN its tunnel is revoked too; over the underlay it still answers
		_, err := deploy.Get(ctx, client, d.VMOf(joined).PublicAddr, deploy.WebPort)
		require.NoError(t, err, "the scaled-in backend still serves: only the load balancer dropped it")
	}
	// The file changes before the reload is signalled: wait until the running HAProxy no longer
	// sends to it (bounded), then every request reaches a remaining backend; the even split is
	// measured once the reload has settled (while the old worker drains, two workers keep their
	// own rotations).
	require.Eventually(t, func() bool {
		probe, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 4)
		return err == nil && probe[joined] == 0 && probe[""] == 0
	}, 30*time.Second, 100*time.Millisecond, "the running load balancer stops sending to %s", joined)
	first, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 20)
	require.NoError(t, err)
	require.Equal(t, 20, first["web.1"]+first["web.2"], "after the reload every request reaches a remaining backend: %v", first)
	steady, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 40)
	require.NoError(t, err)
	require.Equal(t, 40, steady["web.1"]+steady["web.2"], "every request reaches a remaining backend: %v", steady)
	require.InDelta(t, 20, steady["web.1"], 2, "roundrobin between web.1 and web.2: %v", steady)
	require.NoError(t, d.VMOf(joined).Stop(ctx))
}

// haproxyConfig reads the configuration of the run's running HAProxy.
func haproxyConfig(t *testing.T, ctx context.Context, d *deploy.Deployment) string {
	t.Helper()
	conf, err := haproxyConfigE(ctx, d)
	require.NoError(t, err)
	return conf
}

func haproxyConfigE(ctx context.Context, d *deploy.Deployment) (string, error) {
	return d.HAProxyConfig(ctx)
}

// net.services.enable is followed at run time: a deployment with the firewall only gets the VPN
// and the load balancer when the list changes to ["vpn","lb"] (the firewall's rules leave every
// VM, fw.ready is withdrawn); then, changed to ["lb"], the load balancer moves its backends from
// the overlay to the public addresses, the VPN's devices and addresses go, and it serves on.
func TestEnabledServicesFollowTheParameter(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/fw:latest")
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", [][3]string{{"cnsmo", params.ServicesEnable, `["fw"]`}}, true)
	require.NoError(t, err)
	webs := []string{"web.1", "web.2", "web.3"}
	rules := func(in string) string {
		out, _, err := d.VMOf(in).Exec(ctx, "iptables", "-S")
		require.NoError(t, err)
		return out
	}
	for _, w := range webs {
		require.Contains(t, rules(w), "-A INPUT -j CNSMO-INPUT", "the firewall runs on %s", w)
	}
	require.Empty(t, d.Param("ss:url.service"), "no load balancer yet")
	server, client := d.VMOf("cnsmo.1"), d.VMOf("web.1")

	require.NoError(t, d.Mock.SetParam(d.Run.UUID, "cnsmo.1:"+params.ServicesEnable, `["vpn","lb"]`))
	require.NoError(t, d.WaitParam(ctx, params.LBReady, "true", "cnsmo.1"), "the load balancer starts")
	require.NoError(t, d.WaitSet(ctx, params.VPNAddress, webs...), "the VPN starts")
	require.Eventually(t, func() bool {
		conf, err := haproxyConfigE(ctx, d)
		return err == nil && strings.Count(conf, " "+strings.TrimSuffix(deploy.TestSubnet, "0/24")) == 3
	}, time.Minute, 250*time.Millisecond, "the backends are at their overlay addresses")
	counts, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 30)
	require.NoError(t, err)
	require.Zero(t, counts[""], "the load balancer serves: %v", counts)
	for _, w := range webs {
		require.Eventually(t, func() bool { return !strings.Contains(rules(w), "CNSMO-") }, time.Minute, 250*time.Millisecond,
			"the firewall's chains leave %s", w)
		require.Eventually(t, func() bool { return d.Param(w+":"+params.FWReady) == "" }, time.Minute, 250*time.Millisecond,
			"%s withdraws fw.ready", w)
	}

	// The VPN goes: the load balancer re-renders on public addresses before the overlay closes
	// (a connection in flight through the old worker at that moment may fail: counted, logged).
	require.NoError(t, d.Mock.SetParam(d.Run.UUID, "cnsmo.1:"+params.ServicesEnable, `["lb"]`))
	failed, sent := 0, 0
	for i := 0; i < 60; i++ {
		batch, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 10)
		require.NoError(t, err)
		failed, sent = failed+batch[""], sent+10
		if d.Param("web.1:"+params.VPNAddress) == "" && d.Param("web.3:"+params.VPNAddress) == "" {
			break
		}
	}
	t.Logf("while the VPN went away: %d of %d requests failed", failed, sent)
	for _, w := range webs {
		require.Eventually(t, func() bool { return d.Param(w+":"+params.VPNAddress) == "" }, time.Minute, 250*time.Millisecond,
			"%s withdraws vpn.address", w)
		require.Eventually(t, func() bool {
			out, _, err := d.VMOf(w).Exec(ctx, "ip", "-o", "link")
			return err == nil && !strings.Contains(out, vpn.Device)
		}, time.Minute, 250*time.Millisecond, "the VPN device leaves %s", w)
	}
	conf := haproxyConfig(t, ctx, d)
	for _, w := range webs {
		require.Contains(t, conf, " "+d.VMOf(w).PublicAddr+":8080 check", "%s at its public address", w)
	}
	after, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 30)
	require.NoError(t, err)
	require.Zero(t, after[""], "the load balancer serves without the VPN: %v", after)
	for _, w := range webs {
		require.Positive(t, after[w], "%s serves through the load balancer at its public address: %v", w, after)
	}
	require.Empty(t, d.Param("ss:abort"), "the run is not aborted")
}

// The VPN switched off and on five times under load: every request through the load balancer
// is answered (0 failures of at least 250). The load balancer moves its backends before the
// overlay closes and is ready again only once HAProxy's old worker, which may still hold the old
// backends, is gone.
func TestVPNOffAndOnUnderLoad(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", [][3]string{{"cnsmo", params.ServicesEnable, `["vpn","lb"]`}}, true)
	require.NoError(t, err)
	webs := []string{"web.1", "web.2", "web.3"}
	server, client := d.VMOf("cnsmo.1"), d.VMOf("web.1")
	overlay := " " + strings.TrimSuffix(deploy.TestSubnet, "0/24")
	switched := func(vpnOn bool) bool {
		for _, w := range webs {
			if (d.Param(w+":"+params.VPNAddress) != "") != vpnOn {
				return false
			}
		}
		conf, err := haproxyConfigE(ctx, d)
		if err != nil {
			return false
		}
		if vpnOn {
			return strings.Count(conf, overlay) == len(webs)
		}
		for _, w := range webs {
			if !strings.Contains(conf, " "+d.VMOf(w).PublicAddr+":8080 check") {
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return switched(true) }, 2*time.Minute, 250*time.Millisecond, "the backends are at their overlay addresses")
	failed, sent := 0, 0
	for cycle := 1; cycle <= 5; cycle++ {
		for _, vpnOn := range []bool{false, true} {
			services := `["lb"]`
			if vpnOn {
				services = `["vpn","lb"]`
			}
			require.NoError(t, d.Mock.SetParam(d.Run.UUID, "cnsmo.1:"+params.ServicesEnable, services))
			phase, done := 0, false
			for i := 0; i < 80 && (!done || phase < 25); i++ { // bounded: 400 requests a phase at most
				batch, err := deploy.Distribution(ctx, client, server.PublicAddr, deploy.WebPort, 5)
				require.NoError(t, err)
				failed, phase = failed+batch[""], phase+5
				done = done || switched(vpnOn)
			}
			sent += phase
			require.True(t, done, "cycle %d: the VPN did not switch (on=%v)", cycle, vpnOn)
			t.Logf("cycle %d, vpn on=%v: %d requests during the switch, %d failed so far", cycle, vpnOn, phase, failed)
		}
	}
	require.GreaterOrEqual(t, sent, 250)
	if failed > 0 {
		t.Log(d.Logs(ctx, "cnsmo.1"))
	}
	require.Zero(t, failed, "requests through the load balancer failed while the VPN was switched: %d of %d", failed, sent)
	require.Empty(t, d.Param("ss:abort"), "the run is not aborted")
}

// A load balancer whose backends all fail their health checks (nothing listens on
// lb.backend.port) never says it is ready: over a 15 s window from HAProxy's start neither
// lb.ready nor the server's net.services.enabled is ever set, and the UI says why.
func TestLoadBalancerWithEveryBackendDownIsNeverReady(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/haproxy:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", [][3]string{{"cnsmo", params.ServicesEnable, `["lb"]`}, {"cnsmo", params.LBBackendPort, "18999"}}, false)
	require.NoError(t, err)
	require.Eventually(t, func() bool { _, err := haproxyConfigE(ctx, d); return err == nil }, 2*time.Minute, 200*time.Millisecond, "HAProxy starts")
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		require.Empty(t, d.Param("cnsmo.1:"+params.LBReady), "lb.ready with every backend down")
		require.Empty(t, d.Param("cnsmo.1:"+params.ServicesEnabled), "net.services.enabled with every backend down")
		time.Sleep(100 * time.Millisecond) // sampling the parameters over the window
	}
	require.Contains(t, d.Param("cnsmo.1:statecustom"), "every backend is down", "the UI says why")
	require.Contains(t, d.Param("cnsmo.1:statecustom"), ":18999")
}
