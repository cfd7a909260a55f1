package orchestrator

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
)

func deployment(vals map[string]string) *roletest.Snapshot {
	s := roletest.NewSnapshot("cnsmo.1", vals)
	s.AddNode("cnsmo", "cnsmo.1").AddNode("web", "web.1", "web.2")
	return s
}

// Every service validates its own inputs anywhere in the deployment through the registry; the
// error names the instance and the parameter (and the field), in one form.
func TestValidateNamesTheInstanceAndParameter(t *testing.T) {
	all := []string{"vpn", "fw", "lb"}
	good := map[string]string{
		"cnsmo.1:" + params.LBPort: "8080", "cnsmo.1:" + params.LBNode: "web",
		"cnsmo.1:" + params.VPNSubnet: "198.19.200.0/24", "cnsmo.1:" + params.VPNSubnet6: "2001:db8:c5e0::/64",
		"web.1:" + params.FWRules: `[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"}]`,
		"web.2:" + params.FWRules: `[]`,
	}
	require.NoError(t, Validate(deployment(good), all, "cnsmo.1"))
	for _, c := range []struct {
		name     string
		key, val string
		services []string
		want     string // "" = valid
	}{
		{"bad rule on another instance", "web.2:" + params.FWRules, `[{"direction":"in","dst_port":"1","action":"drop"}]`, all,
			"web.2: " + params.FWRules + "[0]"},
		{"bad rule field", "web.1:" + params.FWRules, `[{"direction":"in","protocol":"tcp","dst_port":"70000","action":"drop"}]`, all,
			"web.1: " + params.FWRules + "[0].dst_port: 70000 is out of range 1-65535"},
		{"bad rule, fw not enabled", "web.2:" + params.FWRules, `[{"direction":"sideways","action":"drop"}]`, []string{"vpn", "lb"}, ""},
		{"bad lb.mode", "cnsmo.1:" + params.LBMode, "fastest", all, `cnsmo.1: lb.mode: "fastest" is not one of roundrobin`},
		{"bad lb.port", "cnsmo.1:" + params.LBPort, "http", all, `cnsmo.1: lb.port: "http" is not a port number`},
		{"bad lb.mode, lb not enabled", "cnsmo.1:" + params.LBMode, "fastest", []string{"vpn", "fw"}, ""},
		{"lb.node not in the run", "cnsmo.1:" + params.LBNode, "db", all, `cnsmo.1: lb.node: node "db" is not in the run`},
		{"bad vpn.subnet", "cnsmo.1:" + params.VPNSubnet, "198.19.200.0/33", all, "cnsmo.1: vpn.subnet"},
		{"bad vpn.device", "cnsmo.1:" + params.VPNDevice, "wg", all, `cnsmo.1: vpn.device: "wg" is not tap or tun`},
		{"bad vpn.port", "cnsmo.1:" + params.VPNPort, "70000", all, `cnsmo.1: vpn.port: 70000 is out of range 1-65535`},
		{"bad vpn.port, vpn not enabled", "cnsmo.1:" + params.VPNPort, "0", []string{"fw", "lb"}, ""},
		{"bad service list", "cnsmo.1:" + params.ServicesEnable, `["vpn","dns"]`, all, `cnsmo.1: net.services.enable[1]: unknown service "dns"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			vals := maps.Clone(good)
			vals[c.key] = c.val
			err := Validate(deployment(vals), c.services, "cnsmo.1")
			if c.want == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), c.want)
			var ie *role.InputError
			assert.True(t, errors.As(err, &ie), "an *role.InputError: %v", err)
		})
	}
}

// Build returns the registry's services for each kind of role, in reconcile order.
func TestBuildFollowsTheRegistry(t *testing.T) {
	env := func(string) role.Env { return role.Env{Params: newFake("x.1"), Log: zerolog.Nop()} }
	names := func(list []role.Service) []string {
		var out []string
		for _, s := range list {
			out = append(out, s.Name())
		}
		return out
	}
	assert.Equal(t, []string{"vpn", "lb"}, names(Build(true, []string{"lb", "fw", "vpn"}, env)), "the server runs no firewall")
	assert.Equal(t, []string{"vpn", "fw"}, names(Build(false, []string{"lb", "fw", "vpn"}, env)), "an agent runs no load balancer")
	assert.Equal(t, []string{"fw"}, names(Build(false, []string{"fw"}, env)))
	assert.Equal(t, []string{"vpn", "fw", "lb"}, Known)
}

// recService records its passes, teardowns and withdrawals; it publishes <name>.ready.
type recService struct {
	name  string
	p     role.Publisher
	log   *[]string
	leave bool
}

func (s *recService) Name() string { return s.name }
func (s *recService) Reconcile(ctx context.Context, snap role.Snapshot) (bool, error) {
	return true, role.Publish(ctx, s.p, snap, snap.Self(), s.name+".ready", "true")
}
func (s *recService) Teardown(context.Context) error {
	*s.log = append(*s.log, "teardown "+s.name)
	return nil
}
func (s *recService) Withdraw(ctx context.Context) error {
	*s.log = append(*s.log, "withdraw "+s.name)
	return role.Withdraw(ctx, s.p, s.name+".ready")
}

// A change of net.services.enable at run time: the loop over the new list takes over, the
// services that stay are not torn down, and the dropped one tears down and withdraws its outputs
// (through its own Withdraw) once the new list has had a ready pass.
func TestRunnerFollowsTheEnabledServices(t *testing.T) {
	st := newFake("web.1")
	put(st, "cnsmo.1:"+params.ServicesEnable, `["vpn","fw"]`)
	var log []string
	built := map[string]*recService{}
	r := &Runner{Role: "agent", ServerInstance: "cnsmo.1", Store: NewCache(st), Services: []string{"vpn", "fw"}, Log: zerolog.Nop(),
		Env: func(s string, _ []string) role.Env { return role.Env{Params: st, Log: zerolog.Nop()} }}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	passes := 0
	r.Tune = func(l *Loop) {
		l.Steady, l.MinPoll, l.MaxPoll = time.Millisecond, time.Millisecond, time.Millisecond
		// stand-ins for the registry's services, with the same names
		for i, s := range l.Services {
			rs, ok := built[s.Name()]
			if !ok {
				rs = &recService{name: s.Name(), p: st, log: &log}
				built[s.Name()] = rs
			}
			l.Services[i] = rs
		}
		on := l.OnPass
		l.OnPass = func(all bool) {
			on(all)
			passes++
			switch {
			case passes == 3:
				put(st, "cnsmo.1:"+params.ServicesEnable, `["fw"]`)
			case passes > 3 && len(log) == 2:
				cancel()
			}
		}
	}
	err := r.Run(ctx)
	require.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, []string{"teardown vpn", "withdraw vpn", "teardown fw"}, log, "vpn dropped then torn down and withdrawn; fw torn down at the stop only")
	assert.Empty(t, st.Value("vpn.ready"), "the dropped service's output is withdrawn")
	assert.Equal(t, "true", st.Value("fw.ready"))
}

// An invalid service list aborts the run, naming the server's parameter.
func TestRunnerAbortsOnAnInvalidServiceList(t *testing.T) {
	st := newFake("web.1")
	put(st, "cnsmo.1:"+params.ServicesEnable, `["vpn","dns"]`)
	r := &Runner{Role: "agent", ServerInstance: "cnsmo.1", Store: NewCache(st), Services: []string{"fw"}, Log: zerolog.Nop(),
		Env: func(string, []string) role.Env { return role.Env{Params: st, Log: zerolog.Nop()} },
		Tune: func(l *Loop) {
			var log []string
			l.Services = []role.Service{&recService{name: "fw", p: st, log: &log}}
		}}
	err := r.Run(context.Background())
	require.True(t, role.IsTerminal(err), "%v", err)
	assert.Equal(t, `cnsmo agent on web.1: cnsmo.1: net.services.enable[1]: unknown service "dns" (known: vpn, fw, lb)`, st.AbortReason())
}

// Every service of the registry withdraws exactly its own outputs, through its own Withdraw, as
// the orchestrator calls it when the service is dropped (the real services, a fake store).
func TestEveryServiceWithdrawsItsOutputs(t *testing.T) {
	for _, c := range []struct {
		server bool
		me     string
		owned  map[string][]string // service -> keys of this instance it publishes
		other  []string            // keys it must leave alone
	}{
		{true, "cnsmo.1", map[string][]string{
			"vpn": {params.VPNServerListening, params.VPNReady, params.VPNAddress, params.VPNAddress6},
			"lb":  {params.LBReady, params.URLService},
		}, []string{params.ServicesEnabled, params.VPNCACert, params.ServerInstanceID}},
		{false, "web.1", map[string][]string{
			"vpn": {params.VPNClientListening, params.VPNAddress, params.VPNAddress6},
			"fw":  {params.FWReady},
		}, []string{params.ServicesEnabled, params.VPNCSR, params.FWRules}},
	} {
		for _, s := range Build(c.server, Known, func(string) role.Env { return role.Env{Log: zerolog.Nop()} }) {
			st := newFake(c.me)
			for _, keys := range c.owned {
				for _, k := range append(keys, c.other...) {
					put(st, k, "x")
				}
			}
			put(st, ":"+params.URLService, "x") // the deployment's URL
			list := Build(c.server, []string{s.Name()}, func(string) role.Env {
				return role.Env{Params: st, Instance: c.me, Log: zerolog.Nop(), StateDir: t.TempDir()}
			})
			require.Len(t, list, 1)
			require.NoError(t, list[0].Withdraw(context.Background()))
			for _, k := range c.owned[s.Name()] {
				assert.Empty(t, st.Value(k), "%s on %s withdraws %s", s.Name(), c.me, k)
			}
			for name, keys := range c.owned {
				if name == s.Name() {
					continue
				}
				for _, k := range keys {
					if !slices.Contains(c.owned[s.Name()], k) {
						assert.Equal(t, "x", st.Value(k), "%s leaves %s's %s alone", s.Name(), name, k)
					}
				}
			}
			for _, k := range c.other {
				assert.Equal(t, "x", st.Value(k), "%s leaves %s alone", s.Name(), k)
			}
			if s.Name() == "lb" {
				assert.Empty(t, st.Value(":"+params.URLService), "the deployment's URL is withdrawn")
			} else {
				assert.Equal(t, "x", st.Value(":"+params.URLService))
			}
		}
	}
}
