package probe

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/testutil"
)

func TestProbeOnThisHost(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	testutil.RequireImage(t, FunctionImage)
	testutil.RequireImage(t, FirewallImage)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r := Probe(ctx)
	var b bytes.Buffer
	r.Print(&b)
	t.Log("\n" + b.String())
	for _, name := range []string{"tun", "docker", "container-net-admin", "container-tun", "iptables-host", "iptables-image"} {
		c, ok := r.Get(name)
		require.True(t, ok, name)
		require.True(t, c.OK, "%s: %s", name, c.Detail)
	}
}

func TestKind(t *testing.T) {
	require.Equal(t, "nf_tables", kind("iptables v1.8.9 (nf_tables)"))
	require.Equal(t, "legacy", kind("iptables v1.8.7 (legacy)"))
}
