// Package rolecmd holds the role subcommands of cnsmo-role. In this version the services are
// not built in yet: server, agent and stop say so and exit non-zero (see _wip/rolecmd for the
// integrated roles in progress).
package rolecmd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/cnsmo/cnsmo/internal/probe"
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
	return append(out, &cobra.Command{
		Use:   "doctor",
		Short: "Report what this host supports: Docker, NET_ADMIN and /dev/net/tun in a container, iptables backends, IPv6",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			r := probe.Probe(ctx)
			r.Print(cmd.OutOrStdout())
			if !r.OK() {
				return errors.New("doctor: some capabilities are missing (see MISS above)")
			}
			return nil
		},
	})
}
