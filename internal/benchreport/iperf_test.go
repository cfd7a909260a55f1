package benchreport

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestIperfMbps(t *testing.T) {
	v, err := IperfMbps([]byte(`{"end":{"sum_received":{"bits_per_second":1.5e9}}}`))
	require.NoError(t, err)
	require.InDelta(t, 1500, v, 0.001)
	for name, out := range map[string]string{
		"not json":      "iperf3: error",
		"error, exit 0": `{"start":{"connected":[]},"end":{},"error":"unable to connect to server: Connection refused"}`,
		"nothing":       `{"end":{"sum_received":{"bits_per_second":0}}}`,
		"empty":         ``,
	} {
		_, err := IperfMbps([]byte(out))
		require.Error(t, err, name)
	}
}
