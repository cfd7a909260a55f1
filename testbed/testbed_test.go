package testbed_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

func ping(ctx context.Context, vm *testbed.VM, addr string) bool {
	argv := []string{"ping", "-n", "-c", "1", "-W", "1", addr}
	if strings.Contains(addr, ":") {
		argv = append(argv[:1], append([]string{"-6"}, argv[1:]...)...)
	}
	_, _, err := vm.Exec(ctx, argv...)
	return err == nil
}

// mineOnly keeps, in the sections other tests change meanwhile (go test runs packages in
// parallel: other testbeds, the firewall's and the VPN's namespaces, the drivers' containers),
// only the lines of this testbed: every host-visible object it makes is named with its prefix
// (containers, the host link; it creates no named namespace, its namespaces are its
// containers'), and the functions in its VMs' namespaces are checked by name. iptables and
// ip6tables are compared whole.
func mineOnly(s hoststate.Snapshot, prefix string) hoststate.Snapshot {
	return s.Keep(prefix, "links", "netns", "containers")
}

func TestTestbed(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	testutil.RequireImage(t, testbed.DefaultImage)
	testutil.RequireImage(t, "cnsmo/base:bookworm")
	testutil.RequireBinary(t, "iptables-save", "ip6tables-save", "ip", "docker")
	testutil.LockHost(t) // no test changes the host's own tables between the two snapshots
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	before, err := hoststate.Take(ctx, hoststate.Host, true)
	require.NoError(t, err)

	bin := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(bin, "hello"), []byte("#!/bin/sh\necho hello from bin\n"), 0o755))
	tb, err := testbed.Create(ctx, testbed.Options{BinDir: bin, Clouds: []testbed.CloudSpec{
		{Name: "cloud-a", VMs: []string{"a1", "a2"}}, {Name: "cloud-b", VMs: []string{"b1"}}}})
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			_ = tb.Close()
		}
	}()
	a1, a2, b1 := tb.VM("a1"), tb.VM("a2"), tb.VM("b1")
	var leftName string // a function container left running in b1's namespace
	require.Len(t, tb.VMs(), 3)
	require.Nil(t, tb.VM("nope"))

	t.Run("identity", func(t *testing.T) {
		for _, vm := range tb.VMs() {
			require.True(t, strings.HasPrefix(vm.PrivateAddr, "198.18."), vm.PrivateAddr)
			require.True(t, strings.HasPrefix(vm.PublicAddr, "198.19."), vm.PublicAddr)
			require.True(t, strings.HasPrefix(vm.PublicAddr6, "2001:db8:"), vm.PublicAddr6)
			require.True(t, strings.HasPrefix(vm.Container, tb.Prefix()), vm.Container)
			out, _, err := vm.Exec(ctx, "hostname")
			require.NoError(t, err)
			require.Equal(t, vm.Name, strings.TrimSpace(out))
			out, _, err = vm.Exec(ctx, "sh", "-c", `echo $CNSMO_DOCKER_NETWORK; hello; test -c /dev/net/tun && test -S /var/run/docker.sock && echo devices; ip tuntap add dev x0 mode tun && ip link del x0 && echo netadmin`)
			require.NoError(t, err)
			require.Equal(t, "container:"+vm.Container+"\nhello from bin\ndevices\nnetadmin\n", out)
			_, _, err = vm.Exec(ctx, "touch", "/opt/cnsmo/bin/x")
			require.Error(t, err, "the bin dir is read-only")
			info, err := tb.Docker().ContainerInspect(ctx, vm.Container)
			require.NoError(t, err)
			require.Equal(t, vm.Name, info.Config.Labels[testbed.LabelVM])
			require.Equal(t, vm.Cloud, info.Config.Labels[testbed.LabelCloud])
			require.Equal(t, "none", string(info.HostConfig.NetworkMode))
		}
	})

	t.Run("every VM reaches the host", func(t *testing.T) {
		ln, err := net.Listen("tcp", net.JoinHostPort(tb.HostAddr(), "0"))
		require.NoError(t, err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			_, _ = w.Write([]byte(host))
		}), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		for _, vm := range tb.VMs() {
			out, errOut, err := vm.Exec(ctx, "curl", "-sS", "--max-time", "5", "http://"+ln.Addr().String()+"/")
			require.NoError(t, err, errOut)
			require.Equal(t, vm.PublicAddr, out, "the host sees the VM's public address (1:1 NAT)")
		}
	})

	t.Run("addressing", func(t *testing.T) {
		require.True(t, ping(ctx, a1, a2.PrivateAddr), "same cloud, private address")
		require.True(t, ping(ctx, a1, b1.PublicAddr), "other cloud, public address")
		require.True(t, ping(ctx, b1, a2.PublicAddr), "other cloud, public address")
		require.True(t, ping(ctx, a1, b1.PublicAddr6), "other cloud, public IPv6")
		require.True(t, ping(ctx, b1, a1.PublicAddr6), "other cloud, public IPv6")
		require.False(t, ping(ctx, a1, b1.PrivateAddr), "other cloud, private address: unroutable")
		require.False(t, ping(ctx, b1, a1.PrivateAddr), "other cloud, private address: unroutable")

		// Who a server on a2 sees: the private address from its cloud, the public one otherwise
		// (through the router, hairpin included).
		p, err := a2.Start(ctx, nil, "socat", "TCP-LISTEN:7000,reuseaddr,fork", "SYSTEM:echo $SOCAT_PEERADDR")
		require.NoError(t, err)
		defer func() { _ = p.Signal(syscall.SIGKILL) }()
		peer := func(from *testbed.VM, to string) string {
			var out string
			require.Eventually(t, func() bool {
				o, _, err := from.Exec(ctx, "socat", "-T3", "-", "TCP:"+to+":7000")
				out = strings.TrimSpace(o)
				return err == nil && out != ""
			}, 10*time.Second, 200*time.Millisecond, "%s answers", to)
			return out
		}
		require.Equal(t, a1.PrivateAddr, peer(a1, a2.PrivateAddr))
		require.Equal(t, a1.PublicAddr, peer(a1, a2.PublicAddr), "hairpin through the router")
		require.Equal(t, b1.PublicAddr, peer(b1, a2.PublicAddr))
	})

	t.Run("exec", func(t *testing.T) {
		out, errOut, err := a1.Exec(ctx, "sh", "-c", "echo out; echo err >&2; exit 3")
		var ee *testbed.ExitError
		require.ErrorAs(t, err, &ee)
		require.Equal(t, 3, ee.Code)
		require.Equal(t, "out\n", out)
		require.Equal(t, "err\n", errOut)
		require.Contains(t, err.Error(), "exit 3")

		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err = a1.Exec(short, "sleep", "97")
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Less(t, time.Since(start), 10*time.Second)
		require.Eventually(t, func() bool {
			_, _, err := a1.Exec(ctx, "pgrep", "-f", "sleep 97")
			return err != nil
		}, 10*time.Second, 200*time.Millisecond, "a cancelled command is killed")
	})

	t.Run("process", func(t *testing.T) {
		p, err := a1.Start(ctx, []string{"GREETING=hi"}, "sh", "-c", `trap 'echo got TERM; exit 7' TERM; echo $GREETING; while :; do sleep 0.1; done`)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return strings.Contains(p.Output(), "hi") }, 10*time.Second, 200*time.Millisecond, p.Output())
		require.NoError(t, p.Signal(syscall.SIGTERM))
		var ee *testbed.ExitError
		require.ErrorAs(t, p.Wait(ctx), &ee)
		require.Equal(t, 7, ee.Code)
		require.Equal(t, "hi\ngot TERM\n", p.Output())
		require.Error(t, p.Signal(syscall.SIGTERM), "it has exited")

		q, err := a1.Start(ctx, nil, "true")
		require.NoError(t, err)
		require.NoError(t, q.Wait(ctx))
	})

	t.Run("write file", func(t *testing.T) {
		require.NoError(t, a1.WriteFile(ctx, "/etc/cnsmo-test/sub/x.conf", []byte("secret\n"), 0o600))
		out, _, err := a1.Exec(ctx, "stat", "-c", "%a %U %n", "/etc/cnsmo-test/sub/x.conf", "/etc", "/tmp")
		require.NoError(t, err)
		require.Equal(t, "600 root /etc/cnsmo-test/sub/x.conf\n755 root /etc\n1777 root /tmp\n", out)
		require.NoError(t, a1.WriteFile(ctx, "/tmp/y", []byte("y"), 0o644))
		out, _, err = a1.Exec(ctx, "stat", "-c", "%a", "/tmp")
		require.NoError(t, err)
		require.Equal(t, "1777\n", out, "existing directories keep their mode")
		out, _, err = a1.Exec(ctx, "cat", "/etc/cnsmo-test/sub/x.conf")
		require.NoError(t, err)
		require.Equal(t, "secret\n", out)
	})

	t.Run("cut and reconnect", func(t *testing.T) {
		require.NoError(t, b1.Cut(ctx))
		require.False(t, ping(ctx, a1, b1.PublicAddr), "cut off")
		require.False(t, ping(ctx, b1, tb.HostAddr()), "cut off")
		require.NoError(t, b1.Reconnect(ctx))
		require.Eventually(t, func() bool { return ping(ctx, a1, b1.PublicAddr) }, 10*time.Second, 200*time.Millisecond, "reconnected")
	})

	t.Run("function container in a VM's namespace", func(t *testing.T) {
		d, err := dockerdriver.New(driver.Owner{Run: "tb-test", Instance: "b1"}, dockerdriver.WithNetwork("container:"+b1.Container))
		require.NoError(t, err)
		defer d.Close()
		res, err := d.Run(ctx, driver.Spec{Name: "addr", Image: "cnsmo/base:bookworm", Cmd: []string{"ip", "-o", "addr"}}, nil)
		require.NoError(t, err)
		require.Contains(t, string(res.Stdout), " "+b1.PrivateAddr+"/24 ")
		require.Contains(t, string(res.Stdout), " "+b1.PublicAddr6+"/64 ")
		// Left running on purpose: teardown must remove it.
		require.NoError(t, d.Start(ctx, driver.Spec{Name: "left", Image: "cnsmo/base:bookworm", Cmd: []string{"sleep", "300"}}))
		leftName = d.ContainerName("left")
	})

	t.Run("stop and restart", func(t *testing.T) {
		p, err := a2.Start(ctx, nil, "sleep", "300")
		require.NoError(t, err)
		require.NoError(t, a2.Stop(ctx))
		require.Error(t, p.Wait(ctx), "its processes died with it")
		require.False(t, ping(ctx, a1, a2.PrivateAddr), "stopped")
		require.NoError(t, a2.Restart(ctx))
		out, _, err := a2.Exec(ctx, "ip", "-o", "addr", "show", "eth0")
		require.NoError(t, err)
		require.Contains(t, out, " "+a2.PrivateAddr+"/24 ")
		require.Contains(t, out, " "+a2.PublicAddr6+"/64 ")
		require.Eventually(t, func() bool { return ping(ctx, b1, a2.PublicAddr) }, 10*time.Second, 200*time.Millisecond, "public address again")
		require.Eventually(t, func() bool { return ping(ctx, a1, a2.PrivateAddr) }, 10*time.Second, 200*time.Millisecond, "private address again")
		out, _, err = a2.Exec(ctx, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", "http://"+tb.HostAddr()+":9/")
		require.Error(t, err, "nothing listens there, but the host answers (connection refused, not a timeout): %s", out)
		var ee *testbed.ExitError
		require.ErrorAs(t, err, &ee)
		require.Equal(t, 7, ee.Code, "curl: couldn't connect (refused), not 28 (timeout)")
	})

	// Teardown leaves the host as it was: iptables and ip6tables exactly, links, namespaces and
	// containers too (except other tests' cnsmo objects), and the function left in b1 is gone.
	require.NoError(t, tb.Close())
	closed = true
	require.NoError(t, tb.Close(), "a second Close is harmless")
	after, err := hoststate.Take(ctx, hoststate.Host, true)
	require.NoError(t, err)
	require.Empty(t, hoststate.Diff(mineOnly(before, tb.Prefix()), mineOnly(after, tb.Prefix())))
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	require.NoError(t, err)
	defer cli.Close()
	require.NotEmpty(t, leftName)
	_, err = cli.ContainerInspect(ctx, leftName)
	require.True(t, errdefs.IsNotFound(err), "function container %s in b1's namespace removed: %v", leftName, err)
}
