package testbed_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

// TestBenchTestbedStart: time to create 10 VMs in two clouds (routers and NAT included), beside
// ten times the time to create a testbed of one VM.
func TestBenchTestbedStart(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	testutil.RequireRoot(t)
	testutil.RequireDocker(t)
	ctx := context.Background()
	timeIt := func(clouds []testbed.CloudSpec) time.Duration {
		start := time.Now()
		tb, err := testbed.Create(ctx, testbed.Options{Clouds: clouds})
		took := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
		return took
	}
	var a, b []string
	for i := 0; i < 5; i++ {
		a, b = append(a, fmt.Sprint("a", i)), append(b, fmt.Sprint("b", i))
	}
	ten := timeIt([]testbed.CloudSpec{{Name: "a", VMs: a}, {Name: "b", VMs: b}})
	one := timeIt([]testbed.CloudSpec{{Name: "a", VMs: []string{"x"}}})
	benchreport.Report(t, benchreport.Figure{Name: "testbed_start_10vms_ms", Value: float64(ten.Milliseconds()),
		Baseline: "testbed_start_1vm_x10_ms", BaselineValue: float64(10 * one.Milliseconds()),
		Note: "testbed.Create of 10 VMs in 2 clouds vs 10 × a one-VM testbed (each with its internet and router)"})
}
