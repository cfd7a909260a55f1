// Package role holds what every service role (vpn, fw, lb) shares: the Service contract the
// orchestrator drives, and the terminal-error marking that turns invalid user input into an
// aborted run instead of a retry.
package role

import (
	"context"
	"errors"
)

// Service is one network service on one instance. The orchestrator calls Reconcile with a
// snapshot of the deployment on every pass; Reconcile compares what the parameters ask for with
// what runs, acts on the difference, and reports whether the service is ready. Running it twice
// with the same snapshot changes nothing.
type Service interface {
	Name() string
	Reconcile(ctx context.Context, s Snapshot) (ready bool, err error)
	// Teardown removes exactly what this service created on this instance.
	Teardown(ctx context.Context) error
	// Withdraw un-sets every value this service published (when it is no longer enabled).
	Withdraw(ctx context.Context) error
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
