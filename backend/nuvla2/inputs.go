package nuvla2

import (
	"context"
	"fmt"

	"github.com/cnsmo/cnsmo/params"
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

// PublishInputs publishes this member's inputs from the environment under its name (a variable
// not set publishes nothing: the parameter keeps what it has).
func (s *Store) PublishInputs(ctx context.Context, getenv func(string) string) error {
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
