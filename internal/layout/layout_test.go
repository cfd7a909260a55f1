package layout

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/cnsmo/cnsmo"

// root is the repository's root (this package is internal/layout).
func root(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	require.NoError(t, err)
	return filepath.Join(wd, "..", "..")
}

// The services (roles/...) and the orchestrator depend on the store interface only: no package
// of theirs imports the SlipStream client or any backend, even indirectly.
func TestServicesAndOrchestratorKnowNoBackend(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("needs the go tool")
	}
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, module+"/roles/...", module+"/orchestrator/...")
	cmd.Dir = root(t)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.GreaterOrEqual(t, len(lines), 5, "the packages are listed")
	for _, l := range lines {
		f := strings.Fields(l)
		for _, dep := range f[1:] {
			for _, banned := range []string{module + "/ssclient", module + "/backend/", module + "/mocknuvla"} {
				require.False(t, dep == banned || strings.HasPrefix(dep, banned), "%s imports %s", f[0], dep)
			}
		}
	}
}

// Each shared helper has one definition; the patterns find a hand-written copy.
func TestEachHelperHasOneDefinition(t *testing.T) {
	helpers := []struct {
		what    string
		pattern *regexp.Regexp
		home    string // the one file allowed to hold it
	}{
		{"an atomic write (rename over the target)", regexp.MustCompile(`os\.Rename\(`), "internal/atomicfile/atomicfile.go"},
		{"a port check (1-65535)", regexp.MustCompile(`>\s*65535`), "roles/role/input.go"},
		{"a wait with backoff", regexp.MustCompile(`backoff\.NewExponentialBackOff\(`), "internal/wait/wait.go"},
		{"a test's eventually", regexp.MustCompile(`func eventually\(`), ""},
		{"a publish-if-changed", regexp.MustCompile(`func (publish|setIfChanged|publishIfChanged)\(`), ""},
	}
	// Allowed elsewhere: the reconcile loop's own pacing and the HTTP client's retries are not
	// waits for a condition.
	allowed := map[string]bool{"orchestrator/loop.go": true, "ssclient/client.go": true}
	found := map[string][]string{}
	err := filepath.WalkDir(root(t), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "vendor") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root(t), path)
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, h := range helpers {
			if h.pattern.Match(b) && rel != h.home && !(allowed[rel] && h.home == "internal/wait/wait.go") {
				found[h.what] = append(found[h.what], rel)
			}
		}
		return nil
	})
	require.NoError(t, err)
	for _, h := range helpers {
		require.Empty(t, found[h.what], "%s is written by hand here (use %s)", h.what, h.home)
	}
}
