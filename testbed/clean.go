package testbed

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/vishvananda/netlink"
)

// RemoveSlot removes everything of slot s from the host, whoever created it: the function
// containers in a VM's network namespace (NetworkMode container:<vm>, whatever their labels), then
// the VMs, routers and internet (label cnsmo.testbed=<s> or name cnsmo-tb<s>-*), which takes their
// namespaces, veths, bridges and NAT rules with them, then the host link. The caller must hold the
// slot's lock (Create and Close do; Clean takes it).
func RemoveSlot(ctx context.Context, cli *client.Client, slot int) error {
	all, err := cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return fmt.Errorf("testbed: slot %d: list containers: %w", slot, err)
	}
	infra, deps := slotContainers(all, slot)
	errs := removeAll(ctx, cli, deps)
	errs = append(errs, removeAll(ctx, cli, infra)...)
	// The current host link, and the one of the testbed's first version.
	for _, n := range []string{hostLink(slot), fmt.Sprintf("cnsmotb%dh", slot)} {
		if l, err := netlink.LinkByName(n); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("testbed: slot %d: delete host link %s: %w", slot, n, err))
			}
		}
	}
	return errors.Join(errs...)
}

// slotContainers splits the containers of a slot: its own (VMs, routers, internet) and those that
// join their namespaces, transitively (the functions the roles started in a VM, whatever labels
// they carry; a container may join a function's namespace in turn).
func slotContainers(all []container.Summary, slot int) (infra, deps []string) {
	mine := map[string]bool{}
	for _, c := range all {
		if isSlot(c, slot) {
			infra = append(infra, c.ID)
			markNames(mine, c)
		}
	}
	for grew := true; grew; {
		grew = false
		for _, c := range all {
			if mine[c.ID] {
				continue
			}
			if ref, ok := strings.CutPrefix(c.HostConfig.NetworkMode, "container:"); ok && refers(mine, ref) {
				deps = append(deps, c.ID)
				markNames(mine, c)
				grew = true
			}
		}
	}
	return infra, deps
}

// Functions lists the containers, running or not, that share a namespace of this testbed's VMs
// or routers, whatever their labels: what the roles started in the simulated VMs and left. Each
// is "name image", sorted.
func (tb *Testbed) Functions(ctx context.Context) ([]string, error) {
	all, err := tb.cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("testbed: list containers: %w", err)
	}
	_, deps := slotContainers(all, tb.slot)
	byID := map[string]container.Summary{}
	for _, c := range all {
		byID[c.ID] = c
	}
	out := []string{}
	for _, id := range deps {
		c := byID[id]
		name := id[:12]
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, name+" "+c.Image)
	}
	sort.Strings(out)
	return out, nil
}

func isSlot(c container.Summary, slot int) bool {
	if v, ok := c.Labels[Label]; ok {
		return v == strconv.Itoa(slot)
	}
	for _, n := range c.Names {
		if strings.HasPrefix(strings.TrimPrefix(n, "/"), prefix(slot)) {
			return true
		}
	}
	return false
}

func markNames(m map[string]bool, c container.Summary) {
	m[c.ID] = true
	for _, n := range c.Names {
		m[strings.TrimPrefix(n, "/")] = true
	}
}

// refers tells whether ref (a name, a full id or an id prefix) is one of m's.
func refers(m map[string]bool, ref string) bool {
	if m[ref] {
		return true
	}
	if len(ref) < 12 {
		return false
	}
	for k := range m {
		if len(k) == 64 && strings.HasPrefix(k, ref) {
			return true
		}
	}
	return false
}

// removeAll force-removes containers, a few at a time.
func removeAll(ctx context.Context, cli *client.Client, ids []string) []error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 6)
	)
	for _, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			err := cli.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
			if err != nil && !errdefs.IsNotFound(err) && !isRemovalInProgress(err) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("testbed: remove container %.12s: %w", id, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

func isRemovalInProgress(err error) bool {
	return strings.Contains(err.Error(), "is already in progress")
}

// CleanResult says what Clean did.
type CleanResult struct {
	Cleaned []int // slots whose leftovers were removed (or had none)
	InUse   []int // slots held by a running testbed, left alone
	Orphans int   // cnsmo containers left in the namespace of a container that no longer exists
}

// Clean removes the leftovers of crashed tests and demos in every slot. Slots whose lock a live
// process holds are left alone unless force is set (force removes even a running testbed).
func Clean(ctx context.Context, force bool) (CleanResult, error) {
	var res CleanResult
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return res, fmt.Errorf("testbed: docker client: %w", err)
	}
	defer cli.Close()
	var errs []error
	for s := 0; s < MaxSlots; s++ {
		f, err := lockSlot(s)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if f == nil && !force {
			res.InUse = append(res.InUse, s)
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		if err := RemoveSlot(sctx, cli, s); err != nil {
			errs = append(errs, err)
		} else {
			res.Cleaned = append(res.Cleaned, s)
		}
		cancel()
		if f != nil {
			f.Close()
		}
	}
	n, err := removeOrphans(ctx, cli)
	res.Orphans = n
	if err != nil {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}

// removeOrphans removes the cnsmo-labelled containers whose network mode is container:<x> where
// x no longer exists (a VM removed by something else before its functions): they can never run
// again and belong to no slot any more.
func removeOrphans(ctx context.Context, cli *client.Client) (int, error) {
	all, err := cli.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return 0, fmt.Errorf("testbed: list containers: %w", err)
	}
	exists := map[string]bool{}
	for _, c := range all {
		markNames(exists, c)
	}
	var orphans []string
	for _, c := range all {
		ref, ok := strings.CutPrefix(c.HostConfig.NetworkMode, "container:")
		if ok && !refers(exists, ref) && cnsmoLabelled(c) {
			orphans = append(orphans, c.ID)
		}
	}
	return len(orphans), errors.Join(removeAll(ctx, cli, orphans)...)
}

func cnsmoLabelled(c container.Summary) bool {
	for k := range c.Labels {
		if strings.HasPrefix(k, "cnsmo.") {
			return true
		}
	}
	return false
}
