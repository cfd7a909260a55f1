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
	"slices"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Loop drives the services of one instance.
type Loop struct {
	// Role is "server" or "agent": messages read "cnsmo <role> on <instance>: …".
	Role     string
	Store    role.Store
	Services []role.Service // in reconcile order
	// Server makes this the CNSMO server's loop: before its services, every pass publishes the
	// server's identity and bumps cnsmo.generation when anything an agent depends on changed.
	Server bool
	Log    zerolog.Logger
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
	// Generation, when set, is the instance whose cnsmo.generation the CNSMO server bumps
	// whenever anything this role depends on changed (the server's instance): a pass reads only
	// that key and reuses its last snapshot while the value is unchanged (on SlipStream the read
	// also answers 409 once the run is aborted): at steady state, or all the time when Store is
	// a Cache that keeps this role's own writes in that snapshot. A key the deployment does not
	// declare is never read.
	Generation string
	// Validate, when set, checks every input of the deployment that any enabled service reads,
	// without side effects, on every new snapshot before a pass reconciles anything: invalid
	// input anywhere aborts the run before this role starts a function or applies a changed input.
	Validate func(s role.Snapshot) error

	core        core
	lastDisplay string
	lastRun     role.Snapshot // the last whole-deployment read
	validated   role.Snapshot // the last snapshot Validate accepted
	lastGen     string        // the generation that read saw
	steadyRead  bool          // that read was made at steady state (it holds this role's outputs)
	// staleEnabled: net.services.enabled was found set at start and is not withdrawn yet.
	staleEnabled bool
	wasReady     map[string]bool // services that have been ready at least once
	withdrew     bool            // this process un-set net.services.enabled (a reused snapshot still holds it)
	ready        bool            // the last pass found every service ready
}

// Say is the one form of a role's messages in the run: "cnsmo <role> on <instance>: <what>",
// without repeating the instance when what is about its own input.
func (l *Loop) Say(me string, err error) string { return Say(l.Role, me, err) }

// Say is the one form of a role's messages in the run (see Loop.Say); role may be "".
func Say(role, me string, err error) string {
	who := "cnsmo"
	if role != "" {
		who += " " + role
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
	me := l.Store.Self()
	for {
		wait, err := l.pass(ctx, me)
		switch {
		case errors.Is(err, ErrServicesChanged):
			return err
		case errors.Is(err, ErrRunAborted) || errors.Is(err, role.ErrAborted):
			l.Log.Warn().Err(err).Msg("run aborted: tearing down")
			l.teardown()
			return fmt.Errorf("%s: %w", me, ErrRunAborted)
		case role.IsTerminal(err):
			msg := l.Say(me, err)
			l.Log.Error().Err(err).Msg("invalid input: aborting the run")
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.TeardownTimeout)
			if aerr := l.Store.Abort(actx, msg); aerr != nil {
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
	snap, err := l.read(ctx)
	if errors.Is(err, role.ErrAborted) {
		return false, err
	}
	if err != nil {
		if ctx.Err() != nil {
			return true, ctx.Err()
		}
		l.Log.Warn().Err(err).Msg("whole-deployment read failed; retrying")
		return true, nil
	}
	if _, aborted := snap.Aborted(); aborted {
		return false, ErrRunAborted
	}
	if l.Validate != nil && snap != l.validated {
		if err := l.Validate(snap); errors.Is(err, ErrServicesChanged) {
			return false, err
		} else if err != nil {
			return false, role.Terminal(err)
		}
		l.validated = snap
	}
	if l.Server {
		if err := l.core.identity(ctx, l.Store, snap); err != nil {
			l.Log.Warn().Err(err).Msg("publishing the server's identity failed; retrying")
			return true, nil
		}
		defer func() {
			if berr := l.core.bump(ctx, l.Store, snap); berr != nil && ctx.Err() == nil {
				l.Log.Warn().Err(berr).Msg("publishing the generation failed; retrying")
				wait = true
			}
		}()
	}
	if l.wasReady == nil && l.Ready != nil {
		l.wasReady = maps.Clone(l.Ready)
	}
	if l.wasReady == nil {
		l.wasReady = map[string]bool{}
		// A role started again on an instance that was enabled before (after a crash or a
		// reboot) skips the ordering: the overlay addresses the later services use exist, and
		// a client that is down must not hold back the load balancer.
		if snap.Get(me, params.ServicesEnabled) == "true" {
			for _, s := range l.Services {
				l.wasReady[s.Name()] = true
			}
			// The flag itself is not trusted (nothing may run any more): withdrawn until this
			// process has found every service ready.
			l.staleEnabled = true
		}
	}
	if l.staleEnabled { // tried again on every pass until the store takes it
		if err := l.Store.Set(ctx, me, params.ServicesEnabled, ""); err != nil {
			return true, err
		}
		l.staleEnabled = false
		l.Log.Info().Msg("net.services.enabled withdrawn until every service is found ready again")
	}
	allReady, anyDown := l.reconcile(ctx, snap)
	if errors.Is(anyDown.err, ErrRunAborted) || anyDown.err != nil {
		return false, anyDown.err
	}
	if l.OnPass != nil {
		defer l.OnPass(allReady)
	}
	enabled := snap.Get(me, params.ServicesEnabled) == "true" && !l.withdrew
	if !allReady {
		l.ready = false
		// net.services.enabled follows the services: one known down withdraws it (un-set).
		if anyDown.down && enabled {
			if err := l.Store.Set(ctx, me, params.ServicesEnabled, ""); err != nil {
				return true, err
			}
			l.withdrew = true
			l.Log.Warn().Msg("a service is down: net.services.enabled withdrawn")
		}
		return true, nil
	}
	published := false
	if !enabled {
		if err := l.Store.Set(ctx, me, params.ServicesEnabled, "true"); err != nil {
			return true, err
		}
		l.withdrew = false
		published = true
	}
	if !l.ready || published {
		// Once per way up of this process (its first ready pass after a restart too).
		l.Log.Info().Bool("published", published).Msg(MsgAllReady)
	}
	l.ready = true
	msg := "cnsmo: services ready"
	for _, s := range l.Services {
		if st, ok := s.(Statuser); ok {
			if v := st.Status(); v != "" {
				msg += "; " + s.Name() + ": " + v
			}
		}
	}
	l.display(ctx, msg)
	return false, nil
}

// Statuser is a service with something for operators to see once it is ready (shown in
// statecustom after "services ready"), e.g. the WireGuard mesh's handshakes.
type Statuser interface {
	Status() string
}

// outcome is what reconciling the services found beyond readiness.
type outcome struct {
	down bool  // a service is known down (net.services.enabled is withdrawn)
	err  error // a terminal error, an abort or a stop: the pass ends the loop
}

// reconcile lets every service compare the snapshot with what runs, in order.
func (l *Loop) reconcile(ctx context.Context, snap role.Snapshot) (allReady bool, o outcome) {
	allReady = true
	for i, s := range l.Services {
		// Order on the way up: a service is first reconciled once every service before it has
		// been ready (the firewall and the load balancer start on overlay addresses). Later, an
		// earlier service going unready (a VPN client missing) does not freeze the others: the
		// load balancer must keep following scale events while a stopped VM's tunnel is down.
		if i > 0 && !l.wasReady[l.Services[i-1].Name()] {
			return false, o
		}
		ready, err := s.Reconcile(ctx, snap)
		if d, ok := s.(interface{ Down() bool }); ok && !ready && d.Down() {
			o.down = true
		}
		if err != nil {
			if role.IsTerminal(err) || errors.Is(err, role.ErrAborted) || ctx.Err() != nil {
				o.err = err
				return false, o
			}
			l.Log.Warn().Err(err).Str("service", s.Name()).Msg("reconcile failed; retrying")
			l.display(ctx, fmt.Sprintf("cnsmo: %s: retrying after error: %v", s.Name(), err))
			return false, o
		}
		if !ready {
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
	return allReady, o
}

// read returns the snapshot for a pass: the last one while the generation it saw is unchanged,
// else a new whole-deployment read.
func (l *Loop) read(ctx context.Context) (role.Snapshot, error) {
	// With a Cache as the store, the last snapshot holds this role's own writes since: it can be
	// reused while converging too. Without, only a snapshot taken at steady state can.
	_, cached := l.Store.(*Cache)
	if l.Generation != "" && (cached || l.ready && l.steadyRead) && l.lastRun != nil && l.lastGen != "" {
		v, err := l.Store.Get(ctx, l.Generation, params.Generation)
		if errors.Is(err, role.ErrAborted) {
			return nil, err
		}
		if err == nil && v == l.lastGen {
			return l.lastRun, nil
		}
	}
	snap, err := l.Store.Read(ctx)
	if err != nil {
		return nil, err
	}
	l.lastRun, l.steadyRead = snap, l.ready
	l.lastGen = ""
	if l.Generation != "" && slices.Contains(snap.Keys(l.Generation), params.Generation) {
		l.lastGen = snap.Get(l.Generation, params.Generation)
	}
	return snap, nil
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
	if err := l.Store.Display(ctx, msg); err != nil {
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
