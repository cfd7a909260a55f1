// Package roletest is an in-memory deployment for the tests of the services and the
// orchestrator: a role.Store whose snapshots are copies of its state. Its values are named
// "instance:key" (an unqualified key is the store's own instance's, ":key" the deployment's); the
// notation is this fake's, not any backend's.
package roletest

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/cnsmo/cnsmo/roles/role"
)

// Snapshot is a deployment at one moment; it implements role.Snapshot.
type Snapshot struct {
	Me      string
	Values  map[string]string   // "instance:key" -> value ("" declared but unset)
	Members map[string][]string // node -> its current instances
	Order   []string            // the nodes, in declared order
	Left    map[string]bool     // instances that have left
	Reason  string              // the abort reason ("" not aborted)
}

// NewSnapshot returns a snapshot of me with values ("instance:key" or an own key -> value).
func NewSnapshot(me string, values map[string]string) *Snapshot {
	s := &Snapshot{Me: me, Values: map[string]string{}, Members: map[string][]string{}, Left: map[string]bool{}}
	for k, v := range values {
		s.Values[s.q(k)] = v
	}
	return s
}

func (s *Snapshot) q(k string) string {
	if strings.Contains(k, ":") {
		return k
	}
	return s.Me + ":" + k
}

// AddNode adds node with its instances (and declares their hostname, so that they are known).
func (s *Snapshot) AddNode(node string, instances ...string) *Snapshot {
	if !slices.Contains(s.Order, node) {
		s.Order = append(s.Order, node)
	}
	s.Members[node] = append(s.Members[node], instances...)
	for _, in := range instances {
		if _, ok := s.Values[in+":hostname"]; !ok {
			s.Values[in+":hostname"] = ""
		}
	}
	return s
}

// Put sets "instance:key" (or an own key) and returns s.
func (s *Snapshot) Put(k, v string) *Snapshot { s.Values[s.q(k)] = v; return s }

// Clone returns a deep copy.
func (s *Snapshot) Clone() *Snapshot {
	c := &Snapshot{Me: s.Me, Values: maps.Clone(s.Values), Members: map[string][]string{}, Order: slices.Clone(s.Order),
		Left: maps.Clone(s.Left), Reason: s.Reason}
	for n, ins := range s.Members {
		c.Members[n] = slices.Clone(ins)
	}
	return c
}

func (s *Snapshot) Self() string                    { return s.Me }
func (s *Snapshot) Get(instance, key string) string { return s.Values[instance+":"+key] }
func (s *Snapshot) Nodes() []string                 { return slices.Clone(s.Order) }
func (s *Snapshot) Instances(node string) []string  { return slices.Clone(s.Members[node]) }
func (s *Snapshot) Aborted() (string, bool)         { return s.Reason, s.Reason != "" }

func (s *Snapshot) Keys(instance string) []string {
	var out []string
	for k := range s.Values {
		if in, key, _ := strings.Cut(k, ":"); in == instance {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out
}

func (s *Snapshot) Gone(instance string) bool {
	return s.Left[instance] || len(s.Keys(instance)) == 0
}

// Store is an in-memory role.Store: writes change its state, Read returns a copy.
type Store struct {
	mu       sync.Mutex
	state    *Snapshot
	sets     []string // "instance:key=value", in order
	displays []string
	reads    int
	gets     int
	// FailSet, when set, makes a write fail with its error (nil lets it through).
	FailSet func(instance, key, value string) error
	// FailRead, when set, makes Read fail.
	FailRead error
}

// NewStore returns a store whose own instance is me, holding values (see NewSnapshot).
func NewStore(me string, values map[string]string) *Store {
	return &Store{state: NewSnapshot(me, values)}
}

// Edit changes the state under the store's lock (test input: rules, membership, an abort).
func (s *Store) Edit(f func(*Snapshot)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.state)
}

// Value returns "instance:key" (or an own key) as stored.
func (s *Store) Value(k string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Values[s.state.q(k)]
}

// Sets returns the writes made, as "instance:key=value".
func (s *Store) Sets() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sets)
}

// Displays returns the progress messages shown.
func (s *Store) Displays() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.displays)
}

// Reads and Gets count whole reads and one-value reads.
func (s *Store) Reads() int { s.mu.Lock(); defer s.mu.Unlock(); return s.reads }
func (s *Store) Gets() int  { s.mu.Lock(); defer s.mu.Unlock(); return s.gets }

// AbortReason returns the reason the deployment was aborted with ("" not aborted).
func (s *Store) AbortReason() string { s.mu.Lock(); defer s.mu.Unlock(); return s.state.Reason }

func (s *Store) Self() string { return s.state.Me }

func (s *Store) Set(_ context.Context, instance, key, value string) error {
	if s.FailSet != nil {
		if err := s.FailSet(instance, key, value); err != nil {
			return err
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Values[instance+":"+key] = value
	s.sets = append(s.sets, instance+":"+key+"="+value)
	return nil
}

func (s *Store) Display(_ context.Context, msg string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.displays = append(s.displays, msg)
	return nil
}

func (s *Store) Read(context.Context) (role.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	if s.FailRead != nil {
		return nil, s.FailRead
	}
	return s.state.Clone(), nil
}

func (s *Store) Get(_ context.Context, instance, key string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gets++
	if s.state.Reason != "" {
		return "", role.ErrAborted
	}
	v := s.state.Values[instance+":"+key]
	if v == "" {
		return "", role.ErrNotSet
	}
	return v, nil
}

func (s *Store) Abort(_ context.Context, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Reason = reason
	return nil
}
