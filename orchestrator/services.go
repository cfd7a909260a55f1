package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/fw"
	"github.com/cnsmo/cnsmo/roles/lb"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn"
)

// Kind is one network service cnsmo knows.
type Kind struct {
	Name string
	// Validate checks every input of this service anywhere in the deployment (server is the
	// CNSMO server's instance), without side effects; the error names the instance and parameter.
	Validate func(s role.Snapshot, server string) error
}

// Registry lists the services in the order they are reconciled: the VPN first, so that the
// firewall and the load balancer can use overlay addresses.
var Registry = []Kind{
	{Name: "vpn", Validate: vpn.Validate},
	{Name: "fw", Validate: fw.Validate},
	{Name: "lb", Validate: lb.Validate},
}

// Known are the names of the registry's services, in reconcile order.
var Known = func() []string {
	var out []string
	for _, k := range Registry {
		out = append(out, k.Name)
	}
	return out
}()

// Validate checks every input that the services named read anywhere in the deployment, and
// net.services.enable itself, without side effects.
func Validate(s role.Snapshot, names []string, server string) error {
	if raw := s.Get(server, params.ServicesEnable); raw != "" {
		if _, err := ParseServices(raw); err != nil {
			return fmt.Errorf("%s: %w", server, err)
		}
	}
	for _, k := range Registry {
		if slices.Contains(names, k.Name) {
			if err := k.Validate(s, server); err != nil {
				return err
			}
		}
	}
	return nil
}

// Build returns the services named, in reconcile order, for the CNSMO server (VPN server, load
// balancer) or an application instance (VPN client, firewall); env gives each its environment.
func Build(server bool, names []string, env func(service string) role.Env) []role.Service {
	var list []role.Service
	on := func(n string) bool { return slices.Contains(names, n) }
	if server {
		var srv *vpn.ServerService
		if on("vpn") {
			srv = vpn.NewServerService(env("vpn"))
			list = append(list, srv)
		}
		if on("lb") {
			l := lb.New(env("lb"))
			if srv != nil {
				l.Assigned = srv.Assigned
				srv.SetHold(l.Serves) // a scaled-in backend's tunnel closes once no worker sends to it
			}
			list = append(list, l)
		}
		return list
	}
	if on("vpn") {
		list = append(list, vpn.NewClientService(env("vpn")))
	}
	if on("fw") {
		list = append(list, fw.New(env("fw")))
	}
	return list
}

// ParseServices validates net.services.enable: a JSON list of service names (a comma-separated
// list is accepted too). It returns them in reconcile order, without duplicates. Errors are
// *role.InputError.
func ParseServices(v string) ([]string, error) {
	v = strings.TrimSpace(v)
	var names []string
	switch {
	case v == "":
		return nil, role.Invalid(params.ServicesEnable, "", `is not set (a JSON list such as ["vpn","fw","lb"])`)
	case strings.HasPrefix(v, `"`):
		return nil, role.Invalid(params.ServicesEnable, "", `the value must be a JSON list such as ["vpn","fw","lb"], not the string %s`, v)
	case strings.HasPrefix(v, "["):
		if err := json.Unmarshal([]byte(v), &names); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return nil, role.Invalid(params.ServicesEnable, "", "not a JSON list of service names: found a %s where a name goes", te.Value)
			}
			return nil, role.Invalid(params.ServicesEnable, "", "not a JSON list of service names: %v", err)
		}
	default:
		names = strings.Split(v, ",")
	}
	seen := map[string]bool{}
	for i, n := range names {
		n = strings.ToLower(strings.TrimSpace(n))
		if !slices.Contains(Known, n) {
			return nil, role.Invalid(params.ServicesEnable, fmt.Sprintf("[%d]", i), "unknown service %q (known: %s)", n, strings.Join(Known, ", "))
		}
		seen[n] = true
	}
	var out []string
	for _, k := range Known {
		if seen[k] {
			out = append(out, k)
		}
	}
	return out, nil
}
