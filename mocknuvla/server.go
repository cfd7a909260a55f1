// Package mocknuvla is a faithful in-process mock of the legacy SlipStream (Nuvla 1) run API:
// runtime parameters, the run state machine, scaling, parameter mapping and cookie auth, with
// the same status codes and side effects as the real server (including "an unknown key aborts
// the run"). For tests and users' CI it adds what the real server lacks: runs created from a
// deployment file, an admin API, fault injection (latency, 5xx, dropped connections) and
// request counters. A *Server is an http.Handler: serve it with httptest or net/http.
package mocknuvla

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Options configure a Server.
type Options struct {
	Logger zerolog.Logger
	// NoAuth serves the run API without a session cookie.
	NoAuth bool
	// ServiceURL is the run API's URL as instances reach it: the default service URL of the env
	// and context files the admin API renders (the admin API has a listener of its own).
	ServiceURL string
	// Users are internal accounts (username -> password) accepted by
	// POST /api/session with the session-template/internal template. They may use every run.
	Users map[string]string
	// OnInstances, when set, is called (without the server's lock) with the instances a scale
	// up created, whichever way it was asked for (HTTP, admin API or ScaleUp).
	OnInstances func(uuid string, created []InstanceInfo)
	// API is the public API served: "slipstream" (default: the legacy run API) or "nuvla2"
	// (deployment parameters, see nuvla2.go).
	API string
	// Staleness is how long a Nuvla 2 search shows a parameter's old value after an edit (0: 1 s,
	// as Elasticsearch's refresh; negative: none).
	Staleness time.Duration
}

// Faults are injected into the answers of the run and session routes (never the admin API).
type Faults struct {
	Latency       time.Duration // sleep before answering (ends early if the client goes away)
	Error5xxRatio float64       // probability of answering 503 or 500 instead
	DropRatio     float64       // probability of closing the connection without an answer
}

func (f Faults) zero() bool { return f.Latency == 0 && f.Error5xxRatio == 0 && f.DropRatio == 0 }

// RunInfo describes a created run: its id and every application instance with its API key.
type RunInfo struct {
	UUID      string         `json:"uuid"`
	Username  string         `json:"username"`
	Instances []InstanceInfo `json:"instances"`
	// Orchestrators are the per-cloud orchestrator instances ("orchestrator-<cloud>").
	Orchestrators []InstanceInfo `json:"orchestrators"`

	srv *Server
}

// InstanceInfo is one node instance ("web.2") and its per-instance API key.
type InstanceInfo struct {
	Name      string `json:"name"`
	Node      string `json:"node"`
	Index     int    `json:"index"`
	APIKey    string `json:"apiKey"`
	APISecret string `json:"apiSecret"`
}

// ParamValue is a parameter's value as the Go API reports it.
type ParamValue struct {
	Value string
	IsSet bool
}

type credential struct {
	secret   string
	run      string
	instance string
}

type session struct {
	run  string // "" = every run (internal user)
	user string
}

// Server is the mock. All its state is guarded by one mutex.
type Server struct {
	log         zerolog.Logger
	noAuth      bool
	users       map[string]string
	onInstances func(string, []InstanceInfo)
	serviceURL  string
	api         string

	adminOnce sync.Once
	admin     *http.ServeMux

	mu            sync.Mutex
	runs          map[string]*run
	runOrder      []string
	creds         map[string]credential // API key -> secret and owner
	sessions      map[string]session    // cookie token -> session
	global        Faults
	counters      map[string]int64
	byClient      map[string]int64 // requests per remote address
	bytesByClient map[string]int64 // answer body bytes per remote address
	faultCnt      map[string]int64
	n2            *n2state
}

// New returns a Server with no run.
func New(opts Options) *Server {
	users := map[string]string{}
	for u, p := range opts.Users {
		users[u] = p
	}
	staleness := opts.Staleness
	switch {
	case staleness == 0:
		staleness = DefaultStaleness
	case staleness < 0:
		staleness = 0
	}
	api := opts.API
	if api == "" {
		api = "slipstream"
	}
	return &Server{log: opts.Logger, noAuth: opts.NoAuth, users: users, onInstances: opts.OnInstances, serviceURL: opts.ServiceURL,
		api: api, n2: newN2State(staleness),
		runs: map[string]*run{}, creds: map[string]credential{}, sessions: map[string]session{},
		counters: map[string]int64{}, byClient: map[string]int64{}, bytesByClient: map[string]int64{}, faultCnt: map[string]int64{}}
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("mocknuvla: crypto/rand: %v", err)) // never fails on Linux
	}
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("mocknuvla: crypto/rand: %v", err))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// credFor returns a function minting API keys owned by run uuid (s.mu held while it is used).
func (s *Server) credFor(uuid string) func() (string, string) {
	return func() (string, string) {
		key := "credential/" + newUUID()
		secret := randomHex(24)
		s.creds[key] = credential{secret: secret, run: uuid}
		return key, secret
	}
}

// CreateRun creates a run from a deployment (validated again) and returns its id and instances.
func (s *Server) CreateRun(d *Deployment) (*RunInfo, error) {
	if d == nil {
		return nil, fmt.Errorf("create run: nil deployment")
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("create run: %w", err)
	}
	d = d.clone()
	uuid := newUUID()
	s.mu.Lock()
	defer s.mu.Unlock()
	r := newRun(uuid, d, s.credFor(uuid))
	for _, in := range r.instances {
		c := s.creds[in.APIKey]
		c.instance = in.Name
		s.creds[in.APIKey] = c
	}
	s.runs[uuid] = r
	s.runOrder = append(s.runOrder, uuid)
	s.log.Info().Str("run", uuid).Str("deployment", r.name).Int("instances", len(r.instances)).Msg("run created")
	return s.runInfo(r), nil
}

func (s *Server) runInfo(r *run) *RunInfo {
	ri := &RunInfo{UUID: r.uuid, Username: r.username, srv: s, Instances: []InstanceInfo{}, Orchestrators: []InstanceInfo{}}
	for _, name := range r.instOrder {
		in := r.instances[name]
		if in.orchestrator {
			ri.Orchestrators = append(ri.Orchestrators, in.InstanceInfo)
		} else if !in.removed {
			ri.Instances = append(ri.Instances, in.InstanceInfo)
		}
	}
	return ri
}

// RunInfo returns the current description of a run (scaled-up instances included, removed
// ones left out).
func (s *Server) RunInfo(uuid string) (*RunInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return nil, err
	}
	return s.runInfo(r), nil
}

// Runs lists the ids of every run, oldest first.
func (s *Server) Runs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.runOrder...)
}

// Instance returns one instance (orchestrators and removed instances included) with its key.
func (s *Server) Instance(uuid, name string) (InstanceInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return InstanceInfo{}, err
	}
	in := r.instances[name]
	if in == nil {
		return InstanceInfo{}, statusErr(http.StatusNotFound, ErrUnknownNode, "Unknown instance %s in run %s", name, uuid)
	}
	return in.InstanceInfo, nil
}

func (s *Server) lookup(uuid string) (*run, error) {
	r := s.runs[uuid]
	if r == nil {
		return nil, statusErr(http.StatusNotFound, ErrUnknownRun, "Unknown run id %s", uuid)
	}
	return r, nil
}

func (s *Server) lookupParam(uuid, key string) (*run, *param, error) {
	r, err := s.lookup(uuid)
	if err != nil {
		return nil, nil, err
	}
	p := r.params[key]
	if p == nil {
		return r, nil, statusErr(http.StatusNotFound, ErrUnknownKey, "Unknown key %s", key)
	}
	return r, p, nil
}

// Param reads one parameter without any side effect (an unknown key does not abort the run).
func (s *Server) Param(uuid, key string) (value string, isSet bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, p, err := s.lookupParam(uuid, key)
	if err != nil {
		return "", false, err
	}
	return p.value, p.set, nil
}

// Params returns every parameter of a run, removed instances' included.
func (s *Server) Params(uuid string) (map[string]ParamValue, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return nil, err
	}
	out := make(map[string]ParamValue, len(r.params))
	for k, p := range r.params {
		out[k] = ParamValue{Value: p.value, IsSet: p.set}
	}
	return out, nil
}

// SetParam sets a parameter like a PUT with ignoreabort (mapping applied, abort keys raise
// ss:abort; "" un-sets, and for an abort key clears the abort flags as a DELETE does);
// ss:state accepts any valid state. An unknown key is an error (the
// run is not aborted: this is the test's hand, not a VM's).
func (s *Server) SetParam(uuid, key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, _, err := s.lookupParam(uuid, key)
	if err != nil {
		return err
	}
	if err := r.put(key, value, true); err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}

// State returns ss:state.
func (s *Server) State(uuid string) (string, error) {
	v, _, err := s.Param(uuid, "ss:state")
	return v, err
}

// SetState forces ss:state to any valid state (completes are reset).
func (s *Server) SetState(uuid, state string) error {
	if !validState(state) {
		return statusErr(http.StatusBadRequest, ErrBadRequest, "unknown state %q (want one of %s)", state, strings.Join(allStates, ", "))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return err
	}
	r.setState(state)
	return nil
}

// ScaleUp adds n instances of node, with the same rules as POST /run/{uuid}/{node} (mutable
// run in Ready; the run goes to Provisioning). It returns the new instances' names.
func (s *Server) ScaleUp(uuid, node string, n int) ([]string, error) {
	s.mu.Lock()
	r, err := s.lookup(uuid)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	names, created, err := s.scaleUpLocked(r, node, n)
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	s.notifyInstances(uuid, created)
	return names, nil
}

// scaleUpLocked runs with s.mu held; the caller calls notifyInstances after unlocking.
func (s *Server) scaleUpLocked(r *run, node string, n int) ([]string, []InstanceInfo, error) {
	names, err := r.scaleUp(node, n, s.credFor(r.uuid))
	if err != nil {
		return nil, nil, fmt.Errorf("scale up %s: %w", node, err)
	}
	created := make([]InstanceInfo, 0, len(names))
	for _, name := range names {
		in := r.instances[name]
		c := s.creds[in.APIKey]
		c.instance = name
		s.creds[in.APIKey] = c
		created = append(created, in.InstanceInfo)
	}
	s.log.Info().Str("run", r.uuid).Str("node", node).Strs("instances", names).Msg("scaled up")
	return names, created, nil
}

func (s *Server) notifyInstances(uuid string, created []InstanceInfo) {
	if s.onInstances != nil && len(created) > 0 {
		s.onInstances(uuid, created)
	}
}

// ScaleDown removes instances of node by index, with the same rules as DELETE /run/{uuid}/{node}.
func (s *Server) ScaleDown(uuid, node string, ids []int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return err
	}
	return s.scaleDownLocked(r, node, ids, false)
}

func (s *Server) scaleDownLocked(r *run, node string, ids []int, idsOnly bool) error {
	if err := r.scaleDown(node, ids, idsOnly); err != nil {
		return fmt.Errorf("scale down %s: %w", node, err)
	}
	s.log.Info().Str("run", r.uuid).Str("node", node).Ints("ids", ids).Bool("idsOnly", idsOnly).Msg("scaled down")
	return nil
}

// Abort raises ss:abort with reason (kept if the run is already aborted).
func (s *Server) Abort(uuid, reason string) error {
	if reason == "" {
		reason = "aborted by mocknuvla"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.lookup(uuid)
	if err != nil {
		return err
	}
	r.abortOrReset(truncateMiddle(reason, MaxValueLen), "ss")
	return nil
}

// Complete marks an instance complete, as POST /run/{uuid}/{instance}:complete, and returns the
// run's state after it.
func (s *Server) Complete(uuid, instance string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, _, err := s.lookupParam(uuid, instance+":complete")
	if err != nil {
		return "", err
	}
	return r.complete(instance + ":complete")
}

// SetFaults sets the faults of one run's requests, or of every request when uuid is "".
// A run's own faults (when non-zero) replace the global ones; Faults{} clears.
func (s *Server) SetFaults(uuid string, f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if uuid == "" {
		s.global = f
		return
	}
	if r := s.runs[uuid]; r != nil {
		if f.zero() {
			r.faults = nil
		} else {
			ff := f
			r.faults = &ff
		}
	}
}

// GetFaults returns the faults set for a run (or the global ones for "").
func (s *Server) GetFaults(uuid string) (Faults, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if uuid == "" {
		return s.global, nil
	}
	r, err := s.lookup(uuid)
	if err != nil {
		return Faults{}, err
	}
	if r.faults == nil {
		return Faults{}, nil
	}
	return *r.faults, nil
}

// Counters returns the number of requests per route pattern, e.g. "GET /run/{uuid}/{key}":
// every request of the run and session API counts, faulted ones included; the admin API doesn't.
func (s *Server) Counters() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.counters)
}

// ClientCounters returns the number of requests per remote address (the simulated VMs' public
// addresses on the testbed), counted like Counters.
func (s *Server) ClientCounters() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.byClient)
}

// FaultCounters returns how many answers were replaced by each fault: "5xx", "drop", "latency".
func (s *Server) FaultCounters() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.faultCnt)
}

// ResetCounters zeroes the request and fault counters.
func (s *Server) ResetCounters() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counters = map[string]int64{}
	s.byClient = map[string]int64{}
	s.bytesByClient = map[string]int64{}
	s.faultCnt = map[string]int64{}
}

// ClientBytes returns the bytes of the answers (status line, headers and body) sent to each
// remote address (the run and session API, counted like ClientCounters).
func (s *Server) ClientBytes() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.bytesByClient)
}
