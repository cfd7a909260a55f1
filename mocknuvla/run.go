package mocknuvla

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Run states, as SlipStream names them.
const (
	StateInitializing   = "Initializing"
	StateProvisioning   = "Provisioning"
	StateExecuting      = "Executing"
	StateSendingReports = "SendingReports"
	StateReady          = "Ready"
	StateFinalizing     = "Finalizing"
	StateDone           = "Done"
	StateCancelled      = "Cancelled"
	StateAborted        = "Aborted"
)

var allStates = []string{StateInitializing, StateProvisioning, StateExecuting, StateSendingReports, StateReady, StateFinalizing, StateDone, StateCancelled, StateAborted}

func validState(s string) bool {
	for _, st := range allStates {
		if st == s {
			return true
		}
	}
	return false
}

func finalState(s string) bool { return s == StateDone || s == StateCancelled || s == StateAborted }

// Errors of the Go API; the HTTP layer maps them to status codes. Test with errors.Is.
var (
	ErrUnknownRun  = errors.New("unknown run")           // 404
	ErrUnknownKey  = errors.New("unknown key")           // 404 (over HTTP the run is aborted too)
	ErrUnknownNode = errors.New("unknown node")          // 404 / 400
	ErrBadRequest  = errors.New("bad request")           // 400: invalid value, too long, bad state
	ErrConflict    = errors.New("conflict")              // 409: abort raised, wrong state, not mutable
	ErrNotSet      = errors.New("parameter not yet set") // 412
)

// StatusError is an error with the HTTP status the legacy API answers for it.
type StatusError struct {
	Code   int
	Detail string
	kind   error
}

func (e *StatusError) Error() string { return e.Detail }

// Unwrap returns the sentinel (ErrUnknownKey, ErrConflict, ...) this error is an instance of.
func (e *StatusError) Unwrap() error { return e.kind }

func statusErr(code int, kind error, format string, args ...any) *StatusError {
	return &StatusError{Code: code, Detail: fmt.Sprintf(format, args...), kind: kind}
}

type param struct {
	value string
	set   bool
	group string
}

type instance struct {
	InstanceInfo
	orchestrator bool
	removed      bool
}

type node struct {
	name, cloud string
	decl        []Parameter
	nextID      int // the next instance index (ids are never reused)
}

// run is one deployment's state. Every method expects Server.mu held.
type run struct {
	uuid, name, username string
	mutable              bool
	created              time.Time
	params               map[string]*param
	nodes                []*node
	nodeByName           map[string]*node
	instances            map[string]*instance
	instOrder            []string            // creation order, orchestrators first
	mappings             map[string][]string // source key -> mapped target keys
	faults               *Faults
}

func (r *run) state() string { return r.params["ss:state"].value }

func (r *run) aborted() bool { return r.params["ss:abort"].set }

func (r *run) add(key, group, value string) {
	r.params[key] = &param{value: value, set: value != "", group: group}
}

// newRun builds a run from a validated deployment; credentials come from newCred.
func newRun(uuid string, d *Deployment, newCred func() (string, string)) *run {
	r := &run{uuid: uuid, name: d.Name, username: d.Username, mutable: d.Mutable, created: time.Now(),
		params: map[string]*param{}, nodeByName: map[string]*node{}, instances: map[string]*instance{},
		mappings: map[string][]string{}}
	if r.name == "" {
		r.name = "deployment"
	}
	if r.username == "" {
		r.username = "mocknuvla"
	}
	state := d.State
	if state == "" {
		state = StateReady
	}
	var groups, clouds []string
	seenCloud := map[string]bool{}
	for _, n := range d.Nodes {
		groups = append(groups, n.Cloud+":"+n.Name)
		if !seenCloud[n.Cloud] {
			seenCloud[n.Cloud] = true
			clouds = append(clouds, n.Cloud)
		}
	}
	const global = "Global"
	r.add("ss:category", global, "Deployment")
	r.add("ss:complete", global, "false")
	r.add("ss:abort", global, "")
	r.add("ss:state", global, state)
	r.add("ss:groups", global, strings.Join(groups, ","))
	r.add("ss:url.service", global, "")
	r.add("ss:tags", global, d.Tags)
	r.add("ss:recovery.mode", global, "false")

	scale := "creating"
	if state == StateReady {
		scale = "operational"
	}
	// One orchestrator per cloud, as SlipStream creates them: they take part in the
	// Initializing and Finalizing barriers.
	for _, c := range clouds {
		name := "orchestrator-" + c
		key, secret := newCred()
		in := &instance{InstanceInfo: InstanceInfo{Name: name, Node: name, APIKey: key, APISecret: secret}, orchestrator: true}
		r.instances[name] = in
		r.instOrder = append(r.instOrder, name)
		r.addInstanceParams(in, c, scale)
	}
	for _, dn := range d.Nodes {
		n := &node{name: dn.Name, cloud: dn.Cloud, decl: dn.Parameters, nextID: 1}
		r.nodes = append(r.nodes, n)
		r.nodeByName[n.name] = n
		r.add(n.name+":ids", n.name, "")
		r.add(n.name+":multiplicity", n.name, "0")
	}
	for _, n := range r.nodes {
		for _, dn := range d.Nodes {
			if dn.Name == n.name {
				r.createInstances(n, dn.Multiplicity, scale, newCred)
			}
		}
	}
	// Mapped inputs take the current value of their source (declared defaults included), now
	// that every instance exists.
	for src, targets := range r.mappings {
		if p := r.params[src]; p != nil && p.set {
			for _, t := range targets {
				r.setPlain(t, p.value)
			}
		}
	}
	return r
}

func (r *run) addInstanceParams(in *instance, cloud, scale string) {
	g := in.Name
	pre := in.Name + ":"
	for _, k := range instanceParams {
		r.add(pre+k, g, "")
	}
	r.params[pre+"vmstate"].value = "Unknown" // never 412: reads as Unknown until set
	r.add(pre+"complete", g, "false")
	r.add(pre+"is.orchestrator", g, strconv.FormatBool(in.orchestrator))
	r.add(pre+"scale.state", g, scale)
	r.add(pre+"nodename", g, in.Node)
	if !in.orchestrator {
		r.add(pre+"id", g, strconv.Itoa(in.Index))
	}
	r.add(pre+"cloudservice", g, cloud)
	r.add(pre+"instanceid", g, "mock-"+r.uuid[:8]+"-"+in.Name)
}

// createInstances adds n instances of node with their standard and declared parameters, wires
// their mapped inputs (taking the source's current value), and updates ids and multiplicity.
func (r *run) createInstances(n *node, count int, scale string, newCred func() (string, string)) []string {
	var names []string
	for i := 0; i < count; i++ {
		idx := n.nextID
		n.nextID++
		name := n.name + "." + strconv.Itoa(idx)
		key, secret := newCred()
		in := &instance{InstanceInfo: InstanceInfo{Name: name, Node: n.name, Index: idx, APIKey: key, APISecret: secret}}
		r.instances[name] = in
		r.instOrder = append(r.instOrder, name)
		r.addInstanceParams(in, n.cloud, scale)
		for _, p := range n.decl {
			r.add(name+":"+p.Name, name, p.Value)
		}
		for _, p := range n.decl {
			if p.Mapping == "" {
				continue
			}
			srcNode, sidx, srcParam, _ := parseMapping(p.Mapping) // validated by ParseDeployment
			src := srcNode + "." + strconv.Itoa(sidx) + ":" + srcParam
			target := name + ":" + p.Name
			r.mappings[src] = append(r.mappings[src], target)
			if sp := r.params[src]; sp != nil && sp.set {
				r.setPlain(target, sp.value)
			}
		}
		names = append(names, name)
	}
	ids := r.currentIDs(n.name)
	r.params[n.name+":ids"].value, r.params[n.name+":ids"].set = joinInts(ids), len(ids) > 0
	r.setPlain(n.name+":multiplicity", strconv.Itoa(len(ids)))
	return names
}

func joinInts(ids []int) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	return strings.Join(s, ",")
}

// currentIDs lists the indices of node's instances that are not removed, ascending.
func (r *run) currentIDs(nodeName string) []int {
	var ids []int
	for _, name := range r.instOrder {
		in := r.instances[name]
		if in.Node == nodeName && !in.orchestrator && !in.removed {
			ids = append(ids, in.Index)
		}
	}
	sort.Ints(ids)
	return ids
}

// setPlain stores a value (empty un-sets) and copies it to every mapped target, transitively.
func (r *run) setPlain(key, value string) {
	r.propagate(key, value, map[string]bool{})
}

func (r *run) propagate(key, value string, seen map[string]bool) {
	if seen[key] {
		return
	}
	seen[key] = true
	if p := r.params[key]; p != nil {
		p.value, p.set = value, value != ""
	}
	for _, t := range r.mappings[key] {
		r.propagate(t, value, seen)
	}
}

// nodeNamePart is SlipStream's node part of a key: "web.1" for "web.1:x", "ss" for "ss:abort".
func nodeNamePart(key string) string {
	n, _, _ := strings.Cut(key, ":")
	return n
}

// abortOrReset raises (message != "") or clears the abort flags, as SlipStream does: a message
// sets <nodename>:abort, and ss:abort if not yet set (recovery mode on in Provisioning); an empty
// message clears ss:abort and <nodename>:abort and turns recovery mode off.
func (r *run) abortOrReset(message, nodename string) {
	nodeAbort := r.params[nodename+":abort"]
	global := r.params["ss:abort"]
	if message == "" {
		global.value, global.set = "", false
		if nodeAbort != nil {
			nodeAbort.value, nodeAbort.set = "", false
		}
		r.setPlain("ss:recovery.mode", "false")
		return
	}
	wasSet := global.set
	if nodeAbort != nil {
		nodeAbort.value, nodeAbort.set = message, true
	}
	if !wasSet {
		global.value, global.set = message, true
		if r.state() == StateProvisioning {
			r.setPlain("ss:recovery.mode", "true")
		}
	}
}

const truncMarker = "\n(truncated)\n"

// truncateMiddle shortens s to exactly max characters, keeping its head and tail around the marker.
func truncateMiddle(s string, max int) string {
	rs := []rune(s)
	if len(rs) <= max {
		return s
	}
	m := utf8.RuneCountInString(truncMarker)
	tail := (max - m) / 2
	head := max - m - tail
	return string(rs[:head]) + truncMarker + string(rs[len(rs)-tail:])
}

func isAbortKey(key string) bool {
	return key == "ss:abort" || (strings.HasSuffix(key, ":abort") && !strings.HasPrefix(key, "ss:"))
}

// put is the legacy PUT /run/{uuid}/{key} after the abort check. admin relaxes the ss:state
// rule (any valid state may be set).
func (r *run) put(key, value string, admin bool) error {
	switch {
	case isAbortKey(key) && admin && value == "":
		r.del(key) // the test's hand clears the abort flags
		return nil
	case isAbortKey(key):
		if r.params[key].set {
			return nil // an abort message is kept: the first reason wins
		}
		value = truncateMiddle(value, MaxValueLen)
		r.abortOrReset(value, nodeNamePart(key))
		r.setPlain(key, value)
		return nil
	case key == "ss:state":
		if !validState(value) {
			return statusErr(http.StatusBadRequest, ErrBadRequest, "Requested transition to unknown state: %s", value)
		}
		if admin {
			r.setState(value)
			return nil
		}
		if r.aborted() {
			return statusErr(http.StatusBadRequest, ErrBadRequest, "For any state transition via API abort should be cleared first.")
		}
		if !(r.mutable && r.state() == StateReady && value == StateProvisioning) {
			return statusErr(http.StatusBadRequest, ErrBadRequest, "Via API state can be advanced only on a mutable run and only from %s to %s", StateReady, StateProvisioning)
		}
		r.setState(StateProvisioning)
		return nil
	}
	if c := utf8.RuneCountInString(value); c > MaxValueLen {
		return statusErr(http.StatusBadRequest, ErrBadRequest, "Value too long (%d). Maximum length allowed: %d.", c, MaxValueLen)
	}
	r.setPlain(key, value)
	return nil
}

// del is the legacy DELETE /run/{uuid}/{key}: un-set, then reset the abort flags (SlipStream's
// abortOrReset with no message for the key's node).
func (r *run) del(key string) {
	r.setPlain(key, "")
	r.abortOrReset("", nodeNamePart(key))
}

// setState moves the run to state: completes are reset, and the simulated orchestrator's
// scale bookkeeping is done (removing -> removed, creating -> created -> operational).
func (r *run) setState(state string) {
	prev := r.state()
	r.params["ss:state"].value, r.params["ss:state"].set = state, true
	for _, name := range r.instOrder {
		r.params[name+":complete"].value, r.params[name+":complete"].set = "false", true
		ss := r.params[name+":scale.state"]
		switch {
		case prev == StateProvisioning && state != StateProvisioning && ss.value == "removing":
			ss.value = "removed"
		case prev == StateProvisioning && state != StateProvisioning && ss.value == "creating":
			ss.value = "created"
		case state == StateReady && ss.value == "created":
			ss.value = "operational"
		}
	}
	if finalState(state) {
		for _, name := range r.instOrder {
			if !r.instances[name].removed {
				r.params[name+":vmstate"].value, r.params[name+":vmstate"].set = "Terminated", true
			}
		}
	}
}

// removedFromBarrier: instances scaled down (removing, removed, gone) are not waited for.
func (r *run) removedFromBarrier(name string) bool {
	if r.instances[name].removed {
		return true
	}
	switch r.params[name+":scale.state"].value {
	case "removing", "removed", "gone":
		return true
	}
	return false
}

// nextState is where a synchronized state goes once its barrier is met, and whether only the
// orchestrators take part in that barrier.
func (r *run) nextState(state string) (next string, onlyOrch bool) {
	switch state {
	case StateInitializing:
		return StateProvisioning, true
	case StateProvisioning:
		return StateExecuting, false
	case StateExecuting:
		return StateSendingReports, false
	case StateSendingReports:
		return StateReady, false
	case StateReady:
		if r.mutable {
			return StateReady, false
		}
		return StateFinalizing, false
	case StateFinalizing:
		if r.aborted() {
			return StateAborted, true
		}
		return StateDone, true
	}
	return state, false
}

// complete is POST /run/{uuid}/{inst}:complete: mark the instance complete and advance the
// run when every instance taking part in the current barrier is complete.
func (r *run) complete(key string) (string, error) {
	name := nodeNamePart(key)
	if r.instances[name] == nil {
		return "", statusErr(http.StatusConflict, ErrConflict, "Failed to find nodename: %s", name)
	}
	r.params[name+":complete"].value, r.params[name+":complete"].set = "true", true
	state := r.state()
	if finalState(state) {
		return "", statusErr(http.StatusConflict, ErrConflict, "Cannot advance from terminal state %s", state)
	}
	next, onlyOrch := r.nextState(state)
	recovery := r.params["ss:recovery.mode"].value == "true"
	for _, n := range r.instOrder {
		in := r.instances[n]
		if r.removedFromBarrier(n) || ((onlyOrch || recovery) && !in.orchestrator) {
			continue
		}
		if r.params[n+":complete"].value != "true" {
			return state, nil
		}
	}
	r.setState(next)
	return next, nil
}

// scaleUp is POST /run/{uuid}/{node}: count new instances, state forced to Provisioning.
func (r *run) scaleUp(nodeName string, count int, newCred func() (string, string)) ([]string, error) {
	n := r.nodeByName[nodeName]
	if n == nil {
		return nil, statusErr(http.StatusBadRequest, ErrUnknownNode, "Node %s doesn't exist.", nodeName)
	}
	if count < 0 || count > maxMultiplicity {
		return nil, statusErr(http.StatusBadRequest, ErrBadRequest, "Number of instances to add must be between 0 and %d, not %d.", maxMultiplicity, count)
	}
	if err := r.checkScalable(); err != nil {
		return nil, err
	}
	names := r.createInstances(n, count, "creating", newCred)
	r.setState(StateProvisioning)
	return names, nil
}

func (r *run) checkScalable() error {
	if !r.mutable {
		return statusErr(http.StatusConflict, ErrConflict, "Can't add/remove instances. Run is not mutable.")
	}
	if st := r.state(); st != StateReady {
		return statusErr(http.StatusConflict, ErrConflict, "Can't add/remove instances. Incompatible state %s. This can only be performed on state %s", st, StateReady)
	}
	return nil
}

// scaleDown is DELETE /run/{uuid}/{node}: the instances get scale.state=removing and leave
// <node>:ids; their parameters stay readable. Unless idsOnly, the run goes to Provisioning.
func (r *run) scaleDown(nodeName string, ids []int, idsOnly bool) error {
	n := r.nodeByName[nodeName]
	if n == nil {
		return statusErr(http.StatusBadRequest, ErrUnknownNode, "Invalid nodename: %s", nodeName)
	}
	if len(ids) == 0 {
		return statusErr(http.StatusBadRequest, ErrBadRequest, "Provide list of node instance IDs to be removed from the Run.")
	}
	if !idsOnly {
		if err := r.checkScalable(); err != nil {
			return err
		}
	}
	seen := map[int]bool{}
	for _, id := range ids {
		name := nodeName + "." + strconv.Itoa(id)
		in := r.instances[name]
		switch {
		case in == nil:
			return statusErr(http.StatusBadRequest, ErrBadRequest, "Invalid instance name: %s", name)
		case in.removed || seen[id]:
			return statusErr(http.StatusBadRequest, ErrBadRequest, "Instance %s is already removed", name)
		}
		seen[id] = true
	}
	for _, id := range ids {
		name := nodeName + "." + strconv.Itoa(id)
		r.instances[name].removed = true
		r.params[name+":scale.state"].value, r.params[name+":scale.state"].set = "removing", true
	}
	cur := r.currentIDs(nodeName)
	r.params[nodeName+":ids"].value, r.params[nodeName+":ids"].set = joinInts(cur), len(cur) > 0
	r.setPlain(nodeName+":multiplicity", strconv.Itoa(len(cur)))
	if !idsOnly {
		r.setState(StateProvisioning)
	}
	return nil
}

// terminate is DELETE /run/{uuid}: the simulated orchestrators stop every VM at once. Before
// Ready the run is Cancelled; otherwise it goes through Finalizing to Done (Aborted if ss:abort).
func (r *run) terminate() {
	switch st := r.state(); {
	case finalState(st):
		return
	case st == StateInitializing || st == StateProvisioning || st == StateExecuting:
		r.setState(StateCancelled)
	default:
		if r.aborted() {
			r.setState(StateAborted)
		} else {
			r.setState(StateDone)
		}
	}
}

// sortedKeys lists every parameter key in a stable order.
func (r *run) sortedKeys() []string {
	keys := make([]string, 0, len(r.params))
	for k := range r.params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// currentInstances lists the application instances that are not removed.
func (r *run) currentInstances() []string {
	var out []string
	for _, name := range r.instOrder {
		if in := r.instances[name]; !in.orchestrator && !in.removed {
			out = append(out, name)
		}
	}
	return out
}

// isRemovedKey reports whether key belongs to a scaled-down instance.
func (r *run) isRemovedKey(key string) bool {
	in := r.instances[nodeNamePart(key)]
	return in != nil && in.removed
}
