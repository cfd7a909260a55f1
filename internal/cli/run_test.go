package cli

import (
	"io"
	"os"
	"path/filepath"
	"strings"
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
	for _, h := range []string{"", "none", "/etc/hosts"} {
		require.NoError(t, Options{Driver: "exec", StateDir: "/s", Hosts: h}.Validate(), h)
	}
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
		{Options{Driver: "exec", StateDir: "/s", Hosts: "etc/hosts"}, `--hosts-file: "etc/hosts" is not an absolute path (or none)`},
	} {
		err := c.o.Validate()
		require.Error(t, err, "%+v", c.o)
		require.Contains(t, err.Error(), c.want)
	}
}

// cnsmo-role join and leave name what is wrong with their arguments before reaching the run.
func TestJoinArguments(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"join"}, "accepts 1 arg(s), received 0"},
		{[]string{"join", "Alice"}, `NAME "Alice": a person's name is 1-32 lower-case letters`},
		{[]string{"join", "a.b"}, `NAME "a.b"`},
		{[]string{"join", "-x"}, `unknown shorthand flag`},
		{[]string{"leave", strings.Repeat("a", 33)}, "a person's name is 1-32"},
		{[]string{"join", "alice", "--bogus"}, "unknown flag: --bogus"},
	} {
		root := NewRoot()
		root.SetArgs(c.args)
		root.SetOut(io.Discard)
		root.SetErr(io.Discard)
		err := root.Execute()
		require.Error(t, err, "%v", c.args)
		require.Contains(t, err.Error(), c.want, "%v", c.args)
	}
}
