// Package testutil holds the skip helpers every test that needs a capability uses. A skip always
// prints why. When CNSMO_REQUIRE_ALL=1 (set by .ci/run), a missing capability fails the test
// instead: CI installs everything, so a skip there would hide a broken install step.
package testutil

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CNSMO_REQUIRE_ALL") == "1" {
		t.Fatalf("required capability missing (CNSMO_REQUIRE_ALL=1): "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// RequireRoot skips unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root (uid %d)", os.Geteuid())
	}
}

// RequireBinary skips unless every named program is on PATH.
func RequireBinary(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			skipOrFail(t, "needs %q on PATH (install the Debian package; .ci/run does): %v", n, err)
		}
	}
}

// RequireDocker skips unless a Docker engine answers.
func RequireDocker(t testing.TB) {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		skipOrFail(t, "needs a Docker engine: %v", err)
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		skipOrFail(t, "needs a Docker engine: %v", err)
	}
}

// RequireImage skips unless the Docker image exists locally (build it with `make images`).
func RequireImage(t testing.TB, ref string) {
	t.Helper()
	RequireDocker(t)
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		skipOrFail(t, "needs a Docker engine: %v", err)
		return
	}
	defer cli.Close()
	if _, err := cli.ImageInspect(context.Background(), ref); err != nil {
		skipOrFail(t, "needs image %s (run `make images`): %v", ref, err)
	}
}
