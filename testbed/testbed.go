// Package testbed simulates clouds on one machine for the end-to-end tests, the demo and the
// benchmarks. A VM is a container of cnsmo/vm with no network of Docker's; the testbed plumbs
// veths with netlink. Each cloud has a router container (a bridge for its VMs' private subnet and
// 1:1 NAT to public addresses), and an "internet" router container routes between the clouds'
// public sides and the host, so VMs in different clouds reach each other only through public
// addresses and nothing depends on the host's FORWARD chain. Every address is in 198.18.0.0/15.
//
// Slot s (0-15, taken with a lock file so concurrent testbeds never collide):
//
//	host <-> internet      198.19.16s.0/30 (host .1 = HostAddr)
//	internet <-> cloud c   198.19.16s.4(c+1)/30
//	cloud c private        198.18.(16s+c).0/24 (router .1, VM i .(10+i))
//	cloud c public         198.19.(16s+1+c).0/24 (VM i .(10+i))
package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/cnsmo/cnsmo/internal/testutil"
)

// Label marks everything of a testbed slot.
const Label = "cnsmo.testbed"

// LockDir holds the slot locks.
var LockDir = "/run/cnsmo-testbed"

// MaxSlots is how many testbeds may run at once.
const MaxSlots = 15

// CloudSpec is one simulated cloud and the names of its VMs.
type CloudSpec struct {
	Name string
	VMs  []string
}

// Options describe a testbed.
type Options struct {
	Clouds []CloudSpec
	Image  string // VM image, default cnsmo/vm:latest
	BinDir string // mounted read-only at /opt/cnsmo/bin, default $CNSMO_BIN
}

// Testbed is a running set of simulated clouds.
type Testbed struct {
	cli    *client.Client
	slot   int
	lock   *os.File
	opts   Options
	vms    []*VM
	byName map[string]*VM
	inet   string // internet router container
	hostIf string
}

// VM is one simulated VM.
type VM struct {
	Name, Cloud, Container  string
	PrivateAddr, PublicAddr string
	tb                      *Testbed
	cloud, index            int
	routerIf                string // its veth end inside the cloud router
}

func (tb *Testbed) name(parts ...string) string {
	n := fmt.Sprintf("cnsmo-tb%d", tb.slot)
	for _, p := range parts {
		n += "-" + p
	}
	return n
}

// HostAddr is the host's address on the simulated internet, reachable from every VM.
func (tb *Testbed) HostAddr() string { return fmt.Sprintf("198.19.%d.1", 16*tb.slot) }

// Slot is the testbed's slot number.
func (tb *Testbed) Slot() int { return tb.slot }

// VM returns the VM called name, or nil.
func (tb *Testbed) VM(name string) *VM { return tb.byName[name] }

// VMs returns every VM in creation order.
func (tb *Testbed) VMs() []*VM { return tb.vms }

// New creates a testbed for a test (root and Docker required; skips otherwise) and removes it
// when the test ends, passed or failed.
func New(t testing.TB, opts Options) *Testbed {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	img := opts.Image
	if img == "" {
		img = "cnsmo/vm:latest"
	}
	testutil.RequireImage(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tb, err := Create(ctx, opts)
	if err != nil {
		t.Fatalf("testbed: %v", err)
	}
	t.Cleanup(func() {
		if err := tb.Close(); err != nil {
			t.Errorf("testbed teardown: %v", err)
		}
	})
	return tb
}

// Create builds a testbed (the demo uses it; tests use New). Close removes it.
func Create(ctx context.Context, opts Options) (tb *Testbed, err error) {
	if opts.Image == "" {
		opts.Image = "cnsmo/vm:latest"
	}
	if opts.BinDir == "" {
		opts.BinDir = os.Getenv("CNSMO_BIN")
	}
	if len(opts.Clouds) == 0 || len(opts.Clouds) > 3 {
		return nil, fmt.Errorf("testbed: %d clouds: 1 to 3 are supported", len(opts.Clouds))
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	tb = &Testbed{cli: cli, opts: opts, byName: map[string]*VM{}}
	if err := tb.takeSlot(); err != nil {
		cli.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = tb.Close()
		}
	}()
	if err := tb.removeSlot(ctx); err != nil { // leftovers of a killed run of this slot
		return nil, err
	}
	seen := map[string]bool{}
	for c, cs := range opts.Clouds {
		if len(cs.VMs) > 40 {
			return nil, fmt.Errorf("testbed: cloud %s: at most 40 VMs", cs.Name)
		}
		for i, n := range cs.VMs {
			if seen[n] || n == "" {
				return nil, fmt.Errorf("testbed: VM name %q is empty or used twice", n)
			}
			seen[n] = true
			vm := &VM{Name: n, Cloud: cs.Name, tb: tb, cloud: c, index: i, Container: tb.name(n),
				PrivateAddr: fmt.Sprintf("198.18.%d.%d", 16*tb.slot+c, 10+i),
				PublicAddr:  fmt.Sprintf("198.19.%d.%d", 16*tb.slot+1+c, 10+i),
				routerIf:    fmt.Sprintf("tb%dc%dv%d", tb.slot, c, i)}
			tb.vms = append(tb.vms, vm)
			tb.byName[n] = vm
		}
	}
	if err := tb.build(ctx); err != nil {
		return nil, err
	}
	return tb, nil
}

func (tb *Testbed) takeSlot() error {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return fmt.Errorf("testbed: %w", err)
	}
	for s := 0; s < MaxSlots; s++ {
		f, err := os.OpenFile(filepath.Join(LockDir, "slot-"+strconv.Itoa(s)+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return fmt.Errorf("testbed: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		tb.slot, tb.lock = s, f
		tb.hostIf = fmt.Sprintf("cnsmotb%dh", s)
		return nil
	}
	return fmt.Errorf("testbed: all %d slots are in use", MaxSlots)
}

// Close removes every container (VMs, routers, and the functions started in the VMs' network
// namespaces), the host veth and its route, and releases the slot.
func (tb *Testbed) Close() error {
	if tb.cli == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := tb.removeSlot(ctx)
	tb.cli.Close()
	tb.cli = nil
	if tb.lock != nil {
		tb.lock.Close()
	}
	return err
}

// removeSlot removes what this slot has on the host, whoever created it.
func (tb *Testbed) removeSlot(ctx context.Context) error {
	return RemoveSlot(ctx, tb.cli, tb.slot)
}

// RemoveSlot removes the containers and host link of a slot (the clean command uses it too).
func RemoveSlot(ctx context.Context, cli *client.Client, slot int) error {
	var errs []error
	mine, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", Label+"="+strconv.Itoa(slot)))})
	if err != nil {
		return fmt.Errorf("testbed: list: %w", err)
	}
	ids := map[string]bool{}
	for _, c := range mine {
		ids[c.ID] = true
		for _, n := range c.Names {
			ids[n[1:]] = true
		}
	}
	all, err := cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return fmt.Errorf("testbed: list: %w", err)
	}
	// Functions in a VM's namespace first (NetworkMode container:<vm>), then the VMs and routers.
	for _, c := range all {
		if ids[c.ID] {
			continue
		}
		if info, err := cli.ContainerInspect(ctx, c.ID); err == nil && info.HostConfig != nil {
			nm := string(info.HostConfig.NetworkMode)
			if len(nm) > 10 && nm[:10] == "container:" && ids[nm[10:]] {
				if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
					errs = append(errs, err)
				}
			}
		}
	}
	for _, c := range mine {
		if err := cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	if l, err := netlink.LinkByName(fmt.Sprintf("cnsmotb%dh", slot)); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("testbed: delete host link: %w", err))
		}
	}
	return errors.Join(errs...)
}
