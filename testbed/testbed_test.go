package testbed_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

func reach(ctx context.Context, vm *testbed.VM, addr string) bool {
	_, _, err := vm.Exec(ctx, "ping", "-n", "-c", "1", "-W", "1", addr)
	return err == nil
}

// reachSoon allows a link that just came up a few pings (neighbour discovery, carrier).
func reachSoon(ctx context.Context, vm *testbed.VM, addr string) bool {
	for i := 0; i < 5; i++ {
		if reach(ctx, vm, addr) {
			return true
		}
	}
	return false
}

func TestThreeVMsInTwoClouds(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	testutil.RequireImage(t, "cnsmo/vm:latest")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before, err := hoststate.Take(ctx, hoststate.Host, true)
	require.NoError(t, err)

	tb, err := testbed.Create(ctx, testbed.Options{Clouds: []testbed.CloudSpec{
		{Name: "cloud-a", VMs: []string{"a1", "a2"}}, {Name: "cloud-b", VMs: []string{"b1"}}}})
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			_ = tb.Close()
		}
	}()
	a1, a2, b1 := tb.VM("a1"), tb.VM("a2"), tb.VM("b1")
	for _, vm := range tb.VMs() {
		require.True(t, strings.HasPrefix(vm.PrivateAddr, "198.18."), vm.PrivateAddr)
		require.True(t, strings.HasPrefix(vm.PublicAddr, "198.19."), vm.PublicAddr)
		out, _, err := vm.Exec(ctx, "hostname")
		require.NoError(t, err)
		require.Equal(t, vm.Name, strings.TrimSpace(out))
	}

	// Every VM reaches a server on the host's testbed address (where mocknuvla listens).
	ln, err := net.Listen("tcp", net.JoinHostPort(tb.HostAddr(), "0"))
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		w.Write([]byte(host)) //nolint:errcheck
	})}
	go srv.Serve(ln) //nolint:errcheck
	defer srv.Close()
	for _, vm := range tb.VMs() {
		out, errOut, err := vm.Exec(ctx, "curl", "-sS", "--max-time", "3", "http://"+ln.Addr().String()+"/")
		require.NoError(t, err, errOut)
		require.Equal(t, vm.PublicAddr, out, "the host sees the VM's public address (1:1 NAT)")
	}

	require.True(t, reach(ctx, a1, a2.PrivateAddr), "same cloud, private address")
	require.True(t, reach(ctx, a1, b1.PublicAddr), "other cloud, public address")
	require.True(t, reach(ctx, b1, a2.PublicAddr), "other cloud, public address")
	require.False(t, reach(ctx, a1, b1.PrivateAddr), "other cloud, private address: unroutable")
	require.False(t, reach(ctx, b1, a1.PrivateAddr), "other cloud, private address: unroutable")

	require.NoError(t, b1.Cut(ctx))
	require.False(t, reach(ctx, a1, b1.PublicAddr), "cut off")
	require.NoError(t, b1.Reconnect(ctx))
	require.True(t, reachSoon(ctx, a1, b1.PublicAddr), "reconnected")

	require.NoError(t, a2.Stop(ctx))
	gone := false
	for i := 0; i < 10 && !gone; i++ { // the stopped VM's namespace goes away with its last process
		gone = !reach(ctx, a1, a2.PrivateAddr)
	}
	require.True(t, gone, "stopped")
	require.NoError(t, a2.Restart(ctx))
	require.True(t, reachSoon(ctx, b1, a2.PublicAddr), "restarted with the same addresses")

	// The Docker driver puts a function in the VM's namespace: it sees the VM's address.
	d, err := dockerdriver.New(driver.Owner{Run: "tb-test", Instance: "b1"}, dockerdriver.WithNetwork("container:"+b1.Container))
	require.NoError(t, err)
	defer d.Close()
	res, err := d.Run(ctx, driver.Spec{Name: "addr", Image: "cnsmo/base:bookworm", Cmd: []string{"ip", "-o", "addr"}}, nil)
	require.NoError(t, err)
	require.Contains(t, string(res.Stdout), b1.PrivateAddr)
	require.NoError(t, d.Start(ctx, driver.Spec{Name: "left", Image: "cnsmo/base:bookworm", Cmd: []string{"sleep", "300"}}))

	// Teardown leaves the host as it was (the function left running in b1 included).
	require.NoError(t, tb.Close())
	closed = true
	after, err := hoststate.Take(ctx, hoststate.Host, true)
	require.NoError(t, err)
	// Other packages' testbeds may run meanwhile: compare the host's rules, and the links and
	// containers of this testbed's slot.
	mine := fmt.Sprintf("tb%d", tb.Slot())
	require.Empty(t, hoststate.Diff(before.Keep(mine, "links", "containers"), after.Keep(mine, "links", "containers")))
}
