package e2e

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/roles/fw"
)

// hostDriver runs the firewall's commands in the host's own namespaces (the exec driver's way on
// a real VM).
type hostDriver struct{ driver.Driver }

func (hostDriver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	return testutil.RunCommand(exec.CommandContext(ctx, spec.Cmd[0], spec.Cmd[1:]...), stdin)
}

// touched is what cnsmo may change of the host's filter tables: the chains it jumps from, and
// whether any chain of its own exists.
func touched(t *testing.T) string {
	var b strings.Builder
	for _, bin := range []string{"iptables", "ip6tables"} {
		for _, c := range []string{"INPUT", "OUTPUT", "DOCKER-USER"} {
			out, _ := exec.Command(bin, "-w", "-S", c).CombinedOutput() // DOCKER-USER may not exist
			b.WriteString(bin + " " + c + ":\n" + string(out))
		}
		all := sh(t, bin, "-w", "-S")
		b.WriteString(fmt.Sprintf("%s cnsmo chains: %v\n", bin, strings.Contains(all, "CNSMO")))
	}
	return b.String()
}

// sh runs a command on the host and returns its output.
func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%v: %s", args, out)
	return string(out)
}

// Ports that Docker publishes for a containerised application pass through FORWARD, not INPUT:
// an `in` rule holds for them too (Docker's DOCKER-USER chain, matched on the port the user wrote,
// before Docker's DNAT), and teardown leaves the host's chains exactly as before. This runs on the
// host's engine and namespace (the testbed's VMs have no DOCKER-USER): a client namespace reaches a
// container published on a 198.18 address of the host; the rules only drop port 18081. It lives
// in this package, whose tests run one at a time, so that no test comparing the host's tables
// before and after a run sees its chains.
func TestInRulesHoldForDockerPublishedPorts(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "ip", "iptables", "ip6tables", "socat", "docker")
	testutil.RequireImage(t, "cnsmo/vm:latest")
	testutil.LockHost(t) // it changes the host's tables: never beside a test comparing them
	if exec.Command("iptables", "-w", "-S", "DOCKER-USER").Run() != nil {
		t.Skip("skipping: the host's Docker engine made no DOCKER-USER chain")
	}
	id := fmt.Sprint(time.Now().UnixNano() % 100000)
	ns, hostIf := "cnsmo-fwd"+id, "fwdh"+id
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", "fwdc"+id, "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	sh(t, "ip", "addr", "add", "198.18.251.1/24", "dev", hostIf)
	sh(t, "ip", "link", "set", hostIf, "up")
	for _, c := range [][]string{
		{"ip", "addr", "add", "198.18.251.2/24", "dev", "fwdc" + id}, {"ip", "link", "set", "fwdc" + id, "up"},
		{"ip", "link", "set", "lo", "up"}, {"ip", "route", "add", "default", "via", "198.18.251.1"},
	} {
		sh(t, append([]string{"ip", "netns", "exec", ns}, c...)...)
	}
	network, ctr := "cnsmo-fwtest-"+id, "cnsmo-fwtest-"+id
	sh(t, "docker", "network", "create", "--subnet", "198.18.252.0/24", "--label", "cnsmo.fwtest=1", network)
	t.Cleanup(func() { _ = exec.Command("docker", "network", "rm", network).Run() })
	sh(t, "docker", "run", "-d", "--name", ctr, "--network", network, "--label", "cnsmo.fwtest=1",
		"-p", "198.18.251.1:18080:80", "-p", "198.18.251.1:18081:81", "cnsmo/vm:latest",
		"sh", "-c", "socat TCP-LISTEN:80,fork,reuseaddr EXEC:/bin/true & socat TCP-LISTEN:81,fork,reuseaddr EXEC:/bin/true & wait")
	t.Cleanup(func() { _ = exec.Command("docker", "rm", "-f", ctr).Run() })
	connect := func(port string) bool {
		return exec.Command("ip", "netns", "exec", ns, "socat", "-T1", "/dev/null", "TCP:198.18.251.1:"+port+",connect-timeout=1").Run() == nil
	}
	for _, port := range []string{"18080", "18081"} {
		ok := false
		for i := 0; i < 100 && !ok; i++ { // bounded: the container's listeners come up
			ok = connect(port)
		}
		require.True(t, ok, "published port %s never answered", port)
	}

	before := touched(t)
	ctx := context.Background()
	ap := &fw.Applier{Driver: hostDriver{}}
	rules, err := fw.ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":"18081","action":"drop"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, rules, fw.Options{}))
	t.Cleanup(func() { _ = ap.Teardown(context.Background()) })
	require.False(t, connect("18081"), "the in rule holds for the published port")
	require.True(t, connect("18080"), "other published ports stay open")
	drift, err := ap.Check(ctx, rules, fw.Options{})
	require.NoError(t, err)
	require.Empty(t, drift)

	// Every shape of in rule reads back as rendered (Apply verifies it); none of these ports is used.
	shapes, err := fw.ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":"18081","action":"drop"},
		{"direction":"in","protocol":"tcp","dst_port":"18082:18083","ip_range":"198.18.0.0/15","action":"accept"},
		{"direction":"in","protocol":"udp","dst_port":"18084","ip_range":"198.18.251.1/32","dst_src":"dst","action":"reject"},
		{"direction":"in","protocol":"tcp","src_port":"1:2","dst_port":"18085","action":"drop"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, shapes, fw.Options{}))
	require.False(t, connect("18081"))
	require.True(t, connect("18080"))

	require.NoError(t, ap.Teardown(ctx))
	require.Equal(t, before, touched(t), "the host's chains are exactly as before")
	require.True(t, connect("18081"))
}
