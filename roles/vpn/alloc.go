package vpn

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
)

// Default overlay prefixes. IPv4: a /16 inside 100.64.0.0/10 (RFC 6598 shared address space, the
// block Tailscale uses), which no cloud hands out as a VPC range, unlike the original's
// 10.10.10.0/24. IPv6: a ULA /64 (RFC 4193) whose global ID spells "cnsmo" (63 6e 73 6d 6f).
// Tests, the demo and benchmarks always set their own in 198.18.0.0/15 and 2001:db8::/32.
const (
	DefaultSubnet  = "100.96.0.0/16"
	DefaultSubnet6 = "fd63:6e73:6d6f::/64"
)

// Member addresses are host index i of both prefixes: the server holds index 1 (the first host
// address), clients 2, 3, ... The same index in the IPv4 and IPv6 prefix makes them easy to
// read side by side.
const serverIndex = 1

// Assignment is one member's overlay addresses.
type Assignment struct {
	Index int        `json:"index"`
	V4    netip.Addr `json:"v4"`
	V6    netip.Addr `json:"v6"`
}

type allocState struct {
	Subnet  string                `json:"subnet"`
	Subnet6 string                `json:"subnet6"`
	Members map[string]Assignment `json:"members"` // instance -> addresses
}

// Allocator hands out stable overlay addresses to instances and keeps them in a JSON file
// (written atomically), so a restarted server gives every instance the address it had. Free
// returns an instance's addresses; the lowest free index is handed out first, so the next new
// client reuses a freed address.
type Allocator struct {
	path     string
	mu       sync.Mutex
	v4, v6   netip.Prefix
	max      int // highest usable index
	st       allocState
	byIndex  map[int]string
	loadedOK bool
}

// ErrSubnetChanged is returned by OpenAllocator when the file holds assignments from another
// prefix than the one configured: re-addressing live members is not supported.
var ErrSubnetChanged = errors.New("overlay subnet changed after addresses were assigned")

// ParsePrefixes validates the IPv4 and IPv6 overlay prefixes (empty: the defaults).
func ParsePrefixes(subnet, subnet6 string) (v4, v6 netip.Prefix, err error) {
	if subnet == "" {
		subnet = DefaultSubnet
	}
	if subnet6 == "" {
		subnet6 = DefaultSubnet6
	}
	v4, err = netip.ParsePrefix(subnet)
	if err != nil || !v4.Addr().Is4() {
		return v4, v6, role.Invalid(params.VPNSubnet, "", "%q is not an IPv4 prefix such as %s", subnet, DefaultSubnet)
	}
	if v4 != v4.Masked() {
		return v4, v6, role.Invalid(params.VPNSubnet, "", "%q has host bits set (did you mean %s?)", subnet, v4.Masked())
	}
	if v4.Bits() < 8 || v4.Bits() > 29 {
		return v4, v6, role.Invalid(params.VPNSubnet, "", "%q: prefix length must be between /8 and /29", subnet)
	}
	v6, err = netip.ParsePrefix(subnet6)
	if err != nil || !v6.Addr().Is6() || v6.Addr().Is4In6() {
		return v4, v6, role.Invalid(params.VPNSubnet6, "", "%q is not an IPv6 prefix such as %s", subnet6, DefaultSubnet6)
	}
	if v6 != v6.Masked() {
		return v4, v6, role.Invalid(params.VPNSubnet6, "", "%q has host bits set (did you mean %s?)", subnet6, v6.Masked())
	}
	if v6.Bits() < 64 || v6.Bits() > 124 {
		return v4, v6, role.Invalid(params.VPNSubnet6, "", "%q: prefix length must be between /64 and /124 (OpenVPN's limits)", subnet6)
	}
	return v4, v6, nil
}

// OpenAllocator loads the allocation file at path (or starts empty) for the given prefixes.
func OpenAllocator(path string, v4, v6 netip.Prefix) (*Allocator, error) {
	a := &Allocator{path: path, v4: v4, v6: v6, byIndex: map[int]string{}, max: maxIndex(v4, v6)}
	a.st = allocState{Subnet: v4.String(), Subnet6: v6.String(), Members: map[string]Assignment{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("vpn: addresses %s: %w", path, err)
	default:
		var st allocState
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("vpn: addresses %s: %w", path, err)
		}
		if len(st.Members) > 0 && (st.Subnet != v4.String() || st.Subnet6 != v6.String()) {
			return nil, fmt.Errorf("%w: %s and %s hold addresses, now %s and %s (restore the old values)",
				ErrSubnetChanged, st.Subnet, st.Subnet6, v4, v6)
		}
		if st.Members != nil && st.Subnet == v4.String() && st.Subnet6 == v6.String() {
			a.st.Members = st.Members
		}
	}
	for in, as := range a.st.Members {
		a.byIndex[as.Index] = in
	}
	return a, nil
}

// hostAddr returns the address at index i of prefix p.
func hostAddr(p netip.Prefix, i int) netip.Addr {
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, big.NewInt(int64(i)))
	out := n.FillBytes(make([]byte, len(b)))
	a, _ := netip.AddrFromSlice(out)
	return a
}

// Server returns the server's addresses (the first host address of each prefix).
func (a *Allocator) Server() Assignment {
	return Assignment{Index: serverIndex, V4: hostAddr(a.v4, serverIndex), V6: hostAddr(a.v6, serverIndex)}
}

// Prefixes returns the overlay prefixes.
func (a *Allocator) Prefixes() (netip.Prefix, netip.Prefix) { return a.v4, a.v6 }

// Get returns instance's assignment, if it has one.
func (a *Allocator) Get(instance string) (Assignment, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	as, ok := a.st.Members[instance]
	return as, ok
}

// V4Of returns the IPv4 address assigned to instance (a nil allocator has none).
func (a *Allocator) V4Of(instance string) (netip.Addr, bool) {
	if a == nil {
		return netip.Addr{}, false
	}
	as, ok := a.Get(instance)
	return as.V4, ok
}

// Assign returns instance's addresses, allocating the lowest free index when it has none; the
// file is written before the new assignment is returned.
func (a *Allocator) Assign(instance string) (Assignment, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if as, ok := a.st.Members[instance]; ok {
		return as, nil
	}
	from, to := serverIndex+1, a.peopleFrom()-1
	if strings.HasSuffix(instance, PeopleSuffix) {
		from, to = a.peopleFrom(), a.max
	}
	for i := from; i <= to; i++ {
		if _, used := a.byIndex[i]; used {
			continue
		}
		as := Assignment{Index: i, V4: hostAddr(a.v4, i), V6: hostAddr(a.v6, i)}
		a.st.Members[instance] = as
		a.byIndex[i] = instance
		if err := a.saveLocked(); err != nil {
			delete(a.st.Members, instance)
			delete(a.byIndex, i)
			return Assignment{}, err
		}
		return as, nil
	}
	return Assignment{}, fmt.Errorf("vpn: overlay %s is full (%d members)", a.v4, len(a.st.Members))
}

// maxIndex is the highest usable host index of both prefixes (without the network and
// broadcast addresses).
func maxIndex(v4, v6 netip.Prefix) int {
	m := 1<<(32-v4.Bits()) - 2
	if h6 := 128 - v6.Bits(); h6 < 31 && 1<<h6-2 < m {
		m = 1<<h6 - 2
	}
	return m
}

// peopleFrom is the first index of the people's block: the last quarter of the indexes.
func (a *Allocator) peopleFrom() int { return (a.max + 2) / 4 * 3 }

// PeopleBlock returns the prefixes people's addresses come from (cnsmo-role join): the last
// quarter of the overlay's indexes (of vpn.subnet, and the same indexes of vpn.subnet6), so that
// firewall rules can name them. Members get addresses from the first three quarters.
func PeopleBlock(v4, v6 netip.Prefix) (netip.Prefix, netip.Prefix) {
	n := maxIndex(v4, v6) + 2
	bits := 0 // log2 of the block's size
	for 1<<(bits+2) < n {
		bits++
	}
	from := n / 4 * 3
	return netip.PrefixFrom(hostAddr(v4, from), 32-bits), netip.PrefixFrom(hostAddr(v6, from), 128-bits)
}

// Free returns instance's addresses for reuse. Freeing an unknown instance does nothing.
func (a *Allocator) Free(instance string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	as, ok := a.st.Members[instance]
	if !ok {
		return nil
	}
	delete(a.st.Members, instance)
	delete(a.byIndex, as.Index)
	if err := a.saveLocked(); err != nil {
		a.st.Members[instance] = as
		a.byIndex[as.Index] = instance
		return err
	}
	return nil
}

// Members returns the instances holding addresses, sorted (people too: their names end in
// PeopleSuffix).
func (a *Allocator) Members() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.st.Members))
	for in := range a.st.Members {
		out = append(out, in)
	}
	sort.Strings(out)
	return out
}

func (a *Allocator) saveLocked() error {
	b, err := json.MarshalIndent(a.st, "", "  ")
	if err != nil {
		return fmt.Errorf("vpn: addresses: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(a.path), 0o700); err != nil {
		return fmt.Errorf("vpn: addresses: %w", err)
	}
	return atomicfile.Write(a.path, append(b, '\n'), 0o600)
}
