// Package e2e runs whole deployments: mocknuvla on the host, the real recipes and cnsmo-role on
// simulated VMs of the testbed.
package e2e

import (
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/testbed"
)

func requireBin(t *testing.T) {
	t.Helper()
	if os.Getenv("CNSMO_BIN") == "" {
		if os.Getenv("CNSMO_REQUIRE_ALL") == "1" {
			t.Fatal("CNSMO_BIN is not set (make test sets it to the built bin/)")
		}
		t.Skip("skipping: needs CNSMO_BIN, the built binaries (make test sets it)")
	}
}

// vmState is what a role could leave behind inside a VM.
func vmState(t *testing.T, ctx context.Context, vm *testbed.VM) hoststate.Snapshot {
	t.Helper()
	s, err := deploy.VMState(ctx, vm)
	require.NoError(t, err)
	return s
}

// The seed's deployment, automated: a CNSMO server and three application VMs, each in a cloud of its own,
// firewall and load balancer through the real recipes; then a fourth VM joins by scale-out; then
// every role stops and each VM is as before.
func TestFullDeployment(t *testing.T) {
	for _, drv := range []string{"docker", "exec"} {
		t.Run(drv, func(t *testing.T) {
			requireBin(t)
			testutil.RequireImage(t, "cnsmo/fw:latest")
			testutil.RequireImage(t, "cnsmo/haproxy:latest")
			tb := testbed.New(t, testbed.Options{Clouds: deploy.FullClouds})
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			before := state(t, ctx, tb)
			var progress strings.Builder
			report, d, err := deploy.RunScenario(ctx, tb, deploy.Config{Driver: drv, Progress: &progress, Throughput: true, People: drv == "docker"})
			if d != nil {
				defer d.Close(ctx)
			}
			requireScenarioPassed(t, ctx, report, d, err, progress.String())
			require.NotEmpty(t, report.LBURL, "ss:url.service is published")
			// The onstop recipe (`cnsmo-role stop`: SIGTERM, then wait for the teardown) on every VM.
			for _, in := range d.Instances() {
				t0 := time.Now()
				_, err := d.Recipe(ctx, in, "onstop.sh")
				require.NoError(t, err, "onstop on %s", in)
				require.Less(t, time.Since(t0), 10*time.Second, "the role of %s removed what it created within 10 s", in)
			}
			requireSameState(t, ctx, tb, before, "after stop")
		})
	}
}

// state is what a deployment on tb could leave behind (deploy.State).
// requireScenarioPassed fails with the report, the progress and every role's logs when the
// scenario could not run to its end or a check failed.
func requireScenarioPassed(t *testing.T, ctx context.Context, report *deploy.Report, d *deploy.Deployment, err error, progress string) {
	t.Helper()
	if err == nil && report.Pass() {
		return
	}
	var b strings.Builder
	report.Print(&b)
	if d != nil {
		for _, in := range d.Instances() {
			b.WriteString("\n-- " + in + "\n" + d.Logs(ctx, in))
		}
	}
	t.Fatalf("deployment: %v\nfailures: %v\n%s\n%s", err, report.Failures, progress, b.String())
}

func state(t *testing.T, ctx context.Context, tb *testbed.Testbed) map[string]hoststate.Snapshot {
	t.Helper()
	s, err := deploy.State(ctx, tb)
	require.NoError(t, err)
	return s
}

// requireSameState fails with the differences of every VM and the host from before.
func requireSameState(t *testing.T, ctx context.Context, tb *testbed.Testbed, before map[string]hoststate.Snapshot, what string) {
	t.Helper()
	require.Empty(t, deploy.StateDiff(before, state(t, ctx, tb)), "%s: differences from before the run", what)
}

// watchCreates records, from now until the returned function is called, every container the
// engine creates (a live event stream: nothing is missed however busy the engine is). The
// function returns the names of those labelled with run (and instance, when not "").
func watchCreates(t *testing.T, tb *testbed.Testbed) func(run, instance string) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	msgs, errs := tb.Docker().Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)), filters.Arg("event", string(events.ActionCreate)))})
	var mu sync.Mutex
	var seen []events.Message
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-msgs:
				mu.Lock()
				seen = append(seen, m)
				mu.Unlock()
			case <-errs:
				return // cancelled
			}
		}
	}()
	t.Cleanup(cancel)
	return func(run, instance string) []string {
		// Called once the roles have exited: their creates are long in the stream.
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		var out []string
		for _, m := range seen {
			a := m.Actor.Attributes
			if a["cnsmo.run"] == run && (instance == "" || a["cnsmo.instance"] == instance) {
				out = append(out, a["name"])
			}
		}
		return out
	}
}
