package nuvla2

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Keys of the convention (docs/nuvla2.md).
const (
	KeyHub        = "cnsmo.hub"        // the server's deployment id, under its own deployment
	KeyNode       = "cnsmo.node"       // a member's node name, under the hub with its node-id
	KeyDeployment = "cnsmo.deployment" // a member's deployment id
	KeyState      = "cnsmo.state"      // "left" once a member said goodbye
	KeyAbort      = "cnsmo.abort"      // the deployment's abort reason, under the hub (no node-id)
	KeyProgress   = "cnsmo.progress"   // progress, under the member's own deployment
	KeyNodes      = "cnsmo.nodes"      // the group's nodes the server declares (no node-id), comma-separated
	KeyServer     = "cnsmo.server"     // the server's name, under the hub (no node-id), editable by the server only
	Left          = "left"
)

// ErrStopping says that this member's own deployment is stopping: the role does not start.
var ErrStopping = errors.New("the member is stopping")

// ErrNoRights says that the key cannot reach the hub: the application needs user rights.
var ErrNoRights = errors.New("the deployment's API key cannot reach the CNSMO server's deployment: " +
	"set requires-user-rights: true on the application (or give a user's API key in CNSMO_NUVLA_API_KEY and CNSMO_NUVLA_API_SECRET)")

// Store implements role.Store on a Nuvla 2 deployment group: every value under the hub.
type Store struct {
	c      *Client
	self   string // <node>.<first 8 hex digits of the deployment uuid>
	hub    string
	server bool
	gets   atomic.Int64
	// StatesEvery is how often the server reads its members' deployment states (default 15 s): a
	// member whose deployment is stopping, stopped or gone has left, goodbye or not.
	StatesEvery time.Duration

	mu       sync.Mutex
	states   map[string]string // member deployment -> its state ("gone" when deleted)
	statesAt time.Time
	pinned   map[string]string // member name -> the deployment it was first seen with (server)
	users    []string          // the users owning the hub (who started the group): they may read and write too (cnsmo-role join)
}

// MemberName is a member's name: its node and the first 8 hex digits of its deployment's uuid.
func MemberName(node, deployment string) string {
	u := strings.TrimPrefix(deployment, "deployment/")
	if len(u) > 8 {
		u = u[:8]
	}
	return node + "." + u
}

// Open joins the group: the server publishes cnsmo.hub (its own deployment; then, once its inputs
// are published, Announce publishes its name); a member finds the hub (CNSMO_HUB, or through the group) and
// publishes its node, deployment and hostname under its name. Nothing is written in a deployment
// that is aborted, or by a member whose own deployment is stopping.
func Open(ctx context.Context, c *Client, server bool) (*Store, error) {
	cfg := c.Config()
	s := &Store{c: c, self: MemberName(cfg.Node, cfg.Deployment), server: server, pinned: map[string]string{}}
	switch {
	case server:
		s.hub = cfg.Deployment
	case cfg.Hub != "":
		s.hub = cfg.Hub
	default:
		hub, err := s.findHub(ctx)
		if err != nil {
			return nil, err
		}
		s.hub = hub
	}
	hubState, err := c.DeploymentState(ctx, s.hub)
	if err != nil {
		return nil, s.rights(err)
	}
	s.users, _ = c.DeploymentOwners(ctx, s.hub) // best effort: without them a person cannot join
	// A member restarted (its container's restart policy) once its deployment is stopping, or once
	// the deployment was aborted, does not join again.
	if own, err := c.DeploymentState(ctx, cfg.Deployment); err == nil && (own == "STOPPING" || own == "STOPPED") {
		return nil, fmt.Errorf("%w: this member's deployment is %s", ErrStopping, own)
	}
	if hubState == "STOPPING" || hubState == "STOPPED" || hubState == "ERROR" {
		return nil, fmt.Errorf("%w: the CNSMO server's deployment is %s", role.ErrAborted, hubState)
	}
	if p, err := c.Get(ctx, ParamID(s.hub, "", KeyAbort)); err == nil && p.Value != nil && *p.Value != "" {
		return nil, fmt.Errorf("%w: %s", role.ErrAborted, *p.Value)
	}
	if server {
		if err := c.Set(ctx, s.hub, "", KeyHub, s.hub, s.acl()); err != nil {
			return nil, s.rights(err)
		}
		// The generation the agents follow (docs/controlplane.md) exists from the start: on
		// SlipStream the application declares it; here the server creates it, keeping the value
		// a restarted server finds (an agent must never see an old number again).
		if err := c.Create(ctx, s.hub, s.self, params.Generation, "", s.acl()); err != nil && !errors.Is(err, ErrConflict) {
			return nil, s.rights(err)
		}
	}
	host := ""
	if p, err := c.Get(ctx, ParamID(cfg.Deployment, "", params.Hostname)); err == nil && p.Value != nil {
		host = *p.Value // written by Nuvla
	}
	for _, kv := range [][2]string{{KeyNode, cfg.Node}, {KeyDeployment, cfg.Deployment}, {KeyState, "joined"}, {params.Hostname, host}} {
		if kv[1] == "" {
			continue
		}
		if err := s.Set(ctx, s.self, kv[0], kv[1]); err != nil {
			return nil, s.rights(err)
		}
	}
	return s, nil
}

// Announce publishes the server's name as cnsmo.server, the members' trust anchor: only the
// server's key may edit it (its ACL is reset on every start: a member that created it first gets
// nothing). The server calls it once its inputs are published: members start on it, and must find
// every input of the server in place (their first snapshot is validated whole).
func (s *Store) Announce(ctx context.Context) error {
	if !s.server {
		return nil
	}
	return s.rights(s.c.SetWithACL(ctx, s.hub, "", KeyServer, s.self, s.serverACL()))
}

// serverACL: the group may read, only the server's deployment may write.
func (s *Store) serverACL() ACL {
	who := s.c.Config().Group
	if who == "" {
		who = s.hub
	}
	return ACL{Owners: []string{s.hub}, ViewData: append([]string{who}, s.users...)}
}

// findHub finds the server's cnsmo.hub through the group, waiting for the server to publish it
// (members may start first). A key without the group's rights fails at once.
func (s *Store) findHub(ctx context.Context) (string, error) {
	if s.c.Config().Group == "" {
		return "", errors.New("CNSMO_HUB is not set and this deployment is in no group (NUVLA_DEPLOYMENT_GROUP_ID): set CNSMO_HUB to the CNSMO server's deployment id")
	}
	if err := s.c.GroupVisible(ctx); err != nil {
		return "", s.rights(err)
	}
	hub := ""
	said := false
	err := wait.Backoff{Min: 500 * time.Millisecond, Max: 10 * time.Second}.Until(ctx, func(ctx context.Context) (bool, error) {
		ps, err := s.c.Search(ctx, "name='"+KeyHub+"'")
		if err != nil {
			return false, s.rights(err)
		}
		var found []string
		for _, p := range ps {
			if p.Value != nil && strings.HasPrefix(*p.Value, "deployment/") && p.Parent == *p.Value && !slices.Contains(found, *p.Value) {
				found = append(found, *p.Value)
			}
		}
		switch len(found) {
		case 1:
			hub = found[0]
			return true, nil
		case 0:
		default:
			// Any member can publish a cnsmo.hub of its own: never pick one of several.
			return false, fmt.Errorf("%d deployments of the group claim to be the CNSMO server (%s): set CNSMO_HUB to the right one",
				len(found), strings.Join(found, ", "))
		}
		if !said {
			s.c.log.Info().Msg("waiting for the CNSMO server's deployment to publish " + KeyHub)
			said = true
		}
		return false, nil
	})
	if err != nil {
		return "", fmt.Errorf("finding the CNSMO server in the group: %w", err)
	}
	return hub, nil
}

// rights explains a 403 or a 404 on the hub.
func (s *Store) rights(err error) error {
	if errors.Is(err, ErrNoRights) {
		return err
	}
	if errors.Is(err, ErrForbidden) {
		return fmt.Errorf("%w (%w)", ErrNoRights, err)
	}
	if errors.Is(err, ErrNotFound) && s.hub != "" {
		return fmt.Errorf("the CNSMO server's deployment %s does not exist, or this key cannot see it (check CNSMO_HUB; %w): %w", s.hub, ErrNoRights, err)
	}
	return err
}

// acl is the ACL of every parameter cnsmo creates: the group (or, outside one, the deployment).
func (s *Store) acl() ACL {
	who := s.c.Config().Group
	if who == "" {
		who = s.c.Config().Deployment
	}
	return ACL{Owners: []string{"group/nuvla-admin"}, ViewData: append([]string{who}, s.users...), EditData: append([]string{who}, s.users...)}
}

// OpenPerson reads and writes the hub's parameters with a person's own key (cnsmo-role join): it
// joins nothing and writes nothing by itself.
func OpenPerson(ctx context.Context, c *Client, hub string) (*Store, error) {
	s := &Store{c: c, self: "person", hub: hub, pinned: map[string]string{}}
	if _, err := c.DeploymentState(ctx, hub); err != nil {
		return nil, fmt.Errorf("%s: %w (is it the CNSMO server's deployment, and your own API key?)", hub, err)
	}
	var err error
	if s.users, err = c.DeploymentOwners(ctx, hub); err != nil {
		return nil, err
	}
	return s, nil
}

// Hub is the CNSMO server's deployment.
func (s *Store) Hub() string { return s.hub }

// Self implements role.Publisher.
func (s *Store) Self() string { return s.self }

// Set implements role.Publisher: the value under the hub, node-id = the instance.
func (s *Store) Set(ctx context.Context, instance, key, value string) error {
	return wrap(s.c.Set(ctx, s.hub, instance, key, value, s.acl()))
}

// Display implements role.Publisher: cnsmo.progress under the member's own deployment.
func (s *Store) Display(ctx context.Context, msg string) error {
	return wrap(s.c.Set(ctx, s.c.Config().Deployment, "", KeyProgress, msg, s.acl()))
}

// Get implements role.Store: one value by id. Every other call also reads the abort parameter
// (Nuvla has no 409 on an aborted deployment): an agent polling its generation sees an abort
// within two polls.
func (s *Store) Get(ctx context.Context, instance, key string) (string, error) {
	if s.gets.Add(1)%2 == 0 {
		if p, err := s.c.Get(ctx, ParamID(s.hub, "", KeyAbort)); err == nil && p.Value != nil && *p.Value != "" {
			return "", fmt.Errorf("%w: %s", role.ErrAborted, *p.Value)
		}
	}
	p, err := s.c.Get(ctx, ParamID(s.hub, instance, key))
	switch {
	case errors.Is(err, ErrNotFound), err == nil && (p.Value == nil || *p.Value == ""):
		return "", fmt.Errorf("%s of %s: %w", key, instance, role.ErrNotSet)
	case err != nil:
		return "", wrap(err)
	}
	return *p.Value, nil
}

// Abort implements role.Store: cnsmo.abort under the hub, unless it holds a reason already.
func (s *Store) Abort(ctx context.Context, reason string) error {
	if p, err := s.c.Get(ctx, ParamID(s.hub, "", KeyAbort)); err == nil && p.Value != nil && *p.Value != "" {
		return nil
	}
	return wrap(s.c.Set(ctx, s.hub, "", KeyAbort, reason, s.acl()))
}

// Leave says goodbye: the member's cnsmo.state is "left".
func (s *Store) Leave(ctx context.Context) error { return s.Set(ctx, s.self, KeyState, Left) }

// Read implements role.Store: one search of every parameter under the hub, and the hub's state
// (STOPPING or ERROR counts as an abort).
func (s *Store) Read(ctx context.Context) (role.Snapshot, error) {
	ps, err := s.c.Search(ctx, "parent='"+s.hub+"'")
	if err != nil {
		return nil, wrap(err)
	}
	state, err := s.c.DeploymentState(ctx, s.hub)
	if err != nil {
		return nil, wrap(err)
	}
	snap := &Snapshot{self: s.self, hub: s.hub, values: map[[2]string]string{}, keys: map[string][]string{}, stopped: map[string]bool{}}
	for _, p := range ps {
		v := ""
		if p.Value != nil {
			v = *p.Value
		}
		snap.values[[2]string{p.NodeID, p.Name}] = v
		snap.keys[p.NodeID] = append(snap.keys[p.NodeID], p.Name)
	}
	for _, ks := range snap.keys {
		slices.Sort(ks)
	}
	if state == "STOPPING" || state == "STOPPED" || state == "ERROR" {
		snap.hubState = state
	}
	if s.server {
		s.memberStates(ctx, snap)
	}
	return snap, nil
}

// deploymentRe is a full deployment id.
var deploymentRe = regexp.MustCompile(`^deployment/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// memberDeployment is the deployment a member published, if it is a full deployment id whose uuid
// the name was made from, and the one the server first saw for that name (pinned): any member of
// the group can write any cnsmo parameter, so a member must not be able to point another's name at
// a deployment of its choosing (a stopped one, to have it released).
func (s *Store) memberDeployment(snap *Snapshot, inst string) string {
	if dep, ok := s.pinned[inst]; ok {
		return dep
	}
	dep := snap.values[[2]string{inst, KeyDeployment}]
	node, _, ok := strings.Cut(inst, ".")
	if !ok || !deploymentRe.MatchString(dep) || MemberName(node, dep) != inst {
		return ""
	}
	s.pinned[inst] = dep
	return dep
}

// deploymentState is a member deployment's state as the server counts it (s.mu held): "gone" for
// a deployment that existed and was deleted (a 404 for one never seen counts for nothing), and
// nothing for a deployment outside the group.
func (s *Store) deploymentState(ctx context.Context, dep string) string {
	st, group, err := s.c.DeploymentInfo(ctx, dep)
	switch {
	case errors.Is(err, ErrNotFound):
		if prev := s.states[dep]; prev != "" && prev != "gone" {
			return "gone"
		}
		return s.states[dep]
	case err != nil:
		return s.states[dep] // unknown this time: as before
	case s.c.Config().Group != "" && group != s.c.Config().Group:
		return "" // not a member of this group
	}
	return st
}

// memberStates marks, in the server's snapshots, the members whose deployment is stopping, stopped
// or gone (read at most every StatesEvery: the server is one reader, the members are many).
func (s *Store) memberStates(ctx context.Context, snap *Snapshot) {
	every := s.StatesEvery
	if every == 0 {
		every = 15 * time.Second
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	snap.verified = true
	if s.states == nil {
		s.states = map[string]string{}
	}
	// A goodbye (cnsmo.state=left, which any member could write) is checked at once against the
	// member's deployment: only a deployment stopping, stopped or gone releases a member.
	for inst := range snap.keys {
		dep := s.memberDeployment(snap, inst)
		if dep == "" || snap.values[[2]string{inst, KeyState}] != Left || s.states[dep] == "STOPPING" || s.states[dep] == "STOPPED" || s.states[dep] == "gone" {
			continue
		}
		s.states[dep] = s.deploymentState(ctx, dep)
	}
	if s.statesAt.IsZero() || time.Since(s.statesAt) >= every {
		states := map[string]string{}
		for inst := range snap.keys {
			dep := s.memberDeployment(snap, inst)
			if dep == "" || dep == s.hub {
				continue
			}
			states[dep] = s.deploymentState(ctx, dep)
		}
		s.states, s.statesAt = states, time.Now()
	}
	for inst := range snap.keys {
		switch s.states[s.memberDeployment(snap, inst)] {
		case "STOPPING", "STOPPED", "gone":
			snap.stopped[inst] = true
		}
	}
}

func wrap(err error) error { return err }

// Snapshot is one search of the hub's parameters as a role.Snapshot.
type Snapshot struct {
	self, hub, hubState string
	values              map[[2]string]string // (node-id, name) -> value
	keys                map[string][]string  // node-id -> names, sorted
	stopped             map[string]bool      // members whose deployment stops or is gone (server only)
	verified            bool                 // the server's: a member has left only when its deployment says so
}

// Self implements role.Snapshot.
func (s *Snapshot) Self() string { return s.self }

// Get implements role.Snapshot. cnsmo.server.nodeinstanceid, which SlipStream maps from the server
// onto every member, is the server's anchor (cnsmo.server) for every member.
func (s *Snapshot) Get(instance, key string) string {
	if key == params.ServerInstanceID && instance != role.Deployment {
		// What SlipStream maps onto every member: here the server's own anchor, which only the
		// server may write (a value under a member's name, which anyone could write, is ignored).
		return s.values[[2]string{role.Deployment, KeyServer}]
	}
	return s.values[[2]string{instance, key}]
}

// Keys implements role.Snapshot.
func (s *Snapshot) Keys(instance string) []string { return slices.Clone(s.keys[instance]) }

// Nodes implements role.Snapshot: the nodes the server declares (cnsmo.nodes) and those of the
// members that have joined, sorted: a node is known before its first member joins.
func (s *Snapshot) Nodes() []string {
	var out []string
	for _, n := range strings.Split(s.values[[2]string{role.Deployment, KeyNodes}], ",") {
		if n = strings.TrimSpace(n); n != "" && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	for inst := range s.keys {
		if n := s.values[[2]string{inst, KeyNode}]; n != "" && inst != role.Deployment && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// Instances implements role.Snapshot: the members of node that joined and have not left, sorted.
func (s *Snapshot) Instances(node string) []string {
	var out []string
	for inst := range s.keys {
		if inst != role.Deployment && s.values[[2]string{inst, KeyNode}] == node && !s.Gone(inst) {
			out = append(out, inst)
		}
	}
	sort.Strings(out)
	return out
}

// Gone implements role.Snapshot: nothing of the member is left, or, as the server sees it, its
// deployment stops or is gone (a goodbye alone, which any member could write, releases nobody); as
// a member sees it, it said goodbye.
func (s *Snapshot) Gone(instance string) bool {
	if s.verified {
		return s.stopped[instance] || len(s.keys[instance]) == 0
	}
	return s.values[[2]string{instance, KeyState}] == Left || len(s.keys[instance]) == 0
}

// Aborted implements role.Snapshot: cnsmo.abort, or the hub's deployment stopping or failed.
func (s *Snapshot) Aborted() (string, bool) {
	if v := s.values[[2]string{role.Deployment, KeyAbort}]; v != "" {
		return v, true
	}
	if s.hubState != "" {
		return "the CNSMO server's deployment is " + s.hubState, true
	}
	return "", false
}
