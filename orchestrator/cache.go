package orchestrator

import (
	"context"
	"strings"
	"sync"

	"github.com/cnsmo/cnsmo/ssclient"
)

// Cache is the parameter store as a role and its services see it: reads and writes go to the
// store, and every write also lands in the loop's last whole-run read, so that a pass that
// reuses that read (its generation unchanged) sees what this role itself wrote since.
type Cache struct {
	ssclient.Params
	mu  sync.Mutex
	run *ssclient.Run
}

// NewCache wraps p.
func NewCache(p ssclient.Params) *Cache { return &Cache{Params: p} }

// Set writes through to the store, then into the cached read.
func (c *Cache) Set(ctx context.Context, key, value string) error {
	if err := c.Params.Set(ctx, key, value); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run != nil {
		if !strings.Contains(key, ":") {
			key = c.Params.Instance() + ":" + key
		}
		c.run.Params[key] = ssclient.Param{Value: value, IsSet: value != ""}
	}
	return nil
}

// Run reads the whole run and keeps it as the cached read.
func (c *Cache) Run(ctx context.Context) (*ssclient.Run, error) {
	run, err := c.Params.Run(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.run = run
	c.mu.Unlock()
	return run, nil
}
