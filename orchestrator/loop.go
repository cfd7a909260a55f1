// Package orchestrator composes the services of one instance into one level-triggered reconcile
// loop: read the whole run once, let every enabled service (VPN first) compare what the
// parameters ask for with what runs and act on the difference, publish net.services.enabled when
// all are ready, and keep following parameter changes and scale events until the run is aborted
// or the role is stopped, when it removes exactly what it created.
package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Loop drives the services of one instance.
type Loop struct {
	// Role is "server" or "agent": messages read "cnsmo <role> on <instance>: …".
	Role     string
	Params   ssclient.Params
	Services []role.Service // in reconcile order
	Log      zerolog.Logger
	// Steady is the poll interval once every service is ready (default 3 s: an abort or a change
	// is seen within it, at one whole-run read per 3 s); while converging the
	// loop polls with a jittered backoff from MinPoll to MaxPoll (defaults 100 ms and 2 s).
	Steady, MinPoll, MaxPoll time.Duration
	// TeardownTimeout bounds the teardown on abort or stop (default 7 s): an abort is seen within
	// Steady (3 s), so a role has removed what it created within 10 s of it.
	TeardownTimeout time.Duration
	// OnPass, when set, is called after every pass with whether all services were ready (tests).
	OnPass func(allReady bool)
	// Kick, when set, makes the loop start a pass at once (SIGHUP from the onvmadd/onvmremove hooks).
	Kick <-chan struct{}
	// Ready, when set, names the services already ready when the loop starts (a loop that takes
	// over after the service list changed keeps the readiness of the services that stay). Unset,
	// a role whose instance has net.services.enabled=true treats every service as ready once.
	Ready map[string]bool
	// Generation, when set, is the key the CNSMO server bumps whenever anything this role depends
	// on changed (e.g. "cnsmo.1:cnsmo.generation"): a pass reads only that key and reuses its last
	// whole-run read while the value is unchanged (on SlipStream the read also answers 409 once
	// the run is aborted): at steady state, or all the time when Params is a Cache that keeps this
	// role's own writes in that read. A key the run does not declare is never read.
	Generation string
	// Validate, when set, checks every input of the run that any enabled service reads, without
	// side effects, before each pass reconciles anything: invalid input anywhere in the run aborts
	// it before this role starts a function or applies a changed input.
	Validate func(run *ssclient.Run) error

	lastDisplay string
	lastRun     *ssclient.Run // the last whole-run read
	lastGen     string        // the generation that read saw
	steadyRead  bool          // that read was made at steady state (it holds this role's outputs)
	// staleEnabled: net.services.enabled was found set at start and is not withdrawn yet.
	staleEnabled bool
	wasReady     map[string]bool // services that have been ready at least once
	ready        bool            // the last pass found every service ready
}

// Say is the one form of a role's messages in the run: "cnsmo <role> on <instance>: <what>",
// without repeating the instance when what is about its own input.
func (l *Loop) Say(me string, err error) string {
	who := "cnsmo"
	if l.Role != "" {
		who += " " + l.Role
	}
	return fmt.Sprintf("%s on %s: %s", who, me, strings.TrimPrefix(err.Error(), me+": "))
}

// ErrRunAborted is returned by Run when the run's abort flag was raised.
var ErrRunAborted = errors.New("run aborted")

// ErrServicesChanged, returned by Validate, makes Run return it at once, without a teardown: the
// caller replaces the services (net.services.enable changed) and tears down those it drops.
var ErrServicesChanged = errors.New("the enabled services changed")

func (l *Loop) defaults() {
	if l.Steady == 0 {
		l.Steady = 3 * time.Second
	}
	if l.MinPoll == 0 {
		l.MinPoll = 100 * time.Millisecond
	}
	if l.MaxPoll == 0 {
		l.MaxPoll = 2 * time.Second
	}
	if l.TeardownTimeout == 0 {
		l.TeardownTimeout = 7 * time.Second
	}
}

// Run reconciles until ctx is cancelled (then it tears down and returns ctx's error), the run is
// aborted (teardown, ErrRunAborted), or a service reports invalid input (it aborts the run with a
// message naming the service, instance and parameter, tears down, and returns that error).
func (l *Loop) Run(ctx context.Context) error {
	l.defaults()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = l.MinPoll, l.MaxPoll, 0
	bo.Reset()
	me := l.Params.Instance()
	for {
		wait, err := l.pass(ctx, me)
		switch {
		case errors.Is(err, ErrServicesChanged):
			return err
		case errors.Is(err, ErrRunAborted) || errors.Is(err, ssclient.ErrAborted):
			l.Log.Warn().Err(err).Msg("run aborted: tearing down")
			l.teardown()
			return fmt.Errorf("%s: %w", me, ErrRunAborted)
		case role.IsTerminal(err):
			msg := l.Say(me, err)
			l.Log.Error().Err(err).Msg("invalid input: aborting the run")
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.TeardownTimeout)
			if aerr := l.Params.Abort(actx, msg); aerr != nil {
				l.Log.Error().Err(aerr).Msg("could not abort the run")
			}
			cancel()
			l.teardown()
			return err
		case ctx.Err() != nil:
			l.Log.Info().Msg("stopping: tearing down")
			l.teardown()
			return ctx.Err()
		}
		d := l.Steady
		if wait {
			d = bo.NextBackOff()
		} else {
			bo.Reset()
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-l.Kick:
			t.Stop()
			bo.Reset()
			l.steadyRead = false // a kick reads the whole run
		case <-t.C:
		}
	}
}

// pass is one reconcile pass. wait reports that something is not ready yet (poll soon).
func (l *Loop) pass(ctx context.Context, me string) (wait bool, err error) {
	run, err := l.read(ctx)
	if errors.Is(err, ssclient.ErrAborted) {
		return false, err
	}
	if err != nil {
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		l.Log.Warn().Err(err).Msg("whole-run read failed; retrying")
		return true, nil
	}
	if v, ok := run.Value("ss:abort"); ok && v != "" {
		return false, ErrRunAborted
	}
	if l.Validate != nil {
		if err := l.Validate(run); errors.Is(err, ErrServicesChanged) {
			return false, err
		} else if err != nil {
			return false, role.Terminal(err)
		}
	}
	allReady := true
	if l.wasReady == nil && l.Ready != nil {
		l.wasReady = maps.Clone(l.Ready)
	}
	if l.wasReady == nil {
		l.wasReady = map[string]bool{}
		// A role started again on an instance that was enabled before (after a crash or a
		// reboot) skips the ordering: the overlay addresses the later services use exist, and
		// a client that is down must not hold back the load balancer.
		if v, _ := run.Value(me + ":" + params.ServicesEnabled); v == "true" {
			for _, s := range l.Services {
				l.wasReady[s.Name()] = true
			}
			// The flag itself is not trusted (nothing may run any more): withdrawn until this
			// process has found every service ready.
			l.staleEnabled = true
		}
	}
	if l.staleEnabled { // tried again on every pass until the store takes it
		if err := l.Params.Set(ctx, params.ServicesEnabled, ""); err != nil {
			return true, err
		}
		l.staleEnabled = false
		run.Params[me+":"+params.ServicesEnabled] = ssclient.Param{}
		l.Log.Info().Msg("net.services.enabled withdrawn until every service is found ready again")
	}
	anyDown := false
	for i, s := range l.Services {
		// Order on the way up: a service is first reconciled once every service before it has
		// been ready (the firewall and the load balancer start on overlay addresses). Later, an
		// earlier service going unready (a VPN client missing) does not freeze the others: the
		// load balancer must keep following scale events while a stopped VM's tunnel is down.
		if i > 0 && !l.wasReady[l.Services[i-1].Name()] {
			break
		}
		ready, err := s.Reconcile(ctx, run)
		if err != nil {
			if role.IsTerminal(err) || errors.Is(err, ssclient.ErrAborted) || ctx.Err() != nil {
				return false, err
			}
			if d, ok := s.(interface{ Down() bool }); ok && d.Down() {
				anyDown = true
			}
			l.Log.Warn().Err(err).Str("service", s.Name()).Msg("reconcile failed; retrying")
			l.display(ctx, fmt.Sprintf("cnsmo: %s: retrying after error: %v", s.Name(), err))
			allReady = false
			break
		}
		if !ready {
			if d, ok := s.(interface{ Down() bool }); ok && d.Down() {
				anyDown = true
			}
			if allReady {
				msg := "cnsmo: waiting for " + s.Name()
				if w, ok := s.(interface{ Waiting() string }); ok && w.Waiting() != "" {
					msg += ": " + w.Waiting()
				}
				l.display(ctx, msg)
			}
			allReady = false
			continue
		}
		l.wasReady[s.Name()] = true
	}
	if l.OnPass != nil {
		defer l.OnPass(allReady)
	}
	if !allReady {
		l.ready = false
		// net.services.enabled follows the services: one known down withdraws it (un-set).
		if v, _ := run.Value(me + ":" + params.ServicesEnabled); anyDown && v == "true" {
			if err := l.Params.Set(ctx, params.ServicesEnabled, ""); err != nil {
				return true, err
			}
			l.Log.Warn().Msg("a service is down: net.services.enabled withdrawn")
		}
		return true, nil
	}
	published := false
	if v, _ := run.Value(me + ":" + params.ServicesEnabled); v != "true" {
		if err := l.Params.Set(ctx, params.ServicesEnabled, "true"); err != nil {
			return true, err
		}
		published = true
	}
	if !l.ready || published {
		// Once per way up of this process (its first ready pass after a restart too).
		l.Log.Info().Bool("published", published).Msg(MsgAllReady)
	}
	l.ready = true
	l.display(ctx, "cnsmo: services ready")
	return false, nil
}

// read returns the run for a pass: the last whole-run read while the generation it saw is
// unchanged at steady state, else a new whole-run read.
func (l *Loop) read(ctx context.Context) (*ssclient.Run, error) {
	// With a Cache as the store, the last read holds this role's own writes since: it can be
	// reused while converging too. Without, only a read made at steady state can.
	_, cached := l.Params.(*Cache)
	if l.Generation != "" && (cached || l.ready && l.steadyRead) && l.lastRun != nil && l.lastGen != "" {
		v, err := l.Params.Get(ctx, l.Generation)
		if errors.Is(err, ssclient.ErrAborted) {
			return nil, err
		}
		if err == nil && v == l.lastGen {
			return l.lastRun, nil
		}
	}
	run, err := l.Params.Run(ctx)
	if err != nil {
		return nil, err
	}
	l.lastRun, l.steadyRead = run, l.ready
	l.lastGen = ""
	if l.Generation != "" {
		if _, declared := run.Params[l.Generation]; declared {
			l.lastGen, _ = run.Value(l.Generation)
		}
	}
	return run, nil
}

// MsgAllReady is logged when every service of the role has become ready (published: this pass
// set net.services.enabled=true).
const MsgAllReady = "all services ready"

// ReadyServices returns the services that have been ready in this loop (see Ready).
func (l *Loop) ReadyServices() map[string]bool { return maps.Clone(l.wasReady) }

// display shows progress in the Nuvla UI, once per change of message.
func (l *Loop) display(ctx context.Context, msg string) {
	if len(msg) > 300 {
		msg = msg[:300]
	}
	if msg == l.lastDisplay {
		return
	}
	if err := l.Params.Display(ctx, msg); err != nil {
		l.Log.Debug().Err(err).Msg("statecustom not updated")
		return
	}
	l.lastDisplay = msg
}

// teardown removes what every service created, in reverse order, under its own deadline.
func (l *Loop) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), l.TeardownTimeout)
	defer cancel()
	for i := len(l.Services) - 1; i >= 0; i-- {
		s := l.Services[i]
		if err := s.Teardown(ctx); err != nil {
			l.Log.Error().Err(err).Str("service", s.Name()).Msg("teardown failed")
		}
	}
}
