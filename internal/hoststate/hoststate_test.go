package hoststate

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func fake(outputs map[string]string) Runner {
	return func(_ context.Context, argv ...string) (string, error) {
		return outputs[strings.Join(argv, " ")], nil
	}
}

func TestDiffIgnoresCountersAndFindsLeftovers(t *testing.T) {
	before := map[string]string{
		"iptables-save":   "# Generated\n*filter\n:INPUT ACCEPT [10:200]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n",
		"ip6tables-save":  "",
		"ip -o link show": "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\n",
		"ip netns list":   "",
	}
	after := map[string]string{
		"iptables-save":   "# Generated later\n*filter\n:INPUT ACCEPT [99:9999]\n:CNSMO-INPUT - [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n",
		"ip6tables-save":  "",
		"ip -o link show": "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\n",
		"ip netns list":   "",
	}
	ctx := context.Background()
	b, err := Take(ctx, fake(before), false)
	require.NoError(t, err)
	a, err := Take(ctx, fake(after), false)
	require.NoError(t, err)
	require.Equal(t, "iptables: + :CNSMO-INPUT - \n", Diff(b, a))
	require.Empty(t, Diff(b, b))
}

func TestEmptyAcceptingTableEqualsNoTable(t *testing.T) {
	ctx := context.Background()
	none := map[string]string{"iptables-save": "", "ip6tables-save": "", "ip -o link show": "", "ip netns list": ""}
	empty := map[string]string{"iptables-save": "", "ip6tables-save": "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
		"ip -o link show": "", "ip netns list": ""}
	dropping := map[string]string{"iptables-save": "", "ip6tables-save": "*filter\n:INPUT DROP [0:0]\nCOMMIT\n", "ip -o link show": "", "ip netns list": ""}
	a, _ := Take(ctx, fake(none), false)
	b, _ := Take(ctx, fake(empty), false)
	c, _ := Take(ctx, fake(dropping), false)
	require.Empty(t, Diff(a, b))
	require.NotEmpty(t, Diff(a, c), "a table that filters is a difference")
}
