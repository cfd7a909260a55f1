package fw

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/cnsmo/cnsmo/internal/benchreport"
)

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
	if err := ap.Teardown(ctx); err != nil {
		t.Fatal(err)
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
		benchreport.Figure{Name: "fw_swap_leaked_packets", Value: float64(leaked.Load()),
			Note: fmt.Sprintf("connections that reached the dropped port while a 1000-rule set was swapped 100 times (%d probes)", attempts.Load())},
	)
}
