package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// core is what the CNSMO server's loop does before its services on every pass: it publishes
// cnsmo.server.nodeinstanceid (agents find the server through their mapped input) and
// net.i2cat.cnsmo.core.ready, and bumps cnsmo.generation whenever anything an agent depends on
// changed, so that agents at steady state read that one key instead of the whole deployment
// (docs/controlplane.md).
type core struct {
	digest string // of the deployment as the last pass saw it
	wrote  string // the generation this server last wrote
}

// identity publishes the server's identity (before the services of a pass).
func (c *core) identity(ctx context.Context, st role.Publisher, s role.Snapshot) error {
	me := s.Self()
	for _, kv := range [][2]string{{params.ServerInstanceID, me}, {params.CoreReady, "true"}} {
		if err := role.Publish(ctx, st, s, me, kv[0], kv[1]); err != nil {
			return err
		}
	}
	return nil
}

// bump increments cnsmo.generation when the digest of s changed since the last bump. It runs at the
// end of a pass, on the snapshot with this pass's own writes, so that one bump carries both what
// changed in the deployment and the server's answer to it.
func (c *core) bump(ctx context.Context, st role.Publisher, s role.Snapshot) error {
	me := s.Self()
	if !slices.Contains(s.Keys(me), params.Generation) {
		return nil // not declared: the agents read the whole deployment on every pass
	}
	cur := s.Get(me, params.Generation)
	// Any VM can write the generation: one that writes back an older number would freeze the
	// agents that still hold it on their old snapshot. A value other than the one this server
	// last wrote is bumped past at once.
	rewritten := c.wrote != "" && cur != c.wrote
	if d := Digest(s); d != c.digest || rewritten {
		n, _ := strconv.Atoi(cur)
		if w, _ := strconv.Atoi(c.wrote); w > n {
			n = w
		}
		next := strconv.Itoa(n + 1)
		if err := st.Set(ctx, me, params.Generation, next); err != nil {
			return fmt.Errorf("set %s: %w", params.Generation, err)
		}
		c.digest, c.wrote = d, next
	}
	return nil
}

// agentInputs are the keys of an application instance that its own role reads (its inputs and
// what the server writes for it: its certificate, its WireGuard entry, which every member reads); its outputs (addresses, flags, requests) change nothing for the
// other agents and stay out of the digest, so that a converging agent does not make every other
// agent read the whole deployment.
var agentInputs = []string{params.FWRules, params.FWLockoutOK, params.VPNCert, params.VPNMember, params.ServerInstanceID}

// Digest sums up everything in s an agent may depend on: the deployment's own values, every value
// of the server (s.Self()) but its progress text and handshake count (written for operators
// only) and its own generation, the membership (nodes, their instances, who has left), and the inputs of every
// application instance.
func Digest(s role.Snapshot) string {
	h := sha256.New()
	field := func(parts ...string) {
		for _, p := range parts {
			io.WriteString(h, p)
			h.Write([]byte{0})
		}
	}
	me := s.Self()
	reason, aborted := s.Aborted()
	field("aborted", strconv.FormatBool(aborted), reason)
	for _, k := range s.Keys(role.Deployment) {
		field("deployment", k, s.Get(role.Deployment, k))
	}
	for _, k := range s.Keys(me) {
		if k == params.Statecustom || k == params.Generation || k == params.VPNWGHandshakes {
			continue
		}
		field("server", k, s.Get(me, k))
	}
	for _, n := range s.Nodes() {
		field("node", n)
		for _, in := range s.Instances(n) {
			field("instance", in, strconv.FormatBool(s.Gone(in)))
			for _, k := range agentInputs {
				field(k, s.Get(in, k))
			}
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}
