package orchestrator

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

func newFake(me string) *roletest.Store { return roletest.NewStore(me, nil) }

func put(p *roletest.Store, k, v string) { p.Edit(func(s *roletest.Snapshot) { s.Put(k, v) }) }

// fakeService becomes ready after `after` passes, or fails as told.
type fakeService struct {
	name      string
	after     int
	passes    int
	err       error
	torn      int
	mu        sync.Mutex
	sawOthers bool
}

func (s *fakeService) Name() string { return s.name }
func (s *fakeService) Reconcile(context.Context, role.Snapshot) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.passes++
	if s.err != nil {
		return false, s.err
	}
	return s.passes > s.after, nil
}
func (s *fakeService) Withdraw(context.Context) error { return nil }
func (s *fakeService) Teardown(context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.torn++
	return nil
}

func fastLoop(p role.Store, svcs ...role.Service) *Loop {
	return &Loop{Store: p, Services: svcs, Log: zerolog.Nop(), Steady: time.Millisecond, MinPoll: time.Millisecond, MaxPoll: 2 * time.Millisecond}
}

func TestLoopPublishesEnabledWhenAllReadyAndTearsDownOnStop(t *testing.T) {
	p := newFake("app.1")
	vpn := &fakeService{name: "vpn", after: 2}
	fw := &fakeService{name: "fw", after: 1}
	l := fastLoop(p, vpn, fw)
	ctx, cancel := context.WithCancel(context.Background())
	readyPasses := 0
	l.OnPass = func(all bool) {
		if all {
			readyPasses++
			if readyPasses == 3 {
				cancel()
			}
		}
	}
	err := l.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, "true", p.Value(params.ServicesEnabled))
	assert.Equal(t, 1, vpn.torn)
	assert.Equal(t, 1, fw.torn)
	// fw is reconciled only once the VPN is ready: its first pass comes after vpn's third.
	assert.Equal(t, vpn.passes-2, fw.passes)
	assert.Contains(t, p.Displays(), "cnsmo: waiting for vpn")
	assert.Contains(t, p.Displays(), "cnsmo: services ready")
}

func TestLoopAbortsTheRunOnInvalidInput(t *testing.T) {
	p := newFake("app.1")
	fw := &fakeService{name: "fw", err: role.Terminal(errors.New("net.i2cat.cnsmo.service.fw.rules: fw.rules[0].dst_port: 70000 is out of range 1-65535"))}
	l := fastLoop(p, fw)
	l.Role = "agent"
	err := l.Run(context.Background())
	require.Error(t, err)
	assert.True(t, role.IsTerminal(err))
	assert.Equal(t, "cnsmo agent on app.1: net.i2cat.cnsmo.service.fw.rules: fw.rules[0].dst_port: 70000 is out of range 1-65535", p.AbortReason())
	assert.Equal(t, 1, fw.torn)
	assert.Empty(t, p.Value(params.ServicesEnabled), "never announced ready")
}

func TestLoopTearsDownWhenTheRunIsAborted(t *testing.T) {
	p := newFake("app.1")
	svc := &fakeService{name: "vpn"}
	l := fastLoop(p, svc)
	l.OnPass = func(bool) { _ = p.Abort(context.Background(), "app.2: something broke") }
	err := l.Run(context.Background())
	require.ErrorIs(t, err, ErrRunAborted)
	assert.Equal(t, 1, svc.torn)
}

func TestLoopRetriesTransientErrors(t *testing.T) {
	p := newFake("app.1")
	svc := &fakeService{name: "lb", err: errors.New("haproxy -c rejected")}
	l := fastLoop(p, svc)
	ctx, cancel := context.WithCancel(context.Background())
	l.OnPass = func(bool) {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		if svc.passes == 3 {
			svc.err = nil
		}
		if svc.passes == 5 {
			cancel()
		}
	}
	require.ErrorIs(t, l.Run(ctx), context.Canceled)
	assert.Empty(t, p.AbortReason())
	assert.Equal(t, "true", p.Value(params.ServicesEnabled))
}

func TestParseServices(t *testing.T) {
	for in, want := range map[string][]string{
		`["lb","vpn"]`:      {"vpn", "lb"},
		`["fw","fw"]`:       {"fw"},
		`vpn, FW`:           {"vpn", "fw"},
		`[]`:                nil,
		`["vpn","fw","lb"]`: {"vpn", "fw", "lb"},
	} {
		got, err := ParseServices(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got, in)
	}
	for in, msg := range map[string]string{
		`["vpn","dns"]`: `net.services.enable[1]: unknown service "dns" (known: vpn, fw, lb)`,
		``:              `net.services.enable: is not set (a JSON list such as ["vpn","fw","lb"])`,
		`["vpn"`:        `net.services.enable: not a JSON list of service names: unexpected end of JSON input`,
		`"vpn"`:         `net.services.enable: the value must be a JSON list such as ["vpn","fw","lb"], not the string "vpn"`,
		`[1,"vpn"]`:     `net.services.enable: not a JSON list of service names: found a number where a name goes`,
	} {
		_, err := ParseServices(in)
		require.EqualError(t, err, msg, in)
	}
}

// flakyService is ready from its second pass on, except on the passes listed in down.
type flakyService struct {
	fakeService
	down map[int]bool
}

func (s *flakyService) Reconcile(ctx context.Context, run role.Snapshot) (bool, error) {
	ready, err := s.fakeService.Reconcile(ctx, run)
	return ready && !s.down[s.passes], err
}

func TestLoopKeepsReconcilingLaterServicesWhenAnEarlierOneGoesUnready(t *testing.T) {
	p := newFake("cnsmo.1")
	vpn := &flakyService{fakeService: fakeService{name: "vpn", after: 1}, down: map[int]bool{3: true, 4: true, 5: true}}
	lb := &fakeService{name: "lb"}
	l := fastLoop(p, vpn, lb)
	ctx, cancel := context.WithCancel(context.Background())
	var notReady int
	l.OnPass = func(all bool) {
		if !all && vpn.passes >= 3 {
			notReady++
		}
		if vpn.passes == 7 {
			cancel()
		}
	}
	require.ErrorIs(t, l.Run(ctx), context.Canceled)
	// lb waits for the VPN's first readiness (pass 2), then follows every pass, also the three
	// passes (3-5) when the VPN was down again.
	assert.Equal(t, vpn.passes-1, lb.passes)
	assert.Equal(t, 3, notReady, "the passes with the VPN down are not all-ready")
}

// A role started again on an instance that was enabled before reconciles every service from its
// first pass, even while an earlier one is not ready (a client of the VPN is down).
func TestLoopRestartedOnEnabledInstanceSkipsTheOrdering(t *testing.T) {
	p := newFake("cnsmo.1")
	put(p, params.ServicesEnabled, "true")
	vpn := &fakeService{name: "vpn", after: 1000} // never ready in this test
	lb := &fakeService{name: "lb"}
	l := fastLoop(p, vpn, lb)
	ctx, cancel := context.WithCancel(context.Background())
	l.OnPass = func(bool) {
		if vpn.passes == 3 {
			cancel()
		}
	}
	require.ErrorIs(t, l.Run(ctx), context.Canceled)
	assert.Equal(t, vpn.passes, lb.passes, "lb reconciled on every pass")

	// A fresh instance keeps the order: lb waits for the VPN.
	p2 := newFake("cnsmo.1")
	vpn2, lb2 := &fakeService{name: "vpn", after: 1000}, &fakeService{name: "lb"}
	l2 := fastLoop(p2, vpn2, lb2)
	ctx2, cancel2 := context.WithCancel(context.Background())
	l2.OnPass = func(bool) {
		if vpn2.passes == 3 {
			cancel2()
		}
	}
	require.ErrorIs(t, l2.Run(ctx2), context.Canceled)
	assert.Zero(t, lb2.passes)
}

// An invalid input anywhere in the run (Validate) aborts it before any service is reconciled,
// and also when a valid input is later changed to an invalid one.
func TestLoopValidatesTheRunBeforeReconcilingAnything(t *testing.T) {
	for _, c := range []struct {
		name      string
		badAfter  int // passes that validate before the input turns invalid
		wantPass0 bool
	}{{name: "invalid from the start"}, {name: "changed to invalid later", badAfter: 3, wantPass0: true}} {
		t.Run(c.name, func(t *testing.T) {
			p := newFake("app.1")
			vpn := &fakeService{name: "vpn"}
			l := fastLoop(p, vpn)
			l.Role = "agent"
			validations := 0
			l.Validate = func(role.Snapshot) error {
				validations++
				if validations > c.badAfter {
					return errors.New("web.2: net.i2cat.cnsmo.service.fw.rules[1].dst_port: 70000 is out of range 1-65535")
				}
				return nil
			}
			err := l.Run(context.Background())
			require.True(t, role.IsTerminal(err), "%v", err)
			assert.Equal(t, c.badAfter, vpn.passes, "services reconciled only on passes whose run validated")
			assert.Equal(t, c.wantPass0, vpn.passes > 0)
			assert.Contains(t, p.AbortReason(), "cnsmo agent on app.1: web.2: net.i2cat.cnsmo.service.fw.rules[1].dst_port")
			assert.Equal(t, 1, vpn.torn)
		})
	}
}

// A changed service list (Validate says ErrServicesChanged) ends Run without a teardown: the
// caller keeps what stays enabled and tears down only what it drops.
func TestLoopReturnsOnChangedServicesWithoutTeardown(t *testing.T) {
	p := newFake("app.1")
	fw := &fakeService{name: "fw"}
	l := fastLoop(p, fw)
	passes := 0
	l.Validate = func(role.Snapshot) error {
		passes++
		if passes > 2 {
			return ErrServicesChanged
		}
		return nil
	}
	err := l.Run(context.Background())
	require.ErrorIs(t, err, ErrServicesChanged)
	assert.False(t, role.IsTerminal(err))
	assert.Equal(t, 2, fw.passes)
	assert.Zero(t, fw.torn, "no teardown")
	assert.Empty(t, p.AbortReason(), "the run is not aborted")
}

// One form for a role's messages: "cnsmo <role> on <instance>: <what>", the instance never
// repeated when the input at fault is its own.
func TestAbortMessageHasOneForm(t *testing.T) {
	p := newFake("netsvc.1")
	l := fastLoop(p, &fakeService{name: "vpn", after: 1})
	l.Role = "server"
	l.Validate = func(role.Snapshot) error {
		return errors.New(`netsvc.1: net.services.enable[0]: unknown service "dns" (known: vpn, fw, lb)`)
	}
	require.Error(t, l.Run(context.Background()))
	assert.Equal(t, `cnsmo server on netsvc.1: net.services.enable[0]: unknown service "dns" (known: vpn, fw, lb)`, p.AbortReason())
}

// waitingService is never ready and says why.
type waitingService struct{ fakeService }

func (s *waitingService) Reconcile(ctx context.Context, run role.Snapshot) (bool, error) {
	_, _ = s.fakeService.Reconcile(ctx, run)
	return false, nil
}
func (s *waitingService) Waiting() string { return "every backend is down" }

// A service that says why it is not ready has that in the UI.
func TestWaitingShowsTheServicesReason(t *testing.T) {
	p := newFake("cnsmo.1")
	lb := &waitingService{fakeService{name: "lb"}}
	l := fastLoop(p, lb)
	ctx, cancel := context.WithCancel(context.Background())
	l.OnPass = func(bool) {
		if lb.passes >= 2 {
			cancel()
		}
	}
	_ = l.Run(ctx)
	assert.Contains(t, p.Displays(), "cnsmo: waiting for lb: every backend is down")
}

// enabledAfterEachPass runs the loop for n passes and returns this instance's
// net.services.enabled as each pass left it ("" = unset).
func enabledAfterEachPass(t *testing.T, p *roletest.Store, l *Loop, n int) []string {
	t.Helper()
	var seen []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l.OnPass = func(bool) {
		seen = append(seen, p.Value(params.ServicesEnabled))
		if len(seen) >= n {
			cancel()
		}
	}
	_ = l.Run(ctx)
	return seen
}

// A role starting where net.services.enabled says true (after a crash or a reboot) does not
// trust it: the flag is withdrawn (un-set) at once and set again only once every service has
// been found ready by this process.
func TestStaleEnabledFlagIsNotTrusted(t *testing.T) {
	p := newFake("web.1")
	put(p, "web.1:"+params.ServicesEnabled, "true")
	seen := enabledAfterEachPass(t, p, fastLoop(p, &fakeService{name: "vpn", after: 2}), 4)
	assert.Equal(t, []string{"", "", "true", "true"}, seen)
}

// downService is ready, then known down for a while, then ready again.
type downService struct {
	fakeService
	downFrom, downTo int
}

func (s *downService) Reconcile(ctx context.Context, run role.Snapshot) (bool, error) {
	_, _ = s.fakeService.Reconcile(ctx, run)
	return !s.Down(), nil
}
func (s *downService) Down() bool { return s.passes >= s.downFrom && s.passes <= s.downTo }

// net.services.enabled follows the services: one that is known down after it was ready withdraws
// the flag (un-set, not false), and it comes back when every service is ready again.
func TestEnabledFollowsADownService(t *testing.T) {
	p := newFake("web.1")
	seen := enabledAfterEachPass(t, p, fastLoop(p, &downService{fakeService: fakeService{name: "lb"}, downFrom: 3, downTo: 4}), 6)
	assert.Equal(t, []string{"true", "true", "", "", "true", "true"}, seen)
}

// At steady state an agent reads only the server's generation key and reuses its last whole-run
// read; a new generation (something changed) makes it read the whole run again.
func TestSteadyStateReadsOnlyTheGeneration(t *testing.T) {
	p := newFake("web.1")
	put(p, "cnsmo.1:"+params.Generation, "1")
	l := fastLoop(p, &fakeService{name: "fw"})
	l.Generation = "cnsmo.1"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	passes, runsAt5 := 0, 0
	l.OnPass = func(bool) {
		passes++
		switch passes {
		case 5:
			runsAt5 = p.Reads()
		case 10:
			require.Equal(t, runsAt5, p.Reads(), "steady passes read no whole run")
			put(p, "cnsmo.1:"+params.Generation, "2")
		case 11:
			require.Equal(t, runsAt5+1, p.Reads(), "a new generation: one whole-run read")
			cancel()
		}
	}
	_ = l.Run(ctx)
	require.Equal(t, 11, passes)
	require.LessOrEqual(t, runsAt5, 3, "whole-run reads only until steady (converge, then one steady read)")
}

// Without a declared generation key the loop reads the whole run on every pass (and never reads
// an undeclared key, which would abort the run on SlipStream).
func TestNoGenerationKeyMeansWholeRunReads(t *testing.T) {
	p := newFake("web.1")
	l := fastLoop(p, &fakeService{name: "fw"})
	l.Generation = "cnsmo.1"
	ctx, cancel := context.WithCancel(context.Background())
	passes := 0
	l.OnPass = func(bool) {
		if passes++; passes == 6 {
			cancel()
		}
	}
	_ = l.Run(ctx)
	require.Equal(t, 6, p.Reads())
	require.Zero(t, p.Gets())
}

// The server bumps the generation when anything changes, and not for progress text.
func TestCoreBumpsTheGenerationOnChanges(t *testing.T) {
	p := newFake("cnsmo.1")
	put(p, "cnsmo.1:"+params.Generation, "")
	p.Edit(func(s *roletest.Snapshot) { s.AddNode("web", "web.3") })
	c := &core{}
	pass := func() string {
		snap, err := p.Read(context.Background())
		require.NoError(t, err)
		require.NoError(t, c.identity(context.Background(), p, snap))
		require.NoError(t, c.bump(context.Background(), p, snap))
		return p.Value(params.Generation)
	}
	g1 := pass()
	require.Equal(t, "1", g1)
	g := pass() // its own identity got published in pass 1: a change
	require.Equal(t, "2", g)
	require.Equal(t, g, pass(), "nothing changed")
	put(p, "cnsmo.1:"+params.Statecustom, "cnsmo: waiting for vpn")
	require.Equal(t, g, pass(), "progress text is no change")
	put(p, "web.3:"+params.VPNAddress, "198.19.0.4")
	put(p, "web.3:"+params.ServicesEnabled, "true")
	require.Equal(t, g, pass(), "an agent's outputs are no change for the others")
	put(p, "web.3:"+params.FWRules, `[]`)
	require.Equal(t, "3", pass(), "an input changed")
	p.Edit(func(s *roletest.Snapshot) { s.AddNode("web", "web.4") })
	require.Equal(t, "4", pass(), "a new instance")
	p.Edit(func(s *roletest.Snapshot) { s.Left["web.3"] = true })
	require.Equal(t, "5", pass(), "an instance left")
	put(p, "cnsmo.1:"+params.Generation, "4") // another VM writes an older number back
	require.Equal(t, "6", pass(), "bumped past a rewritten generation at once")
	require.Equal(t, "6", pass(), "then steady")
}

// failingDownService is ready, then fails and is known down (a firewall whose apply fails).
type failingDownService struct{ fakeService }

func (s *failingDownService) Reconcile(ctx context.Context, run role.Snapshot) (bool, error) {
	_, _ = s.fakeService.Reconcile(ctx, run)
	if s.Down() {
		return false, errors.New("fw: iptables-restore: exit 4")
	}
	return true, nil
}
func (s *failingDownService) Down() bool { return s.passes >= 3 }

// A service that fails with an error and is known down withdraws net.services.enabled too.
func TestFailingDownServiceWithdrawsEnabled(t *testing.T) {
	p := newFake("web.1")
	seen := enabledAfterEachPass(t, p, fastLoop(p, &failingDownService{fakeService{name: "fw"}}), 4)
	assert.Equal(t, []string{"true", "true", "", ""}, seen)
}

// A stale net.services.enabled whose first withdrawal fails is withdrawn on a later pass, before
// the role calls itself ready.
func TestStaleFlagWithdrawnAfterAFailedWrite(t *testing.T) {
	p := newFake("web.1")
	put(p, "web.1:"+params.ServicesEnabled, "true")
	failed := false
	p.FailSet = func(string, string, string) error {
		if !failed {
			failed = true
			return errors.New("503 Service Unavailable")
		}
		return nil
	}
	seen := enabledAfterEachPass(t, p, fastLoop(p, &fakeService{name: "vpn", after: 3}), 5)
	assert.Equal(t, []string{"", "", "", "true", "true"}, seen)
}

// The cache writes through to the store and into the last snapshot.
func TestCacheWritesThrough(t *testing.T) {
	p := newFake("web.1")
	c := NewCache(p)
	ctx := context.Background()
	require.NoError(t, c.Set(ctx, "web.1", params.VPNAddress, "198.19.0.2")) // before any read
	snap, err := c.Read(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Set(ctx, "web.1", params.FWReady, "true"))
	require.NoError(t, c.Set(ctx, "cnsmo.1", params.VPNCert, "PEM"))
	require.NoError(t, c.Set(ctx, "web.1", params.VPNAddress, ""))
	require.Equal(t, "true", snap.Get("web.1", params.FWReady))
	require.Equal(t, "PEM", snap.Get("cnsmo.1", params.VPNCert))
	require.Empty(t, snap.Get("web.1", params.VPNAddress), "un-set")
	require.Contains(t, snap.Keys("cnsmo.1"), params.VPNCert, "a key first written since the read")
	require.Equal(t, "true", p.Value(params.FWReady), "written to the store")
}
