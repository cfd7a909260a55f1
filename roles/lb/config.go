// Package lb is the load balancer service: HAProxy in TCP mode in front of every current instance
// of the node(s) named in lb.node. Its configuration is rendered by a pure function from the
// validated inputs and the current backends, checked with `haproxy -c` and applied by a hitless
// master-worker reload.
package lb

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Modes are the balancing algorithms HAProxy offers in TCP mode.
var Modes = []string{"roundrobin", "static-rr", "leastconn", "first", "source", "random"}

// Defaults of the inputs, as the original (leastconn) where it had one.
const (
	DefaultMode       = "leastconn"
	DefaultCheckInter = 2000 // ms between health checks
	DefaultStatsPort  = 9999 // HAProxy's runtime API, on 127.0.0.1 only
)

// Config is the validated input of the load balancer.
type Config struct {
	Port        int      // lb.port: where HAProxy listens
	BackendPort int      // lb.backend.port: where backends listen (default: Port)
	Mode        string   // lb.mode
	Nodes       []string // lb.node: one or more node names
	CheckInter  int      // lb.check.inter: health-check interval in ms
	Fall, Rise  int      // consecutive failed/passed checks to mark a backend down/up
	StatsPort   int      // runtime API port on 127.0.0.1
	// SocketPath and StatePath are the unix stats socket and the server-state file in the
	// function's filesystem (set by the role; default under DefaultDir).
	SocketPath, StatePath string
}

// ParseConfig validates the LB inputs. get returns a parameter's value ("" when unset);
// nodes are the deployment's node names. Errors name the parameter.
func ParseConfig(get func(key string) string, nodes []string) (Config, error) {
	cfg := Config{Mode: DefaultMode, CheckInter: DefaultCheckInter, Fall: 2, Rise: 2, StatsPort: DefaultStatsPort}
	var err error
	if cfg.Port, err = parsePort(params.LBPort, get(params.LBPort), true); err != nil {
		return Config{}, err
	}
	cfg.BackendPort = cfg.Port
	if v := get(params.LBBackendPort); v != "" {
		if cfg.BackendPort, err = parsePort(params.LBBackendPort, v, true); err != nil {
			return Config{}, err
		}
	}
	if v := strings.TrimSpace(get(params.LBMode)); v != "" {
		if !slices.Contains(Modes, v) {
			return Config{}, role.Invalid(params.LBMode, "", "%q is not one of %s", v, strings.Join(Modes, ", "))
		}
		cfg.Mode = v
	}
	if cfg.Nodes, err = parseNodes(get(params.LBNode), nodes); err != nil {
		return Config{}, err
	}
	if v := strings.TrimSpace(get(params.LBCheckInter)); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 3600000 {
			return Config{}, role.Invalid(params.LBCheckInter, "", "%q is not a whole number of milliseconds from 100 to 3600000", v)
		}
		cfg.CheckInter = n
	}
	for _, c := range []struct {
		param string
		dst   *int
	}{{params.LBCheckFall, &cfg.Fall}, {params.LBCheckRise, &cfg.Rise}} {
		if v := strings.TrimSpace(get(c.param)); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 100 {
				return Config{}, role.Invalid(c.param, "", "%q is not a number of checks from 1 to 100", v)
			}
			*c.dst = n
		}
	}
	if cfg.Port == cfg.StatsPort {
		cfg.StatsPort-- // the runtime API moves out of the front end's way
	}
	return cfg, nil
}

func parsePort(param, v string, required bool) (int, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		if required {
			return 0, role.Invalid(param, "", "is not set (a TCP port from 1 to 65535)")
		}
		return 0, nil
	}
	return role.ParsePort(param, v)
}

// parseNodes accepts "web", "web,api", or a JSON list ["web","api"].
func parseNodes(v string, known []string) ([]string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return nil, role.Invalid(params.LBNode, "", "is not set (the node whose instances are the backends)")
	}
	var names []string
	if strings.HasPrefix(v, "[") {
		if err := json.Unmarshal([]byte(v), &names); err != nil {
			return nil, role.Invalid(params.LBNode, "", "not a JSON list of node names: %v", err)
		}
	} else {
		names = strings.Split(v, ",")
	}
	var out []string
	for _, n := range names {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		if !slices.Contains(known, n) {
			return nil, role.Invalid(params.LBNode, "", "node %q is not in the run (nodes: %s)", n, strings.Join(known, ", "))
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, role.Invalid(params.LBNode, "", "names no node")
	}
	return out, nil
}

// Backend is one server of the backend: an instance and the address it is reached at.
type Backend struct {
	Instance string     // e.g. "web.2": becomes the server name
	Addr     netip.Addr // hostname or vpn.address
}

// Render returns the HAProxy configuration for cfg and the backends, deterministically (backends
// sorted by instance name). It is a pure function: same input, same bytes.
func Render(cfg Config, backends []Backend) string {
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return compareInstance(a.Instance, b.Instance) })
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Rendered by cnsmo-role; do not edit: it is replaced on every change of the backends.")
	w("global")
	w("    master-worker")
	// The role's runtime API (show stat, show servers state) on loopback at operator level (no
	// admin command over TCP); the unix socket hands the listening sockets
	// to the next worker on a reload (the master adds -x with it): no connection is refused.
	w("    stats socket ipv4@127.0.0.1:%d level operator", cfg.StatsPort)
	w("    stats socket %s mode 600 level admin expose-fd listeners", orDefault(cfg.SocketPath, socketFile))
	w("    maxconn 4096")
	// An old worker left after a reload finishes its connections within this bound (the role
	// waits for it to be gone before it calls the load balancer ready again).
	w("    hard-stop-after 30s")
	w("    server-state-file %s", orDefault(cfg.StatePath, stateFile))
	w("")
	w("defaults")
	w("    mode tcp")
	// A reloaded worker starts from the servers' last known states (a backend known DOWN stays
	// DOWN until a check says otherwise, instead of getting requests as a fresh server would).
	w("    load-server-state-from-file global")
	w("    option tcplog")
	w("    option redispatch")
	w("    retries 3")
	w("    timeout connect 5s")
	w("    timeout client 1m")
	w("    timeout server 1m")
	w("    timeout check 2s")
	w("")
	w("frontend cnsmo_lb")
	w("    bind :%d", cfg.Port)
	w("    default_backend cnsmo_backends")
	w("")
	w("backend cnsmo_backends")
	w("    balance %s", cfg.Mode)
	w("    default-server check inter %dms fall %d rise %d", cfg.CheckInter, cfg.Fall, cfg.Rise)
	for _, be := range bs {
		w("    server %s %s check", serverName(be.Instance), netip.AddrPortFrom(be.Addr, uint16(cfg.BackendPort)))
	}
	return b.String()
}

func orDefault(p, file string) string {
	if p == "" {
		return DefaultDir + "/" + file
	}
	return p
}

// serverName keeps HAProxy-safe characters of an instance name.
func serverName(instance string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '-', r == '_':
			return r
		}
		return '_'
	}, instance)
}

// compareInstance orders "node.2" before "node.10".
func compareInstance(a, b string) int {
	an, ai := splitInstance(a)
	bn, bi := splitInstance(b)
	if c := strings.Compare(an, bn); c != 0 {
		return c
	}
	return ai - bi
}

func splitInstance(s string) (string, int) {
	i := strings.LastIndexByte(s, '.')
	if i < 0 {
		return s, 0
	}
	n, err := strconv.Atoi(s[i+1:])
	if err != nil {
		return s, 0
	}
	return s[:i], n
}
