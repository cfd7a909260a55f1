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
	waitPasses(t, ctx, a, 4)
	s.Mock.ResetCounters()
	from := map[string]int64{}
	for _, r := range s.Agents {
		from[r.Instance] = r.Passes()
	}
	waitPasses(t, ctx, a, 10)
	reqs, bytes := s.Mock.ClientCounters(), s.Mock.ClientBytes()
	for _, r := range s.Agents {
		passes := r.Passes() - from[r.Instance]
		require.LessOrEqual(t, reqs[r.Addr], passes+1, "%s: one request a pass at steady state", r.Instance)
		if reqs[r.Addr] > 0 {
			require.Less(t, bytes[r.Addr]/reqs[r.Addr], int64(200), "%s: a small key, not the whole run", r.Instance)
		}
	}

	// A change of one agent's rules.
	rules := `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`
	before := a.Passes()
	require.NoError(t, s.SetRules(a, rules))
	require.Eventually(t, func() bool { return a.Rules() == rules }, time.Minute, 10*time.Millisecond)
	require.LessOrEqual(t, a.Passes()-before, int64(3), "applied within two passes of the agent (+ the one under way)")

	// An abort: every role tears down within two of its passes.
	at := map[string]int64{}
	for _, r := range append(s.Agents, s.Server) {
		at[r.Instance] = r.Passes()
	}
	require.NoError(t, s.Abort("sim: abort"))
	require.Eventually(t, s.Done, time.Minute, 10*time.Millisecond)
	for _, r := range append(s.Agents, s.Server) {
		require.LessOrEqual(t, r.Passes()-at[r.Instance], int64(3), "%s tore down within two passes (+ the one under way)", r.Instance)
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
	waitPasses(t, ctx, a, 15) // settled: the searches have caught up with the last writes (1 s)
	s.Mock.ResetCounters()
	from := map[string]int64{}
	for _, r := range s.Agents {
		from[r.Instance] = r.Passes()
	}
	waitPasses(t, ctx, a, 10)
	reqs, bytes := s.Mock.ClientCounters(), s.Mock.ClientBytes()
	for _, r := range s.Agents {
		passes := r.Passes() - from[r.Instance]
		require.LessOrEqual(t, reqs[r.Addr], 3*(passes+1)/2+1, "%s: a value a pass and the abort every other pass", r.Instance)
		if reqs[r.Addr] > 0 {
			require.Less(t, bytes[r.Addr]/reqs[r.Addr], int64(1500), "%s: one parameter, not the whole deployment", r.Instance)
		}
	}

	rules := `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`
	require.NoError(t, s.SetRules(a, rules))
	require.Eventually(t, func() bool { return a.Rules() == rules }, time.Minute, 10*time.Millisecond)

	at := map[string]int64{}
	for _, r := range append(s.Agents, s.Server) {
		at[r.Instance] = r.Passes()
	}
	require.NoError(t, s.Abort("sim: abort"))
	require.Eventually(t, s.Done, time.Minute, 10*time.Millisecond)
	for _, r := range append(s.Agents, s.Server) {
		require.LessOrEqual(t, r.Passes()-at[r.Instance], int64(4), "%s tore down within three passes (+ the one under way)", r.Instance)
	}
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
