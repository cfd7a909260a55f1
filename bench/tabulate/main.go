// Command tabulate renders bench/results.json and bench/pairs.json (written by the TestBench*
// tests through internal/benchreport) into BENCHMARKS.md, and copies the same table into the
// README between the markers <!-- bench:start --> and <!-- bench:end -->.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"

	"github.com/cnsmo/cnsmo/internal/benchreport"
)

func main() {
	dir := flag.String("dir", "bench", "directory holding results.json and pairs.json")
	out := flag.String("out", "BENCHMARKS.md", "markdown file to write")
	readme := flag.String("readme", "README.md", "README whose bench section is refreshed (empty: none)")
	flag.Parse()
	results, pairs, err := benchreport.Read(*dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "tabulate:", err)
		os.Exit(1)
	}
	if len(results) == 0 {
		fmt.Fprintln(os.Stderr, "tabulate: no results in", *dir)
		os.Exit(1)
	}
	table := Table(results, pairs)
	var b bytes.Buffer
	b.WriteString("# Benchmarks\n\nWritten by `make bench` from `bench/results.json`; every figure stands beside its\n")
	b.WriteString("baseline measured in the same run. Ratio = figure / baseline.\n\n")
	fmt.Fprintf(&b, "Machine: %s\n\n", machine())
	b.WriteString(table)
	if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "tabulate:", err)
		os.Exit(1)
	}
	if *readme != "" {
		if err := splice(*readme, table); err != nil {
			fmt.Fprintln(os.Stderr, "tabulate:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("tabulate: %d figures -> %s\n", len(results), *out)
}

// Table renders one row per figure that is not itself only a baseline.
func Table(results map[string]float64, pairs map[string]benchreport.Pair) string {
	isBaseline := map[string]bool{}
	for _, p := range pairs {
		if p.Baseline != "" {
			isBaseline[p.Baseline] = true
		}
	}
	var names []string
	for n := range results {
		if !isBaseline[n] || pairs[n].Baseline != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("| metric | value | baseline | baseline value | ratio | what |\n|---|---:|---|---:|---:|---|\n")
	for _, n := range names {
		p := pairs[n]
		base, bv, ratio := "", "", ""
		if p.Baseline != "" {
			base = "`" + p.Baseline + "`"
			v := results[p.Baseline]
			bv = num(v)
			if v != 0 {
				ratio = fmt.Sprintf("%.3g", results[n]/v)
			}
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s | %s |\n", n, num(results[n]), base, bv, ratio, p.Note)
	}
	return b.String()
}

func num(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d", int64(v))
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

func machine() string {
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.Index(l, ":"); i >= 0 {
					cpu = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
	}
	kernel := ""
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		kernel = ", Linux " + strings.TrimSpace(string(b))
	}
	return fmt.Sprintf("%d cores (%s)%s%s, %s", runtime.NumCPU(), cpu, mem, kernel, runtime.Version())
}

func splice(path, table string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	const start, end = "<!-- bench:start -->", "<!-- bench:end -->"
	i, j := strings.Index(s, start), strings.Index(s, end)
	if i < 0 || j < i {
		return nil // no section to refresh
	}
	s = s[:i+len(start)] + "\n" + table + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
