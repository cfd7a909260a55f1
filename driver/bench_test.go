package driver_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/driver/execdriver"
	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/testutil"
)

// startUntilRunning starts a function and polls its status until it runs: the time a role
// waits for a network function to be up.
func startUntilRunning(t *testing.T, d driver.Driver, name string) time.Duration {
	ctx := context.Background()
	spec := driver.Spec{Name: name, Service: "bench", Image: "cnsmo/base:bookworm", Cmd: []string{"sleep", "60"}}
	start := time.Now()
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	for {
		st, err := d.Status(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == driver.StateRunning {
			break
		}
	}
	took := time.Since(start)
	if err := d.Remove(ctx, name); err != nil {
		t.Fatal(err)
	}
	return took
}

func medianMS(ds []time.Duration) float64 {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return float64(ds[len(ds)/2].Microseconds()) / 1000
}

// TestBenchDriverStart: container start time of the Docker driver beside the exec driver's
// process start, median of 15 each; and the time to build every image from nothing.
func TestBenchDriverStart(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	testutil.RequireDocker(t)
	testutil.RequireImage(t, "cnsmo/base:bookworm")
	owner := driver.Owner{Run: "bench", Instance: "host"}
	dd, err := dockerdriver.New(owner, dockerdriver.WithNetwork("none"))
	if err != nil {
		t.Fatal(err)
	}
	defer dd.Cleanup(context.Background()) //nolint:errcheck
	ed, err := execdriver.New(owner, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ed.Cleanup(context.Background()) //nolint:errcheck
	var dockerT, execT []time.Duration
	for i := 0; i < 15; i++ {
		dockerT = append(dockerT, startUntilRunning(t, dd, fmt.Sprint("d", i)))
		execT = append(execT, startUntilRunning(t, ed, fmt.Sprint("e", i)))
	}
	benchreport.Report(t, benchreport.Figure{Name: "driver_docker_start_ms", Value: medianMS(dockerT),
		Baseline: "driver_exec_start_ms", BaselineValue: medianMS(execT),
		Note: "Start of a function until its status is running, median of 15 (Docker Engine API vs host process)"})

	if os.Getenv("CNSMO_BENCH_IMAGES") == "1" { // rebuilds every image: minutes, opt-in
		start := time.Now()
		out, err := exec.Command("bash", "../images/build.sh", "--force").CombinedOutput()
		if err != nil {
			t.Fatalf("images/build.sh --force: %v\n%s", err, out)
		}
		benchreport.Report(t, benchreport.Figure{Name: "images_build_all_s", Value: time.Since(start).Seconds(),
			Note: "images/build.sh --force: debootstrap base + docker import + 4 function images, Debian archive over the network"})
	}
}
