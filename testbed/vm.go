package testbed

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// WriteFile writes a file into the VM (parent directories are created, existing ones untouched).
func (vm *VM) WriteFile(ctx context.Context, p string, data []byte, mode os.FileMode) error {
	if !path.IsAbs(p) || strings.HasSuffix(p, "/") {
		return fmt.Errorf("testbed: write %q on %s: want an absolute file path", p, vm.Name)
	}
	p = path.Clean(p)
	dir := path.Dir(p)
	if _, _, err := vm.Exec(ctx, "mkdir", "-p", dir); err != nil {
		return fmt.Errorf("testbed: write %s on %s: %w", p, vm.Name, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: path.Base(p), Mode: int64(mode.Perm()),
		Size: int64(len(data)), ModTime: time.Now()}); err != nil {
		return err
	}
	if _, err := tw.Write(data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := vm.tb.cli.CopyToContainer(ctx, vm.Container, dir, &buf, container.CopyToContainerOptions{}); err != nil {
		return fmt.Errorf("testbed: write %s on %s: %w", p, vm.Name, err)
	}
	return nil
}

// WireGuardRunDirOnHost is where the VM's volume at WireGuardRunDir is on the host: a container
// that shares the VM's functions' control sockets (a member's role container) mounts it there.
func (vm *VM) WireGuardRunDirOnHost(ctx context.Context) (string, error) {
	info, err := vm.tb.cli.ContainerInspect(ctx, vm.Container)
	if err != nil {
		return "", fmt.Errorf("testbed: inspect %s: %w", vm.Name, err)
	}
	for _, m := range info.Mounts {
		if m.Destination == WireGuardRunDir {
			return m.Source, nil
		}
	}
	return "", fmt.Errorf("testbed: %s has no volume at %s", vm.Name, WireGuardRunDir)
}

// Stop powers the VM off: the function containers in its network namespace are stopped first
// (as on a real VM they die with it), then the VM; its processes and network state are lost, and
// it is off the network when Stop returns.
func (vm *VM) Stop(ctx context.Context) error {
	tb := vm.tb
	info, err := tb.cli.ContainerInspect(ctx, vm.Container)
	if err != nil {
		return fmt.Errorf("testbed: stop %s: %w", vm.Name, err)
	}
	all, err := tb.cli.ContainerList(ctx, container.ListOptions{})
	if err != nil {
		return fmt.Errorf("testbed: stop %s: %w", vm.Name, err)
	}
	t := 0
	var deps []string
	for _, c := range all {
		if ref, ok := strings.CutPrefix(c.HostConfig.NetworkMode, "container:"); ok && (ref == info.ID || ref == vm.Container) {
			deps = append(deps, c.ID)
		}
	}
	if err := forEach(deps, func(id string) error {
		return tb.cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &t})
	}); err != nil {
		return fmt.Errorf("testbed: stop functions of %s: %w", vm.Name, err)
	}
	// PID 1 (sleep) ignores SIGTERM: no point waiting, the VM is killed at once, as by a power cut.
	if err := tb.cli.ContainerStop(ctx, vm.Container, container.StopOptions{Timeout: &t}); err != nil {
		return fmt.Errorf("testbed: stop %s: %w", vm.Name, err)
	}
	// The kernel destroys the VM's namespace (and its veth) asynchronously: unplug it now so that
	// the VM is off the network when Stop returns.
	return vm.tb.inNS(ctx, vm.router(), func(h *netlink.Handle, _ netns.NsHandle) error {
		if l, err := h.LinkByName(vmRouterIf(vm.index)); err == nil {
			if err := h.LinkDel(l); err != nil {
				return fmt.Errorf("unplug %s: %w", vm.Name, err)
			}
		}
		return nil
	})
}

// Restart starts a stopped VM and plumbs it again with the same addresses. The function
// containers Stop stopped are left to the code under test (as after a reboot).
func (vm *VM) Restart(ctx context.Context) error {
	if err := vm.tb.cli.ContainerStart(ctx, vm.Container, container.StartOptions{}); err != nil {
		return fmt.Errorf("testbed: restart %s: %w", vm.Name, err)
	}
	return vm.plumb(ctx)
}

// Cut unplugs the VM from its cloud (its link goes down on the router's side, the VM sees no
// carrier): it reaches nothing and nothing reaches it, but keeps its processes and addresses.
func (vm *VM) Cut(ctx context.Context) error { return vm.setLink(ctx, false) }

// Reconnect plugs a cut VM in again.
func (vm *VM) Reconnect(ctx context.Context) error { return vm.setLink(ctx, true) }

func (vm *VM) setLink(ctx context.Context, up bool) error {
	return vm.tb.inNS(ctx, vm.router(), func(h *netlink.Handle, _ netns.NsHandle) error {
		l, err := h.LinkByName(vmRouterIf(vm.index))
		if err != nil {
			return fmt.Errorf("link of %s: %w", vm.Name, err)
		}
		if up {
			err = h.LinkSetUp(l)
		} else {
			err = h.LinkSetDown(l)
		}
		if err != nil {
			return fmt.Errorf("link of %s up=%v: %w", vm.Name, up, err)
		}
		return nil
	})
}

// HostsFileOnHost is where the VM's /etc/hosts is on the host (Docker's file for the container): a
// container that writes the VM's names (a member's role container) mounts it.
func (vm *VM) HostsFileOnHost(ctx context.Context) (string, error) {
	info, err := vm.tb.cli.ContainerInspect(ctx, vm.Container)
	if err != nil {
		return "", fmt.Errorf("testbed: inspect %s: %w", vm.Name, err)
	}
	if info.HostsPath == "" {
		return "", fmt.Errorf("testbed: %s has no hosts file", vm.Name)
	}
	return info.HostsPath, nil
}
