// Package testbed simulates clouds on one machine for the end-to-end tests, the demo and the
// benchmarks.
//
// A VM is a container of cnsmo/vm (network mode none, hostname = VM name, NET_ADMIN, /dev/net/tun,
// the Docker socket and the build's bin dir mounted) whose network the testbed plumbs itself with
// netlink from this process. Each cloud has a router (a container of the same image holding only a
// network namespace): a bridge for its VMs' private subnet, 1:1 NAT between each VM's private and
// public address, and an uplink to the "internet" router (another such container), which routes
// between the clouds' public sides and the host. So VMs of one cloud talk over their private
// addresses, VMs of different clouds only through public ones, the host reaches every public
// address and every VM reaches HostAddr, and all forwarding and NAT happen inside namespaces of
// our own: nothing depends on, or touches, the host's iptables (Docker sets its FORWARD policy to
// DROP). Every VM also gets a routed public IPv6 address (no NAT, as clouds give them).
//
// Addresses of slot s (0 to MaxSlots-1; a lock file per slot keeps concurrent testbeds apart):
//
//	host <-> internet      198.19.16s.0/30        host .1 (HostAddr), internet .2
//	internet <-> cloud c   198.19.16s.4(c+1)/30   internet +1, router +2
//	cloud c private        198.18.(16s+c).0/24    router .1, VM i .(10+i)
//	cloud c public         198.19.(16s+1+c).0/24  VM i .(10+i)
//	cloud c public IPv6    2001:db8:s:(c+1)::/64  router ::1, VM i ::(10+i)
//	internet <-> cloud c   2001:db8:s:f(c)::/64   internet ::1, router ::2
//
// Names: containers cnsmo-tb<s>-<vm>, cnsmo-tb<s>-internet, cnsmo-tb<s>-router-<c>; the host's
// only link is cnsmo-tb<s>-h. Everything is labelled cnsmo.testbed=<s>, so teardown (Close, the
// test's cleanup, `cnsmo-testbed clean`) finds it even after a crash, together with the function
// containers the code under test started in a VM's network namespace.
package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"

	"github.com/cnsmo/cnsmo/internal/testutil"
)

// Labels on every container of a testbed.
const (
	Label      = "cnsmo.testbed"      // slot number
	LabelRole  = "cnsmo.testbed.role" // vm, router or internet
	LabelVM    = "cnsmo.vm"           // the VM's name (VMs only)
	LabelCloud = "cnsmo.cloud"        // the cloud's name (VMs and routers)
)

// DefaultImage is the VM image.
const DefaultImage = "cnsmo/vm:latest"

// LockDir holds the slot locks.
var LockDir = "/run/cnsmo-testbed"

// MaxSlots is how many testbeds may exist at once on a host.
const MaxSlots = 16

// Limits of the addressing plan.
const (
	MaxClouds      = 8
	MaxVMsPerCloud = 100
)

// CloudSpec is one simulated cloud and the names of its VMs.
type CloudSpec struct {
	Name string
	VMs  []string
}

// Options describe a testbed.
type Options struct {
	Clouds []CloudSpec
	Image  string // VM image, default cnsmo/vm:latest
	BinDir string // mounted read-only at /opt/cnsmo/bin in every VM, default $CNSMO_BIN (none if empty)
	// Init runs a stand-in for systemd as the VMs' PID 1 (see initScript): units the recipes
	// enable start at boot and again after a crash. Without it PID 1 is `sleep infinity`.
	Init bool
}

var (
	nameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,39}$`)
	routerRE = regexp.MustCompile(`^router-\d+$`)
)

func (o *Options) validate() error {
	if len(o.Clouds) == 0 || len(o.Clouds) > MaxClouds {
		return fmt.Errorf("testbed: %d clouds: 1 to %d are supported", len(o.Clouds), MaxClouds)
	}
	seen := map[string]bool{}
	clouds := map[string]bool{}
	for _, cs := range o.Clouds {
		if cs.Name == "" || clouds[cs.Name] {
			return fmt.Errorf("testbed: cloud name %q is empty or used twice", cs.Name)
		}
		clouds[cs.Name] = true
		if len(cs.VMs) > MaxVMsPerCloud {
			return fmt.Errorf("testbed: cloud %s: %d VMs, at most %d", cs.Name, len(cs.VMs), MaxVMsPerCloud)
		}
		for _, n := range cs.VMs {
			switch {
			case !nameRE.MatchString(n):
				return fmt.Errorf("testbed: cloud %s: VM name %q: want lower-case letters, digits and '-', at most 40", cs.Name, n)
			case seen[n]:
				return fmt.Errorf("testbed: VM name %q is used twice", n)
			case n == "internet" || n == "h" || routerRE.MatchString(n):
				return fmt.Errorf("testbed: VM name %q is reserved for the testbed's routers", n)
			}
			seen[n] = true
		}
	}
	return nil
}

// Testbed is a running set of simulated clouds.
type Testbed struct {
	cli    *client.Client
	slot   int
	lock   *os.File
	opts   Options
	vms    []*VM
	byName map[string]*VM

	closeOnce sync.Once
	closeErr  error
}

// VM is one simulated VM.
type VM struct {
	Name, Cloud string
	Container   string // its container's name: functions join its network as container:<Container>
	PrivateAddr string // on its cloud's private subnet (reachable from the same cloud only)
	PublicAddr  string // 1:1 NAT on its cloud's router (reachable from everywhere)
	PublicAddr6 string // routed IPv6 address on the VM itself (reachable from every VM)

	tb           *Testbed
	cloud, index int
}

// prefix is the start of every name of slot s.
func prefix(slot int) string { return fmt.Sprintf("cnsmo-tb%d-", slot) }

// Prefix is the start of every container and host link name of this testbed.
func (tb *Testbed) Prefix() string { return prefix(tb.slot) }

func (tb *Testbed) name(s string) string { return prefix(tb.slot) + s }

func hostLink(slot int) string { return prefix(slot) + "h" }

// HostAddr is the host's IPv4 address on the simulated internet, reachable from every VM: listen
// there (mocknuvla, test servers).
func (tb *Testbed) HostAddr() string { return fmt.Sprintf("198.19.%d.1", 16*tb.slot) }

// Slot is the testbed's slot number (its label value).
func (tb *Testbed) Slot() int { return tb.slot }

// VM returns the VM called name, or nil.
func (tb *Testbed) VM(name string) *VM { return tb.byName[name] }

// Internet is the internet router between the clouds, as a VM to run tools in (tcpdump): it has
// one link per cloud (cloud0, cloud1, …) and one to the host.
func (tb *Testbed) Internet() *VM { return &VM{Name: "internet", Container: tb.inet(), tb: tb} }

// VMs returns every VM in the order of the options.
func (tb *Testbed) VMs() []*VM { return append([]*VM(nil), tb.vms...) }

// Docker is the testbed's Docker client (for tests that inspect containers).
func (tb *Testbed) Docker() *client.Client { return tb.cli }

// New creates a testbed for a test (root, Docker and the image required: it skips, or fails under
// CNSMO_REQUIRE_ALL=1, otherwise) and removes it when the test ends, passed or failed.
func New(t testing.TB, opts Options) *Testbed {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	img := opts.Image
	if img == "" {
		img = DefaultImage
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

// Create builds a testbed (the demo and the CLI use it; tests use New). Close removes it; on
// error Create removes what it made.
func Create(ctx context.Context, opts Options) (tb *Testbed, err error) {
	if opts.Image == "" {
		opts.Image = DefaultImage
	}
	if opts.BinDir == "" {
		opts.BinDir = os.Getenv("CNSMO_BIN")
	}
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if opts.BinDir != "" {
		abs, err := filepath.Abs(opts.BinDir)
		if err != nil {
			return nil, fmt.Errorf("testbed: bin dir: %w", err)
		}
		opts.BinDir = abs
	}
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("testbed: docker client: %w", err)
	}
	tb = &Testbed{cli: cli, opts: opts, byName: map[string]*VM{}}
	if tb.slot, tb.lock, err = takeSlot(); err != nil {
		cli.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := tb.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	// Leftovers of a killed run that held this slot.
	if err := RemoveSlot(ctx, cli, tb.slot); err != nil {
		return nil, err
	}
	s := tb.slot
	for c, cs := range opts.Clouds {
		for i, n := range cs.VMs {
			vm := &VM{Name: n, Cloud: cs.Name, tb: tb, cloud: c, index: i, Container: tb.name(n),
				PrivateAddr: fmt.Sprintf("198.18.%d.%d", 16*s+c, 10+i),
				PublicAddr:  fmt.Sprintf("198.19.%d.%d", 16*s+1+c, 10+i),
				PublicAddr6: fmt.Sprintf("2001:db8:%d:%d::%d", s, c+1, 10+i)}
			tb.vms = append(tb.vms, vm)
			tb.byName[n] = vm
		}
	}
	if err := tb.build(ctx); err != nil {
		return nil, err
	}
	return tb, nil
}

// takeSlot locks the first free slot. The lock is held (flock) as long as the file stays open, so
// a crashed process frees its slot, and its leftovers are removed by the next user of the slot.
func takeSlot() (int, *os.File, error) {
	for s := 0; s < MaxSlots; s++ {
		f, err := lockSlot(s)
		if err != nil {
			return 0, nil, err
		}
		if f != nil {
			return s, f, nil
		}
	}
	return 0, nil, fmt.Errorf("testbed: all %d slots are in use (locks in %s)", MaxSlots, LockDir)
}

// lockSlot returns the locked file of slot s, or nil if another process holds it.
func lockSlot(s int) (*os.File, error) {
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("testbed: lock dir: %w", err)
	}
	p := filepath.Join(LockDir, "slot-"+strconv.Itoa(s)+".lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("testbed: lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("testbed: lock %s: %w", p, err)
	}
	_ = f.Truncate(0)
	_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// Close removes every container of the testbed (VMs, routers, and the functions started in the
// VMs' network namespaces), with them every namespace, veth, bridge and NAT rule, then the host
// link, and releases the slot. It is safe to call more than once.
func (tb *Testbed) Close() error {
	tb.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		tb.closeErr = RemoveSlot(ctx, tb.cli, tb.slot)
		tb.cli.Close()
		if tb.lock != nil {
			tb.lock.Close()
		}
	})
	return tb.closeErr
}
