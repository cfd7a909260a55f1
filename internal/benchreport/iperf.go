package benchreport

import (
	"encoding/json"
	"fmt"
)

// IperfMbps reads the received throughput (Mbit/s) of an `iperf3 -J` run; an error when iperf3
// reported one (3.12 exits 0 with "error" in its JSON) or received nothing.
func IperfMbps(out []byte) (float64, error) {
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("iperf3: %w", err)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	if res.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3: nothing received")
	}
	return res.End.SumReceived.BitsPerSecond / 1e6, nil
}
