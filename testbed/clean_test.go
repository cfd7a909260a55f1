package testbed

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
	"github.com/docker/docker/errdefs"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"

	"github.com/cnsmo/cnsmo/internal/testutil"
)

func TestValidate(t *testing.T) {
	ok := []CloudSpec{{Name: "a", VMs: []string{"web-1", "x"}}, {Name: "b", VMs: []string{"db"}}}
	require.NoError(t, (&Options{Clouds: ok}).validate())
	for name, clouds := range map[string][]CloudSpec{
		"no cloud":         nil,
		"unnamed cloud":    {{Name: "", VMs: []string{"a"}}},
		"cloud twice":      {{Name: "a"}, {Name: "a"}},
		"VM twice":         {{Name: "a", VMs: []string{"x"}}, {Name: "b", VMs: []string{"x"}}},
		"upper case":       {{Name: "a", VMs: []string{"Web"}}},
		"dot":              {{Name: "a", VMs: []string{"web.1"}}},
		"empty VM name":    {{Name: "a", VMs: []string{""}}},
		"reserved router":  {{Name: "a", VMs: []string{"router-0"}}},
		"reserved inet":    {{Name: "a", VMs: []string{"internet"}}},
		"too many clouds":  make([]CloudSpec, MaxClouds+1),
		"too many VMs":     {{Name: "a", VMs: make([]string, MaxVMsPerCloud+1)}},
		"name of 41 chars": {{Name: "a", VMs: []string{strings.Repeat("a", 41)}}},
	} {
		require.Error(t, (&Options{Clouds: clouds}).validate(), name)
	}
}

func TestNATRules(t *testing.T) {
	vms := []*VM{{PrivateAddr: "198.18.16.10", PublicAddr: "198.19.17.10"}, {PrivateAddr: "198.18.16.11", PublicAddr: "198.19.17.11"}}
	require.Equal(t, `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 198.19.17.10/32 -j DNAT --to-destination 198.18.16.10
-A PREROUTING -d 198.19.17.11/32 -j DNAT --to-destination 198.18.16.11
-A POSTROUTING -s 198.18.16.10/32 -o uplink -j SNAT --to-source 198.19.17.10
-A POSTROUTING -s 198.18.16.10/32 -o br0 -m conntrack --ctstate DNAT -j SNAT --to-source 198.19.17.10
-A POSTROUTING -s 198.18.16.11/32 -o uplink -j SNAT --to-source 198.19.17.11
-A POSTROUTING -s 198.18.16.11/32 -o br0 -m conntrack --ctstate DNAT -j SNAT --to-source 198.19.17.11
COMMIT
`, natRules(vms))
}

// TestCleanAfterCrash: a testbed whose process died (its lock released, nothing removed, a
// function container left in a VM's namespace) is removed by Clean, while a testbed in use is
// left alone.
func TestCleanAfterCrash(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireImage(t, DefaultImage)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	held := New(t, Options{Clouds: []CloudSpec{{Name: "c", VMs: []string{"held"}}}})

	crashed, err := Create(ctx, Options{Clouds: []CloudSpec{{Name: "c", VMs: []string{"x"}}}})
	require.NoError(t, err)
	slot := crashed.Slot()
	t.Cleanup(func() { // if the test fails before Clean did it
		if f, err := lockSlot(slot); err == nil && f != nil {
			_ = RemoveSlot(context.Background(), held.Docker(), slot)
			f.Close()
		}
	})
	cli := crashed.Docker()
	fn, err := cli.ContainerCreate(ctx, &container.Config{Image: DefaultImage, Cmd: []string{"sleep", "300"},
		Labels: map[string]string{"cnsmo.run": "tb-clean-test"}},
		&container.HostConfig{NetworkMode: container.NetworkMode("container:" + crashed.VM("x").Container)}, nil, nil, "")
	require.NoError(t, err)
	require.NoError(t, cli.ContainerStart(ctx, fn.ID, container.StartOptions{}))
	// An orphan: a function whose VM something else removed.
	vm, err := cli.ContainerCreate(ctx, &container.Config{Image: DefaultImage, Cmd: []string{"sleep", "300"}},
		&container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	require.NoError(t, err)
	require.NoError(t, cli.ContainerStart(ctx, vm.ID, container.StartOptions{}))
	orphan, err := cli.ContainerCreate(ctx, &container.Config{Image: DefaultImage, Cmd: []string{"sleep", "300"},
		Labels: map[string]string{"cnsmo.run": "tb-clean-test"}},
		&container.HostConfig{NetworkMode: container.NetworkMode("container:" + vm.ID)}, nil, nil, "")
	require.NoError(t, err)
	require.NoError(t, cli.ContainerStart(ctx, orphan.ID, container.StartOptions{}))
	require.NoError(t, cli.ContainerRemove(ctx, vm.ID, container.RemoveOptions{Force: true}))
	t.Cleanup(func() {
		_ = held.Docker().ContainerRemove(context.Background(), orphan.ID, container.RemoveOptions{Force: true})
	})
	// The crash: the lock goes with the process, everything else stays.
	crashed.closeOnce.Do(func() { crashed.lock.Close(); crashed.cli.Close() })

	res, err := Clean(ctx, false)
	require.NoError(t, err)
	require.Contains(t, res.Cleaned, slot)
	require.Contains(t, res.InUse, held.Slot())
	require.False(t, slices.Contains(res.Cleaned, held.Slot()))
	require.GreaterOrEqual(t, res.Orphans, 1)

	docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	require.NoError(t, err)
	defer docker.Close()
	left, err := docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", Label+"="+strconv.Itoa(slot)))})
	require.NoError(t, err)
	require.Empty(t, left)
	_, err = docker.ContainerInspect(ctx, fn.ID)
	require.True(t, errdefs.IsNotFound(err), "the function in the crashed VM's namespace is removed: %v", err)
	_, err = docker.ContainerInspect(ctx, orphan.ID)
	require.True(t, errdefs.IsNotFound(err), "the orphaned function is removed: %v", err)
	_, err = netlink.LinkByName(hostLink(slot))
	require.Error(t, err, "the host link is removed")

	_, _, err = held.VM("held").Exec(ctx, "ping", "-c", "1", "-W", "2", held.HostAddr())
	require.NoError(t, err, "the testbed in use still works")
}
