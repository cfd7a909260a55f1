package fw

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/cnsmo/cnsmo/internal/benchreport"
)

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func manyRules(n int, blocked string) []Rule {
	var rules []Rule
	for i := 0; i < n-1; i++ {
		rules = append(rules, Rule{Dir: "in", Proto: "tcp", DstPorts: fmt.Sprint(20000 + i), Action: "ACCEPT", MatchSrc: true})
	}
	return append(rules, Rule{Dir: "in", Proto: "tcp", DstPorts: blocked, Action: "DROP", MatchSrc: true})
}

// TestBenchFirewall: 1000 rules applied by one restore per family (with readback) against one
// `iptables -A` call per rule, as the original did minus its docker run; and the packets that
// reach a dropped port while a 1000-rule set is swapped 100 times under a steady probe.
func TestBenchFirewall(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	p := twoHosts(t)
	ctx := context.Background()
	ap := &Applier{Driver: nsDriver{ns: p.srv}}
	rules := manyRules(1000, "8081")

	start := time.Now()
	if err := ap.Apply(ctx, rules, Options{}); err != nil {
		t.Fatal(err)
	}
	ours := time.Since(start)
	// The per-pass comparison with the kernel (both families, the way every steady pass does it)
	// against the kernel's floor for writing the same rules: one bare iptables-restore of the
	// rendered IPv4 set. Medians of 5.
	var checks, bare []time.Duration
	for i := 0; i < 5; i++ {
		start = time.Now()
		drift, err := ap.Check(ctx, rules, Options{})
		checks = append(checks, time.Since(start))
		if err != nil || drift != "" {
			t.Fatalf("check: %q %v", drift, err)
		}
	}
	if err := ap.Teardown(ctx); err != nil {
		t.Fatal(err)
	}
	input := RestoreInput(Render(rules, Options{}, false), Jumps{In: 1, Out: 1, InFirst: true, OutFirst: true}) // chains only: no jump touched
	for i := 0; i < 5; i++ {
		cmd := exec.Command("ip", "netns", "exec", p.srv, "iptables-restore", "-w", "--noflush")
		cmd.Stdin = strings.NewReader(input)
		start = time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("bare restore: %v: %s", err, out)
		}
		bare = append(bare, time.Since(start))
		sh(t, "ip", "netns", "exec", p.srv, "sh", "-c", "iptables -F CNSMO-INPUT; iptables -F CNSMO-OUTPUT; iptables -X CNSMO-INPUT; iptables -X CNSMO-OUTPUT")
	}
	start = time.Now()
	for _, l := range Render(rules, Options{}, false) {
		if l[:2] == "-N" {
			sh(t, "ip", "netns", "exec", p.srv, "iptables", "-N", l[3:])
			continue
		}
		args := append([]string{"netns", "exec", p.srv, "iptables"}, strings.Fields(l)...)
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", args, out)
		}
	}
	perRule := time.Since(start)
	sh(t, "ip", "netns", "exec", p.srv, "sh", "-c", "iptables -F CNSMO-INPUT; iptables -F CNSMO-OUTPUT; iptables -X CNSMO-INPUT; iptables -X CNSMO-OUTPUT")

	// Swap two 1000-rule sets (both drop 8081) 100 times while a probe connects to 8081.
	other := manyRules(1000, "8081")
	other[0].DstPorts = "19999"
	if err := ap.Apply(ctx, rules, Options{}); err != nil {
		t.Fatal(err)
	}
	var leaked, attempts atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the probe's sockets live in the client's namespace
		h, err := netns.GetFromName(p.cli)
		if err != nil {
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			return
		}
		for i := 0; i < 100000; i++ { // bounded; ends when the swaps end
			select {
			case <-stop:
				return
			default:
			}
			attempts.Add(1)
			c, err := net.DialTimeout("tcp", "198.18.250.2:8081", 20*time.Millisecond)
			if err == nil {
				leaked.Add(1)
				c.Close()
			}
		}
	}()
	for i := 0; i < 100; i++ {
		set := rules
		if i%2 == 0 {
			set = other
		}
		if err := ap.Apply(ctx, set, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
	_ = ap.Teardown(ctx)
	if attempts.Load() == 0 {
		t.Fatal("the probe never ran")
	}
	benchreport.Report(t,
		benchreport.Figure{Name: "fw_apply_1000_rules_ms", Value: float64(ours.Microseconds()) / 1000,
			Baseline: "fw_apply_1000_rules_per_rule_iptables_ms", BaselineValue: float64(perRule.Microseconds()) / 1000,
			Note: "1000 rules: read, one iptables-restore per family, read back (nf_tables, in a namespace) vs one iptables -A per rule"},
		benchreport.Figure{Name: "fw_drift_check_1000_rules_ms", Value: ms(median(checks)),
			Baseline: "fw_restore_1000_rules_bare_ms", BaselineValue: ms(median(bare)),
			Note: "the steady pass's comparison of cnsmo's chains with the kernel (iptables -S, both families, 1000 rules) vs one bare iptables-restore of the same 1000 IPv4 rules (medians of 5)"},
		benchreport.Figure{Name: "fw_swap_leaked_packets", Value: float64(leaked.Load()),
			Note: fmt.Sprintf("connections that reached the dropped port while a 1000-rule set was swapped 100 times (%d probes)", attempts.Load())},
	)
}
