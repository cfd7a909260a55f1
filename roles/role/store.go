package role

import (
	"context"
	"errors"
	"fmt"
)

// Deployment names the deployment itself where an instance name goes: its values (the service URL
// the platform shows) belong to no instance.
const Deployment = ""

// Snapshot is one read of the deployment: every instance's values as they were at one moment. It
// is what a service decides from; it never changes under the service. A backend (SlipStream run
// parameters, Nuvla 2 deployment parameters) implements it; no backend's key syntax or types
// cross it.
type Snapshot interface {
	// Self is this instance's name, e.g. "web.2" (a member's stable name on a backend without indexes).
	Self() string
	// Get returns instance's value of key, "" when unset.
	Get(instance, key string) string
	// Keys lists the keys instance declares (set or not), sorted; none for an unknown instance.
	Keys(instance string) []string
	// Nodes lists the deployment's application nodes (groups of instances), in declared order.
	Nodes() []string
	// Instances lists the current instances of node, in a stable order.
	Instances(node string) []string
	// Gone reports whether instance has left the deployment (scaled in), not merely that it is
	// missing from one read.
	Gone(instance string) bool
	// Aborted reports whether the deployment is being torn down, and why.
	Aborted() (reason string, aborted bool)
}

// Publisher is how a service changes the deployment: values it owns, and progress shown to people.
type Publisher interface {
	// Self is this instance's name.
	Self() string
	// Set writes instance's key (Self() for its own outputs; another instance only for what this
	// role grants it, such as the VPN server's certificate for a client; Deployment for the
	// deployment's own values). An empty value un-sets the key.
	Set(ctx context.Context, instance, key, value string) error
	// Display shows progress for this instance in the platform's UI.
	Display(ctx context.Context, msg string) error
}

// Store is the coordination store as the orchestrator uses it: a Publisher that also reads the
// whole deployment, reads one value, and aborts the deployment.
type Store interface {
	Publisher
	// Read returns a snapshot of the whole deployment.
	Read(ctx context.Context) (Snapshot, error)
	// Get reads one value now; an unset value is an error matching ErrNotSet.
	Get(ctx context.Context, instance, key string) (string, error)
	// Abort tears the deployment down, with a reason shown to people.
	Abort(ctx context.Context, reason string) error
}

// Errors of a Store, whatever its backend; test with errors.Is.
var (
	ErrAborted = errors.New("the deployment is aborted")
	ErrNotSet  = errors.New("not set")
)

// Publish sets instance's key to value unless the snapshot already holds that value (the one
// publish-if-changed of every service).
func Publish(ctx context.Context, p Publisher, s Snapshot, instance, key, value string) error {
	if s.Get(instance, key) == value {
		return nil
	}
	if err := p.Set(ctx, instance, key, value); err != nil {
		if value == "" {
			return fmt.Errorf("withdraw %s: %w", key, err)
		}
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}

// Withdraw un-sets each of keys of the publisher's own instance, and returns every failure.
func Withdraw(ctx context.Context, p Publisher, keys ...string) error {
	var errs []error
	for _, k := range keys {
		if err := p.Set(ctx, p.Self(), k, ""); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}
