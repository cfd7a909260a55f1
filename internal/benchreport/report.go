// Package benchreport records benchmark figures, each beside the baseline measured in the same
// run, into bench/results.json (metric name -> number, unit in the name) and bench/pairs.json
// (metric -> its baseline and a note), from which `make bench` renders BENCHMARKS.md.
package benchreport

import (
	"encoding/json"
	"errors"
	"fmt"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Figure is one measured metric and, when it has one, its same-run baseline.
type Figure struct {
	Name          string  // e.g. "fw_apply_1000_rules_ms"
	Value         float64 //
	Baseline      string  // e.g. "fw_apply_1000_rules_per_rule_iptables_ms"; empty if none
	BaselineValue float64 //
	Note          string  // one line: what was measured and how
}

// Pair is what pairs.json keeps per metric.
type Pair struct {
	Baseline string `json:"baseline,omitempty"`
	Note     string `json:"note,omitempty"`
}

// Dir is where results.json and pairs.json live: $CNSMO_BENCH_DIR, else <module root>/bench.
func Dir() (string, error) {
	if d := os.Getenv("CNSMO_BENCH_DIR"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, "bench"), nil
		}
		if filepath.Dir(d) == d {
			return "", errors.New("benchreport: no go.mod above " + wd)
		}
	}
}

// Report merges the figures into the files, under a file lock so parallel packages can report.
func Report(t testing.TB, figs ...Figure) {
	t.Helper()
	if err := Write(figs...); err != nil {
		t.Fatalf("benchreport: %v", err)
	}
	for _, f := range figs {
		if f.Baseline != "" {
			t.Logf("bench %s = %.3f (baseline %s = %.3f)", f.Name, f.Value, f.Baseline, f.BaselineValue)
		} else {
			t.Logf("bench %s = %.3f", f.Name, f.Value)
		}
	}
}

// Write merges the figures into results.json and pairs.json.
func Write(figs ...Figure) error {
	dir, err := Dir()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) //nolint:errcheck

	results := map[string]float64{}
	pairs := map[string]Pair{}
	if err := readJSON(filepath.Join(dir, "results.json"), &results); err != nil {
		return err
	}
	if err := readJSON(filepath.Join(dir, "pairs.json"), &pairs); err != nil {
		return err
	}
	for _, f := range figs {
		if f.Name == "" {
			return errors.New("benchreport: figure without a name")
		}
		results[f.Name] = f.Value
		if f.Baseline != "" {
			results[f.Baseline] = f.BaselineValue
		}
		pairs[f.Name] = Pair{Baseline: f.Baseline, Note: f.Note}
	}
	if err := writeJSON(filepath.Join(dir, "results.json"), results); err != nil {
		return err
	}
	return writeJSON(filepath.Join(dir, "pairs.json"), pairs)
}

// Read loads results.json and pairs.json.
func Read(dir string) (map[string]float64, map[string]Pair, error) {
	results := map[string]float64{}
	pairs := map[string]Pair{}
	if err := readJSON(filepath.Join(dir, "results.json"), &results); err != nil {
		return nil, nil, err
	}
	if err := readJSON(filepath.Join(dir, "pairs.json"), &pairs); err != nil {
		return nil, nil, err
	}
	return results, pairs, nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o644)
}
