package nuvla2

import (
	"context"
	"fmt"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Input is an input parameter a member takes from its application's environment (which the
// group can override), and publishes under its name at start.
type Input struct {
	Env, Param string
	Server     bool // an input of the CNSMO server (else of an application member)
}

// Inputs are the inputs of docs/nuvla2.md.
var Inputs = []Input{
	{"CNSMO_SERVICES", params.ServicesEnable, true},
	{"CNSMO_VPN_SUBNET", params.VPNSubnet, true},
	{"CNSMO_VPN_SUBNET6", params.VPNSubnet6, true},
	{"CNSMO_VPN_PORT", params.VPNPort, true},
	{"CNSMO_VPN_DEVICE", params.VPNDevice, true},
	{"CNSMO_VPN_ENGINE", params.VPNEngine, true},
	{"CNSMO_VPN_WG_PORT", params.VPNWGPort, true},
	{"CNSMO_VPN_DOMAIN", params.VPNDomain, true},
	{"CNSMO_LB_PORT", params.LBPort, true},
	{"CNSMO_LB_MODE", params.LBMode, true},
	{"CNSMO_LB_NODE", params.LBNode, true},
	{"CNSMO_LB_BACKEND_PORT", params.LBBackendPort, true},
	{"CNSMO_LB_CHECK_INTER", params.LBCheckInter, true},
	{"CNSMO_LB_CHECK_FALL", params.LBCheckFall, true},
	{"CNSMO_LB_CHECK_RISE", params.LBCheckRise, true},
	{"CNSMO_FW_RULES", params.FWRules, false},
	{"CNSMO_FW_LOCKOUT_OK", params.FWLockoutOK, false},
}

// DeclaredNodes are the group's nodes the server declares: CNSMO_NODES ("web,db"), or by default
// the load balancer's (CNSMO_LB_NODE, "web", "web,api" or a JSON list).
func DeclaredNodes(getenv func(string) string) string {
	v := getenv("CNSMO_NODES")
	if v == "" {
		v = getenv("CNSMO_LB_NODE")
	}
	var out []string
	for _, n := range strings.Split(strings.Trim(strings.TrimSpace(v), "[]"), ",") {
		if n = strings.Trim(strings.TrimSpace(n), `"`); n != "" && validName(n) {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// PublishInputs publishes this member's inputs from the environment under its name (a variable
// not set publishes nothing: the parameter keeps what it has); the server also declares the
// group's nodes (cnsmo.nodes).
func (s *Store) PublishInputs(ctx context.Context, getenv func(string) string) error {
	if s.server {
		if err := s.Set(ctx, role.Deployment, KeyNodes, DeclaredNodes(getenv)); err != nil {
			return fmt.Errorf("publishing %s: %w", KeyNodes, err)
		}
	}
	for _, in := range Inputs {
		if in.Server != s.server {
			continue
		}
		v := getenv(in.Env)
		if v == "" {
			continue
		}
		if err := s.Set(ctx, s.self, in.Param, v); err != nil {
			return fmt.Errorf("publishing %s (from %s): %w", in.Param, in.Env, err)
		}
	}
	return nil
}
