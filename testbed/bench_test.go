package testbed_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

// TestBenchTestbedStart: time to create 10 VMs in two clouds (containers, routers, veths, NAT;
// until every VM is plumbed), beside ten times the time to create a testbed of one VM (the cost
// of starting VMs one at a time); the median of 3 trials each. Teardown is reported too.
func TestBenchTestbedStart(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	testutil.RequireImage(t, testbed.DefaultImage)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const trials = 3
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Milliseconds())
	}
	timeIt := func(clouds []testbed.CloudSpec) (start, stop float64) {
		var starts, stops []time.Duration
		for i := 0; i < trials; i++ {
			t0 := time.Now()
			tb, err := testbed.Create(ctx, testbed.Options{Clouds: clouds})
			starts = append(starts, time.Since(t0))
			if err != nil {
				t.Fatal(err)
			}
			// Every VM reaches the host: the testbed is really up.
			for _, vm := range tb.VMs() {
				if _, _, err := vm.Exec(ctx, "ping", "-c", "1", "-W", "2", tb.HostAddr()); err != nil {
					t.Fatalf("%s: %v", vm.Name, err)
				}
			}
			t1 := time.Now()
			if err := tb.Close(); err != nil {
				t.Fatal(err)
			}
			stops = append(stops, time.Since(t1))
		}
		return median(starts), median(stops)
	}
	var a, b []string
	for i := 0; i < 5; i++ {
		a, b = append(a, fmt.Sprint("a", i)), append(b, fmt.Sprint("b", i))
	}
	ten, tenStop := timeIt([]testbed.CloudSpec{{Name: "a", VMs: a}, {Name: "b", VMs: b}})
	one, oneStop := timeIt([]testbed.CloudSpec{{Name: "a", VMs: []string{"x"}}})
	benchreport.Report(t,
		benchreport.Figure{Name: "testbed_start_10vms_ms", Value: ten,
			Baseline: "testbed_start_1vm_x10_ms", BaselineValue: 10 * one,
			Note: "testbed.Create of 10 VMs in 2 clouds (containers started in parallel, netlink plumbing, NAT) vs 10 x a one-VM testbed; median of 3"},
		benchreport.Figure{Name: "testbed_close_10vms_ms", Value: tenStop,
			Baseline: "testbed_close_1vm_x10_ms", BaselineValue: 10 * oneStop,
			Note: "Close of the same testbeds (every container of the slot force-removed, host link deleted); median of 3"})
}
