// Package dockerdriver runs network functions as Docker containers through the Engine API
// (never the docker CLI). Every container carries labels naming its owner (run, instance),
// service and spec hash, so Start is idempotent and Cleanup removes exactly this owner's
// containers even when several simulated VMs share one engine. Containers join the host's
// network namespace (a real VM) or another container's (a simulated VM: container:<vm>); never
// Docker's default bridge.
package dockerdriver

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/cnsmo/cnsmo/driver"
)

// Labels set on every container.
const (
	LabelOwner    = "cnsmo.owner" // always "cnsmo"
	LabelRun      = "cnsmo.run"
	LabelInstance = "cnsmo.instance"
	LabelService  = "cnsmo.service"
	LabelName     = "cnsmo.name"
	LabelHash     = "cnsmo.spec-hash"
)

// Driver is the Docker driver of one owner.
type Driver struct {
	cli     Engine
	owner   driver.Owner
	network string
}

// Ping checks that the engine answers.
func (d *Driver) Ping(ctx context.Context) error {
	if _, err := d.cli.Ping(ctx); err != nil {
		return fmt.Errorf("dockerdriver: the Docker engine does not answer: %w", err)
	}
	return nil
}

// Option configures New.
type Option func(*Driver)

// WithNetwork sets the network mode: "host" (default, a real VM), "none", or "container:<vm>"
// (the testbed). The default comes from CNSMO_DOCKER_NETWORK when set.
func WithNetwork(mode string) Option { return func(d *Driver) { d.network = mode } }

// New connects to the engine (DOCKER_HOST or the default socket).
func New(owner driver.Owner, opts ...Option) (*Driver, error) {
	if owner.Run == "" || owner.Instance == "" {
		return nil, errors.New("dockerdriver: owner needs a run and an instance")
	}
	d := &Driver{owner: owner, network: "host"}
	if m := os.Getenv("CNSMO_DOCKER_NETWORK"); m != "" {
		d.network = m
	}
	for _, o := range opts {
		o(d)
	}
	if d.cli == nil {
		cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
		if err != nil {
			return nil, fmt.Errorf("dockerdriver: %w", err)
		}
		d.cli = cli
	}
	if d.network != "host" && d.network != "none" && !strings.HasPrefix(d.network, "container:") {
		return nil, fmt.Errorf("dockerdriver: network mode %q: use host, none or container:<name>", d.network)
	}
	return d, nil
}

var _ driver.Driver = (*Driver)(nil)

// Close releases the engine connection.
func (d *Driver) Close() error { return d.cli.Close() }

// ContainerName is the container of a function of this owner.
func (d *Driver) ContainerName(name string) string {
	run := d.owner.Run
	if len(run) > 8 {
		run = run[:8]
	}
	return "cnsmo-" + driver.SafeName(run, d.owner.Instance, name)
}

func (d *Driver) labels(spec driver.Spec) map[string]string {
	return map[string]string{LabelOwner: "cnsmo", LabelRun: d.owner.Run, LabelInstance: d.owner.Instance,
		LabelService: spec.Service, LabelName: spec.Name, LabelHash: driver.Hash(spec)}
}

func (d *Driver) create(ctx context.Context, name string, spec driver.Spec, stdin bool) (string, error) {
	if spec.Image == "" || len(spec.Cmd) == 0 {
		return "", fmt.Errorf("dockerdriver: %s: image and command are required", spec.Name)
	}
	hc := &container.HostConfig{NetworkMode: container.NetworkMode(d.network), CapAdd: spec.CapAdd}
	for _, dir := range spec.Shared {
		src, err := d.hostPath(ctx, dir)
		if err != nil {
			return "", fmt.Errorf("dockerdriver: %s: shared directory: %w", spec.Name, err)
		}
		hc.Binds = append(hc.Binds, src+":"+dir)
	}
	for _, dev := range spec.Devices {
		hc.Devices = append(hc.Devices, container.DeviceMapping{PathOnHost: dev, PathInContainer: dev, CgroupPermissions: "rwm"})
	}
	cfg := &container.Config{Image: spec.Image, Cmd: spec.Cmd, Env: spec.Env, Labels: d.labels(spec),
		AttachStdin: stdin, OpenStdin: stdin, StdinOnce: stdin, AttachStdout: stdin, AttachStderr: stdin}
	res, err := d.cli.ContainerCreate(ctx, cfg, hc, nil, nil, name)
	if err != nil {
		return "", fmt.Errorf("dockerdriver: create %s: %w", name, err)
	}
	if len(spec.Files) > 0 {
		if err := d.copyFiles(ctx, res.ID, spec.Files); err != nil {
			_ = d.cli.ContainerRemove(context.WithoutCancel(ctx), res.ID, container.RemoveOptions{Force: true})
			return "", err
		}
	}
	return res.ID, nil
}

// hostPath is where the engine finds dir, a directory of the role's filesystem. On a VM (network
// "host" or "none") the role runs on the engine's host: the same path. On a simulated VM
// (network container:<vm>) the role runs in the VM container: dir must lie under one of that
// container's mounts (the testbed's VMs mount a volume at /run/wireguard), whose source is used.
func (d *Driver) hostPath(ctx context.Context, dir string) (string, error) {
	if !path.IsAbs(dir) || path.Clean(dir) != dir {
		return "", fmt.Errorf("%q is not an absolute, clean path", dir)
	}
	vm, ok := strings.CutPrefix(d.network, "container:")
	if !ok {
		return dir, nil
	}
	info, err := d.cli.ContainerInspect(ctx, vm)
	if err != nil {
		return "", fmt.Errorf("inspect %s: %w", vm, err)
	}
	best, src := "", ""
	for _, m := range info.Mounts {
		dst := path.Clean(m.Destination)
		if (dir == dst || strings.HasPrefix(dir, dst+"/")) && len(dst) > len(best) {
			best, src = dst, path.Join(m.Source, strings.TrimPrefix(dir, dst))
		}
	}
	if best == "" {
		return "", fmt.Errorf("%s is not on a mount of %s, so it cannot be shared with a function container (give the VM container a volume there)", dir, vm)
	}
	return src, nil
}

// copyFiles puts files into a container (created or running) as one tar, with their parents.
func (d *Driver) copyFiles(ctx context.Context, id string, files []driver.File) error {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	now := time.Now()
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return fmt.Errorf("dockerdriver: file %q: path must be absolute", f.Path)
		}
		var parents []string
		for p := path.Dir(f.Path); p != "/" && !dirs[p]; p = path.Dir(p) {
			parents = append([]string{p}, parents...)
			dirs[p] = true
		}
		for _, p := range parents {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: 0o755, ModTime: now}); err != nil {
				return err
			}
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(mode.Perm()), Size: int64(len(f.Data)), ModTime: now}); err != nil {
			return err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := d.cli.CopyToContainer(ctx, id, "/", &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("dockerdriver: copy files: %w", err)
	}
	return nil
}

// Start runs spec as a long-running container; the same spec already running is left alone.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	name := d.ContainerName(spec.Name)
	info, err := d.cli.ContainerInspect(ctx, name)
	switch {
	case err == nil && info.State != nil && info.State.Running && info.Config.Labels[LabelHash] == driver.Hash(spec):
		return nil
	case err == nil:
		if err := d.cli.ContainerRemove(ctx, name, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("dockerdriver: replace %s: %w", name, err)
		}
	case !errdefs.IsNotFound(err):
		return fmt.Errorf("dockerdriver: inspect %s: %w", name, err)
	}
	id, err := d.create(ctx, name, spec, false)
	if err != nil {
		return err
	}
	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		_ = d.cli.ContainerRemove(context.WithoutCancel(ctx), id, container.RemoveOptions{Force: true})
		return fmt.Errorf("dockerdriver: start %s: %w", name, err)
	}
	return nil
}

// Run runs spec to completion in a fresh container fed with stdin, then removes it.
func (d *Driver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := d.ContainerName(spec.Name) + "-" + hex.EncodeToString(suffix)
	id, err := d.create(ctx, name, spec, true)
	if err != nil {
		return driver.Result{}, err
	}
	defer d.cli.ContainerRemove(context.WithoutCancel(ctx), id, container.RemoveOptions{Force: true}) //nolint:errcheck
	att, err := d.cli.ContainerAttach(ctx, id, container.AttachOptions{Stream: true, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		return driver.Result{}, fmt.Errorf("dockerdriver: attach %s: %w", name, err)
	}
	defer att.Close()
	waitC, errC := d.cli.ContainerWait(ctx, id, container.WaitConditionNextExit)
	if err := d.cli.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return driver.Result{}, fmt.Errorf("dockerdriver: start %s: %w", name, err)
	}
	var out, errOut bytes.Buffer
	copied := make(chan error, 1)
	go func() { _, err := stdcopy.StdCopy(&out, &errOut, att.Reader); copied <- err }()
	if stdin != nil {
		if _, err := io.Copy(att.Conn, stdin); err != nil {
			return driver.Result{}, fmt.Errorf("dockerdriver: stdin of %s: %w", name, err)
		}
	}
	_ = att.CloseWrite()
	var code int64
	select {
	case w := <-waitC:
		if w.Error != nil {
			return driver.Result{}, fmt.Errorf("dockerdriver: wait %s: %s", name, w.Error.Message)
		}
		code = w.StatusCode
	case err := <-errC:
		return driver.Result{}, fmt.Errorf("dockerdriver: wait %s: %w", name, err)
	case <-ctx.Done():
		return driver.Result{}, fmt.Errorf("dockerdriver: run %s: %w", name, ctx.Err())
	}
	select {
	case <-copied:
	case <-ctx.Done():
		return driver.Result{}, fmt.Errorf("dockerdriver: output of %s: %w", name, ctx.Err())
	}
	return driver.Result{ExitCode: int(code), Stdout: out.Bytes(), Stderr: errOut.Bytes()}, nil
}

// Exec runs cmd inside the function's running container (docker exec): no container is created.
func (d *Driver) Exec(ctx context.Context, name string, cmd []string, stdin io.Reader) (driver.Result, error) {
	cn := d.ContainerName(name)
	created, err := d.cli.ContainerExecCreate(ctx, cn, container.ExecOptions{Cmd: cmd, AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return driver.Result{}, d.notFound("exec in", cn, err)
	}
	att, err := d.cli.ContainerExecAttach(ctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return driver.Result{}, fmt.Errorf("dockerdriver: exec in %s: attach: %w", cn, err)
	}
	defer att.Close()
	var out, errOut bytes.Buffer
	copied := make(chan error, 1)
	go func() { _, err := stdcopy.StdCopy(&out, &errOut, att.Reader); copied <- err }()
	if stdin != nil {
		if _, err := io.Copy(att.Conn, stdin); err != nil {
			return driver.Result{}, fmt.Errorf("dockerdriver: exec in %s: stdin: %w", cn, err)
		}
		_ = att.CloseWrite()
	}
	select {
	case err := <-copied:
		if err != nil {
			return driver.Result{}, fmt.Errorf("dockerdriver: exec in %s: output: %w", cn, err)
		}
	case <-ctx.Done():
		return driver.Result{}, fmt.Errorf("dockerdriver: exec in %s: %w", cn, ctx.Err())
	}
	info, err := d.cli.ContainerExecInspect(ctx, created.ID)
	if err != nil {
		return driver.Result{}, fmt.Errorf("dockerdriver: exec in %s: inspect: %w", cn, err)
	}
	return driver.Result{ExitCode: info.ExitCode, Stdout: out.Bytes(), Stderr: errOut.Bytes()}, nil
}

func (d *Driver) notFound(op, name string, err error) error {
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("dockerdriver: %s %s: %w", op, name, driver.ErrNotFound)
	}
	return fmt.Errorf("dockerdriver: %s %s: %w", op, name, err)
}

// PutFiles writes files into the function's container.
func (d *Driver) PutFiles(ctx context.Context, name string, files []driver.File) error {
	cn := d.ContainerName(name)
	if _, err := d.cli.ContainerInspect(ctx, cn); err != nil {
		return d.notFound("put files", cn, err)
	}
	return d.copyFiles(ctx, cn, files)
}

// Signal sends sig to the container's main process.
func (d *Driver) Signal(ctx context.Context, name string, sig syscall.Signal) error {
	cn := d.ContainerName(name)
	if err := d.cli.ContainerKill(ctx, cn, fmt.Sprint(int(sig))); err != nil {
		return d.notFound("signal", cn, err)
	}
	return nil
}

// Status reports the container's state.
func (d *Driver) Status(ctx context.Context, name string) (driver.Status, error) {
	info, err := d.cli.ContainerInspect(ctx, d.ContainerName(name))
	if errdefs.IsNotFound(err) {
		return driver.Status{State: driver.StateAbsent}, nil
	}
	if err != nil {
		return driver.Status{}, fmt.Errorf("dockerdriver: status %s: %w", name, err)
	}
	if info.State != nil && info.State.Running {
		return driver.Status{State: driver.StateRunning}, nil
	}
	code := 0
	if info.State != nil {
		code = info.State.ExitCode
	}
	return driver.Status{State: driver.StateExited, ExitCode: code}, nil
}

// Logs returns the container's stdout and stderr.
func (d *Driver) Logs(ctx context.Context, name string) (string, error) {
	cn := d.ContainerName(name)
	rc, err := d.cli.ContainerLogs(ctx, cn, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		return "", d.notFound("logs", cn, err)
	}
	defer rc.Close()
	var out bytes.Buffer
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		return out.String(), fmt.Errorf("dockerdriver: logs %s: %w", cn, err)
	}
	return out.String(), nil
}

// Stop stops the container (SIGTERM, SIGKILL after 5 s), keeping it.
func (d *Driver) Stop(ctx context.Context, name string) error {
	timeout := 5
	err := d.cli.ContainerStop(ctx, d.ContainerName(name), container.StopOptions{Timeout: &timeout})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("dockerdriver: stop %s: %w", name, err)
	}
	return nil
}

// Remove deletes the container.
func (d *Driver) Remove(ctx context.Context, name string) error {
	err := d.cli.ContainerRemove(ctx, d.ContainerName(name), container.RemoveOptions{Force: true})
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("dockerdriver: remove %s: %w", name, err)
	}
	return nil
}

// Owned lists this owner's containers (names).
func (d *Driver) Owned(ctx context.Context) ([]string, error) {
	f := filters.NewArgs(filters.Arg("label", LabelOwner+"=cnsmo"), filters.Arg("label", LabelRun+"="+d.owner.Run),
		filters.Arg("label", LabelInstance+"="+d.owner.Instance))
	list, err := d.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("dockerdriver: list: %w", err)
	}
	var out []string
	for _, c := range list {
		if len(c.Names) > 0 {
			out = append(out, strings.TrimPrefix(c.Names[0], "/"))
		}
	}
	return out, nil
}

// Cleanup removes every container of this owner (and only those).
func (d *Driver) Cleanup(ctx context.Context) error {
	names, err := d.Owned(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		if err := d.cli.ContainerRemove(ctx, n, container.RemoveOptions{Force: true}); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("dockerdriver: remove %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}
