// Command testsummary reads `go test -json` on stdin and prints what `go test` prints without -v
// (each package's ok/FAIL line, and the whole output of every failed test), then the slowest tests.
// It exits 1 when a test or a package failed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
)

type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

func main() {
	top := flag.Int("slowest", 15, "how many of the slowest tests to list")
	flag.Parse()
	type timing struct {
		name string
		secs float64
	}
	var slow []timing
	out := map[string][]string{} // package/test -> output lines, printed if it fails
	failed := false
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Println(sc.Text()) // not an event (a build error): as it came
			continue
		}
		key := e.Package + "/" + e.Test
		switch e.Action {
		case "output":
			if e.Test == "" {
				if strings.HasPrefix(e.Output, "ok") || strings.HasPrefix(e.Output, "FAIL") || strings.HasPrefix(e.Output, "?") ||
					strings.HasPrefix(e.Output, "panic") || strings.HasPrefix(e.Output, "---") {
					fmt.Print(e.Output)
				} else {
					out[key] = append(out[key], e.Output)
				}
				continue
			}
			out[key] = append(out[key], e.Output)
		case "pass":
			if e.Test != "" && !strings.Contains(e.Test, "/") {
				slow = append(slow, timing{e.Package + "." + e.Test, e.Elapsed})
			}
			delete(out, key)
		case "fail":
			failed = true
			if e.Test != "" {
				fmt.Print(strings.Join(out[key], ""))
			} else {
				fmt.Print(strings.Join(out[key], "")) // package-level output (a panic, TestMain)
			}
			delete(out, key)
		case "skip":
			delete(out, key)
		case "build-output":
			fmt.Print(e.Output)
		case "build-fail":
			failed = true
		}
	}
	sort.Slice(slow, func(i, j int) bool { return slow[i].secs > slow[j].secs })
	if len(slow) > *top {
		slow = slow[:*top]
	}
	fmt.Printf("\nslowest tests:\n")
	for _, s := range slow {
		fmt.Printf("  %7.1fs  %s\n", s.secs, strings.TrimPrefix(s.name, "github.com/cnsmo/cnsmo/"))
	}
	if failed {
		os.Exit(1)
	}
}
