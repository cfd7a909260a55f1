package rolecmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/driver/execdriver"
	"github.com/cnsmo/cnsmo/orchestrator"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/fw"
	"github.com/cnsmo/cnsmo/roles/lb"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Options configure `cnsmo-role server` and `cnsmo-role agent`.
type Options struct {
	Server   bool   // the CNSMO server VM (VPN server, load balancer) instead of an application VM
	Driver   string // "docker" or "exec"
	StateDir string // persistent state, pid file and lock of the role on this VM
	Services string // overrides net.services.enable (testing a single service); "" reads the parameter
}

// errAlreadyRunning is returned when another role holds the state dir's lock.
var errAlreadyRunning = errors.New("another cnsmo-role runs with this state dir")

// Run is the whole life of one role: connect, learn the enabled services, reconcile until the
// run is aborted or the role is stopped (SIGTERM, SIGINT, `cnsmo-role stop`), then tear down.
// A role that cannot start on an instance of the run (no driver, no state dir) aborts the run
// with a message that says what failed and where, so no recipe waits in vain for it.
func Run(ctx context.Context, opts Options, log zerolog.Logger) error {
	cfg, err := ssclient.LoadConfig()
	if err != nil {
		return err
	}
	client, err := ssclient.New(cfg, ssclient.WithLogger(log))
	if err != nil {
		return err
	}
	roleName := "agent"
	if opts.Server {
		roleName = "server"
	}
	log = log.With().Str("run", cfg.RunUUID).Str("instance", client.Instance()).Str("role", roleName).Logger()
	err = run(ctx, opts, cfg, client, roleName, log)
	switch {
	case err == nil, errors.Is(err, errAlreadyRunning), errors.Is(err, orchestrator.ErrRunAborted),
		errors.Is(err, ssclient.ErrAborted), errors.Is(err, errRunAbortedByRole), ctx.Err() != nil:
		return err
	}
	// The role could not run: say so in the run, as a service's invalid input does.
	msg := fmt.Sprintf("cnsmo %s on %s: %v", roleName, client.Instance(), err)
	log.Error().Err(err).Msg("the role cannot run: aborting the run")
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := client.Abort(actx, msg); aerr != nil {
		log.Error().Err(aerr).Msg("could not abort the run")
	}
	return err
}

// errRunAbortedByRole marks an error after which the run was already aborted by this role.
var errRunAbortedByRole = errors.New("run aborted by this role")

func run(ctx context.Context, opts Options, cfg ssclient.Config, client *ssclient.Client, roleName string, log zerolog.Logger) error {
	me := client.Instance()
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir %s: %w", opts.StateDir, err)
	}
	unlock, err := lockStateDir(opts.StateDir)
	if err != nil {
		return err
	}
	defer unlock()
	pidFile := filepath.Join(opts.StateDir, "role.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	defer os.Remove(pidFile)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	kick := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case kick <- struct{}{}:
				default:
				}
			}
		}
	}()

	_ = client.Display(ctx, "cnsmo: "+roleName+" starting")
	services, server, err := enabledServices(ctx, client, opts, log)
	if err != nil {
		return err
	}
	drv, err := newDriver(ctx, opts.Driver, driver.Owner{Run: cfg.RunUUID, Instance: me}, opts.StateDir)
	if err != nil {
		return err
	}
	build := func(services []string) ([]role.Service, error) {
		env := func(service string) role.Env {
			return role.Env{
				Params: client, Driver: drv, Instance: me, StateDir: filepath.Join(opts.StateDir, service),
				Log:    log.With().Str("service", service).Logger(),
				UseVPN: has(services, "vpn"), Exec: opts.Driver == "exec", Endpoint: cfg.ServiceURL,
			}
		}
		var list []role.Service
		if opts.Server {
			list = append(list, &orchestrator.Core{Params: client})
			if has(services, "vpn") {
				list = append(list, vpn.NewServer(env("vpn")))
			}
			if has(services, "lb") {
				list = append(list, lb.New(env("lb")))
			}
		} else {
			if has(services, "vpn") {
				list = append(list, vpn.NewClient(env("vpn")))
			}
			if has(services, "fw") {
				list = append(list, fw.New(env("fw")))
			}
		}
		for _, s := range list {
			if s.Name() == "core" {
				continue
			}
			if err := os.MkdirAll(filepath.Join(opts.StateDir, s.Name()), 0o700); err != nil {
				return nil, fmt.Errorf("state dir: %w", err)
			}
		}
		return list, nil
	}
	// One loop per service list: when net.services.enable changes at run time, the loop returns,
	// the services no longer enabled tear down, and a loop over the new list takes over (the
	// services that stay converge to what already runs: nothing restarts).
	for {
		list, err := build(services)
		if err != nil {
			return err
		}
		log.Info().Strs("services", services).Msg("reconciling")
		var next []string
		loop := &orchestrator.Loop{Params: client, Services: list, Log: log, Kick: kick,
			Validate: func(r *ssclient.Run) error {
				if err := ValidateRun(r, services, server); err != nil {
					return err
				}
				if opts.Services != "" {
					return nil // fixed by the flag
				}
				raw := role.Get(r, server, params.ServicesEnable)
				if raw == "" {
					return nil // unset for a moment: keep what runs
				}
				now, err := orchestrator.ParseServices(raw)
				if err != nil {
					return fmt.Errorf("%s: %w", server, err)
				}
				if !slices.Equal(now, services) {
					next = now
					return orchestrator.ErrServicesChanged
				}
				return nil
			}}
		err = loop.Run(ctx)
		switch {
		case errors.Is(err, orchestrator.ErrServicesChanged):
			log.Info().Strs("from", services).Strs("to", next).Msg("net.services.enable changed")
			tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			for i := len(list) - 1; i >= 0; i-- {
				if s := list[i]; s.Name() != "core" && !has(next, s.Name()) {
					if terr := s.Teardown(tctx); terr != nil {
						log.Error().Err(terr).Str("service", s.Name()).Msg("teardown of a disabled service failed")
					}
				}
			}
			cancel()
			services = next
			continue
		case errors.Is(err, context.Canceled):
			log.Info().Msg("stopped; everything this role created is removed")
			return nil
		case role.IsTerminal(err):
			return fmt.Errorf("%w: %w", errRunAbortedByRole, err) // the loop aborted the run
		}
		return err
	}
}

// enabledServices reads net.services.enable: the server's own input, or, on an agent, the
// server's (found through the mapped input cnsmo.server.nodeinstanceid). An invalid list aborts
// the run with a message naming the parameter.
func enabledServices(ctx context.Context, c *ssclient.Client, opts Options, log zerolog.Logger) (services []string, server string, err error) {
	raw := opts.Services
	key := params.ServicesEnable
	server = c.Instance()
	if !opts.Server {
		_ = c.Display(ctx, "cnsmo: waiting for the CNSMO server")
		if server, err = c.Wait(ctx, params.ServerInstanceID); err != nil {
			return nil, "", fmt.Errorf("waiting for %s: %w", params.ServerInstanceID, err)
		}
		key = server + ":" + params.ServicesEnable
	}
	if raw == "" {
		v, err := c.Wait(ctx, key)
		if err != nil {
			return nil, "", fmt.Errorf("reading %s: %w", key, err)
		}
		raw = v
	}
	services, err = orchestrator.ParseServices(raw)
	if err != nil {
		// Run aborts the run with this message, naming the instance.
		return nil, "", err
	}
	return services, server, nil
}

// lockStateDir makes sure one role at a time uses a state dir.
func lockStateDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "role.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (%s): stop it first with `cnsmo-role stop`", errAlreadyRunning, dir)
	}
	return func() { f.Close() }, nil
}

// Stop asks the role running with stateDir to stop, and waits until it has torn down.
func Stop(ctx context.Context, stateDir string, timeout time.Duration) error {
	b, err := os.ReadFile(filepath.Join(stateDir, "role.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing runs
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(string(trimSpace(b)))
	if err != nil {
		return fmt.Errorf("pid file %s: %w", filepath.Join(stateDir, "role.pid"), err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		// Done when the role removed its pid file after its teardown, or is gone (a zombie
		// whose parent does not reap it counts as gone).
		if _, err := os.Stat(filepath.Join(stateDir, "role.pid")); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) || zombie(pid) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("pid %d still runs %s after SIGTERM", pid, timeout)
}

// Purge deletes the persistent state of the services in stateDir (the VPN's CA, keys and
// address book; the firewall's and load balancer's records). It refuses while a role holds the
// state dir.
func Purge(stateDir string) error {
	unlock, err := lockStateDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer unlock()
	var errs []error
	for _, svc := range orchestrator.Known {
		if err := os.RemoveAll(filepath.Join(stateDir, svc)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}

func has(list []string, s string) bool { return slices.Contains(list, s) }

// newDriver returns the runtime of the network functions.
func newDriver(_ context.Context, kind string, owner driver.Owner, stateDir string) (driver.Driver, error) {
	switch kind {
	case "docker":
		return dockerdriver.New(owner)
	case "exec":
		return execdriver.New(owner, filepath.Join(stateDir, "exec"))
	}
	return nil, fmt.Errorf("--driver: %q is not docker or exec", kind)
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}
