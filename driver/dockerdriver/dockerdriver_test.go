package dockerdriver_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/driver/drivertest"
	"github.com/cnsmo/cnsmo/internal/testutil"
)

const image = "cnsmo/base:bookworm"

func newDriver(t *testing.T, o driver.Owner, opts ...dockerdriver.Option) *dockerdriver.Driver {
	d, err := dockerdriver.New(o, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestSuite(t *testing.T) {
	testutil.RequireDocker(t)
	testutil.RequireImage(t, image)
	drivertest.Run(t, drivertest.Config{
		Image: image,
		New: func(t *testing.T, o driver.Owner) driver.Driver {
			return newDriver(t, o, dockerdriver.WithNetwork("none"))
		},
		Leftovers: func(t *testing.T, o driver.Owner) []string {
			names, err := newDriver(t, o).Owned(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return names
		},
	})
}

// In the testbed a function joins the simulated VM's network namespace (container:<vm>): it
// sees the VM's addresses, not the host's.
func TestFunctionJoinsTheVMNamespace(t *testing.T) {
	testutil.RequireDocker(t)
	testutil.RequireImage(t, image)
	ctx := context.Background()
	vmOwner := driver.Owner{Run: "netns-test", Instance: "vm"}
	vm := newDriver(t, vmOwner, dockerdriver.WithNetwork("none"))
	t.Cleanup(func() { _ = vm.Cleanup(context.Background()) })
	if err := vm.Start(ctx, driver.Spec{Name: "vm", Service: "test", Image: image, CapAdd: []string{"NET_ADMIN"},
		Cmd: []string{"sh", "-c", "ip addr add 198.18.255.77/32 dev lo && exec sleep 300"}}); err != nil {
		t.Fatal(err)
	}
	fn := newDriver(t, driver.Owner{Run: "netns-test", Instance: "fn"}, dockerdriver.WithNetwork("container:"+vm.ContainerName("vm")))
	t.Cleanup(func() { _ = fn.Cleanup(context.Background()) })
	var links string
	for i := 0; i < 100; i++ { // the VM creates its interface right after it starts
		res, err := fn.Run(ctx, driver.Spec{Name: "links", Service: "test", Image: image, Cmd: []string{"ip", "-o", "addr"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		links = string(res.Stdout)
		if strings.Contains(links, "198.18.255.77") {
			return
		}
	}
	t.Fatalf("the function does not see the VM's address; its addresses:\n%s", links)
}
