// Package sim simulates a deployment's control plane on one machine: one CNSMO server and N agents,
// each the real orchestrator loop with the real SlipStream client, talking HTTP to an in-process
// mocknuvla, with the network services replaced by fakes that publish like the real ones. Every
// role's client has a loopback address of its own (127.0.1.x), so that mocknuvla's per-client
// counters measure each role's traffic where it is served. Tests and benchmarks use it to measure
// what the control plane costs as the deployment grows.
package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/backend/slipstream"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/orchestrator"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// MaxAgents is bounded by the loopback addresses the roles get (127.0.1.2 to 127.0.1.254).
const MaxAgents = 250

// Config shapes a simulation.
type Config struct {
	Agents int           // application VMs (node "web")
	Steady time.Duration // the loops' steady poll (default 3 s, as the real roles)
	// WholeRun makes the agents read the whole run on every pass, as before the generation key
	// (the baseline of the benchmarks).
	WholeRun bool
	// API is the platform: "slipstream" (default, a run) or "nuvla2" (a deployment group on
	// mocknuvla's Nuvla 2 API, search staleness on, every role logged in with its member's key).
	API string
}

// Role is one simulated role: its loop, its client's address and what its fakes saw.
type Role struct {
	Instance string
	Addr     string // the client's source address, as mocknuvla's counters key it
	passes   atomic.Int64
	fw       *fakeFW
	tornDown atomic.Int64 // unix nanoseconds of the teardown, 0 before
	done     chan error
}

// Passes is the number of passes the role's loop has made.
func (r *Role) Passes() int64 { return r.passes.Load() }

// Rules is the firewall input the role's fake firewall last applied.
func (r *Role) Rules() string { return r.fw.seen() }

// TornDown is when the role's services were torn down (zero before).
func (r *Role) TornDown() time.Time {
	if n := r.tornDown.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Sim is a running simulation.
type Sim struct {
	Mock   *mocknuvla.Server
	RunID  string
	API    string
	group  *mocknuvla.Nuvla2Group
	hub    string // Nuvla 2: the server's deployment
	server string // the server's instance name
	Server *Role
	Agents []*Role
	cancel context.CancelFunc
	srv    *http.Server
	wg     sync.WaitGroup
}

// Start creates the run and starts every role. Stop ends them.
func Start(cfg Config) (*Sim, error) {
	if cfg.Agents < 1 || cfg.Agents > MaxAgents {
		return nil, fmt.Errorf("sim: %d agents: 1 to %d", cfg.Agents, MaxAgents)
	}
	if cfg.Steady == 0 {
		cfg.Steady = 3 * time.Second
	}
	def, err := recipes.Application()
	if err != nil {
		return nil, err
	}
	for i := range def.Nodes {
		if def.Nodes[i].Name == "web" {
			def.Nodes[i].Multiplicity = cfg.Agents
		}
	}
	if err := def.SetValue("cnsmo", params.ServicesEnable, `["vpn","fw"]`); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	if cfg.API == "" {
		cfg.API = "slipstream"
	}
	s := &Sim{API: cfg.API, server: "cnsmo.1",
		Mock: mocknuvla.New(mocknuvla.Options{NoAuth: cfg.API != "nuvla2", Logger: zerolog.Nop(), API: cfg.API})}
	s.srv = &http.Server{Handler: s.Mock, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(ln) //nolint:errcheck // ends with Close
	url := "http://" + ln.Addr().String()
	type member struct{ name, node string }
	var members []member
	if cfg.API == "nuvla2" {
		if s.group, err = s.Mock.CreateGroup(def, true); err != nil {
			s.srv.Close()
			return nil, err
		}
		for _, m := range s.group.Members {
			members = append(members, member{m.Name, m.Node})
			if m.Node == "cnsmo" {
				s.hub = m.Deployment
				s.server = nuvla2.MemberName(m.Node, m.Deployment)
			}
		}
		s.RunID = strings.TrimPrefix(s.group.ID, "deployment-set/")
	} else {
		ri, err := s.Mock.CreateRun(def)
		if err != nil {
			s.srv.Close()
			return nil, err
		}
		s.RunID = ri.UUID
		for _, in := range ri.Instances {
			members = append(members, member{in.Name, in.Node})
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	for i, in := range members {
		if in.node != "cnsmo" && in.node != "web" {
			continue
		}
		addr := netip.AddrFrom4([4]byte{127, 0, 1, byte(i + 2)})
		r, err := s.start(ctx, url, in.name, addr, cfg)
		if err != nil {
			s.Stop()
			return nil, err
		}
		if in.node == "cnsmo" {
			s.Server = r
		} else {
			s.Agents = append(s.Agents, r)
		}
	}
	if s.Server == nil {
		s.Stop()
		return nil, errors.New("sim: the run has no cnsmo node")
	}
	return s, nil
}

func (s *Sim) start(ctx context.Context, url, instance string, addr netip.Addr, cfg Config) (*Role, error) {
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: addr.AsSlice()}, Timeout: 10 * time.Second}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext, MaxIdleConnsPerHost: 2}}
	server := strings.HasPrefix(instance, "cnsmo.")
	r := &Role{Instance: instance, Addr: addr.String(), done: make(chan error, 1), fw: &fakeFW{}}
	// open connects the role's store, as cnsmo-role does before its loop: on an agent it waits
	// for the server (its mapped input on SlipStream; the hub on Nuvla 2).
	var open func(ctx context.Context) (role.Store, error)
	if s.API == "nuvla2" {
		var m mocknuvla.Nuvla2Member
		for _, x := range s.group.Members {
			if x.Name == instance {
				m = x
			}
		}
		c, err := nuvla2.New(nuvla2.Config{Endpoint: url, Deployment: m.Deployment, APIKey: m.APIKey, APISecret: m.APISecret,
			Group: s.group.ID, Node: m.Node}, nuvla2.WithHTTPClient(hc))
		if err != nil {
			return nil, err
		}
		r.Instance = nuvla2.MemberName(m.Node, m.Deployment)
		open = func(ctx context.Context) (role.Store, error) {
			st, err := nuvla2.Open(ctx, c, server)
			if err != nil {
				return nil, err
			}
			return st, st.Announce(ctx)
		}
	} else {
		client, err := ssclient.New(ssclient.Config{ServiceURL: url, RunUUID: s.RunID, NodeInstance: instance},
			ssclient.WithHTTPClient(hc), ssclient.WithLogger(zerolog.Nop()))
		if err != nil {
			return nil, err
		}
		open = func(ctx context.Context) (role.Store, error) {
			if !server {
				if _, err := client.Wait(ctx, params.ServerInstanceID); err != nil {
					return nil, err
				}
			}
			return slipstream.New(client), nil
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		st, err := open(ctx)
		if err != nil {
			r.done <- err
			return
		}
		c := orchestrator.NewCache(st)
		var services []role.Service
		generation := ""
		if server {
			services = []role.Service{&fakeHub{p: c, r: r}}
		} else {
			services = []role.Service{&fakeClient{p: c, r: r, server: s.server}, r.fw}
			r.fw.p, r.fw.r = c, r
			if !cfg.WholeRun {
				generation = s.server
			}
		}
		l := &orchestrator.Loop{Role: "sim", Store: c, Server: server, Services: services, Log: zerolog.Nop(), Steady: cfg.Steady,
			Generation: generation, OnPass: func(bool) { r.passes.Add(1) }}
		r.done <- l.Run(ctx)
	}()
	return r, nil
}

// Abort aborts the deployment as an operator would (SlipStream's abort flag; Nuvla 2's
// cnsmo.abort under the hub).
func (s *Sim) Abort(reason string) error {
	if s.API == "nuvla2" {
		s.Mock.SetNuvla2Param(s.hub, "", nuvla2.KeyAbort, reason)
		return nil
	}
	return s.Mock.Abort(s.RunID, reason)
}

// enabled reads a role's net.services.enabled.
func (s *Sim) enabled(r *Role) bool {
	if s.API == "nuvla2" {
		v, _ := s.Mock.Nuvla2Param(s.hub, r.Instance, params.ServicesEnabled)
		return v == "true"
	}
	v, _, _ := s.Mock.Param(s.RunID, r.Instance+":"+params.ServicesEnabled)
	return v == "true"
}

// Stop ends every role (their teardowns run) and the mock's listener.
func (s *Sim) Stop() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	if s.srv != nil {
		s.srv.Close()
	}
}

// Converged reports whether every role has published net.services.enabled.
func (s *Sim) Converged() bool {
	for _, r := range append([]*Role{s.Server}, s.Agents...) {
		if !s.enabled(r) {
			return false
		}
	}
	return true
}

// WaitConverged waits (polling under ctx) until every role is enabled.
func (s *Sim) WaitConverged(ctx context.Context) error {
	if err := (wait.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond}).Until(ctx, func(context.Context) (bool, error) {
		return s.Converged(), nil
	}); err != nil {
		return fmt.Errorf("sim: not converged: %w", err)
	}
	return nil
}

// Done reports whether every role's loop has returned.
func (s *Sim) Done() bool {
	for _, r := range append([]*Role{s.Server}, s.Agents...) {
		if r.TornDown().IsZero() {
			return false
		}
	}
	return true
}

// fakeHub stands for the VPN server: it publishes its endpoint and is ready when every agent has
// published its address (as the real one waits for every client's tunnel).
type fakeHub struct {
	p role.Publisher
	r *Role
}

func (h *fakeHub) Name() string { return "vpn" }
func (h *fakeHub) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	if err := role.Publish(ctx, h.p, s, s.Self(), params.VPNEndpoint, "198.18.0.1:1194/udp"); err != nil {
		return false, err
	}
	for _, in := range s.Instances("web") {
		if s.Get(in, params.VPNAddress) == "" {
			return false, nil
		}
	}
	return true, nil
}
func (h *fakeHub) Teardown(context.Context) error {
	h.r.tornDown.Store(time.Now().UnixNano())
	return nil
}
func (h *fakeHub) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, h.p, params.VPNEndpoint)
}

// fakeClient stands for a VPN client: once the server's endpoint is published it publishes its
// overlay address (once) and is ready.
type fakeClient struct {
	p      role.Publisher
	r      *Role
	server string
}

func (c *fakeClient) Name() string { return "vpn" }
func (c *fakeClient) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	if s.Get(c.server, params.VPNEndpoint) == "" {
		return false, nil
	}
	me := s.Self()
	if err := role.Publish(ctx, c.p, s, me, params.VPNAddress, "overlay address of "+me); err != nil {
		return false, err
	}
	return true, nil
}
func (c *fakeClient) Teardown(context.Context) error { return nil }
func (c *fakeClient) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, c.p, params.VPNAddress)
}

// fakeFW stands for the firewall: it applies its instance's rules (records them) and publishes
// fw.ready once.
type fakeFW struct {
	p     role.Publisher
	r     *Role
	mu    sync.Mutex
	rules string
}

func (f *fakeFW) seen() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rules
}
func (f *fakeFW) Name() string { return "fw" }
func (f *fakeFW) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	me := s.Self()
	f.mu.Lock()
	f.rules = s.Get(me, params.FWRules)
	f.mu.Unlock()
	if err := role.Publish(ctx, f.p, s, me, params.FWReady, "true"); err != nil {
		return false, err
	}
	return true, nil
}
func (f *fakeFW) Teardown(context.Context) error {
	f.r.tornDown.Store(time.Now().UnixNano())
	return nil
}
func (f *fakeFW) Withdraw(ctx context.Context) error { return role.Withdraw(ctx, f.p, params.FWReady) }

// SetRules writes an agent's firewall rules as its user would (SlipStream's parameter; on Nuvla 2
// the member's parameter under the hub, as its role publishes its CNSMO_FW_RULES).
func (s *Sim) SetRules(r *Role, rules string) error {
	if s.API == "nuvla2" {
		s.Mock.SetNuvla2Param(s.hub, r.Instance, params.FWRules, rules)
		return nil
	}
	return s.Mock.SetParam(s.RunID, r.Instance+":"+params.FWRules, rules)
}
