// Package role holds what every service role (vpn, fw, lb) shares: the Service contract the
// orchestrator drives, and the terminal-error marking that turns invalid user input into an
// aborted run instead of a retry.
package role

import (
	"context"
	"errors"

	"github.com/cnsmo/cnsmo/ssclient"
)

// Service is one network service on one instance. The orchestrator calls Reconcile with a fresh
// whole-run read on every pass; Reconcile compares what the parameters ask for with what runs,
// acts on the difference, and reports whether the service is ready. Running it twice with the
// same input changes nothing.
type Service interface {
	Name() string
	Reconcile(ctx context.Context, run *ssclient.Run) (ready bool, err error)
	// Teardown removes exactly what this service created on this instance.
	Teardown(ctx context.Context) error
}

// terminalError marks an error that retrying cannot fix (invalid input): the run is aborted.
type terminalError struct{ err error }

func (e *terminalError) Error() string { return e.err.Error() }
func (e *terminalError) Unwrap() error { return e.err }

// Terminal marks err as terminal. A nil err stays nil.
func Terminal(err error) error {
	if err == nil {
		return nil
	}
	return &terminalError{err: err}
}

// IsTerminal reports whether err (or an error it wraps) was marked Terminal.
func IsTerminal(err error) bool {
	var t *terminalError
	return errors.As(err, &t)
}

// Get returns the value of key on instance in run ("" when unset).
func Get(run *ssclient.Run, instance, key string) string {
	v, _ := run.Value(instance + ":" + key)
	return v
}
