package lb

import (
	"bufio"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Where the function's files go: DefaultDir in the HAProxy container (Docker driver); with the
// exec driver, <state dir>/fn on this VM, so that roles with different state dirs never share a file.
const (
	DefaultDir = "/var/lib/cnsmo/lb"
	// FunctionName is the driver name of the HAProxy function.
	FunctionName = "lb-haproxy"
	// DefaultImage is the HAProxy image built by `make images`.
	DefaultImage = "cnsmo/haproxy:latest"
)

// Files of the function, under its directory.
const (
	configFile = "haproxy.cfg"
	socketFile = "haproxy.sock" // unix stats socket, through which a reload passes the listeners
	stateFile  = "server-state" // the servers' states saved just before a reload
	checkFile  = "haproxy.check.cfg"
)

// ConfigPath and StatePath are the configuration and server-state file in the HAProxy container
// (Docker driver).
const (
	ConfigPath = DefaultDir + "/" + configFile
	StatePath  = DefaultDir + "/" + stateFile
)

// Role runs the load balancer on the instance whose parameters hold lb.port, lb.mode and lb.node.
type Role struct {
	Params role.Publisher
	Driver driver.Driver
	Image  string
	Log    zerolog.Logger
	// Dir is where the function's files go (default DefaultDir).
	Dir string
	// UseVPN addresses backends at their vpn.address instead of their hostname.
	UseVPN bool
	// Own returns the LB VM's own addresses, never backends (default: its interfaces').
	Own func() map[netip.Addr]bool
	// Assigned returns the overlay address the VPN server assigned to an instance (with UseVPN).
	Assigned func(instance string) (netip.Addr, bool)
	// Exec: functions run on this VM's filesystem (the exec driver); teardown removes the socket.
	Exec bool
	// Dial opens a TCP connection to the local HAProxy (the runtime API and the readiness probe);
	// nil means net.Dialer on the host's namespace.
	Dial func(ctx context.Context, addr string) (net.Conn, error)

	applied  string // the configuration last applied by this process
	reloaded bool   // a reload happened and its old worker was not yet seen gone
	waiting  string // why the last pass was not ready
	down     bool   // the last pass found every backend known down
	// backendsApplied are the backends of the configuration applied.
	backendsApplied []Backend
	pendingTunnels  int // served backends whose overlay address is not known yet (this pass)
	// beforeReload are HAProxy's processes just before the last reload.
	beforeReload map[string]bool
	warned       map[string]string // backend -> what was last warned about it (warned once)
}

// New returns the load balancer of the instance described by env (the CNSMO server).
func New(env role.Env) *Role {
	r := &Role{Params: env.Params, Driver: env.Driver, Log: env.Log, UseVPN: env.UseVPN, Exec: env.Exec}
	if env.Exec && env.StateDir != "" {
		r.Dir = filepath.Join(env.StateDir, "fn")
	}
	return r
}

// Name implements role.Service.
func (r *Role) Name() string { return "lb" }

func (r *Role) path(file string) string {
	if r.Dir == "" {
		return path.Join(DefaultDir, file)
	}
	return path.Join(r.Dir, file)
}

// Serves reports whether the load balancer may still send to instance: it is a backend of the
// configuration applied, or a reload is not over (its old worker may still have it).
func (r *Role) Serves(instance string) bool {
	return r.reloaded || slices.ContainsFunc(r.backendsApplied, func(b Backend) bool { return b.Instance == instance })
}

// Down reports whether the load balancer is known not to serve (every backend failed its checks).
func (r *Role) Down() bool { return r.down }

// Waiting says why the load balancer is not ready ("" when it is, or when there is nothing to
// say); the orchestrator shows it in the UI.
func (r *Role) Waiting() string { return r.waiting }

// Reconcile validates the inputs, renders the configuration for the current backends, checks it
// with `haproxy -c`, starts HAProxy or reloads it hitlessly when the configuration changed, and
// sets lb.ready once HAProxy accepts connections and at least one backend is up.
func (r *Role) Reconcile(ctx context.Context, s role.Snapshot) (bool, error) {
	me := r.Params.Self()
	cfg, err := ParseConfig(func(k string) string { return s.Get(me, k) }, s.Nodes())
	if err != nil {
		return false, role.Terminal(err)
	}
	cfg.SocketPath, cfg.StatePath = r.path(socketFile), r.path(stateFile)
	r.waiting, r.down = "", false // said again below when still so
	st, err := r.Driver.Status(ctx, FunctionName)
	if err != nil {
		return false, fmt.Errorf("lb: status of haproxy: %w", err)
	}
	if r.backendsApplied == nil && st.State == driver.StateRunning {
		// A role that starts again (or that the services' change re-created) finds HAProxy
		// serving: what it serves is where a backend stays until its tunnel is up.
		r.backendsApplied = r.served(ctx, cfg.StatsPort)
	}
	r.pendingTunnels = 0
	backends := r.backends(s, cfg)
	conf := Render(cfg, backends)
	if r.pendingTunnels > 0 && r.applied != "" {
		// A served backend's tunnel is not up yet (the VPN was just turned on): the pool moves to
		// the overlay in one reload once every tunnel is, not one reload per backend.
		r.Log.Debug().Int("waiting", r.pendingTunnels).Msg("lb: waiting for the backends' tunnels before moving them")
		conf = r.applied
	}

	if conf != r.applied || st.State != driver.StateRunning {
		if err := r.check(ctx, conf); err != nil {
			// The old configuration keeps serving; say why in the UI and the logs.
			r.Log.Error().Err(err).Msg("rendered configuration rejected; keeping the running one")
			_ = r.Params.Display(ctx, "lb: configuration rejected by haproxy -c, old one kept: "+firstLine(err.Error()))
			return false, err
		}
		if err := r.apply(ctx, cfg.StatsPort, conf, st); err != nil {
			return false, err
		}
		r.backendsApplied = backends
		r.Log.Info().Int("backends", len(backends)).Msg("haproxy configuration applied")
	}

	if r.reloaded {
		// Until the old worker is gone it may still accept connections for the old backends
		// (overlay addresses of a VPN about to be torn down): not ready yet, nothing withdrawn.
		gone, err := r.oldWorkersGone(ctx)
		if err != nil || !gone {
			r.Log.Debug().Err(err).Msg("waiting for haproxy's old worker to finish")
			return false, nil
		}
		r.reloaded = false
	}
	up, pending, err := r.backendsUp(ctx, cfg)
	if err == nil && up > 0 {
		err = r.probe(ctx, cfg.Port)
	}
	r.waiting, r.down = "", false
	if err == nil && up == 0 && pending == 0 {
		r.waiting, r.down = downMessage(backends, cfg.BackendPort, cfg.Nodes), true
	}
	if err != nil || up == 0 {
		r.Log.Debug().Err(err).Int("up", up).Int("pending", pending).Msg("load balancer not ready")
		// Ready means serving: a backend has passed a check. With every backend known down it
		// is not, and lb.ready is withdrawn (un-set). Checks not run yet, or a runtime API that
		// does not answer for a moment (during a reload), withdraw nothing.
		if r.down {
			if err := role.Publish(ctx, r.Params, s, me, params.LBReady, ""); err != nil {
				return false, fmt.Errorf("lb: %w", err)
			}
		}
		return false, nil
	}
	url := urlService(s, me, cfg.Port)
	for _, out := range []struct{ instance, key, value string }{
		{me, params.URLService, url},
		{role.Deployment, params.URLService, url}, // the deployment's URL, shown by the platform
		{me, params.LBReady, "true"},
	} {
		if err := role.Publish(ctx, r.Params, s, out.instance, out.key, out.value); err != nil {
			return false, fmt.Errorf("lb: %w", err)
		}
	}
	return true, nil
}

// Withdraw un-sets lb.ready and the service URLs (the instance's and the deployment's).
func (r *Role) Withdraw(ctx context.Context) error {
	err := role.Withdraw(ctx, r.Params, params.LBReady, params.URLService)
	if werr := r.Params.Set(ctx, role.Deployment, params.URLService, ""); werr != nil {
		err = errors.Join(err, fmt.Errorf("withdraw the deployment's %s: %w", params.URLService, werr))
	}
	return err
}

// Validate checks the load balancer's inputs on the CNSMO server's instance, without side effects.
func Validate(s role.Snapshot, server string) error {
	if _, err := ParseConfig(func(k string) string { return s.Get(server, k) }, s.Nodes()); err != nil {
		return fmt.Errorf("%s: %w", server, err)
	}
	return nil
}

func urlService(s role.Snapshot, me string, port int) string {
	host := s.Get(me, params.Hostname)
	if host == "" {
		host = "localhost"
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

// backends lists every current instance of the configured nodes with a usable address: with the
// VPN, the overlay address the VPN server assigned to it (once the instance says its tunnel is up
// by publishing vpn.address), never the value it claims; without, its hostname, unless that is
// an address of the LB VM itself or of the cloud (loopback, link-local such as the metadata
// service 169.254.169.254, multicast, unspecified). A backend left out is warned about once.
func (r *Role) backends(s role.Snapshot, cfg Config) []Backend {
	var out []Backend
	for _, node := range cfg.Nodes {
		for _, inst := range s.Instances(node) {
			a, key, v, why := r.address(s, inst)
			if why != "" && v != "" {
				r.warnOnce(inst, key+"="+v, func(e *zerolog.Event) *zerolog.Event { return e.Str("param", key).Str("value", v) }, "backend left out: "+why)
			}
			if why == "" && !a.IsValid() {
				// No overlay address yet (the VPN was just turned on, or the instance is new): it
				// stays where the configuration applied serves it, if it does, until its tunnel is up;
				// a new one joins on a later pass (rendered, it would be "invalid AddrPort").
				if b, ok := r.appliedBackend(inst); ok {
					out = append(out, b)
					r.pendingTunnels++
				}
				continue
			}
			if why != "" {
				continue
			}
			out = append(out, Backend{Instance: inst, Addr: a})
		}
	}
	return out
}

// served reads the backends the running HAProxy serves (its runtime API's `show servers state`):
// none when it does not answer.
func (r *Role) served(ctx context.Context, statsPort int) []Backend {
	out, err := r.runtimeAPI(ctx, statsPort, "show servers state")
	if err != nil {
		return nil
	}
	var list []Backend
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) < 5 || strings.HasPrefix(l, "#") || f[1] != "cnsmo_backends" {
			continue
		}
		if a, err := netip.ParseAddr(f[4]); err == nil {
			list = append(list, Backend{Instance: f[3], Addr: a})
		}
	}
	return list
}

// appliedBackend is inst as the configuration applied serves it.
func (r *Role) appliedBackend(inst string) (Backend, bool) {
	for _, b := range r.backendsApplied {
		if b.Instance == inst {
			return b, true
		}
	}
	return Backend{}, false
}

// address returns the address inst is served at, or why it is not (with the parameter and value
// that were looked at).
func (r *Role) address(s role.Snapshot, inst string) (a netip.Addr, key, v, why string) {
	if r.UseVPN {
		key = params.VPNAddress
		v = strings.TrimSpace(s.Get(inst, key))
		if v == "" {
			return a, key, v, "" // its tunnel is not up yet
		}
		if r.Assigned != nil {
			if as, ok := r.Assigned(inst); ok {
				if claimed, err := netip.ParseAddr(v); err != nil || claimed != as {
					r.warnOnce(inst, "claim="+v, func(e *zerolog.Event) *zerolog.Event { return e.Str("claimed", v).Str("assigned", as.String()) },
						"backend claims another overlay address than the VPN server assigned: served at the assigned one")
				}
				return as, key, v, ""
			}
		}
		return a, key, v, "the VPN server assigned it no address"
	}
	key = params.Hostname
	v = strings.TrimSpace(s.Get(inst, key))
	if v == "" {
		return a, key, v, ""
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		// HAProxy gets addresses, not names.
		return a, key, v, "its address is not an IP address"
	}
	if why := LocalAddress(a); why != "" {
		return netip.Addr{}, key, v, "its address is " + why
	}
	own := r.Own
	if own == nil {
		own = ownAddresses
	}
	if own()[a.Unmap()] {
		return netip.Addr{}, key, v, "its address is one of the load balancer VM's own"
	}
	return a, key, v, ""
}

// downMessage says that no backend answers its health checks, naming where they go.
func downMessage(backends []Backend, port int, nodes []string) string {
	if len(backends) == 0 {
		return "no backend yet: no instance of " + strings.Join(nodes, ", ") + " has an address"
	}
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return compareInstance(a.Instance, b.Instance) })
	var parts []string
	for _, b := range bs {
		parts = append(parts, b.Instance+" "+netip.AddrPortFrom(b.Addr, uint16(port)).String())
	}
	return "every backend is down: health checks to " + strings.Join(parts, ", ") + " fail"
}

// warnOnce logs msg about backend inst once per distinct what.
func (r *Role) warnOnce(inst, what string, fields func(*zerolog.Event) *zerolog.Event, msg string) {
	if r.warned[inst] == what {
		return
	}
	if r.warned == nil {
		r.warned = map[string]string{}
	}
	r.warned[inst] = what
	fields(r.Log.Warn().Str("backend", inst)).Msg(msg)
}

// LocalAddress says why a is never a backend (a loopback, link-local, multicast or unspecified
// address, also in its IPv4-mapped IPv6 form), or "" when it may be one.
func LocalAddress(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "a loopback address"
	case a.IsLinkLocalUnicast():
		return "link-local (the cloud's metadata service lives there)"
	case a.IsMulticast() || a.IsLinkLocalMulticast() || a.IsInterfaceLocalMulticast():
		return "a multicast address"
	case a.IsUnspecified():
		return "unspecified"
	case a == netip.MustParseAddr("255.255.255.255"):
		return "the broadcast address"
	case metadata[a]:
		return "a cloud's metadata or platform service"
	}
	return ""
}

// metadata are clouds' metadata and platform services outside the link-local range: AWS's IPv6
// metadata address, Alibaba Cloud's metadata service, Azure's platform (wire server) address.
var metadata = map[netip.Addr]bool{
	netip.MustParseAddr("fd00:ec2::254"):   true,
	netip.MustParseAddr("100.100.100.200"): true,
	netip.MustParseAddr("168.63.129.16"):   true,
}

// ownAddresses are the addresses of the LB VM's own interfaces (the role runs in its namespace).
func ownAddresses() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	as, err := net.InterfaceAddrs()
	if err != nil {
		return out
	}
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out[p.Addr().Unmap()] = true
		}
	}
	return out
}

func (r *Role) image() string {
	if r.Image != "" {
		return r.Image
	}
	return DefaultImage
}

// check runs `haproxy -c` on conf as a one-shot function.
func (r *Role) check(ctx context.Context, conf string) error {
	res, err := r.Driver.Run(ctx, driver.Spec{
		Name:    "lb-haproxy-check",
		Service: "lb",
		Image:   r.image(),
		Cmd:     []string{"haproxy", "-c", "-f", r.path(checkFile)},
		Files:   []driver.File{{Path: r.path(checkFile), Mode: 0o644, Data: []byte(conf)}},
	}, nil)
	if err != nil {
		return fmt.Errorf("lb: haproxy -c: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("lb: haproxy -c rejected the configuration (exit %d): %s", res.ExitCode,
			strings.TrimSpace(string(res.Stderr)+" "+string(res.Stdout)))
	}
	return nil
}

// apply starts HAProxy with conf, or hands conf to the running master and reloads it (SIGUSR2):
// in master-worker mode the new worker takes over the listening sockets, so no connection drops.
func (r *Role) apply(ctx context.Context, statsPort int, conf string, st driver.Status) error {
	file := driver.File{Path: r.path(configFile), Mode: 0o644, Data: []byte(conf)}
	if st.State == driver.StateRunning {
		files := []driver.File{file}
		// The servers' current states go to the next worker (no request to a backend already
		// known DOWN). Without them the reload still happens: fresh servers start UP.
		if state, err := r.runtimeAPI(ctx, statsPort, "show servers state"); err == nil {
			files = append(files, driver.File{Path: r.path(stateFile), Mode: 0o644, Data: []byte(state)})
		} else {
			r.Log.Warn().Err(err).Msg("server states not saved before the reload")
		}
		if err := r.Driver.PutFiles(ctx, FunctionName, files); err != nil {
			return fmt.Errorf("lb: write haproxy.cfg: %w", err)
		}
		before, err := r.haproxyPids(ctx)
		if err != nil {
			return err
		}
		r.beforeReload = before
		if err := r.Driver.Signal(ctx, FunctionName, syscall.SIGUSR2); err != nil {
			return fmt.Errorf("lb: reload haproxy: %w", err)
		}
		r.applied, r.reloaded = conf, true
		return nil
	}
	if err := r.Driver.Start(ctx, driver.Spec{
		Name:    FunctionName,
		Service: "lb",
		Image:   r.image(),
		Cmd:     []string{"haproxy", "-W", "-db", "-f", r.path(configFile)},
		Files:   []driver.File{file},
	}); err != nil {
		return fmt.Errorf("lb: start haproxy: %w", err)
	}
	r.applied = conf
	return nil
}

// haproxyPids lists HAProxy's processes in the function (the master and its workers).
func (r *Role) haproxyPids(ctx context.Context) (map[string]bool, error) {
	res, err := r.Driver.Exec(ctx, FunctionName, []string{"pidof", "haproxy"}, nil)
	if err != nil {
		return nil, fmt.Errorf("lb: haproxy's processes: %w", err)
	}
	pids := map[string]bool{}
	for _, p := range strings.Fields(string(res.Stdout)) {
		pids[p] = true
	}
	return pids, nil
}

// oldWorkersGone reports whether the reload is over: a new worker runs (a process that was not
// there before the reload) and of the processes before it only one remains (the master, which
// keeps its pid across reloads). Right after SIGUSR2 the master may not have forked the new worker
// yet, and the old worker serves on until the new one has taken the listeners and it has finished
// (hard-stop-after bounds that).
func (r *Role) oldWorkersGone(ctx context.Context) (bool, error) {
	now, err := r.haproxyPids(ctx)
	if err != nil {
		return false, err
	}
	fresh, stayed := 0, 0
	for p := range now {
		if r.beforeReload[p] {
			stayed++
		} else {
			fresh++
		}
	}
	return fresh > 0 && stayed <= 1, nil
}

func (r *Role) dial(ctx context.Context, addr string) (net.Conn, error) {
	if r.Dial != nil {
		return r.Dial(ctx, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// probe checks that HAProxy accepts connections on its front port.
func (r *Role) probe(ctx context.Context, port int) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := r.dial(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return c.Close()
}

// backendsUp asks HAProxy's runtime API how many servers of the backend are up (a check passed)
// and how many have no check result yet.
func (r *Role) backendsUp(ctx context.Context, cfg Config) (up, pending int, err error) {
	out, err := r.runtimeAPI(ctx, cfg.StatsPort, "show stat")
	if err != nil {
		return 0, 0, err
	}
	return backendStates(out)
}

func (r *Role) runtimeAPI(ctx context.Context, port int, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := r.dial(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return "", fmt.Errorf("lb: runtime API: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		return "", fmt.Errorf("lb: runtime API: %w", err)
	}
	b, err := io.ReadAll(bufio.NewReader(c))
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("lb: runtime API: %w", err)
	}
	return string(b), nil
}

// backendStates counts the servers of backend cnsmo_backends in `show stat` CSV: up (UP, and a
// health check has passed: HAProxy counts a fresh server UP until its first check) and pending
// (UP, no check result yet: a fresh start, or the first checks after a reload).
func backendStates(stat string) (up, pending int, err error) {
	stat = strings.TrimPrefix(stat, "# ")
	rd := csv.NewReader(strings.NewReader(stat))
	rd.FieldsPerRecord = -1
	recs, err := rd.ReadAll()
	if err != nil {
		return 0, 0, fmt.Errorf("lb: parse show stat: %w", err)
	}
	if len(recs) == 0 {
		return 0, 0, errors.New("lb: empty show stat")
	}
	col := map[string]int{}
	for i, h := range recs[0] {
		col[h] = i
	}
	px, sv, status := col["pxname"], col["svname"], col["status"]
	check, hasCheck := col["check_status"]
	for _, rec := range recs[1:] {
		if len(rec) <= status || rec[px] != "cnsmo_backends" || rec[sv] == "BACKEND" || rec[sv] == "FRONTEND" {
			continue
		}
		if !strings.HasPrefix(rec[status], "UP") {
			continue
		}
		cs := ""
		if hasCheck && len(rec) > check {
			cs = strings.TrimPrefix(rec[check], "* ") // "* " marks a check in progress
		}
		switch cs {
		case "", "INI", "UNK":
			pending++
		default:
			up++
		}
	}
	return up, pending, nil
}

// Teardown removes the HAProxy function and its files.
func (r *Role) Teardown(ctx context.Context) error {
	r.applied, r.reloaded, r.backendsApplied = "", false, nil
	if err := r.Driver.Remove(ctx, FunctionName); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("lb: remove haproxy: %w", err)
	}
	if r.Exec { // HAProxy ran on this VM's filesystem: its socket stays behind it
		for _, f := range []string{r.path(socketFile), r.path(stateFile)} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("lb: remove %s: %w", f, err)
			}
		}
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
