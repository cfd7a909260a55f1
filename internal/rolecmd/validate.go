package rolecmd

import (
	"fmt"
	"slices"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/fw"
	"github.com/cnsmo/cnsmo/roles/lb"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/ssclient"
)

// ValidateRun checks, without side effects, every input of the run that an enabled service
// reads anywhere: the VPN's and the load balancer's inputs on the CNSMO server instance, and the
// firewall rules of every other instance. Every role runs it before each reconcile pass, so an
// invalid input on any VM aborts the run before any role has started a function for it. The
// error names the instance and the parameter.
func ValidateRun(run *ssclient.Run, services []string, server string) error {
	if server != "" {
		get := func(k string) string { return role.Get(run, server, k) }
		if slices.Contains(services, "vpn") {
			if _, err := vpn.ParseInputs(get); err != nil {
				return fmt.Errorf("%s: %w", server, err)
			}
		}
		if slices.Contains(services, "lb") {
			if _, err := lb.ParseConfig(get, run.Nodes()); err != nil {
				return fmt.Errorf("%s: %w", server, err)
			}
		}
	}
	if !slices.Contains(services, "fw") {
		return nil
	}
	for _, node := range run.Nodes() {
		for _, inst := range run.Instances(node) {
			if inst == server {
				continue
			}
			if _, err := fw.ParseRules(role.Get(run, inst, params.FWRules)); err != nil {
				return fmt.Errorf("%s: %w", inst, err)
			}
		}
	}
	return nil
}
