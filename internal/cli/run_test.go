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
