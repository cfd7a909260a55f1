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
	"github.com/cnsmo/cnsmo/testbed"
)

// rolePID is the pid `cnsmo-role status` reports on vm ("" when no role runs).
func rolePID(ctx context.Context, vm *testbed.VM) string {
	out, _, err := vm.Exec(ctx, "/opt/cnsmo/bin/cnsmo-role", "status", "--state-dir", deploy.StateDir)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(out), "running (pid "), ")")
}

// A role comes back by itself. The simulated VMs run the stand-in for systemd (systemd itself does
// not run in these containers; the unit file is checked by systemd-analyze in the recipes' tests):
// the recipe installs cnsmo-role.service; a role killed with -9 is started again; after a reboot
// (the VM powered off and on, its role.pid naming PID 1, a live process, and its parameters still
// saying net.services.enabled=true) the role runs again without anyone re-running the recipe,
// withdraws the stale flag, re-checks everything and rejoins with the same addresses.
func TestRoleComesBackAfterARebootOrACrash(t *testing.T) {
	requireBin(t)
	testutil.RequireImage(t, "cnsmo/openvpn:latest")
	testutil.RequireImage(t, "cnsmo/fw:latest")
	tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds, Init: true})
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	d, err := start(t, tb, "docker", [][3]string{{"cnsmo", params.ServicesEnable, `["vpn","fw"]`}}, true)
	require.NoError(t, err)
	web := d.VMOf("web.1")
	unit, _, err := web.Exec(ctx, "cat", "/etc/systemd/system/cnsmo-role.service")
	require.NoError(t, err)
	require.Contains(t, unit, "ExecStart=/opt/cnsmo/bin/cnsmo-role agent --state-dir "+deploy.StateDir+"\n")
	addr, addr6 := d.Param("web.1:"+params.VPNAddress), d.Param("web.1:"+params.VPNAddress6)
	require.NotEmpty(t, addr)
	srv := d.Param("cnsmo.1:" + params.VPNAddress)

	// A crash: the unit starts the role again.
	pid := rolePID(ctx, web)
	require.NotEmpty(t, pid)
	_, _, err = web.Exec(ctx, "kill", "-9", pid)
	require.NoError(t, err)
	require.Eventually(t, func() bool { p := rolePID(ctx, web); return p != "" && p != pid }, time.Minute, 250*time.Millisecond,
		"the role runs again after kill -9")
	require.NoError(t, d.WaitParam(ctx, params.ServicesEnabled, "true", "web.1"), "web.1 enabled again after the crash")

	// A reboot.
	// role.pid will name PID 1 after the reboot (a live process that is no cnsmo-role).
	require.NoError(t, web.WriteFile(ctx, deploy.StateDir+"/role.pid", []byte("1\n"), 0o644))
	require.NoError(t, web.Stop(ctx))
	require.Equal(t, "true", d.Param("web.1:"+params.ServicesEnabled), "the parameters still say enabled")
	require.NoError(t, web.Restart(ctx))
	require.Eventually(t, func() bool { p := rolePID(ctx, web); return p != "" && p != "1" }, time.Minute, 250*time.Millisecond,
		"the role runs again after the reboot")
	require.Eventually(t, func() bool {
		log, _, _ := web.Exec(ctx, "cat", deploy.StateDir+"/role.log")
		return strings.Contains(log, "net.services.enabled withdrawn until every service is found ready again")
	}, time.Minute, 250*time.Millisecond, "the stale flag is not trusted")
	require.NoError(t, d.WaitParam(ctx, params.ServicesEnabled, "true", "web.1"), "web.1 enabled again")
	require.Equal(t, addr, d.Param("web.1:"+params.VPNAddress), "same address")
	require.Equal(t, addr6, d.Param("web.1:"+params.VPNAddress6), "same IPv6 address")
	_, _, err = web.Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", srv)
	require.NoError(t, err, "web.1 reaches the server through the overlay")
	rules, _, err := web.Exec(ctx, "iptables", "-S")
	require.NoError(t, err)
	require.Contains(t, rules, "-A INPUT -j CNSMO-INPUT", "the firewall is back")
}
