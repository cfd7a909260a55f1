package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Runner runs the services of one instance for the life of its role, following
// net.services.enable at run time: when the list changes, the loop returns, a loop over the new
// list takes over (the services that stay keep their readiness and converge to what already
// runs: nothing of theirs restarts), and once it has had a ready pass the services no longer
// enabled tear down and withdraw what they published.
type Runner struct {
	Role           string // "server" or "agent", for messages
	Server         bool   // the CNSMO server's role
	ServerInstance string // the CNSMO server's instance (this one on the server)
	Store          *Cache // shared with the services, so that their writes land in the loop's snapshot
	Services       []string
	// Fixed: the list was given by the operator (--services) and is not followed.
	Fixed bool
	// Env returns the environment of a service when enabled are the services enabled.
	Env  func(service string, enabled []string) role.Env
	Log  zerolog.Logger
	Kick <-chan struct{}
	// Tune, when set, adjusts every loop before it runs (tests: poll intervals, pass hooks).
	Tune func(*Loop)
}

// Run reconciles until ctx ends (nil after the teardown), the run is aborted (ErrRunAborted), or
// an input is invalid (the run aborted, a terminal error).
func (r *Runner) Run(ctx context.Context) error {
	services := r.Services
	var ready map[string]bool
	var drop func() // tears down what the last list change dropped, once the new list had a pass
	for {
		list := Build(r.Server, services, func(s string) role.Env { return r.Env(s, services) })
		r.Log.Info().Strs("services", services).Msg("reconciling")
		var next []string
		generation := "" // the server reads the whole deployment on every pass; agents follow its generation
		if !r.Server {
			generation = r.ServerInstance
		}
		loop := &Loop{Role: r.Role, Store: r.Store, Server: r.Server, Services: list, Log: r.Log, Kick: r.Kick, Ready: ready,
			Generation: generation,
			Validate: func(s role.Snapshot) error {
				if !r.Fixed {
					if raw := s.Get(r.ServerInstance, params.ServicesEnable); raw != "" { // unset for a moment: keep what runs
						now, err := ParseServices(raw)
						if err != nil {
							return fmt.Errorf("%s: %w", r.ServerInstance, err)
						}
						if !slices.Equal(now, services) {
							next = now
							return ErrServicesChanged
						}
					}
				}
				return Validate(s, services, r.ServerInstance)
			},
			// The services that stay converge first (the load balancer serves from the public
			// addresses while the VPN still runs), then the dropped ones go.
			OnPass: func(allReady bool) {
				if allReady && drop != nil {
					drop()
					drop = nil
				}
			}}
		if r.Tune != nil {
			r.Tune(loop)
		}
		err := loop.Run(ctx)
		if drop != nil { // stopped or aborted before a pass
			drop()
			drop = nil
		}
		if !errors.Is(err, ErrServicesChanged) {
			return err
		}
		r.Log.Info().Strs("from", services).Strs("to", next).Msg("net.services.enable changed")
		ready = loop.ReadyServices()
		old, keep := list, next
		drop = func() { r.drop(ctx, old, keep) }
		services = next
	}
}

// Leaver is a service that waits for something before it is dropped (the VPN client waits for
// the hub to close the overlay).
type Leaver interface {
	Leave(ctx context.Context, st role.Store)
}

// drop tears down the services of list that keep no longer enables (in reverse order) and
// withdraws what they published.
func (r *Runner) drop(ctx context.Context, list []role.Service, keep []string) {
	for i := len(list) - 1; i >= 0; i-- {
		s := list[i]
		if slices.Contains(keep, s.Name()) {
			continue
		}
		if l, ok := s.(Leaver); ok {
			l.Leave(ctx, r.Store)
		}
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 7*time.Second)
		if err := s.Teardown(tctx); err != nil {
			r.Log.Error().Err(err).Str("service", s.Name()).Msg("teardown of a disabled service failed")
		}
		if err := s.Withdraw(tctx); err != nil {
			r.Log.Warn().Err(err).Str("service", s.Name()).Msg("could not withdraw an output of a disabled service")
		}
		cancel()
	}
}
