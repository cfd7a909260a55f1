package orchestrator

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/cnsmo/cnsmo/roles/role"
)

// Cache is the store as a role and its services see it: reads and writes go to the store, and
// every write also lands in the loop's last snapshot, so that a pass that reuses that snapshot
// (its generation unchanged) sees what this role itself wrote since. A store whose whole reads lag
// its writes (Nuvla 2's search) may return a snapshot without a write this role just made: the
// write stays overlaid on new snapshots until one shows it, for at most Pending (default 5 s), so
// that the role does not write the same value again and again.
type Cache struct {
	role.Store
	Pending time.Duration

	mu      sync.Mutex
	last    *overlay
	pending map[[2]string]pendingWrite
}

type pendingWrite struct {
	value string
	at    time.Time
}

// NewCache wraps st.
func NewCache(st role.Store) *Cache { return &Cache{Store: st} }

// Set writes through to the store, then into the last snapshot.
func (c *Cache) Set(ctx context.Context, instance, key, value string) error {
	if err := c.Store.Set(ctx, instance, key, value); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last != nil {
		c.last.put(instance, key, value)
	}
	if c.pending == nil {
		c.pending = map[[2]string]pendingWrite{}
	}
	c.pending[[2]string{instance, key}] = pendingWrite{value: value, at: time.Now()}
	return nil
}

// Read reads the whole deployment and keeps the snapshot as the last one.
func (c *Cache) Read(ctx context.Context) (role.Snapshot, error) {
	s, err := c.Store.Read(ctx)
	if err != nil {
		return nil, err
	}
	o := &overlay{Snapshot: s, writes: map[[2]string]string{}}
	keep := c.Pending
	if keep == 0 {
		keep = 5 * time.Second
	}
	c.mu.Lock()
	for k, w := range c.pending {
		if s.Get(k[0], k[1]) == w.value || time.Since(w.at) > keep {
			delete(c.pending, k) // the read shows it (or it is too old to trust over the read)
			continue
		}
		o.writes[k] = w.value
	}
	c.last = o
	c.mu.Unlock()
	return o, nil
}

// overlay is a snapshot with this role's writes since it was read.
type overlay struct {
	role.Snapshot
	mu     sync.Mutex
	writes map[[2]string]string
}

func (o *overlay) put(instance, key, value string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.writes[[2]string{instance, key}] = value
}

func (o *overlay) Get(instance, key string) string {
	o.mu.Lock()
	v, ok := o.writes[[2]string{instance, key}]
	o.mu.Unlock()
	if ok {
		return v
	}
	return o.Snapshot.Get(instance, key)
}

// Keys adds the keys written since (a backend may create a key on its first write).
func (o *overlay) Keys(instance string) []string {
	ks := o.Snapshot.Keys(instance)
	o.mu.Lock()
	for w := range o.writes {
		if w[0] == instance && !slices.Contains(ks, w[1]) {
			ks = append(ks, w[1])
		}
	}
	o.mu.Unlock()
	slices.Sort(ks)
	return ks
}
