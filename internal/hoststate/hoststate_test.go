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
		"iptables-save":   "# Generated\n*filter\n:INPUT ACCEPT [10:200]\nCOMMIT\n",
		"ip6tables-save":  "",
		"ip -o link show": "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN\n",
		"ip netns list":   "",
	}
	after := map[string]string{
		"iptables-save":   "# Generated later\n*filter\n:INPUT ACCEPT [99:9999]\n:CNSMO-INPUT - [0:0]\nCOMMIT\n",
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
