// Package rolecmd holds the role subcommands of cnsmo-role. In this version the services are
// not built in yet: server, agent and stop say so and exit non-zero (see _wip/rolecmd for the
// integrated roles in progress).
package rolecmd

import (
	"fmt"

	"github.com/spf13/cobra"
)

// Commands returns the role subcommands.
func Commands() []*cobra.Command {
	var out []*cobra.Command
	for _, c := range []struct{ name, short string }{
		{"server", "Run the CNSMO server (VPN server, load balancer) on the CNSMO server VM"},
		{"agent", "Run the CNSMO agent of an application VM (VPN client, firewall)"},
		{"stop", "Stop the role running on this VM; it removes what it created"},
	} {
		name := c.name
		out = append(out, &cobra.Command{
			Use: name, Short: c.short + " (not implemented yet)",
			RunE: func(*cobra.Command, []string) error {
				return fmt.Errorf("cnsmo-role %s: not implemented yet in this version", name)
			},
		})
	}
	return out
}
