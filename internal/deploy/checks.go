package deploy

import (
	"context"
	"fmt"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/roles/lb"
	"net"
	"sort"
	"strconv"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/testbed"
)

// Ping is one cell of a ping matrix.
type Ping struct {
	From, To, Addr string
	OK             bool
}

// PingMatrix pings every instance's overlay address (vpn.address, or vpn.address6 when v6) from
// every other instance's VM, one ICMP echo each with a 2 s deadline.
func (d *Deployment) PingMatrix(ctx context.Context, instances []string, v6 bool) []Ping {
	key := params.VPNAddress
	if v6 {
		key = params.VPNAddress6
	}
	var out []Ping
	for _, from := range instances {
		for _, to := range instances {
			if from == to {
				continue
			}
			addr := d.Param(to + ":" + key)
			p := Ping{From: from, To: to, Addr: addr}
			if addr != "" {
				_, _, err := d.VMOf(from).Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", addr)
				p.OK = err == nil
			}
			out = append(out, p)
		}
	}
	return out
}

// ServeName starts, on vm, a tiny HTTP server on each port answering its own name (socat, one
// process per connection). The processes end with the VM.
func ServeName(ctx context.Context, vm *testbed.VM, name string, ports ...int) error {
	resp := "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(name)+1) + "\r\n\r\n" + name + "\n"
	if err := vm.WriteFile(ctx, "/srv/cnsmo-name.http", []byte(resp), 0o644); err != nil {
		return err
	}
	for _, p := range ports {
		// Read the request (up to its blank line) before answering: a server that closes with the
		// request unread sends a reset that can beat its answer ("Empty reply from server").
		if _, err := vm.Start(ctx, nil, "socat", "TCP6-LISTEN:"+strconv.Itoa(p)+",fork,reuseaddr,ipv6only=0", // both families
			`SYSTEM:sed -n '/^\r$/q'; cat /srv/cnsmo-name.http`); err != nil {
			return fmt.Errorf("serve %s:%d: %w", vm.Name, p, err)
		}
	}
	for _, p := range ports {
		if err := waitListening(ctx, vm, p); err != nil {
			return err
		}
	}
	return nil
}

func waitListening(ctx context.Context, vm *testbed.VM, port int) error {
	for i := 0; i < 100; i++ {
		out, _, _ := vm.Exec(ctx, "sh", "-c", "ss -Htln 'sport = :"+strconv.Itoa(port)+"'")
		if strings.TrimSpace(out) != "" {
			return nil
		}
		if _, _, err := vm.Exec(ctx, "sleep", "0.05"); err != nil {
			return err
		}
	}
	return fmt.Errorf("%s: nothing listens on %d", vm.Name, port)
}

// Get fetches http://addr:port/ from vm with a 2 s limit: the body, or an error when the
// connection was refused, dropped or timed out.
func Get(ctx context.Context, vm *testbed.VM, addr string, port int) (string, error) {
	out, errOut, err := vm.Exec(ctx, "curl", "-sS", "--max-time", "2", "http://"+net.JoinHostPort(addr, strconv.Itoa(port))+"/")
	if err != nil {
		return "", fmt.Errorf("%s -> %s:%d: %s", vm.Name, addr, port, strings.TrimSpace(errOut))
	}
	return strings.TrimSpace(out), nil
}

// Distribution sends n requests (bounded, 5 s each) from vm to addr:port and counts the answers
// by body; failures are counted under "".
func Distribution(ctx context.Context, vm *testbed.VM, addr string, port, n int) (map[string]int, error) {
	url := "http://" + net.JoinHostPort(addr, strconv.Itoa(port)) + "/"
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do curl -s --max-time 5 %s || echo; i=$((i+1)); done`, n, url)
	out, errOut, err := vm.Exec(ctx, "sh", "-c", script)
	if err != nil {
		return nil, fmt.Errorf("load from %s: %w: %s", vm.Name, err, errOut)
	}
	counts := map[string]int{}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	for _, l := range lines {
		counts[strings.TrimSpace(l)]++
	}
	return counts, nil
}

// KeyLeaks scans every parameter of the run (removed instances' included) for private key
// material (PEM keys, and the WireGuard and signing keys read from every VM's state dir) and
// returns the keys that hold some, with the number of parameters scanned.
func (d *Deployment) KeyLeaks(ctx context.Context) (leaks []string, scanned int, err error) {
	secrets := d.Secrets(ctx)
	values := map[string]string{}
	if d.Nuvla2() {
		values = d.Mock.Nuvla2Params(d.hub)
	} else {
		all, err := d.Mock.Params(d.Run.UUID)
		if err != nil {
			return nil, 0, err
		}
		for k, p := range all {
			values[k] = p.Value
		}
	}
	for k, v := range values {
		if strings.Contains(v, "PRIVATE KEY") || strings.Contains(v, "BEGIN OpenVPN Static key") {
			leaks = append(leaks, k)
			continue
		}
		for _, sec := range secrets {
			if strings.Contains(v, sec) {
				leaks = append(leaks, k)
				break
			}
		}
	}
	sort.Strings(leaks)
	return leaks, len(values), nil
}

// Secrets reads the WireGuard and signing keys from every VM's state dir (the member's container
// on Nuvla 2 with compose).
func (d *Deployment) Secrets(ctx context.Context) []string {
	d.mu.Lock()
	secrets := append([]string(nil), d.extraSecrets...)
	d.mu.Unlock()
	for _, in := range d.Instances() {
		vm := d.VMOf(in)
		if vm == nil {
			continue
		}
		for _, f := range []string{"vpn/wg/private.key", "vpn/wg/signer.key"} {
			var out string
			var err error
			if d.Nuvla2() && d.cfg.Compose { // the state is in the member's container (its volume)
				out, err = d.compose(ctx, in, "exec", "-T", "cnsmo", "cat", StateDir+"/"+f)
			} else {
				out, _, err = vm.Exec(ctx, "cat", StateDir+"/"+f)
			}
			// A key file is one base64 line; docker-compose may print warnings before it.
			lines := strings.Fields(strings.TrimSpace(out))
			if err == nil && len(lines) > 0 {
				secrets = append(secrets, lines[len(lines)-1])
			}
		}
	}
	return secrets
}

// HAProxyConfig returns the configuration the load balancer runs with: in its container (Docker
// driver) or under the server's state dir (exec driver).
func (d *Deployment) HAProxyConfig(ctx context.Context) (string, error) {
	if d.cfg.Driver == "exec" {
		vm := d.VMOf(d.ServerNode() + ".1")
		if vm == nil {
			return "", fmt.Errorf("deploy: the server is not placed")
		}
		out, _, err := vm.Exec(ctx, "cat", StateDir+"/lb/fn/haproxy.cfg")
		return out, err
	}
	out, err := hoststate.Host(ctx, "docker", "ps", "-a", "--filter", "label=cnsmo.run="+d.Run.UUID, "--format", "{{.Names}}")
	if err != nil {
		return "", err
	}
	for _, n := range strings.Fields(out) {
		if strings.Contains(n, "lb-haproxy") && !strings.Contains(n, "check") {
			return hoststate.Host(ctx, "docker", "exec", n, "cat", lb.ConfigPath)
		}
	}
	return "", fmt.Errorf("deploy: no HAProxy container in the run %s", d.Run.UUID)
}
