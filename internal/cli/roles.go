package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/cnsmo/cnsmo/internal/probe"
)

// roleCommands returns the role subcommands: server, agent, stop, status, kick and doctor.
func roleCommands() []*cobra.Command {
	out := []*cobra.Command{roleCmd(true), roleCmd(false), stopCmd(), statusCmd(), kickCmd(), joinCmd(false), joinCmd(true)}
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

func defaultDriver() string {
	if d := os.Getenv("CNSMO_DRIVER"); d != "" {
		return d
	}
	return "docker"
}

func defaultBackend() string {
	if b := os.Getenv("CNSMO_BACKEND"); b != "" {
		return b
	}
	return "auto"
}

func defaultStateDir() string {
	if d := os.Getenv("CNSMO_STATE_DIR"); d != "" {
		return d
	}
	return "/var/lib/cnsmo"
}

func roleCmd(server bool) *cobra.Command {
	opts := Options{Server: server}
	name, short := "agent", "Run the CNSMO agent of an application VM (VPN client, firewall)"
	if server {
		name, short = "server", "Run the CNSMO server (VPN server, load balancer) on the CNSMO server VM"
	}
	c := &cobra.Command{
		Use:   name,
		Short: short,
		Long: short + `.

Reads the SlipStream context (slipstream.context or SLIPSTREAM_* variables), or on Nuvla 2 the
NUVLA_* variables and CNSMO_NODE (docs/nuvla2.md), learns the enabled
services from net.services.enable, and reconciles them until the run is aborted or the role is
stopped (SIGTERM, SIGINT, cnsmo-role stop); then it removes what it created. SIGHUP makes it
reconcile at once (the onvmadd/onvmremove hooks send it).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.Validate(); err != nil {
				return Usagef("%v", err)
			}
			log, err := Logger(cmd)
			if err != nil {
				return err
			}
			return Run(cmd.Context(), opts, log)
		},
	}
	c.Flags().StringVar(&opts.Driver, "driver", defaultDriver(), "runtime of the network functions: docker or exec (env CNSMO_DRIVER)")
	c.Flags().StringVar(&opts.StateDir, "state-dir", defaultStateDir(), "where the role keeps everything it writes: its lock, pid file and log; per service (vpn/, fw/, lb/) the persistent state (VPN CA, keys, address book, pins) and, with --driver exec, the functions' files (env CNSMO_STATE_DIR)")
	c.Flags().StringVar(&opts.Services, "services", "", "override net.services.enable with this list (testing one service)")
	hosts := os.Getenv("CNSMO_HOSTS_FILE")
	if hosts == "" {
		hosts = "/etc/hosts"
	}
	c.Flags().StringVar(&opts.Hosts, "hosts-file", hosts, "hosts file that gets a managed block with the overlay's names (removed on teardown); \"none\" leaves every file alone (env CNSMO_HOSTS_FILE)")
	c.Flags().StringVar(&opts.Backend, "backend", defaultBackend(), "coordination store: auto (Nuvla 2 when NUVLA_DEPLOYMENT_ID is set, else SlipStream), slipstream or nuvla2 (env CNSMO_BACKEND)")
	return c
}

// ExitNotRunning is what `cnsmo-role status` exits with when no role runs on the state dir.
const ExitNotRunning = 3

func statusCmd() *cobra.Command {
	stateDir := defaultStateDir()
	c := &cobra.Command{
		Use:   "status",
		Short: "Say whether a role runs on this state dir (exit 0) or not (exit 3)",
		Long: `Say whether a role runs on this state dir: one does when the pid in role.pid holds the state
dir's lock and is a cnsmo-role (a pid file left by a crash or a reboot counts for nothing).
Exit 0 and "running (pid N)" when one runs, 3 and "not running" otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pid, err := RunningPID(stateDir)
			if err != nil {
				return err
			}
			if pid == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "not running")
				return Quiet(ExitNotRunning)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "running (pid %d)\n", pid)
			return nil
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", stateDir, "state dir of the role (env CNSMO_STATE_DIR)")
	return c
}

func kickCmd() *cobra.Command {
	stateDir := defaultStateDir()
	c := &cobra.Command{
		Use:   "kick",
		Short: "Make the role running on this state dir reconcile now (the onvmadd/onvmremove hooks)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Kick(stateDir)
		},
	}
	c.Flags().StringVar(&stateDir, "state-dir", stateDir, "state dir of the role (env CNSMO_STATE_DIR)")
	return c
}

func stopCmd() *cobra.Command {
	stateDir := defaultStateDir()
	timeout := 10 * time.Second
	purge := false
	c := &cobra.Command{
		Use:   "stop",
		Short: "Stop the role running on this VM; it removes what it created",
		Args:  cobra.NoArgs,
		Long: `Stop the role running on this VM; it removes what it created (containers, rules, devices,
files). The VPN's CA and keys stay in the state dir, so a role started again keeps the same CA,
certificates and addresses; --purge deletes them too, once the role has stopped.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := Stop(cmd.Context(), stateDir, timeout); err != nil {
				return err
			}
			if purge {
				return Purge(stateDir)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&purge, "purge", false, "also delete the persistent state (the VPN's CA and keys, addresses)")
	c.Flags().StringVar(&stateDir, "state-dir", stateDir, "state dir of the role to stop (env CNSMO_STATE_DIR)")
	c.Flags().DurationVar(&timeout, "timeout", timeout, "how long to wait for the role's teardown")
	return c
}
