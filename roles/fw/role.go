package fw

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Role is the firewall of one application VM.
type Role struct {
	// ResolvConf is the resolver configuration whose name servers stay reachable (default
	// /etc/resolv.conf); Lookup resolves the Nuvla endpoint's host name (default: the system's).
	ResolvConf string
	Lookup     func(ctx context.Context, host string) ([]netip.Addr, error)

	env     role.Env
	ap      *Applier
	applied string // the input last applied by this process
}

// New returns the firewall service of the instance described by env.
func New(env role.Env) *Role {
	return &Role{env: env, ap: &Applier{Driver: env.Driver}}
}

// Name implements role.Service.
func (r *Role) Name() string { return "fw" }

// options derives the anti-lockout rules from the run: the VPN port (from the CNSMO server's
// vpn.port) when the VPN is on, the Nuvla endpoint, and the waiver.
func (r *Role) options(run *ssclient.Run) Options {
	me := r.env.Instance
	o := Options{NoAntiLockout: role.Get(run, me, params.FWLockoutOK) == "true"}
	if r.env.UseVPN {
		o.VPNPort = 1194
		if srv := role.Get(run, me, params.ServerInstanceID); srv != "" {
			if p, err := strconv.Atoi(role.Get(run, srv, params.VPNPort)); err == nil && p > 0 {
				o.VPNPort = p
			}
		}
	}
	if u, err := url.Parse(r.env.Endpoint); err == nil && u.Host != "" {
		host, port := u.Hostname(), u.Port()
		if port == "" {
			port = map[string]string{"https": "443"}[u.Scheme]
			if port == "" {
				port = "80"
			}
		}
		if ip := net.ParseIP(host); ip != nil {
			o.EndpointIP = host
			o.EndpointPort, _ = strconv.Atoi(port)
		}
	}
	return o
}

// Reconcile validates the rules (invalid: nothing applied, the run is aborted), applies them
// when they changed, and publishes fw.ready once they are verified in place.
func (r *Role) Reconcile(ctx context.Context, run *ssclient.Run) (bool, error) {
	me := r.env.Instance
	raw := role.Get(run, me, params.FWRules)
	rules, err := ParseRules(raw)
	if err != nil {
		return false, role.Terminal(err)
	}
	opts := r.options(run)
	key := fmt.Sprintf("%s|%+v", raw, opts)
	if key != r.applied {
		if err := r.ap.Apply(ctx, rules, opts); err != nil {
			if role.Get(run, me, params.FWReady) == "true" {
				_ = r.env.Params.Set(ctx, params.FWReady, "false")
			}
			return false, err
		}
		r.applied = key
		r.env.Log.Info().Int("rules", len(rules)).Msg("firewall rules applied and verified")
	}
	if role.Get(run, me, params.FWReady) != "true" {
		if err := r.env.Params.Set(ctx, params.FWReady, "true"); err != nil {
			return false, fmt.Errorf("fw: set %s: %w", params.FWReady, err)
		}
	}
	return true, nil
}

// Teardown removes cnsmo's chains and jumps, leaving the tables as before.
func (r *Role) Teardown(ctx context.Context) error {
	r.applied = ""
	return r.ap.Teardown(ctx)
}
