package orchestrator

import (
	"context"
	"fmt"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Core is the server's own service: it publishes cnsmo.server.nodeinstanceid (agents find the
// server through their mapped input) and net.i2cat.cnsmo.core.ready. It is always first.
type Core struct {
	Params ssclient.Params
}

// Name implements role.Service.
func (c *Core) Name() string { return "core" }

// Reconcile publishes the server's identity once; it is ready when both values are in place.
func (c *Core) Reconcile(ctx context.Context, run *ssclient.Run) (bool, error) {
	me := c.Params.Instance()
	for _, kv := range [][2]string{{params.ServerInstanceID, me}, {params.CoreReady, "true"}} {
		if v, _ := run.Value(me + ":" + kv[0]); v == kv[1] {
			continue
		}
		if err := c.Params.Set(ctx, kv[0], kv[1]); err != nil {
			return false, fmt.Errorf("core: set %s: %w", kv[0], err)
		}
	}
	return true, nil
}

// Teardown leaves the published identity: it is not state on the VM.
func (c *Core) Teardown(context.Context) error { return nil }
