package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Core is the server's own service: it publishes cnsmo.server.nodeinstanceid (agents find the
// server through their mapped input) and net.i2cat.cnsmo.core.ready, and bumps cnsmo.generation
// whenever anything an agent depends on changed, so that agents at steady state read that one key
// instead of the whole run (docs/controlplane.md). It is always first.
type Core struct {
	Params ssclient.Params

	digest string // of the run as the last pass saw it
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
	if _, declared := run.Params[me+":"+params.Generation]; declared {
		if d := Digest(run, me); d != c.digest {
			cur, _ := run.Value(me + ":" + params.Generation)
			n, _ := strconv.Atoi(cur)
			if err := c.Params.Set(ctx, params.Generation, strconv.Itoa(n+1)); err != nil {
				return false, fmt.Errorf("core: set %s: %w", params.Generation, err)
			}
			c.digest = d
		}
	}
	return true, nil
}

// agentInputs are the keys of an application instance that its own role reads (its inputs and
// what the server writes for it); its outputs (addresses, flags, requests) change nothing for the
// other agents and stay out of the digest, so that a converging agent does not make every other
// agent read the whole run.
var agentInputs = map[string]bool{params.FWRules: true, params.FWLockoutOK: true, params.VPNCert: true,
	params.ServerInstanceID: true, "scale.state": true}

// Digest sums up everything in run an agent may depend on: the run's and the nodes' parameters,
// every parameter of the server but its progress text (statecustom, written for operators only)
// and its own generation, and the inputs of every application instance.
func Digest(run *ssclient.Run, server string) string {
	keys := make([]string, 0, len(run.Params))
	for k := range run.Params {
		owner, name, _ := strings.Cut(k, ":")
		switch {
		case name == params.Statecustom || k == server+":"+params.Generation:
			continue
		case owner == server || owner == "ss" || !strings.Contains(owner, "."): // the server, the run, a node
		case !agentInputs[name]:
			continue
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		p := run.Params[k]
		fmt.Fprintf(h, "%s\x00%t\x00%s\x00", k, p.IsSet, p.Value)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Teardown leaves the published identity: it is not state on the VM.
func (c *Core) Teardown(context.Context) error { return nil }
