package dockerdriver

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
)

// fakeEngine keeps containers in memory; commands never run (Run/Exec are not its business).
type fakeEngine struct {
	Engine // unused methods panic
	mu     sync.Mutex
	byName map[string]*fakeContainer
	calls  []string
}

type fakeContainer struct {
	mounts  []container.MountPoint
	cfg     *container.Config
	host    *container.HostConfig
	running bool
	code    int
	files   map[string]*tar.Header
	signals []string
}

func newFakeEngine() *fakeEngine { return &fakeEngine{byName: map[string]*fakeContainer{}} }

func (e *fakeEngine) get(name string) (*fakeContainer, error) {
	c, ok := e.byName[name]
	if !ok {
		return nil, errdefs.NotFound(errors.New("No such container: " + name))
	}
	return c, nil
}

func (e *fakeEngine) ContainerCreate(_ context.Context, cfg *container.Config, hc *container.HostConfig, _ *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, "create "+name)
	if _, ok := e.byName[name]; ok {
		return container.CreateResponse{}, errdefs.Conflict(errors.New("name in use"))
	}
	e.byName[name] = &fakeContainer{cfg: cfg, host: hc, files: map[string]*tar.Header{}}
	return container.CreateResponse{ID: name}, nil
}

func (e *fakeEngine) ContainerInspect(_ context.Context, name string) (container.InspectResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(name)
	if err != nil {
		return container.InspectResponse{}, err
	}
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{Name: "/" + name, State: &container.State{Running: c.running, ExitCode: c.code}},
		Config:            c.cfg,
		Mounts:            c.mounts,
	}, nil
}

func (e *fakeEngine) ContainerStart(_ context.Context, name string, _ container.StartOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, "start "+name)
	c, err := e.get(name)
	if err == nil {
		c.running = true
	}
	return err
}

func (e *fakeEngine) ContainerStop(_ context.Context, name string, _ container.StopOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(name)
	if err == nil {
		c.running, c.code = false, 143
	}
	return err
}

func (e *fakeEngine) ContainerRemove(_ context.Context, name string, _ container.RemoveOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls = append(e.calls, "remove "+name)
	if _, err := e.get(name); err != nil {
		return err
	}
	delete(e.byName, name)
	return nil
}

func (e *fakeEngine) ContainerKill(_ context.Context, name, sig string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(name)
	if err == nil {
		c.signals = append(c.signals, sig)
	}
	return err
}

// ContainerList honours the label filters the driver uses.
func (e *fakeEngine) ContainerList(_ context.Context, o container.ListOptions) ([]container.Summary, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []container.Summary
	for name, c := range e.byName {
		match := true
		for _, l := range o.Filters.Get("label") {
			k, v, _ := strings.Cut(l, "=")
			match = match && c.cfg.Labels[k] == v
		}
		if match {
			out = append(out, container.Summary{Names: []string{"/" + name}})
		}
	}
	return out, nil
}

func (e *fakeEngine) ContainerExecCreate(_ context.Context, name string, _ container.ExecOptions) (container.ExecCreateResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, err := e.get(name); err != nil {
		return container.ExecCreateResponse{}, err
	}
	return container.ExecCreateResponse{}, errors.New("fake engine: exec is not simulated")
}

func (e *fakeEngine) CopyToContainer(_ context.Context, name, dst string, content io.Reader, _ container.CopyToContainerOptions) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.get(name)
	if err != nil {
		return err
	}
	tr := tar.NewReader(content)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		c.files[dst+h.Name] = h
	}
}

func (e *fakeEngine) Ping(context.Context) (types.Ping, error) { return types.Ping{}, nil }
func (e *fakeEngine) Close() error                             { return nil }

func fakeDriver(t *testing.T, instance string) (*Driver, *fakeEngine) {
	t.Helper()
	e := newFakeEngine()
	d, err := New(driver.Owner{Run: "0123456789abcdef", Instance: instance}, WithEngine(e), WithNetwork("host"))
	require.NoError(t, err)
	return d, e
}

var spec = driver.Spec{Name: "openvpn-server", Service: "vpn", Image: "cnsmo/openvpn:latest", Cmd: []string{"openvpn", "--config", "/etc/openvpn/server.conf"},
	CapAdd: []string{"NET_ADMIN"}, Devices: []string{"/dev/net/tun"},
	Files: []driver.File{{Path: "/etc/openvpn/server.conf", Mode: 0o644, Data: []byte("port 1194\n")}, {Path: "/etc/openvpn/server.key", Mode: 0o600, Data: []byte("KEY")}}}

// Start creates the function's container with the owner's labels, the network, capabilities and
// devices asked for, copies its files with their modes, and starts it; the same spec running is
// left alone, a changed one replaces the container.
func TestStartCreatesLabelsCopiesAndReplacesOnChange(t *testing.T) {
	d, e := fakeDriver(t, "cnsmo.1")
	ctx := context.Background()
	require.NoError(t, d.Start(ctx, spec))
	name := d.ContainerName(spec.Name)
	require.Equal(t, "cnsmo-01234567-cnsmo.1-openvpn-server", name)
	c := e.byName[name]
	require.True(t, c.running)
	require.Equal(t, map[string]string{LabelOwner: "cnsmo", LabelRun: "0123456789abcdef", LabelInstance: "cnsmo.1",
		LabelService: "vpn", LabelName: "openvpn-server", LabelHash: driver.Hash(spec)}, c.cfg.Labels)
	require.Equal(t, container.NetworkMode("host"), c.host.NetworkMode)
	require.Equal(t, []string{"NET_ADMIN"}, []string(c.host.CapAdd))
	require.Equal(t, "/dev/net/tun", c.host.Devices[0].PathOnHost)
	require.Equal(t, int64(0o600), c.files["/etc/openvpn/server.key"].Mode)
	require.Equal(t, byte(tar.TypeDir), c.files["/etc/openvpn/"].Typeflag, "the parents are created")

	e.calls = nil
	require.NoError(t, d.Start(ctx, spec))
	require.Empty(t, e.calls, "the same spec running: left alone")

	changed := spec
	changed.Cmd = append(slices.Clone(spec.Cmd), "--verb", "4")
	require.NoError(t, d.Start(ctx, changed))
	require.Equal(t, []string{"remove " + name, "create " + name, "start " + name}, e.calls)
}

// Status reports absent, running and exited with the exit code; the operations on a missing
// function say driver.ErrNotFound; removing one that is gone is no error.
func TestStatusAndMissingFunctions(t *testing.T) {
	d, e := fakeDriver(t, "web.1")
	ctx := context.Background()
	st, err := d.Status(ctx, "fn")
	require.NoError(t, err)
	require.Equal(t, driver.StateAbsent, st.State)
	require.NoError(t, d.Start(ctx, driver.Spec{Name: "fn", Image: "cnsmo/base", Cmd: []string{"true"}}))
	st, _ = d.Status(ctx, "fn")
	require.Equal(t, driver.StateRunning, st.State)
	require.NoError(t, d.Signal(ctx, "fn", syscall.SIGUSR2))
	require.Equal(t, []string{"12"}, e.byName[d.ContainerName("fn")].signals)
	require.NoError(t, d.Stop(ctx, "fn"))
	st, _ = d.Status(ctx, "fn")
	require.Equal(t, driver.Status{State: driver.StateExited, ExitCode: 143}, st)
	require.NoError(t, d.Remove(ctx, "fn"))
	require.NoError(t, d.Remove(ctx, "fn"), "already gone")
	require.ErrorIs(t, d.Signal(ctx, "fn", syscall.SIGHUP), driver.ErrNotFound)
	require.ErrorIs(t, d.PutFiles(ctx, "fn", nil), driver.ErrNotFound)
	_, err = d.Exec(ctx, "fn", []string{"true"}, nil)
	require.ErrorIs(t, err, driver.ErrNotFound)
	require.ErrorContains(t, d.Start(ctx, driver.Spec{Name: "x"}), "image and command are required")
}

// Cleanup removes this owner's containers and nobody else's.
func TestCleanupRemovesOnlyTheOwners(t *testing.T) {
	e := newFakeEngine()
	mine, err := New(driver.Owner{Run: "run-a", Instance: "web.1"}, WithEngine(e))
	require.NoError(t, err)
	other, err := New(driver.Owner{Run: "run-a", Instance: "web.2"}, WithEngine(e))
	require.NoError(t, err)
	ctx := context.Background()
	for _, d := range []*Driver{mine, other} {
		require.NoError(t, d.Start(ctx, driver.Spec{Name: "fn", Image: "cnsmo/base", Cmd: []string{"sleep", "9"}}))
	}
	e.byName["someone-elses"] = &fakeContainer{cfg: &container.Config{Labels: map[string]string{}}}
	require.NoError(t, mine.Cleanup(ctx))
	var left []string
	for n := range e.byName {
		left = append(left, n)
	}
	slices.Sort(left)
	require.Equal(t, []string{other.ContainerName("fn"), "someone-elses"}, left)
}

// A shared directory is a bind mount at the same path: the path itself on a VM, the source of the
// VM container's covering mount on a simulated VM; a directory on no mount is an error naming it.
func TestSharedDirectories(t *testing.T) {
	ctx := context.Background()
	e := newFakeEngine()
	e.byName["vm1"] = &fakeContainer{mounts: []container.MountPoint{
		{Destination: "/run", Source: "/var/lib/docker/volumes/a/_data"},
		{Destination: "/run/wireguard", Source: "/var/lib/docker/volumes/b/_data"},
	}}
	spec := driver.Spec{Name: "wg", Service: "vpn", Image: "img", Cmd: []string{"x"}, Shared: []string{"/run/wireguard"}}
	onVM, err := New(driver.Owner{Run: "r", Instance: "i"}, WithEngine(e), WithNetwork("host"))
	require.NoError(t, err)
	require.NoError(t, onVM.Start(ctx, spec))
	require.Equal(t, []string{"/run/wireguard:/run/wireguard"}, e.byName[onVM.ContainerName("wg")].host.Binds)

	sim, err := New(driver.Owner{Run: "r", Instance: "j"}, WithEngine(e), WithNetwork("container:vm1"))
	require.NoError(t, err)
	require.NoError(t, sim.Start(ctx, spec))
	require.Equal(t, []string{"/var/lib/docker/volumes/b/_data:/run/wireguard"}, e.byName[sim.ContainerName("wg")].host.Binds, "the longest covering mount")

	spec.Name, spec.Shared = "wg2", []string{"/srv/x"}
	err = sim.Start(ctx, spec)
	require.ErrorContains(t, err, "/srv/x is not on a mount of vm1")
	spec.Shared = []string{"run/x"}
	require.ErrorContains(t, onVM.Start(ctx, spec), "not an absolute, clean path")
}
