package deploy

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/testbed"
)

// VMState is what a role could leave behind inside a simulated VM: its iptables and ip6tables
// rules, links and namespaces, its network functions run as host processes (the exec driver;
// the Docker driver's containers are in State's "host" entry), and /etc/hosts byte for byte.
func VMState(ctx context.Context, vm *testbed.VM) (hoststate.Snapshot, error) {
	s, err := hoststate.Take(ctx, func(ctx context.Context, argv ...string) (string, error) {
		out, _, err := vm.Exec(ctx, argv...)
		return out, err
	}, false)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", vm.Name, err)
	}
	ps, _, err := vm.Exec(ctx, "ps", "-eo", "comm=")
	if err != nil {
		return nil, fmt.Errorf("%s: ps: %w", vm.Name, err)
	}
	var fns []string
	for _, c := range strings.Fields(ps) {
		if c == "openvpn" || c == "haproxy" || strings.HasPrefix(c, "iptables") || strings.HasPrefix(c, "ip6tables") {
			fns = append(fns, c)
		}
	}
	sort.Strings(fns)
	s["processes"] = strings.Join(fns, "\n")
	// The hosts file byte for byte: the VPN's names are a block the role removes exactly.
	hosts, _, err := vm.Exec(ctx, "cat", "/etc/hosts")
	if err != nil {
		return nil, fmt.Errorf("%s: /etc/hosts: %w", vm.Name, err)
	}
	s["hosts"] = hosts
	return s, nil
}

// State is what a deployment on tb could leave behind: every VM's VMState, and under "host" the
// host's cnsmo rules, the links, namespaces and containers of this testbed (other tests may run
// beside it) and every container that shares a namespace of its VMs, whatever its labels (the
// functions the roles start).
func State(ctx context.Context, tb *testbed.Testbed) (map[string]hoststate.Snapshot, error) {
	out := map[string]hoststate.Snapshot{}
	for _, vm := range tb.VMs() {
		s, err := VMState(ctx, vm)
		if err != nil {
			return nil, err
		}
		out[vm.Name] = s
	}
	host, err := hoststate.Take(ctx, hoststate.Host, true)
	if err != nil {
		return nil, err
	}
	// Other tests change the host beside this one: keep this testbed's objects, and in the
	// host's tables what cnsmo could have put there (its chains are CNSMO-*).
	host = host.Keep(tb.Prefix(), "links", "netns", "containers").Keep("CNSMO", "iptables", "ip6tables")
	fns, err := tb.Functions(ctx)
	if err != nil {
		return nil, err
	}
	host["functions"] = strings.Join(fns, "\n")
	out["host"] = host
	return out, nil
}

// StateDiff describes how after differs from before, per VM and host ("" when the same).
func StateDiff(before, after map[string]hoststate.Snapshot) string {
	names := make([]string, 0, len(before))
	for n := range before {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		if d := hoststate.Diff(before[n], after[n]); d != "" {
			fmt.Fprintf(&b, "%s:\n%s", n, d)
		}
	}
	return b.String()
}
