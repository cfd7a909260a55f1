package fw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// vpnDevice is the VPN's overlay device (vpn.Device).
const vpnDevice = "cnsmo-vpn"

// Role is the firewall of one application VM.
type Role struct {
	// ResolvConf is the resolver configuration whose name servers stay reachable (default
	// /etc/resolv.conf); Lookup resolves the Nuvla endpoint's host name (default: the system's).
	ResolvConf string
	Lookup     func(ctx context.Context, host string) ([]netip.Addr, error)

	env        role.Env
	ap         *Applier
	applied    string       // the input last applied by this process
	endpoints  []netip.Addr // the endpoint's last resolved addresses
	down       bool         // the last apply failed
	waiverPin  string       // "kept" or "waived" when there is no state dir
	saidWaiver bool         // a refused waiver was logged
}

// New returns the firewall service of the instance described by env.
func New(env role.Env) *Role {
	return &Role{env: env, ap: &Applier{Driver: env.Driver, LongLived: !env.Exec}}
}

// Name implements role.Service.
func (r *Role) Name() string { return "fw" }

// waiverPinFile keeps whether the anti-lockout waiver was asked for when the role first read it.
const waiverPinFile = "lockout.pin"

// waived says whether the anti-lockout rules are waived. The waiver is pinned on first use: set
// when the role first read it, it holds while it stays set; not set then, a later
// net.i2cat.cnsmo.service.fw.lockout_ok=true is refused (any VM of the run can write that
// parameter, and it would lock this VM out under denyall). Turning the anti-lockout back on is
// always followed. `cnsmo-role stop --purge` forgets the pin.
func (r *Role) waived(asked bool) bool {
	pin := ""
	p := ""
	if r.env.StateDir != "" {
		p = filepath.Join(r.env.StateDir, waiverPinFile)
		if b, err := os.ReadFile(p); err == nil {
			pin = strings.TrimSpace(string(b))
		}
	}
	if pin == "" {
		pin = r.waiverPin
	}
	switch {
	case pin == "kept" && asked:
		if !r.saidWaiver {
			r.env.Log.Warn().Str("param", params.FWLockoutOK).Msg("fw: the anti-lockout waiver was not set when this role started: refused (stop --purge and start again to waive it)")
			r.saidWaiver = true
		}
		return false
	case pin == "waived" && asked:
		return true
	}
	next := "kept"
	if asked && pin == "" {
		next = "waived"
	}
	r.waiverPin = next
	if p != "" && pin != next {
		if err := os.MkdirAll(r.env.StateDir, 0o700); err == nil {
			_ = atomicfile.Write(p, []byte(next+"\n"), 0o600)
		}
	}
	return next == "waived"
}

// Where the resolver configuration is read. A local stub (systemd-resolved's 127.0.0.53) is on
// loopback, which stays open; its upstream servers are in UpstreamResolvConf.
const (
	DefaultResolvConf  = "/etc/resolv.conf"
	UpstreamResolvConf = "/run/systemd/resolve/resolv.conf"
)

// options derives the anti-lockout rules from the run: the VPN port (from the CNSMO server's
// vpn.port) and overlay pings when the VPN is on, the name servers and the Nuvla endpoint's
// addresses (resolved again on every pass), and the waiver.
func (r *Role) options(ctx context.Context, s role.Snapshot) Options {
	me := r.env.Instance
	o := Options{NoAntiLockout: r.waived(s.Get(me, params.FWLockoutOK) == "true")}
	if r.env.UseVPN {
		o.VPNPort, o.VPNDevice = 1194, vpnDevice
		if srv := s.Get(me, params.ServerInstanceID); srv != "" {
			if strings.EqualFold(strings.TrimSpace(s.Get(srv, params.VPNEngine)), "wireguard") {
				o.VPNPort, o.VPNMesh = 51820, true // every member listens: open in and out
				if p, err := role.ParsePort(params.VPNWGPort, s.Get(srv, params.VPNWGPort)); err == nil {
					o.VPNPort = p
				}
			} else if p, err := role.ParsePort(params.VPNPort, s.Get(srv, params.VPNPort)); err == nil {
				o.VPNPort = p
			}
		}
	}
	conf := r.ResolvConf
	if conf == "" {
		conf = DefaultResolvConf
	}
	o.Resolvers = nameServers(conf)
	if slices.ContainsFunc(o.Resolvers, netip.Addr.IsLoopback) {
		o.Resolvers = append(o.Resolvers, nameServers(UpstreamResolvConf)...)
	}
	o.Resolvers = slices.DeleteFunc(o.Resolvers, netip.Addr.IsLoopback) // lo stays open anyway
	slices.SortFunc(o.Resolvers, netip.Addr.Compare)
	o.Resolvers = slices.Compact(o.Resolvers)
	if u, err := url.Parse(r.env.Endpoint); err == nil && u.Host != "" {
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = map[string]string{"https": "443"}[u.Scheme]
			if port == "" {
				port = "80"
			}
		}
		o.EndpointPort, _ = strconv.Atoi(port)
		if a, err := netip.ParseAddr(host); err == nil {
			o.Endpoints = []netip.Addr{a.Unmap()}
		} else {
			o.Endpoints = r.resolveEndpoint(ctx, host)
		}
	}
	return o
}

// resolveEndpoint resolves the endpoint's host name; when that fails it keeps the addresses of
// the last successful resolution, so that a DNS hiccup never closes the path to Nuvla.
func (r *Role) resolveEndpoint(ctx context.Context, host string) []netip.Addr {
	lookup := r.Lookup
	if lookup == nil {
		lookup = func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	as, err := lookup(ctx, host)
	if err != nil || len(as) == 0 {
		if r.endpoints == nil {
			r.env.Log.Warn().Err(err).Str("host", host).Msg("fw: the Nuvla endpoint does not resolve yet; its name servers stay open")
		}
		return r.endpoints
	}
	for i := range as {
		as[i] = as[i].Unmap()
	}
	slices.SortFunc(as, netip.Addr.Compare)
	r.endpoints = slices.Compact(as)
	return r.endpoints
}

// nameServers returns the addresses of the nameserver lines of a resolv.conf file (none when it
// cannot be read; zoned link-local servers are left out).
func nameServers(path string) []netip.Addr {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil && a.Zone() == "" {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Reconcile validates the rules (invalid: nothing applied, the run is aborted), applies them
// when they changed, and publishes fw.ready once they are verified in place.
func (r *Role) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	me := r.env.Instance
	raw := s.Get(me, params.FWRules)
	rules, err := ParseRules(raw)
	if err != nil {
		return false, role.Terminal(err)
	}
	opts := r.options(ctx, s)
	key := fmt.Sprintf("%s|%+v", raw, opts)
	if key == r.applied {
		// Steady: compare with what the kernel holds (another tool may have flushed or edited
		// cnsmo's chains) and repair.
		drift, err := r.ap.Check(ctx, rules, opts)
		if err != nil {
			return false, err
		}
		if drift != "" {
			r.env.Log.Warn().Str("drift", drift).Msg("fw: cnsmo's rules were changed outside cnsmo: repaired")
			r.applied = ""
		}
	}
	if key != r.applied {
		if err := r.ap.Apply(ctx, rules, opts); err != nil {
			r.down = true
			_ = role.Publish(ctx, r.env.Params, s, me, params.FWReady, "") // withdrawn: un-set, not false
			return false, err
		}
		r.applied, r.down = key, false
		r.env.Log.Info().Int("rules", len(rules)).Msg("firewall rules applied and verified")
	}
	if err := role.Publish(ctx, r.env.Params, s, me, params.FWReady, "true"); err != nil {
		return false, fmt.Errorf("fw: %w", err)
	}
	return true, nil
}

// Down reports whether the firewall is known not to hold its rules (the last apply failed).
func (r *Role) Down() bool { return r.down }

// Teardown removes cnsmo's chains and jumps, leaving the tables as before.
func (r *Role) Teardown(ctx context.Context) error {
	r.applied = ""
	return r.ap.Teardown(ctx)
}

// Withdraw un-sets fw.ready.
func (r *Role) Withdraw(ctx context.Context) error {
	return role.Withdraw(ctx, r.env.Params, params.FWReady)
}

// Validate checks the rules of every application instance of the deployment (server, the CNSMO
// server's instance, has none), without side effects.
func Validate(s role.Snapshot, server string) error {
	for _, node := range s.Nodes() {
		for _, inst := range s.Instances(node) {
			if inst == server {
				continue
			}
			if _, err := ParseRules(s.Get(inst, params.FWRules)); err != nil {
				return fmt.Errorf("%s: %w", inst, err)
			}
		}
	}
	return nil
}
