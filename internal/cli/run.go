package cli

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

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/driver/execdriver"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/orchestrator"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Options configure `cnsmo-role server` and `cnsmo-role agent`.
type Options struct {
	Server   bool   // the CNSMO server VM (VPN server, load balancer) instead of an application VM
	Driver   string // "docker" or "exec"
	StateDir string // persistent state, pid file and lock of the role on this VM
	Services string // overrides net.services.enable (testing a single service); "" reads the parameter
	Backend  string // "auto" (Nuvla 2 when NUVLA_DEPLOYMENT_ID is set, else SlipStream), "slipstream" or "nuvla2"
	Hosts    string // the hosts file the VPN's names go into; "" or "none": none
}

// Validate checks the role's flags and environment (CNSMO_DRIVER, CNSMO_STATE_DIR) before anything
// starts; the error names the flag.
func (o Options) Validate() error {
	if o.Driver != "docker" && o.Driver != "exec" {
		return fmt.Errorf("--driver: %q is not docker or exec", o.Driver)
	}
	if o.StateDir == "" || !filepath.IsAbs(o.StateDir) {
		return fmt.Errorf("--state-dir: %q is not an absolute path", o.StateDir)
	}
	if o.Hosts != "" && o.Hosts != "none" && !filepath.IsAbs(o.Hosts) {
		return fmt.Errorf("--hosts-file: %q is not an absolute path (or none)", o.Hosts)
	}
	if o.Backend != "" && !slices.Contains(Backends, o.Backend) {
		return fmt.Errorf("--backend: %q is not one of %s", o.Backend, strings.Join(Backends, ", "))
	}
	if o.Services != "" {
		if _, err := orchestrator.ParseServices(o.Services); err != nil {
			return fmt.Errorf("--services: %w", err)
		}
	}
	return nil
}

// errAlreadyRunning is returned when another role holds the state dir's lock.
var errAlreadyRunning = errors.New("another cnsmo-role runs with this state dir")

// Run is the whole life of one role: connect, learn the enabled services, reconcile until the
// run is aborted or the role is stopped (SIGTERM, SIGINT, `cnsmo-role stop`), then tear down.
// A role that cannot start on an instance of the run (no driver, no state dir) aborts the run
// with a message that says what failed and where, so no recipe waits in vain for it.
func Run(ctx context.Context, opts Options, log zerolog.Logger) error {
	roleName := "agent"
	if opts.Server {
		roleName = "server"
	}
	// A stop (SIGTERM, SIGINT) is a stop wherever the role is, starting up included: never a
	// failure that aborts the run.
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	b, err := openBackend(ctx, opts, log)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, nuvla2.ErrStopping) {
			log.Info().Err(err).Msg("not starting")
			return nil // stopped, or restarted while its deployment stops: nothing to do
		}
		return err
	}
	me := b.store.Self()
	log = log.With().Str("run", b.run).Str("instance", me).Str("role", roleName).Logger()
	err = run(ctx, opts, b, roleName, log)
	if (errors.Is(err, role.ErrAborted) || errors.Is(err, orchestrator.ErrRunAborted)) && ctx.Err() == nil {
		err = abortedBecause(ctx, b, err)
	}
	switch {
	case ctx.Err() != nil:
		return nil // stopped (SIGTERM, SIGINT): exit 0 wherever the role was
	case errors.Is(err, errRunAbortedByRole):
		return errors.Join(err, role.ErrAborted) // it aborted the run itself: exit 8, as any aborted run
	case err == nil, errors.Is(err, errAlreadyRunning), errors.Is(err, orchestrator.ErrRunAborted),
		errors.Is(err, role.ErrAborted),
		errors.Is(err, ssclient.ErrUnknownKey), errors.Is(err, ssclient.ErrUnauthorized), errors.Is(err, nuvla2.ErrForbidden),
		errors.Is(err, nuvla2.ErrNoSession):
		// The run is aborted already (an unknown key aborts it on the server), or this role may
		// not write to it.
		return err
	}
	// The role could not run: say so in the run, as a service's invalid input does.
	msg := orchestrator.Say(roleName, me, err)
	log.Error().Err(err).Msg("the role cannot run: aborting the run")
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if aerr := b.store.Abort(actx, msg); aerr != nil {
		log.Error().Err(aerr).Msg("could not abort the run")
		return err
	}
	return errors.Join(err, role.ErrAborted) // the run is aborted now: exit 8, not restarted
}

// abortedBecause says that the run was aborted, with its reason, instead of the answer of the
// aborted store (err stays wrapped for the exit code).
func abortedBecause(ctx context.Context, b *backend, err error) error {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	reason := b.abortReason(rctx)
	if reason == "" {
		return fmt.Errorf("the run was aborted (its reason could not be read): %w", errors.Join(err, role.ErrAborted))
	}
	return &abortedError{reason: reason, err: err}
}

type abortedError struct {
	reason string
	err    error
}

func (e *abortedError) Error() string   { return "the run was aborted: " + e.reason }
func (e *abortedError) Unwrap() []error { return []error{e.err, role.ErrAborted} } // exit code 8

// errRunAbortedByRole marks an error after which the run was already aborted by this role.
var errRunAbortedByRole = errors.New("run aborted by this role")

func run(ctx context.Context, opts Options, b *backend, roleName string, log zerolog.Logger) error {
	me := b.store.Self()
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

	_ = b.store.Display(ctx, "cnsmo: "+roleName+" starting")
	services, server, err := enabledServices(ctx, b, opts, log)
	if err != nil {
		return err
	}
	drv, err := newDriver(ctx, opts.Driver, driver.Owner{Run: b.run, Instance: me}, opts.StateDir)
	if err != nil {
		return err
	}
	// The services and the loop share one view of the store: their own writes land in the loop's
	// last snapshot, which an agent reuses while the server's generation is unchanged.
	cache := orchestrator.NewCache(b.store)
	for _, s := range orchestrator.Known {
		if err := os.MkdirAll(filepath.Join(opts.StateDir, s), 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
	}
	runner := &orchestrator.Runner{
		Role: roleName, Server: opts.Server, ServerInstance: server, Store: cache, Services: services,
		Fixed: opts.Services != "", Log: log, Kick: kick,
		Env: func(service string, enabled []string) role.Env {
			return role.Env{
				Params: cache, Driver: drv, Instance: me, StateDir: filepath.Join(opts.StateDir, service),
				Log:    log.With().Str("service", service).Logger(),
				UseVPN: slices.Contains(enabled, "vpn"), Exec: opts.Driver == "exec", Endpoint: b.endpoint,
				Hosts: hostsFile(opts.Hosts),
			}
		},
	}
	err = runner.Run(ctx)
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	b.left(lctx) // stopped or aborted: a member whose deployment stops says goodbye
	cancel()
	switch {
	case errors.Is(err, context.Canceled):
		log.Info().Msg("stopped; everything this role created is removed")
		return nil
	case role.IsTerminal(err):
		return fmt.Errorf("%w: %w", errRunAbortedByRole, err) // the loop aborted the run
	}
	return err
}

// enabledServices reads net.services.enable: the server's own input, or, on an agent, the
// server's (found through the mapped input cnsmo.server.nodeinstanceid). An invalid list aborts
// the run with a message naming the parameter.
func enabledServices(ctx context.Context, b *backend, opts Options, log zerolog.Logger) (services []string, server string, err error) {
	raw := opts.Services
	server = b.store.Self()
	if !opts.Server {
		_ = b.store.Display(ctx, "cnsmo: waiting for the CNSMO server")
		if raw != "" {
			wctx, cancel := context.WithTimeout(ctx, 30*time.Second) // the list is fixed by the flag: a short wait
			server, _ = b.waitServer(wctx)
			cancel()
		} else if server, err = b.waitServer(ctx); err != nil {
			return nil, "", err
		}
	}
	if raw == "" {
		if raw, err = waitValue(ctx, b.store, server, params.ServicesEnable, log); err != nil {
			return nil, "", err
		}
	}
	services, err = orchestrator.ParseServices(raw)
	if err != nil {
		// Run aborts the run with this message, naming the instance.
		return nil, "", err
	}
	return services, server, nil
}

// waitValue waits until instance's key is set, and keeps waiting through failures of the store
// (the client's own retries are bounded): only a stop, an abort or a refused key end it.
func waitValue(ctx context.Context, st role.Store, instance, key string, log zerolog.Logger) (v string, err error) {
	err = wait.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}.Until(ctx, func(ctx context.Context) (bool, error) {
		v, err = st.Get(ctx, instance, key)
		switch {
		case err == nil:
			return v != "", nil
		case errors.Is(err, role.ErrNotSet):
			return false, nil
		case ctx.Err() != nil:
			return false, ctx.Err()
		case errors.Is(err, role.ErrAborted), errors.Is(err, ssclient.ErrUnknownKey), errors.Is(err, ssclient.ErrUnauthorized),
			errors.Is(err, nuvla2.ErrForbidden), errors.Is(err, nuvla2.ErrNoSession):
			return false, fmt.Errorf("reading %s of %s: %w", key, instance, err)
		}
		log.Warn().Err(err).Str("param", key).Msg("parameter store failing; waiting on")
		return false, nil
	})
	return v, err
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

// Stop asks the role running with stateDir to stop, and waits until it has torn down. Only a
// cnsmo-role holding the state dir's lock is signalled (see RunningPID).
func Stop(ctx context.Context, stateDir string, timeout time.Duration) error {
	pid, err := RunningPID(stateDir)
	if err != nil || pid == 0 {
		return err // nothing runs
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	err = wait.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond, Limit: timeout}.Until(ctx, func(context.Context) (bool, error) {
		// Done when the role removed its pid file after its teardown, or is gone (a zombie
		// whose parent does not reap it counts as gone).
		if _, err := os.Stat(filepath.Join(stateDir, "role.pid")); errors.Is(err, os.ErrNotExist) {
			return true, nil
		}
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) || zombie(pid), nil
	})
	if !errors.Is(err, wait.ErrTimeout) {
		return err
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

// newDriver returns the runtime of the network functions. The Docker engine must answer within
// a minute (it may still be starting on a VM that just booted).
func newDriver(ctx context.Context, kind string, owner driver.Owner, stateDir string) (driver.Driver, error) {
	switch kind {
	case "docker":
		d, err := dockerdriver.New(owner)
		if err != nil {
			return nil, err
		}
		if err := (wait.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second, Limit: time.Minute}).Until(ctx, func(ctx context.Context) (bool, error) {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return d.Ping(pctx) == nil, nil
		}); err != nil {
			return nil, fmt.Errorf("the Docker engine does not answer: %w", err)
		}
		return d, nil
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

// roleExe is the executable name a running role has (tests of the package change it).
var roleExe = "cnsmo-role"

// RunningPID returns the pid of the role running with stateDir, or 0 when none runs. A role runs
// when the pid in role.pid holds the state dir's lock (flock, as /proc/locks shows it) and is a
// cnsmo-role: a pid file left by a crash or a reboot, naming whatever process got that pid since,
// counts for nothing.
func RunningPID(stateDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(stateDir, "role.pid"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(string(trimSpace(b)))
	if err != nil || pid <= 0 {
		return 0, nil // not a pid: nothing to signal
	}
	st, err := os.Stat(filepath.Join(stateDir, "role.lock"))
	if err != nil {
		return 0, nil //nolint:nilerr // no lock file: no role ever ran here
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, nil
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0, fmt.Errorf("reading /proc/locks: %w", err)
	}
	if !holdsFlock(string(locks), pid, sys.Ino) {
		return 0, nil
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || !strings.HasPrefix(filepath.Base(strings.TrimSuffix(exe, " (deleted)")), roleExe) {
		return 0, nil
	}
	return pid, nil
}

// holdsFlock reports whether /proc/locks (its text) shows pid holding a FLOCK on inode ino.
// A line: "1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF" (the device in hex, the inode decimal).
func holdsFlock(locks string, pid int, ino uint64) bool {
	for _, l := range strings.Split(locks, "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || f[1] != "FLOCK" { // a waiter's line reads "N: -> FLOCK ..."
			continue
		}
		p, err := strconv.Atoi(f[4])
		if err != nil || p != pid {
			continue
		}
		dev := strings.Split(f[5], ":")
		if n, err := strconv.ParseUint(dev[len(dev)-1], 10, 64); err == nil && n == ino {
			return true
		}
	}
	return false
}

// Kick makes the role running with stateDir reconcile at once (SIGHUP); with no role running it
// does nothing.
func Kick(stateDir string) error {
	pid, err := RunningPID(stateDir)
	if err != nil || pid == 0 {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

func hostsFile(v string) string {
	if v == "none" {
		return ""
	}
	return v
}
