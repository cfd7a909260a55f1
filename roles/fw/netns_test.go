package fw

import (
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

// nsDriver runs one-shot commands in a network namespace of the test (the exec driver's way,
// inside a namespace instead of a VM). Long-running functions are not needed by the firewall.
type nsDriver struct {
	driver.Driver
	ns string
}

func (d nsDriver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	return testutil.RunCommand(exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", d.ns}, spec.Cmd...)...), stdin)
}

func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(t, err, "%v: %s", args, out)
	return string(out)
}

type pair struct{ cli, srv string }

// twoHosts creates a client and a server namespace joined by a veth, 198.18.250.0/24 and
// 2001:db8:fa::/64, with TCP servers on the server's ports 22, 8080 and 8081.
func twoHosts(t *testing.T) pair {
	testutil.RequireRoot(t)
	testutil.RequireBinary(t, "ip", "iptables-restore", "ip6tables-restore", "socat")
	id := fmt.Sprint(time.Now().UnixNano() % 100000)
	p := pair{cli: "cnsmo-fwc" + id, srv: "cnsmo-fws" + id}
	sh(t, "ip", "netns", "add", p.cli)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.cli).Run() })
	sh(t, "ip", "netns", "add", p.srv)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.srv).Run() })
	sh(t, "ip", "link", "add", "fwc"+id, "netns", p.cli, "type", "veth", "peer", "name", "fws"+id, "netns", p.srv)
	for _, c := range [][]string{
		{p.cli, "ip", "addr", "add", "198.18.250.1/24", "dev", "fwc" + id}, {p.cli, "ip", "addr", "add", "2001:db8:fa::1/64", "dev", "fwc" + id, "nodad"},
		{p.cli, "ip", "link", "set", "fwc" + id, "up"}, {p.cli, "ip", "link", "set", "lo", "up"},
		{p.srv, "ip", "addr", "add", "198.18.250.2/24", "dev", "fws" + id}, {p.srv, "ip", "addr", "add", "2001:db8:fa::2/64", "dev", "fws" + id, "nodad"},
		{p.srv, "ip", "link", "set", "fws" + id, "up"}, {p.srv, "ip", "link", "set", "lo", "up"},
	} {
		sh(t, append([]string{"ip", "netns", "exec"}, c...)...)
	}
	for _, port := range []string{"22", "8080", "8081"} {
		cmd := exec.Command("ip", "netns", "exec", p.srv, "socat", "TCP6-LISTEN:"+port+",fork,reuseaddr", "EXEC:/bin/true")
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	}
	for _, port := range []string{"22", "8080", "8081"} {
		ok := false
		for i := 0; i < 200 && !ok; i++ {
			ok = p.connect("198.18.250.2", port)
		}
		require.True(t, ok, "server port %s never listened", port)
	}
	return p
}

// connect reports whether a TCP connection from the client to addr:port succeeds within 1 s.
func (p pair) connect(addr, port string) bool {
	target := "TCP:" + addr + ":" + port
	if strings.Contains(addr, ":") {
		target = "TCP6:[" + addr + "]:" + port
	}
	return exec.Command("ip", "netns", "exec", p.cli, "socat", "-T1", "/dev/null", target+",connect-timeout=1").Run() == nil
}

// connectRetry is connect tried up to three times, as a client retries its SYN while IPv6
// neighbour discovery runs on a first contact.
func (p pair) connectRetry(addr, port string) bool {
	for i := 0; i < 3; i++ {
		if p.connect(addr, port) {
			return true
		}
	}
	return false
}

func save(t *testing.T, ns string) string {
	return sh(t, "ip", "netns", "exec", ns, "sh", "-c", "iptables-save -t filter | grep -v '^#'; ip6tables-save -t filter | grep -v '^#'")
}

func TestApplyInANamespace(t *testing.T) {
	p := twoHosts(t)
	ctx := context.Background()
	ap := &Applier{Driver: nsDriver{ns: p.srv}}
	before := save(t, p.srv)

	rules, err := ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":"8081","ip_range":"0.0.0.0/0","action":"drop"},
		{"direction":"in","protocol":"tcp","dst_port":"8081","ip_range":"2001:db8::/32","action":"drop"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, rules, Options{}))
	require.True(t, p.connect("198.18.250.2", "8080"))
	require.False(t, p.connect("198.18.250.2", "8081"), "8081 dropped")
	require.True(t, p.connect("2001:db8:fa::2", "8080"))
	require.False(t, p.connect("2001:db8:fa::2", "8081"), "8081 dropped (IPv6)")

	once := save(t, p.srv)
	require.NoError(t, ap.Apply(ctx, rules, Options{}))
	require.Equal(t, once, save(t, p.srv), "the same input twice changes nothing")

	flipped, err := ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":8080,"action":"drop"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, flipped, Options{}))
	require.False(t, p.connect("198.18.250.2", "8080"), "now 8080 is dropped")
	require.True(t, p.connect("198.18.250.2", "8081"), "and 8081 open")

	deny, err := ParseRules(`[{"policy":"denyall"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, deny, Options{}))
	require.True(t, p.connect("198.18.250.2", "22"), "anti-lockout keeps SSH open under denyall")
	require.False(t, p.connect("198.18.250.2", "8080"), "denyall drops the rest")

	require.NoError(t, ap.Teardown(ctx))
	require.Equal(t, before, save(t, p.srv), "teardown leaves the tables exactly as before")
	require.True(t, p.connect("198.18.250.2", "8081"))
}

// fakeParams records the writes of web.1 by key.
type fakeParams struct {
	set map[string]string
}

func (f *fakeParams) Self() string                                { return "web.1" }
func (f *fakeParams) Display(context.Context, string) error       { return nil }
func (f *fakeParams) Set(_ context.Context, _, k, v string) error { f.set[k] = v; return nil }

func TestRoleInvalidRulesApplyNothing(t *testing.T) {
	p := twoHosts(t)
	ctx := context.Background()
	fp := &fakeParams{set: map[string]string{}}
	r := New(role.Env{Params: fp, Driver: nsDriver{ns: p.srv}, Instance: "web.1", Exec: true, Log: zerolog.Nop()})
	run := func(rules string) *roletest.Snapshot {
		return roletest.NewSnapshot("web.1", map[string]string{params.FWRules: rules})
	}
	ready, err := r.Reconcile(ctx, run(`[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`))
	require.NoError(t, err)
	require.True(t, ready)
	require.Equal(t, "true", fp.set[params.FWReady])
	applied := save(t, p.srv)

	_, err = r.Reconcile(ctx, run(`[{"direction":"in","protocol":"tcp","dst_port":"8080","action":"drop"},{"direction":"in","protocol":"tcp","dst_port":"70000","action":"drop"}]`))
	require.True(t, role.IsTerminal(err))
	require.EqualError(t, err, params.FWRules+"[1].dst_port: 70000 is out of range 1-65535")
	require.Equal(t, applied, save(t, p.srv), "nothing of the invalid list was applied; the old rules stay")
	require.True(t, p.connect("198.18.250.2", "8080"))
	require.NoError(t, r.Teardown(ctx))
}

// {"policy":"denyall"} is the default after every rule wherever it stands in the list (as ufw's
// default policy): an accept rule written after it lets its traffic through.
func TestPolicyIsTheDefaultWhereverItStands(t *testing.T) {
	p := twoHosts(t)
	ctx := context.Background()
	ap := &Applier{Driver: nsDriver{ns: p.srv}}
	rules, err := ParseRules(`[{"policy":"denyall"},{"direction":"in","protocol":"tcp","dst_port":"8080","action":"accept"}]`)
	require.NoError(t, err)
	require.NoError(t, ap.Apply(ctx, rules, Options{}))
	require.True(t, p.connect("198.18.250.2", "8080"), "the accept after denyall holds")
	require.True(t, p.connectRetry("2001:db8:fa::2", "8080"), "the accept after denyall holds (IPv6)")
	require.False(t, p.connect("198.18.250.2", "8081"), "the rest is dropped")
	require.NoError(t, ap.Teardown(ctx))
}
