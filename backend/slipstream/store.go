// Package slipstream is the coordination store of the roles (role.Store) on SlipStream's run
// parameters: instances are "node.i", the deployment's own values live under "ss:", a scaled-in
// instance says so in its scale.state, and an aborted run has ss:abort set (and answers 409).
package slipstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Store implements role.Store over a SlipStream run-parameter client.
type Store struct {
	P ssclient.Params
}

// New returns the store of p's instance.
func New(p ssclient.Params) *Store { return &Store{P: p} }

// key is the fully qualified SlipStream key of instance's key.
func key(instance, k string) string {
	if instance == role.Deployment {
		return "ss:" + k
	}
	return instance + ":" + k
}

// wrap makes the client's typed errors match the store's.
func wrap(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ssclient.ErrAborted):
		return fmt.Errorf("%w: %w", role.ErrAborted, err)
	case errors.Is(err, ssclient.ErrNotSet):
		return fmt.Errorf("%w: %w", role.ErrNotSet, err)
	}
	return err
}

// Self implements role.Publisher.
func (s *Store) Self() string { return s.P.Instance() }

// Set implements role.Publisher.
func (s *Store) Set(ctx context.Context, instance, k, value string) error {
	return wrap(s.P.Set(ctx, key(instance, k), value))
}

// Display implements role.Publisher: the instance's statecustom.
func (s *Store) Display(ctx context.Context, msg string) error { return wrap(s.P.Display(ctx, msg)) }

// Get implements role.Store.
func (s *Store) Get(ctx context.Context, instance, k string) (string, error) {
	v, err := s.P.Get(ctx, key(instance, k))
	return v, wrap(err)
}

// Abort implements role.Store: the run's abort flag, raised by this instance.
func (s *Store) Abort(ctx context.Context, reason string) error { return wrap(s.P.Abort(ctx, reason)) }

// Read implements role.Store with one whole-run read.
func (s *Store) Read(ctx context.Context) (role.Snapshot, error) {
	run, err := s.P.Run(ctx)
	if err != nil {
		return nil, wrap(err)
	}
	return NewSnapshot(run, s.P.Instance()), nil
}

// Snapshot is one whole-run read as a role.Snapshot.
type Snapshot struct {
	Run  *ssclient.Run
	self string
	keys map[string][]string // by owner ("" for ss:), sorted
}

// NewSnapshot wraps run as read by instance self.
func NewSnapshot(run *ssclient.Run, self string) *Snapshot {
	s := &Snapshot{Run: run, self: self, keys: map[string][]string{}}
	for k := range run.Params {
		owner, name, ok := strings.Cut(k, ":")
		if !ok {
			continue
		}
		if owner == "ss" {
			owner = role.Deployment
		}
		s.keys[owner] = append(s.keys[owner], name)
	}
	for _, ks := range s.keys {
		slices.Sort(ks)
	}
	return s
}

// Self implements role.Snapshot.
func (s *Snapshot) Self() string { return s.self }

// Get implements role.Snapshot.
func (s *Snapshot) Get(instance, k string) string {
	v, _ := s.Run.Value(key(instance, k))
	return v
}

// Keys implements role.Snapshot.
func (s *Snapshot) Keys(instance string) []string { return slices.Clone(s.keys[instance]) }

// Nodes implements role.Snapshot: the nodes of ss:groups.
func (s *Snapshot) Nodes() []string { return s.Run.Nodes() }

// Instances implements role.Snapshot: from <node>:ids.
func (s *Snapshot) Instances(node string) []string { return s.Run.Instances(node) }

// Gone implements role.Snapshot: scaled in (scale.state removing, removed or gone), or no
// parameter of the instance is left.
func (s *Snapshot) Gone(instance string) bool {
	switch s.Get(instance, "scale.state") {
	case "removing", "removed", "gone":
		return true
	}
	return len(s.keys[instance]) == 0
}

// Aborted implements role.Snapshot: ss:abort is set.
func (s *Snapshot) Aborted() (string, bool) {
	v := s.Get(role.Deployment, "abort")
	return v, v != ""
}
