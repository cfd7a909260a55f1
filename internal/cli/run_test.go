package cli

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPurgeDeletesServiceStateOnlyWhenNoRoleRuns(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "vpn", "ca", "ca.key")
	require.NoError(t, os.MkdirAll(filepath.Dir(key), 0o700))
	require.NoError(t, os.WriteFile(key, []byte("k"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "role.log"), []byte("log"), 0o644))

	unlock, err := lockStateDir(dir) // a running role holds the lock
	require.NoError(t, err)
	require.ErrorIs(t, Purge(dir), errAlreadyRunning)
	require.FileExists(t, key, "nothing deleted under a running role")
	unlock()

	require.NoError(t, Purge(dir))
	require.NoDirExists(t, filepath.Join(dir, "vpn"))
	require.FileExists(t, filepath.Join(dir, "role.log"), "logs stay")
	require.NoError(t, Purge(filepath.Join(dir, "missing")), "nothing to purge")
}

// The role's flags are checked before anything starts; each bad value is named.
func TestOptionsValidate(t *testing.T) {
	good := Options{Driver: "docker", StateDir: "/var/lib/cnsmo"}
	require.NoError(t, good.Validate())
	for _, c := range []struct {
		o    Options
		want string
	}{
		{Options{Driver: "podman", StateDir: "/s"}, `--driver: "podman" is not docker or exec`},
		{Options{Driver: "", StateDir: "/s"}, `--driver: "" is not docker or exec`},
		{Options{Driver: "exec", StateDir: ""}, `--state-dir: "" is not an absolute path`},
		{Options{Driver: "exec", StateDir: "state"}, `--state-dir: "state" is not an absolute path`},
		{Options{Driver: "exec", StateDir: "/s", Services: `["vpn","dns"]`}, `--services: net.services.enable[1]: unknown service "dns"`},
		{Options{Driver: "exec", StateDir: "/s", Services: `"vpn"`}, `--services: net.services.enable: the value must be a JSON list`},
	} {
		err := c.o.Validate()
		require.Error(t, err, "%+v", c.o)
		require.Contains(t, err.Error(), c.want)
	}
}
