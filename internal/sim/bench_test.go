package sim

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/internal/benchreport"
)

type measured struct {
	converge, abort                     time.Duration
	bytesPerAgent, reqsPerAgent, bytesS float64 // per second at steady state
}

// measure runs 1 server + n agents with the real 3 s steady poll: time to converge, then a 30 s
// window of steady state (mocknuvla's per-client counters), then an abort until the last teardown.
func measure(t *testing.T, n int, wholeRun bool) measured {
	return measureOn(t, n, wholeRun, "slipstream")
}

func measureOn(t *testing.T, n int, wholeRun bool, api string) measured {
	t.Helper()
	start := time.Now()
	s, err := Start(Config{Agents: n, WholeRun: wholeRun, API: api})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := s.WaitConverged(ctx); err != nil {
		t.Fatal(err)
	}
	var m measured
	m.converge = time.Since(start)
	for _, r := range s.Agents { // settled: every agent has made two passes since
		waitPasses(t, ctx, r, 0)
	}
	// Settled: the last generation bump read by every agent, and (Nuvla 2) its search caught up.
	waitPasses(t, ctx, s.Agents[0], 4)
	s.Mock.ResetCounters()
	window := 30 * time.Second
	select { // a fixed measurement window, not a wait for a condition
	case <-time.After(window):
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	reqs, bytes := s.Mock.ClientCounters(), s.Mock.ClientBytes()
	var tb, tr float64
	for _, r := range s.Agents {
		tb += float64(bytes[r.Addr])
		tr += float64(reqs[r.Addr])
	}
	var all float64
	for _, b := range bytes {
		all += float64(b)
	}
	secs := window.Seconds()
	m.bytesPerAgent, m.reqsPerAgent, m.bytesS = tb/float64(n)/secs, tr/float64(n)/secs, all/secs
	at := time.Now()
	if err := s.Abort("bench: abort"); err != nil {
		t.Fatal(err)
	}
	for !s.Done() {
		select {
		case <-ctx.Done():
			t.Fatal("not torn down")
		case <-time.After(20 * time.Millisecond):
		}
	}
	var last time.Time
	for _, r := range append(s.Agents, s.Server) {
		if r.TornDown().After(last) {
			last = r.TornDown()
		}
	}
	m.abort = last.Sub(at)
	t.Logf("%s n=%d wholeRun=%v: converge %s, %.0f B/s and %.3f req/s per agent, store %.0f B/s, abort torn down in %s",
		api, n, wholeRun, m.converge.Round(time.Millisecond), m.bytesPerAgent, m.reqsPerAgent, m.bytesS, m.abort.Round(time.Millisecond))
	return m
}

// TestBenchControlPlane: what the control plane costs at steady state as the deployment grows,
// with the generation key against whole-run reads by every agent (the design before it).
func TestBenchControlPlane(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	n10 := measure(t, 10, false)
	n200 := measure(t, 200, false)
	whole := measure(t, 200, true)
	n2 := measureOn(t, 200, false, "nuvla2")
	benchreport.Report(t,
		benchreport.Figure{Name: "steady_bytes_per_agent_s_n200", Value: round(n200.bytesPerAgent),
			Baseline: "steady_bytes_per_agent_s_n10", BaselineValue: round(n10.bytesPerAgent),
			Note: "bytes one agent receives from the store per second at steady state (mean over agents, 30 s window, mocknuvla's per-client counters), 1+200 vs 1+10; simulated roles (real loops and client, fake services)"},
		benchreport.Figure{Name: "steady_requests_per_agent_s_n200", Value: round3(n200.reqsPerAgent),
			Baseline: "steady_requests_per_agent_s_n200_wholerun", BaselineValue: round3(whole.reqsPerAgent),
			Note: "requests per second of one agent at steady state, 1+200: the generation key vs a whole-run read per pass"},
		benchreport.Figure{Name: "steady_store_bytes_s_n200", Value: round(n200.bytesS),
			Baseline: "steady_store_bytes_s_n200_wholerun", BaselineValue: round(whole.bytesS),
			Note: "bytes per second the store serves to every role of 1+200 at steady state: the generation key vs a whole-run read per agent pass"},
		benchreport.Figure{Name: "converge_1plus200_s", Value: round3(n200.converge.Seconds()),
			Baseline: "converge_1plus10_s", BaselineValue: round3(n10.converge.Seconds()),
			Note: "simulated 1+200 (1+10) from start to every net.services.enabled"},
		benchreport.Figure{Name: "abort_teardown_max_s_n200", Value: round3(n200.abort.Seconds()),
			Baseline: "abort_teardown_max_s_n10", BaselineValue: round3(n10.abort.Seconds()),
			Note: "abort raised to the last simulated role's teardown, 1+200 (1+10)"},
		benchreport.Figure{Name: "converge_1plus200_s_nuvla2", Value: round3(n2.converge.Seconds()),
			Baseline: "converge_1plus200_s", BaselineValue: round3(n200.converge.Seconds()),
			Note: "simulated 1+200 on Nuvla 2 (a deployment group on mocknuvla's Nuvla 2 API, search staleness 1 s, every member logged in with its key) vs on SlipStream"},
		benchreport.Figure{Name: "steady_bytes_per_agent_s_n200_nuvla2", Value: round(n2.bytesPerAgent),
			Baseline: "steady_bytes_per_agent_s_n200", BaselineValue: round(n200.bytesPerAgent),
			Note: "bytes one agent receives per second at steady state, 1+200, Nuvla 2 (a JSON parameter a pass, the abort parameter every other pass) vs SlipStream"},
		benchreport.Figure{Name: "steady_requests_per_agent_s_n200_nuvla2", Value: round3(n2.reqsPerAgent),
			Baseline: "steady_requests_per_agent_s_n200", BaselineValue: round3(n200.reqsPerAgent),
			Note: "requests per second of one agent at steady state, 1+200, Nuvla 2 vs SlipStream"},
		benchreport.Figure{Name: "abort_teardown_max_s_n200_nuvla2", Value: round3(n2.abort.Seconds()),
			Baseline: "abort_teardown_max_s_n200", BaselineValue: round3(n200.abort.Seconds()),
			Note: "abort (cnsmo.abort under the hub: Nuvla 2 has no abort flag) to the last simulated role's teardown, 1+200, vs SlipStream"},
	)
}

func round(v float64) float64  { return float64(int64(v*10+0.5)) / 10 }
func round3(v float64) float64 { r, _ := fmt.Sscanf(fmt.Sprintf("%.3f", v), "%g", &v); _ = r; return v }
