package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/backend/slipstream"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/ssclient"
)

// joinOpts are the flags of cnsmo-role join and leave.
type joinOpts struct {
	dir, out, server, signer, endpoint, run, username, ifname string
	up                                                        bool
	timeout                                                   time.Duration
}

// joinCmd is `cnsmo-role join` (leave: `cnsmo-role leave`), run by a person on their own computer.
func joinCmd(leave bool) *cobra.Command {
	o := &joinOpts{dir: vpn.DefaultPersonDir(), timeout: 10 * time.Minute, ifname: "cnsmo0"}
	c := &cobra.Command{
		Use:   "join NAME",
		Short: "Bring this computer into a run's overlay as person NAME (run on your own computer, with your own credentials)",
		Long: `Bring this computer into the overlay of a run, as the person NAME (lower-case letters, digits
and '-', at most 32): the keys are made here and only their public halves go into the run (a
request in a free slot vpn.user.1 … vpn.user.` + fmt.Sprint(params.UserSlots) + ` of the CNSMO server). Once the
server grants it (addresses from the people's block of the overlay, and for OpenVPN a
certificate), the configuration (wg-quick or .ovpn, with the private key, mode 0600) is written
to --out. With --up (root) the tunnel comes up at once and stays up until Ctrl-C: WireGuard runs
inside this process (no kernel module needed), OpenVPN runs the openvpn program.

Credentials are the ss-* tools': slipstream.context or SLIPSTREAM_SERVICEURL, SLIPSTREAM_DIID,
SLIPSTREAM_USERNAME with SLIPSTREAM_PASSWORD (or SLIPSTREAM_API_KEY and SLIPSTREAM_API_SECRET);
--endpoint, --run and --username override them. The password is read from the environment
only. On Nuvla 2 (NUVLA_ENDPOINT set): your own API key in NUVLA_API_KEY and NUVLA_API_SECRET, and
the CNSMO server's deployment (deployment/<uuid>) in --run or NUVLA_DEPLOYMENT_ID. Names: every member is <node>-<i>.<vpn.domain> and people <name>.users.<vpn.domain>.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runJoin(cmd, o, args[0]) },
	}
	if leave {
		c.Use, c.Short = "leave NAME", "Take person NAME out of a run's overlay (proven by its key, made by cnsmo-role join on this computer)"
		c.Long = `Take the person NAME out of the run's overlay: a leave signed by the identity key that
cnsmo-role join made on this computer goes into the person's slot; the server removes the person
from every member (WireGuard: the peer; OpenVPN: the certificate, revoked) and drops its name;
then the slot is cleared and the keys are deleted from this computer. Same credentials as join.`
		c.RunE = func(cmd *cobra.Command, args []string) error { return runLeave(cmd, o, args[0]) }
	}
	f := c.Flags()
	f.StringVar(&o.dir, "dir", o.dir, "where this computer keeps the person's keys and pins (one subdirectory per run and name)")
	f.StringVar(&o.server, "server", "", "the CNSMO server's instance (default: the instance that publishes itself as the VPN server)")
	f.StringVar(&o.signer, "signer", "", "the VPN server's signing key (vpn.signer, as its log prints it), checked at the first join instead of trusting the first one seen")
	f.StringVar(&o.endpoint, "endpoint", "", "the platform's URL (default: the context's serviceurl / SLIPSTREAM_SERVICEURL)")
	f.StringVar(&o.run, "run", "", "the run's id (default: the context's diid / SLIPSTREAM_DIID)")
	f.StringVar(&o.username, "username", "", "your user name (default: SLIPSTREAM_USERNAME); the password comes from SLIPSTREAM_PASSWORD")
	f.DurationVar(&o.timeout, "timeout", o.timeout, "how long to wait for the server")
	if !leave {
		f.StringVar(&o.out, "out", "", "the configuration file to write (default ./NAME.conf, or ./NAME.ovpn for OpenVPN)")
		f.BoolVar(&o.up, "up", false, "bring the tunnel up now and keep it up until Ctrl-C (root)")
		f.StringVar(&o.ifname, "interface", o.ifname, "the tunnel's interface name with --up")
	}
	return c
}

// personStore opens the run with the person's own credentials: SlipStream's, or on Nuvla 2 (when
// NUVLA_ENDPOINT is set) the person's API key and the CNSMO server's deployment.
func (o *joinOpts) personStore(ctx context.Context) (role.Store, string, error) {
	if os.Getenv("NUVLA_ENDPOINT") != "" {
		hub := o.run
		if hub == "" {
			hub = os.Getenv("NUVLA_DEPLOYMENT_ID")
		}
		if hub != "" && !strings.HasPrefix(hub, "deployment/") {
			hub = "deployment/" + hub
		}
		cfg := nuvla2.Config{Endpoint: strings.TrimSuffix(os.Getenv("NUVLA_ENDPOINT"), "/"), Deployment: hub,
			APIKey: os.Getenv("NUVLA_API_KEY"), APISecret: os.Getenv("NUVLA_API_SECRET"), Node: "person"}
		if err := cfg.Validate(); err != nil {
			return nil, "", fmt.Errorf("join: Nuvla 2 (--run or NUVLA_DEPLOYMENT_ID is the CNSMO server's deployment; NUVLA_API_KEY/_SECRET your own key): %w", err)
		}
		c, err := nuvla2.New(cfg)
		if err != nil {
			return nil, "", err
		}
		st, err := nuvla2.OpenPerson(ctx, c, hub)
		if err != nil {
			return nil, "", err
		}
		return st, strings.TrimPrefix(hub, "deployment/"), nil
	}
	over := map[string]string{"SLIPSTREAM_SERVICEURL": o.endpoint, "SLIPSTREAM_DIID": o.run, "SLIPSTREAM_USERNAME": o.username}
	cfg, err := ssclient.LoadConfigFrom(ssclient.ContextSearchPath(), func(k string) string {
		if v := over[k]; v != "" {
			return v
		}
		if v := os.Getenv(k); v != "" || k != "SLIPSTREAM_NODE_INSTANCE_NAME" {
			return v
		}
		return "person" // a person is no instance of the run; the name is never used
	})
	if err != nil {
		return nil, "", err
	}
	client, err := ssclient.New(cfg)
	if err != nil {
		return nil, "", err
	}
	return slipstream.New(client), cfg.RunUUID, nil
}

func (o *joinOpts) person(cmd *cobra.Command, name string) (*vpn.Person, error) {
	if err := vpn.ValidPersonName(name); err != nil {
		return nil, Usagef("NAME %v", err)
	}
	st, run, err := o.personStore(cmd.Context())
	if err != nil {
		return nil, err
	}
	out := cmd.ErrOrStderr()
	return &vpn.Person{Name: name, Dir: filepath.Join(o.dir, run, name), Server: o.server, Signer: o.signer, Store: st,
		Say:  func(msg string) { fmt.Fprintf(out, "%s: %s\n", time.Now().Format("15:04:05"), msg) },
		Poll: wait.Backoff{Min: 500 * time.Millisecond, Max: 3 * time.Second}}, nil
}

func runJoin(cmd *cobra.Command, o *joinOpts, name string) error {
	p, err := o.person(cmd, name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	j, err := p.Join(ctx)
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, wait.ErrTimeout) {
		return exitf(ExitTimeout, "join: no grant within %s (is the CNSMO server running, with the VPN enabled?)", o.timeout)
	}
	if err != nil {
		return err
	}
	file := o.out
	if file == "" {
		file = name + ".conf"
		if j.Engine == vpn.EngineOpenVPN {
			file = name + ".ovpn"
		}
	}
	if err := atomicfile.Write(file, []byte(j.Config), 0o600); err != nil {
		return fmt.Errorf("join: write %s: %w", file, err)
	}
	w := cmd.OutOrStdout()
	dns4, dns6 := vpn.ServerAddrs(j.Inputs)
	fmt.Fprintf(w, "joined as %s.%s: %s and %s (%s, slot %d)\n", vpn.NameOf(j.Self.Instance), j.Inputs.Domain, j.Self.V4, j.Self.V6, j.Engine, j.Slot)
	fmt.Fprintf(w, "configuration: %s (0600, holds the private key)\n", file)
	if !o.up {
		if j.Engine == vpn.EngineWireGuard {
			fmt.Fprintf(w, "bring it up: sudo wg-quick up ./%s   (or: sudo cnsmo-role join %s --up, without a kernel module)\n", filepath.Base(file), name)
		} else {
			fmt.Fprintf(w, "bring it up: sudo openvpn --config %s\n", file)
		}
		msg, _ := vpn.RouteDomain(cmd.Context(), "<interface>", j, dns4, dns6)
		fmt.Fprintln(w, msg)
		return nil
	}
	return up(cmd.Context(), w, p, j, file, o.ifname)
}

// up runs the tunnel until SIGINT or SIGTERM.
func up(ctx context.Context, w io.Writer, p *vpn.Person, j *vpn.Joined, file, ifname string) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var down func()
	if j.Engine == vpn.EngineWireGuard {
		k, err := p.WGKey()
		if err != nil {
			return err
		}
		if down, err = vpn.UpWireGuard(k, j, ifname); err != nil {
			return err
		}
	} else {
		bin, err := exec.LookPath("openvpn")
		if err != nil {
			return fmt.Errorf("up: openvpn is not installed (install it, or run it yourself with --config %s)", file)
		}
		c := exec.CommandContext(ctx, bin, "--config", file, "--dev", ifname)
		c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) } // openvpn tells the server it leaves
		c.Stdout, c.Stderr = os.Stderr, os.Stderr
		if err := c.Start(); err != nil {
			return fmt.Errorf("up: %w", err)
		}
		down = func() { _ = c.Wait() }
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err = vpn.WaitAddr(wctx, ifname, j.Self.V4)
		cancel()
		if err != nil {
			_ = c.Process.Signal(syscall.SIGTERM)
			down()
			return err
		}
	}
	defer down()
	d4, d6 := vpn.ServerAddrs(j.Inputs)
	msg, _ := vpn.RouteDomain(ctx, ifname, j, d4, d6)
	fmt.Fprintf(w, "up: %s; Ctrl-C to bring it down\n%s\n", ifname, msg)
	<-ctx.Done()
	fmt.Fprintf(w, "down: %s\n", ifname)
	return nil
}

func runLeave(cmd *cobra.Command, o *joinOpts, name string) error {
	p, err := o.person(cmd, name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	if err := p.Leave(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, wait.ErrTimeout) {
			return exitf(ExitTimeout, "leave: the server did not remove %s within %s", name, o.timeout)
		}
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "left: %s is out of the overlay; its keys are deleted from %s\n", name, p.Dir)
	return nil
}
