package vpn

import (
	"context"
	"errors"
	"net/netip"

	"github.com/cnsmo/cnsmo/driver"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// ServerService is the VPN on the CNSMO server VM, run by the engine its vpn.engine input
// selects (read on every pass: a change tears the other engine down; the addresses stay).
type ServerService struct {
	OpenVPN *Server
	WG      *WGServer
	Names   *Names
	active  string
	said    string // the names problem last said
}

// NewServerService returns the VPN server service of the instance described by env.
func NewServerService(env role.Env) *ServerService {
	n := NewNames(env, env.Hosts)
	n.DNS = &DNSServer{Log: env.Log}
	return &ServerService{OpenVPN: newServer(env), WG: NewWGServer(env), Names: n}
}

// Name implements role.Service.
func (v *ServerService) Name() string { return "vpn" }

// SetHold sets, for both engines, what keeps a member that left in the VPN a little longer.
func (v *ServerService) SetHold(f func(instance string) bool) { v.OpenVPN.Hold, v.WG.Hold = f, f }

// Assigned returns the overlay IPv4 address the running engine assigned to instance.
func (v *ServerService) Assigned(instance string) (netip.Addr, bool) {
	if v.active == EngineWireGuard {
		return v.WG.Assigned(instance)
	}
	return v.OpenVPN.Assigned(instance)
}

func (v *ServerService) engine(engine string) role.Service {
	if engine == EngineWireGuard {
		return v.WG
	}
	return v.OpenVPN
}

// switchTo tears the other engine down when the engine changes, and on the first pass of this
// process when the other engine's function is still there (the engine changed while the role
// was down): both use the device name.
func switchTo(ctx context.Context, env role.Env, active *string, engine string, svc func(string) role.Service, functions map[string][]string, links WGLinks) error {
	other := EngineOpenVPN
	if engine == EngineOpenVPN {
		other = EngineWireGuard
	}
	left := *active == other
	if *active == "" {
		for _, fn := range functions[other] {
			if st, err := env.Driver.Status(ctx, fn); err == nil && st.State != driver.StateAbsent {
				left = true
			}
		}
		// A kernel WireGuard device has no function: its link kind tells.
		if kind, ok, err := links.Kind(Device); other == EngineWireGuard && err == nil && ok && kind == "wireguard" {
			left = true
		}
	}
	if left {
		env.Log.Info().Str("from", other).Str("to", engine).Msg("vpn: engine changed: tearing the other engine down")
		if err := svc(other).Teardown(ctx); err != nil {
			return err
		}
	}
	*active = engine
	return nil
}

// Reconcile implements role.Service.
func (v *ServerService) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	me := v.OpenVPN.env.Instance
	in, err := ParseInputs(func(k string) string { return s.Get(me, k) })
	if err != nil {
		return false, role.Terminal(err)
	}
	was := v.active
	if err := switchTo(ctx, v.OpenVPN.env, &v.active, in.Engine, v.engine,
		map[string][]string{EngineOpenVPN: {ServerFunction}, EngineWireGuard: {WGFunction}}, v.WG.dev.links); err != nil {
		return false, err
	}
	if was != "" && was != in.Engine { // the other engine assigned addresses meanwhile: read them again
		v.OpenVPN.alloc, v.WG.alloc = nil, nil
		v.OpenVPN.led, v.WG.led = nil, nil
		v.OpenVPN.desk, v.WG.desk = nil, nil // one people.json: the other engine's copy is stale
	}
	ok, err := v.engine(in.Engine).Reconcile(ctx, s)
	led, alloc := v.OpenVPN.led, v.OpenVPN.alloc
	if in.Engine == EngineWireGuard {
		led, alloc = v.WG.led, v.WG.alloc
	}
	nerr := v.Names.server(s, in.Domain, led)
	if v.Names != nil && alloc != nil && s.Get(me, params.VPNAddress) != "" {
		// The device has the addresses; an IPv6 address still in duplicate address detection
		// cannot be bound yet: the next pass tries again.
		if lerr := v.Names.DNS.Listen(alloc.Server().V4, alloc.Server().V6); lerr != nil && lerr.Error() != v.said {
			v.said = lerr.Error()
			v.OpenVPN.env.Log.Warn().Err(lerr).Msg("vpn: names: DNS cannot listen on every overlay address yet")
		}
	}
	return ok, errors.Join(err, nerr)
}

// Teardown removes both engines' functions and device (whichever ran before a restart), and the
// names.
func (v *ServerService) Teardown(ctx context.Context) error {
	return errors.Join(v.Names.Teardown(), v.WG.Teardown(ctx), v.OpenVPN.Teardown(ctx))
}

// Withdraw un-sets what either engine published about this server's readiness.
func (v *ServerService) Withdraw(ctx context.Context) error {
	return errors.Join(v.WG.Withdraw(ctx), v.OpenVPN.Withdraw(ctx))
}

// ClientService is the VPN on an application VM, run by the engine the CNSMO server's
// vpn.engine selects.
type ClientService struct {
	OpenVPN *Client
	WG      *WGMember
	Names   *Names
	active  string
}

// NewClientService returns the VPN client service of the instance described by env.
func NewClientService(env role.Env) *ClientService {
	return &ClientService{OpenVPN: newClient(env), WG: NewWGMember(env), Names: NewNames(env, env.Hosts)}
}

// Name implements role.Service.
func (v *ClientService) Name() string { return "vpn" }

func (v *ClientService) engine(engine string) role.Service {
	if engine == EngineWireGuard {
		return v.WG
	}
	return v.OpenVPN
}

// Reconcile implements role.Service: nothing until the CNSMO server is known.
func (v *ClientService) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	srv := v.WG.pins.server(s) // the pinned VPN server once the mesh was joined
	if srv == "" {
		srv = s.Get(v.OpenVPN.env.Instance, params.ServerInstanceID)
	}
	if srv == "" {
		return false, nil
	}
	in, err := ParseInputs(func(k string) string { return s.Get(srv, k) })
	if err != nil {
		return false, nil // the server aborts the run with the message
	}
	if err := switchTo(ctx, v.OpenVPN.env, &v.active, in.Engine, v.engine,
		map[string][]string{EngineOpenVPN: {ClientFunction}, EngineWireGuard: {WGFunction}}, v.WG.dev.links); err != nil {
		return false, err
	}
	ok, err := v.engine(in.Engine).Reconcile(ctx, s)
	return ok, errors.Join(err, v.Names.member(s))
}

// Teardown removes both engines' functions and device, and the names.
func (v *ClientService) Teardown(ctx context.Context) error {
	return errors.Join(v.Names.Teardown(), v.WG.Teardown(ctx), v.OpenVPN.Teardown(ctx))
}

// Withdraw un-sets what either engine published.
func (v *ClientService) Withdraw(ctx context.Context) error {
	return errors.Join(v.WG.Withdraw(ctx), v.OpenVPN.Withdraw(ctx))
}

// Leave waits until the VPN server has withdrawn its overlay address (see Client.Leave).
func (v *ClientService) Leave(ctx context.Context, st role.Store) { v.OpenVPN.Leave(ctx, st) }

// Status is the WireGuard engine's, when it runs (see orchestrator.Statuser).
func (v *ServerService) Status() string {
	if v.active == EngineWireGuard {
		return v.WG.Status()
	}
	return ""
}

// Status is the WireGuard engine's, when it runs.
func (v *ClientService) Status() string {
	if v.active == EngineWireGuard {
		return v.WG.Status()
	}
	return ""
}
