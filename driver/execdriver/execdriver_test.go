package execdriver_test

import (
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
