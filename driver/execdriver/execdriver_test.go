package execdriver_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/drivertest"
	"github.com/cnsmo/cnsmo/driver/execdriver"
)

func TestSuite(t *testing.T) {
	state := t.TempDir()
	drivertest.Run(t, drivertest.Config{
		New: func(t *testing.T, o driver.Owner) driver.Driver {
			d, err := execdriver.New(o, state)
			if err != nil {
				t.Fatal(err)
			}
			return d
		},
		Leftovers: func(t *testing.T, o driver.Owner) []string {
			var out []string
			dir := filepath.Join(state, driver.SafeName(o.Run), driver.SafeName(o.Instance))
			if _, err := os.Stat(dir); err == nil {
				out = append(out, dir)
			}
			if _, err := os.Stat("/tmp/cnsmo-suite-" + o.Instance + "/conf"); err == nil {
				out = append(out, "file written by a spec")
			}
			if _, err := os.Stat("/tmp/cnsmo-suite-oneshot-" + o.Instance); err == nil {
				out = append(out, "/tmp/cnsmo-suite-oneshot-"+o.Instance)
			}
			return out
		},
	})
}

// A symlink planted where a temporary file could go is never followed: the file lands at its
// path with its mode, and the symlink's target is untouched.
func TestPutFilesNeverFollowsAPlantedSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "victim")
	if err := os.WriteFile(target, []byte("keep\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "fn", "server.key")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{path + ".cnsmo-tmp", path + ".tmp", filepath.Join(filepath.Dir(path), ".server.key.tmp")} {
		if err := os.Symlink(target, name); err != nil {
			t.Fatal(err)
		}
	}
	d, err := execdriver.New(driver.Owner{Run: "r", Instance: "web.1"}, filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	spec := driver.Spec{Name: "fn", Service: "vpn", Cmd: []string{"sleep", "30"}, Files: []driver.File{{Path: path, Mode: 0o600, Data: []byte("secret\n")}}}
	if err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Remove(context.Background(), "fn") })
	if err := d.PutFiles(ctx, "fn", []driver.File{{Path: path, Mode: 0o600, Data: []byte("secret 2\n")}}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep\n" {
		t.Fatalf("the symlink's target was written: %q", b)
	}
	st, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || !st.Mode().IsRegular() {
		t.Fatalf("%s: mode %v", path, st.Mode())
	}
	if b, _ := os.ReadFile(path); string(b) != "secret 2\n" {
		t.Fatalf("content %q", b)
	}
}
