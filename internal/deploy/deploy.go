// Package deploy runs a whole CNSMO deployment on the testbed: mocknuvla on the host, the real
// recipes and cnsmo-role on simulated VMs, and the checks the end-to-end tests and `make demo`
// share (ping matrix, firewall reachability, load-balancer distribution).
package deploy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/orchestrator"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
	"github.com/cnsmo/cnsmo/testbed"
)

// Where the recipes and the context go on a simulated VM.
const (
	RecipeDir = "/opt/cnsmo/recipes"
	EnvFile   = "/etc/cnsmo/slipstream.env"
	StateDir  = "/var/lib/cnsmo"
)

// Config describes one deployment.
type Config struct {
	Definition *mocknuvla.Deployment
	// Placement maps every instance of the run ("cnsmo.1", "web.2") to the VM that runs it.
	Placement map[string]string
	// Driver is the runtime of the roles: "docker" (default) or "exec".
	Driver string
	// Faults, when set, are injected by mocknuvla into every request of the run's VMs.
	Faults *mocknuvla.Faults
	// Progress receives one line per step (the demo prints it); nil discards.
	Progress io.Writer
	// API is the platform: "slipstream" (default: a run, the recipes) or "nuvla2" (a deployment
	// group, cnsmo-role started as the member's container would start it, docs/nuvla2.md).
	API string
	// NoUserRights: the Nuvla 2 applications do not ask for user rights (their keys see only
	// their own deployments).
	NoUserRights bool
	// Compose: on Nuvla 2, every member's cnsmo-role runs from its compose file
	// (recipes/nuvla2, with docker-compose on the host, the cnsmo/role image, in its VM's network)
	// instead of as a process of the VM.
	Compose bool
	// Engine is the VPN engine of the scenario (vpn.engine): "openvpn" (default) or "wireguard".
	Engine string
	// Throughput: the scenario measures web.1 -> web.2 TCP throughput through the VPN (3 s).
	Throughput bool
	// People: the scenario plays a person who joins with cnsmo-role join, reaches members by
	// name and leaves (UserAccess; needs PersonVM in the testbed).
	People bool
}

// Deployment is a running run on the testbed.
type Deployment struct {
	TB   *testbed.Testbed
	Mock *mocknuvla.Server
	URL  string
	Run  *mocknuvla.RunInfo
	cfg  Config

	srv   *http.Server
	mu    sync.Mutex
	place map[string]*testbed.VM // instance -> VM
	creds map[string]mocknuvla.InstanceInfo
	// Nuvla 2: the group, its members by the definition's instance names, the hub's deployment.
	group      *mocknuvla.Nuvla2Group
	members    map[string]mocknuvla.Nuvla2Member
	hub        string
	composeDir string // the compose files, written on the host
	// The person's password (PersonUser), and keys the parameter scan also looks for.
	personPW     string
	personKey    string // Nuvla 2: the person's API key (personPW its secret)
	extraSecrets []string
}

// Start serves mocknuvla on the testbed's host address, creates the run, records every
// instance's hostname as its VM's public address (as a cloud would), and installs the context
// and the recipes on every placed VM. It does not start any role: see Launch.
func Start(ctx context.Context, tb *testbed.Testbed, cfg Config) (*Deployment, error) {
	if cfg.Driver == "" {
		cfg.Driver = "docker"
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	pw := make([]byte, 12)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	mock := mocknuvla.New(mocknuvla.Options{Logger: zerolog.Nop(), API: cfg.API, Users: map[string]string{PersonUser: hex.EncodeToString(pw)}})
	ln, err := net.Listen("tcp", net.JoinHostPort(tb.HostAddr(), "0"))
	if err != nil {
		return nil, fmt.Errorf("deploy: listen for mocknuvla on the testbed's host address: %w", err)
	}
	d := &Deployment{TB: tb, Mock: mock, URL: "http://" + ln.Addr().String(), cfg: cfg, personPW: hex.EncodeToString(pw),
		srv: &http.Server{Handler: mock, ReadHeaderTimeout: 10 * time.Second}, place: map[string]*testbed.VM{},
		creds: map[string]mocknuvla.InstanceInfo{}, members: map[string]mocknuvla.Nuvla2Member{}}
	go d.srv.Serve(ln) //nolint:errcheck // ends with Close
	if d.Nuvla2() {
		if err := d.startGroup(); err != nil {
			d.srv.Close()
			return nil, err
		}
	} else {
		d.Run, err = mock.CreateRun(cfg.Definition)
		if err != nil {
			d.srv.Close()
			return nil, fmt.Errorf("deploy: create run: %w", err)
		}
		d.progress("mocknuvla on %s, run %s", d.URL, d.Run.UUID)
	}
	for _, in := range d.Run.Instances {
		d.creds[in.Name] = in
	}
	for inst, vmName := range cfg.Placement {
		if err := d.Place(ctx, inst, vmName); err != nil {
			d.Close(ctx)
			return nil, err
		}
	}
	if cfg.Faults != nil {
		if d.Nuvla2() {
			mock.SetFaults("", *cfg.Faults)
		} else {
			mock.SetFaults(d.Run.UUID, *cfg.Faults)
		}
	}
	return d, nil
}

func (d *Deployment) progress(format string, args ...any) {
	fmt.Fprintf(d.cfg.Progress, format+"\n", args...)
}

// Place puts instance on the VM named vmName: its hostname parameter becomes the VM's public
// address, and its context and the recipes are written into the VM.
func (d *Deployment) Place(ctx context.Context, instance, vmName string) error {
	vm := d.TB.VM(vmName)
	if vm == nil {
		return fmt.Errorf("deploy: no VM %q for %s", vmName, instance)
	}
	if d.Nuvla2() {
		return d.placeMember(ctx, instance, vm)
	}
	in, ok := d.creds[instance]
	if !ok {
		return fmt.Errorf("deploy: instance %s is not in run %s", instance, d.Run.UUID)
	}
	if err := d.Mock.SetParam(d.Run.UUID, instance+":"+params.Hostname, vm.PublicAddr); err != nil {
		return fmt.Errorf("deploy: %s hostname: %w", instance, err)
	}
	var env strings.Builder
	for _, kv := range d.Run.Env(d.URL, in.Name) {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&env, "export %s='%s'\n", k, strings.ReplaceAll(v, "'", `'\''`))
	}
	fmt.Fprintf(&env, "export CNSMO_DRIVER='%s'\nexport CNSMO_BIN_DIR=/opt/cnsmo/bin\nexport CNSMO_STATE_DIR=%s\n", d.cfg.Driver, StateDir)
	if err := vm.WriteFile(ctx, EnvFile, []byte(env.String()), 0o600); err != nil {
		return fmt.Errorf("deploy: context of %s: %w", instance, err)
	}
	err := fs.WalkDir(recipes.FS, ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		b, err := recipes.FS.ReadFile(p)
		if err != nil {
			return err
		}
		return vm.WriteFile(ctx, RecipeDir+"/"+p, b, 0o755)
	})
	if err != nil {
		return fmt.Errorf("deploy: recipes on %s: %w", vmName, err)
	}
	d.mu.Lock()
	d.place[instance] = vm
	d.mu.Unlock()
	return nil
}

// VMOf returns the VM an instance runs on.
func (d *Deployment) VMOf(instance string) *testbed.VM {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.place[instance]
}

// Instances lists the placed instances, sorted.
func (d *Deployment) Instances() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.place))
	for k := range d.place {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Recipe runs one of the recipes on an instance's VM with its context, to completion.
func (d *Deployment) Recipe(ctx context.Context, instance, script string, extraEnv ...string) (string, error) {
	vm := d.VMOf(instance)
	if vm == nil {
		return "", fmt.Errorf("deploy: %s is not placed", instance)
	}
	cmd := ". " + EnvFile + "; "
	for _, kv := range extraEnv {
		k, v, _ := strings.Cut(kv, "=")
		cmd += fmt.Sprintf("export %s='%s'; ", k, v)
	}
	cmd += "exec sh " + RecipeDir + "/" + script
	out, errOut, err := vm.Exec(ctx, "sh", "-c", cmd)
	if err != nil {
		return out + errOut, fmt.Errorf("deploy: %s on %s: %w: %s", script, instance, err, lastLines(out+errOut, 5))
	}
	return out + errOut, nil
}

// Launch starts the role of an instance through its deployment recipe, in the background: the
// recipe installs, starts cnsmo-role and blocks on net.services.enabled.
func (d *Deployment) Launch(ctx context.Context, instance string) error {
	vm := d.VMOf(instance)
	if vm == nil {
		return fmt.Errorf("deploy: %s is not placed", instance)
	}
	if d.Nuvla2() {
		return d.launchMember(ctx, instance, vm)
	}
	script := "app-node.sh"
	if node, _, _ := strings.Cut(instance, "."); node == d.ServerNode() {
		script = "cnsmo-server.sh"
	}
	_, err := vm.Start(ctx, nil, "sh", "-c", ". "+EnvFile+"; exec sh "+RecipeDir+"/"+script+" >>/var/log/cnsmo-recipe.log 2>&1")
	if err != nil {
		return fmt.Errorf("deploy: start %s on %s: %w", script, instance, err)
	}
	d.progress("%s: %s started on VM %s (%s)", instance, script, vm.Name, vm.PublicAddr)
	return nil
}

// ServerNode is the node whose input is net.services.enable: the CNSMO server component.
func (d *Deployment) ServerNode() string {
	for _, n := range d.cfg.Definition.Nodes {
		for _, p := range n.Parameters {
			if p.Name == params.ServicesEnable {
				return n.Name
			}
		}
	}
	return "cnsmo"
}

// Param reads a parameter of the run ("" when unset): "web.1:vpn.address", "ss:url.service". On
// Nuvla 2 the instance is the definition's name of a member (web.1), and ss: the hub's own values.
func (d *Deployment) Param(key string) string {
	if d.Nuvla2() {
		return d.memberParam(key)
	}
	v, set, err := d.Mock.Param(d.Run.UUID, key)
	if err != nil || !set {
		return ""
	}
	return v
}

// ErrAborted is returned by the waits when the run was aborted; the error carries ss:abort.
var ErrAborted = errors.New("run aborted")

// WaitParam polls until key equals want on every instance, or the run is aborted.
func (d *Deployment) WaitParam(ctx context.Context, key, want string, instances ...string) error {
	return d.waitParam(ctx, key, want, func(v string) bool { return v == want }, instances)
}

// WaitSet polls until key is set (not empty) on every instance, or the run is aborted.
func (d *Deployment) WaitSet(ctx context.Context, key string, instances ...string) error {
	return d.waitParam(ctx, key, "(set)", func(v string) bool { return v != "" }, instances)
}

func (d *Deployment) waitParam(ctx context.Context, key, want string, ok func(string) bool, instances []string) error {
	var missing []string
	err := wait.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}.Until(ctx, func(context.Context) (bool, error) {
		if msg := d.Param("ss:abort"); msg != "" {
			return false, fmt.Errorf("%w: %s", ErrAborted, msg)
		}
		missing = missing[:0]
		for _, in := range instances {
			if !ok(d.Param(in + ":" + key)) {
				missing = append(missing, in)
			}
		}
		return len(missing) == 0, nil
	})
	if err != nil && !errors.Is(err, ErrAborted) {
		return fmt.Errorf("deploy: waiting for %s=%s on %s: %w (statecustom: %s)", key, want,
			strings.Join(missing, ", "), err, d.states(missing))
	}
	return err
}

func (d *Deployment) states(instances []string) string {
	var parts []string
	for _, in := range instances {
		parts = append(parts, in+"="+d.Param(in+":"+params.Statecustom))
	}
	return strings.Join(parts, "; ")
}

// WaitEnabled waits until net.services.enabled is true on every instance.
func (d *Deployment) WaitEnabled(ctx context.Context, instances ...string) error {
	return d.WaitParam(ctx, params.ServicesEnabled, "true", instances...)
}

// Stop runs the onstop recipe on every placed instance (each role tears down what it created). On
// Nuvla 2 every member's deployment is stopped and its container's role stopped, as Nuvla does.
func (d *Deployment) Stop(ctx context.Context) error {
	if d.Nuvla2() {
		return d.stopMembers(ctx)
	}
	var errs []error
	for _, in := range d.Instances() {
		if _, err := d.Recipe(ctx, in, "onstop.sh"); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Logs returns the role's and the recipe's logs of an instance (for failure reports).
func (d *Deployment) Logs(ctx context.Context, instance string) string {
	vm := d.VMOf(instance)
	if vm == nil {
		return ""
	}
	if d.Nuvla2() && d.cfg.Compose {
		out, _ := d.compose(ctx, instance, "logs", "--no-color", "--tail", "40")
		return out
	}
	out, _, _ := vm.Exec(ctx, "sh", "-c", "tail -n 40 /var/log/cnsmo-recipe.log "+StateDir+"/role.log 2>/dev/null")
	return out
}

// Close stops serving mocknuvla, and removes the members started from their compose files. The
// testbed's own cleanup removes the VMs and what ran in them.
func (d *Deployment) Close(ctx context.Context) {
	d.closeCompose(ctx)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_ = d.srv.Shutdown(sctx)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// Adopt places an instance created by a scale-up (its credentials come from mocknuvla).
func (d *Deployment) Adopt(ctx context.Context, instance, vmName string) error {
	if d.Nuvla2() {
		return d.Place(ctx, instance, vmName)
	}
	in, err := d.Mock.Instance(d.Run.UUID, instance)
	if err != nil {
		return fmt.Errorf("deploy: %s: %w", instance, err)
	}
	d.mu.Lock()
	d.creds[instance] = in
	d.mu.Unlock()
	return d.Place(ctx, instance, vmName)
}

// ReadyPasses counts the "all services ready" lines in the role log of instance: each role
// process logs one on its way up, so a role (re)started and converged has added one.
func (d *Deployment) ReadyPasses(ctx context.Context, instance string) (int, error) {
	out, _, err := d.VMOf(instance).Exec(ctx, "sh", "-c",
		"grep -c '\"message\":\""+orchestrator.MsgAllReady+"\"' "+StateDir+"/role.log || true")
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(out))
}
