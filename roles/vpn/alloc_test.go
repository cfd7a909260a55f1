package vpn

import (
	"errors"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func prefixes(t *testing.T, s4, s6 string) (netip.Prefix, netip.Prefix) {
	t.Helper()
	v4, v6, err := ParsePrefixes(s4, s6)
	require.NoError(t, err)
	return v4, v6
}

func TestAllocatorStableAcrossRestartAndFreedForReuse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "addresses.json")
	v4, v6 := prefixes(t, "198.18.0.0/15", "2001:db8::/64")
	a, err := OpenAllocator(path, v4, v6)
	require.NoError(t, err)
	assert.Equal(t, "198.18.0.1", a.Server().V4.String())
	assert.Equal(t, "2001:db8::1", a.Server().V6.String())

	w1, err := a.Assign("web.1")
	require.NoError(t, err)
	w2, err := a.Assign("web.2")
	require.NoError(t, err)
	w3, err := a.Assign("web.3")
	require.NoError(t, err)
	assert.Equal(t, "198.18.0.2", w1.V4.String())
	assert.Equal(t, "2001:db8::2", w1.V6.String())
	assert.Equal(t, "198.18.0.3", w2.V4.String())
	assert.Equal(t, "198.18.0.4", w3.V4.String())
	again, err := a.Assign("web.1")
	require.NoError(t, err)
	assert.Equal(t, w1, again, "an instance keeps its address")

	// A restart reads the same assignments back.
	b, err := OpenAllocator(path, v4, v6)
	require.NoError(t, err)
	for in, want := range map[string]Assignment{"web.1": w1, "web.2": w2, "web.3": w3} {
		got, ok := b.Get(in)
		require.True(t, ok, in)
		assert.Equal(t, want, got, in)
	}

	// Free web.2: the next new instance gets its address (lowest free first), also after a restart.
	require.NoError(t, b.Free("web.2"))
	require.NoError(t, b.Free("nobody"))
	_, ok := b.Get("web.2")
	assert.False(t, ok)
	c, err := OpenAllocator(path, v4, v6)
	require.NoError(t, err)
	assert.Equal(t, []string{"web.1", "web.3"}, c.Members())
	w4, err := c.Assign("web.4")
	require.NoError(t, err)
	assert.Equal(t, w2.V4, w4.V4)
	assert.Equal(t, w2.V6, w4.V6)
	w5, err := c.Assign("web.5")
	require.NoError(t, err)
	assert.Equal(t, "198.18.0.5", w5.V4.String())
}

func TestAllocatorSubnetChangeRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "addresses.json")
	v4, v6 := prefixes(t, "198.19.200.0/24", "2001:db8:c5e0::/64")
	a, err := OpenAllocator(path, v4, v6)
	require.NoError(t, err)
	_, err = a.Assign("web.1")
	require.NoError(t, err)
	o4, o6 := prefixes(t, "198.19.201.0/24", "2001:db8:c5e0::/64")
	_, err = OpenAllocator(path, o4, o6)
	assert.True(t, errors.Is(err, ErrSubnetChanged), "%v", err)
	// Once empty, another prefix is fine.
	require.NoError(t, a.Free("web.1"))
	_, err = OpenAllocator(path, o4, o6)
	require.NoError(t, err)
}

func TestAllocatorFull(t *testing.T) {
	v4, v6 := prefixes(t, "198.18.7.0/29", "2001:db8:7::/64")
	a, err := OpenAllocator(filepath.Join(t.TempDir(), "a.json"), v4, v6)
	require.NoError(t, err)
	for i := 0; i < 4; i++ { // .2 .. .5 (.1 is the server, .6 the people's block, .7 broadcast)
		as, err := a.Assign("n." + string(rune('a'+i)))
		require.NoError(t, err)
		assert.Equal(t, i+2, as.Index)
	}
	_, err = a.Assign("n.z")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "full")
	as, err := a.Assign("alice" + PeopleSuffix)
	require.NoError(t, err)
	assert.Equal(t, 6, as.Index)
	_, err = a.Assign("bob" + PeopleSuffix)
	require.Error(t, err, "the people's block is full too")
}

func TestPeopleBlock(t *testing.T) {
	for _, c := range []struct{ v4, v6, b4, b6 string }{
		{"100.96.0.0/16", "fd63:6e73:6d6f::/64", "100.96.192.0/18", "fd63:6e73:6d6f::c000/114"},
		{"198.18.7.0/29", "2001:db8:7::/64", "198.18.7.6/31", "2001:db8:7::6/127"},
		{"198.18.0.0/16", "2001:db8::/124", "198.18.0.12/30", "2001:db8::c/126"}, // the smaller IPv6 prefix bounds the indexes
	} {
		v4, v6 := prefixes(t, c.v4, c.v6)
		b4, b6 := PeopleBlock(v4, v6)
		assert.Equal(t, c.b4, b4.String(), c.v4)
		assert.Equal(t, c.b6, b6.String(), c.v6)
		a, err := OpenAllocator(filepath.Join(t.TempDir(), "a.json"), v4, v6)
		require.NoError(t, err)
		p, err := a.Assign("alice" + PeopleSuffix)
		require.NoError(t, err)
		assert.True(t, b4.Contains(p.V4) && b6.Contains(p.V6), "a person's addresses are in the block")
		m, err := a.Assign("web.1")
		require.NoError(t, err)
		assert.False(t, b4.Contains(m.V4) || b6.Contains(m.V6), "a member's are not")
	}
}

func TestParsePrefixes(t *testing.T) {
	v4, v6, err := ParsePrefixes("", "")
	require.NoError(t, err)
	assert.Equal(t, DefaultSubnet, v4.String())
	assert.Equal(t, DefaultSubnet6, v6.String())
	assert.True(t, netip.MustParsePrefix("100.64.0.0/10").Contains(v4.Addr()), "default IPv4 is in 100.64.0.0/10")
	assert.True(t, netip.MustParsePrefix("fc00::/7").Contains(v6.Addr()), "default IPv6 is a ULA")
	for _, bad := range [][3]string{
		{"198.19.0.1/24", "", "host bits set"}, {"nonsense", "", "is not an IPv4 prefix"}, {"2001:db8::/64", "", "is not an IPv4 prefix"},
		{"198.18.0.0/30", "", "between /8 and /29"}, {"0.0.0.0/7", "", "between /8 and /29"},
		{"198.19.200.0/24", "198.18.0.0/16", "is not an IPv6 prefix"}, {"198.19.200.0/24", "2001:db8::1/64", "host bits set"},
		{"198.19.200.0/24", "2001:db8::/32", "between /64 and /124"}, {"198.19.200.0/24", "2001:db8::/126", "between /64 and /124"},
	} {
		_, _, err := ParsePrefixes(bad[0], bad[1])
		if assert.Error(t, err, "%q", bad) {
			assert.Contains(t, err.Error(), bad[2], "%q", bad)
		}
	}
}
