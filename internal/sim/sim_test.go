package sim

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// 1 server and 50 agents: they converge; at steady state an agent reads one small key per pass
// (its traffic does not grow with the run); a change of one agent's rules is applied within two
// of its passes (one of the server's in between; a pass already under way when the value changed
// is not counted); an abort is torn down within two passes of every role. Counted, not timed.
func TestSimulation50(t *testing.T) {
	s, err := Start(Config{Agents: 50, Steady: 200 * time.Millisecond})
	require.NoError(t, err)
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, s.WaitConverged(ctx))

	// Steady state: a few passes to settle, then count what the agents ask for.
	a := s.Agents[7]
	for _, tr := range steadyTraffic(t, ctx, s, a, 4) {
		require.LessOrEqual(t, tr.reqs, tr.passes+1, "%s: one request a pass at steady state", tr.instance)
		if tr.reqs > 0 {
			require.Less(t, tr.bytes/tr.reqs, int64(200), "%s: a small key, not the whole run", tr.instance)
		}
	}

	// A change of one agent's rules.
	rules := `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`
	before := a.Passes()
	require.NoError(t, s.SetRules(a, rules))
	require.Eventually(t, func() bool { return a.Rules() == rules }, time.Minute, 10*time.Millisecond)
	require.LessOrEqual(t, a.Passes()-before, int64(3), "applied within two passes of the agent (+ the one under way)")

	// An abort: every role tears down within two of its passes.
	for inst, passes := range passesToAbort(t, s) {
		require.LessOrEqual(t, passes, int64(3), "%s tore down within two passes (+ the one under way)", inst)
	}
}

// The same on Nuvla 2 (20 agents, search staleness on): they converge; at steady state an agent
// reads one small value per pass and the abort parameter every other pass (Nuvla 2 has no 409 on
// an aborted deployment); a change of one agent's rules is applied; an abort is torn down within
// three passes of every role (two generation reads, + the pass under way).
func TestSimulationNuvla2(t *testing.T) {
	s, err := Start(Config{Agents: 20, Steady: 200 * time.Millisecond, API: "nuvla2"})
	require.NoError(t, err)
	defer s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, s.WaitConverged(ctx))

	a := s.Agents[3]
	// settled: the searches have caught up with the last writes (1 s)
	for _, tr := range steadyTraffic(t, ctx, s, a, 15) {
		require.LessOrEqual(t, tr.reqs, 3*(tr.passes+1)/2+1, "%s: a value a pass and the abort every other pass", tr.instance)
		if tr.reqs > 0 {
			require.Less(t, tr.bytes/tr.reqs, int64(1500), "%s: one parameter, not the whole deployment", tr.instance)
		}
	}

	rules := `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`
	require.NoError(t, s.SetRules(a, rules))
	require.Eventually(t, func() bool { return a.Rules() == rules }, time.Minute, 10*time.Millisecond)

	for inst, passes := range passesToAbort(t, s) {
		require.LessOrEqual(t, passes, int64(4), "%s tore down within three passes (+ the one under way)", inst)
	}
}

// traffic is what one agent asked the store for during a steady window.
type traffic struct {
	instance            string
	reqs, bytes, passes int64
}

// steadyTraffic lets agent a make settle passes, then counts every agent's requests and bytes
// (mocknuvla's per-client counters) while a makes 10 more.
func steadyTraffic(t *testing.T, ctx context.Context, s *Sim, a *Role, settle int64) []traffic {
	t.Helper()
	waitPasses(t, ctx, a, settle)
	s.Mock.ResetCounters()
	from := map[string]int64{}
	for _, r := range s.Agents {
		from[r.Instance] = r.Passes()
	}
	waitPasses(t, ctx, a, 10)
	reqs, bytes := s.Mock.ClientCounters(), s.Mock.ClientBytes()
	var out []traffic
	for _, r := range s.Agents {
		out = append(out, traffic{instance: r.Instance, reqs: reqs[r.Addr], bytes: bytes[r.Addr], passes: r.Passes() - from[r.Instance]})
	}
	return out
}

// passesToAbort aborts the deployment and returns, per role, the passes it made until every role
// had torn down.
func passesToAbort(t *testing.T, s *Sim) map[string]int64 {
	t.Helper()
	at := map[string]int64{}
	for _, r := range append(s.Agents, s.Server) {
		at[r.Instance] = r.Passes()
	}
	require.NoError(t, s.Abort("sim: abort"))
	require.Eventually(t, s.Done, time.Minute, 10*time.Millisecond)
	out := map[string]int64{}
	for _, r := range append(s.Agents, s.Server) {
		out[r.Instance] = r.Passes() - at[r.Instance]
	}
	return out
}

func waitPasses(t *testing.T, ctx context.Context, r *Role, n int64) {
	t.Helper()
	from := r.Passes()
	for r.Passes() < from+n {
		select {
		case <-ctx.Done():
			t.Fatalf("%s made %d of %d passes", r.Instance, r.Passes()-from, n)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
