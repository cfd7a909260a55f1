package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/recipes"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
	"github.com/cnsmo/cnsmo/testbed"
)

// Test and demo addresses: the overlay lives inside the VMs' namespaces only, in the
// benchmarking range (IPv4) and the documentation range (IPv6), never a private range.
const (
	TestSubnet  = "198.19.200.0/24"
	TestSubnet6 = "2001:db8:c5e0::/64"
	WebPort     = 8080 // allowed by the demo's rules, balanced by the LB
	BlockedPort = 8081 // dropped by the demo's rules
)

// FullClouds is the testbed of the full scenario: the CNSMO server in one cloud, each of the
// three application VMs in a cloud of its own, and a spare VM that joins on scale-out.
var FullClouds = []testbed.CloudSpec{
	{Name: "cloud-a", VMs: []string{"cnsmo1"}},
	{Name: "cloud-b", VMs: []string{"web1", "web4"}},
	{Name: "cloud-c", VMs: []string{"web2"}},
	{Name: "cloud-d", VMs: []string{"web3"}},
	{Name: "home", VMs: []string{PersonVM}}, // the person's computer: in no run, behind its own NAT
}

// FullPlacement places the run's instances on FullClouds' VMs.
var FullPlacement = map[string]string{"cnsmo.1": "cnsmo1", "web.1": "web1", "web.2": "web2", "web.3": "web3"}

// AppDefinition loads recipes/application.json with the test subnets set.
func AppDefinition() (*mocknuvla.Deployment, error) {
	def, err := recipes.Application()
	if err != nil {
		return nil, err
	}
	for _, kv := range [][3]string{
		{"cnsmo", params.ServicesEnable, Services},
		{"cnsmo", params.VPNSubnet, TestSubnet},
		{"cnsmo", params.VPNSubnet6, TestSubnet6},
		{"cnsmo", params.LBMode, "roundrobin"},
		{"cnsmo", params.LBPort, fmt.Sprint(WebPort)},
		{"cnsmo", params.LBCheckInter, "500"},
	} {
		if err := def.SetValue(kv[0], kv[1], kv[2]); err != nil {
			return nil, err
		}
	}
	return def, nil
}

// Services are the services the scenarios enable.
const Services = `["vpn","fw","lb"]`

// VPN reports whether the scenarios enable the VPN.
func VPN() bool { return strings.Contains(Services, "vpn") }

// FWCheck is one firewall expectation and what was seen.
type FWCheck struct {
	From, To string
	Port     int
	Allowed  bool // expected
	Got      bool // reached
	Detail   string
}

// Report is what the full scenario observed.
type Report struct {
	Engine    string        // the VPN engine
	Enabled   time.Duration // from the roles' start to every net.services.enabled
	Addresses map[string][2]string
	Pings     []Ping
	Pings6    []Ping
	FW        []FWCheck
	LB        map[string]int
	LBURL     string
	Joined    string        // instance added by scale-out
	JoinTime  time.Duration // from its start to its net.services.enabled
	JoinPings []Ping
	JoinLB    map[string]int
	Trust     []string     // what a VM of the run tried against another, and what came of it
	Capture   *MeshCapture // WireGuard: what the internet router saw of a ping between two clouds
	Mbps      float64      // client-to-client TCP throughput through the VPN (when measured)
	User      *UserReport  // the person's access (Config.People)
	Names     []string     // what the names checks found missing or wrong
	Scanned   int          // parameters scanned for private keys
	Leaks     []string     // parameters holding private key material (must be none)
	Failures  []string
}

func (r *Report) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// Pass reports whether every check passed.
func (r *Report) Pass() bool { return len(r.Failures) == 0 }

// RunScenario deploys the server and three agents with VPN, FW and LB through the recipes, checks
// the services, scales out one VM and checks it joined, on the platform cfg.API names (cfg.Definition and cfg.Placement are the
// scenario's own). On Nuvla 2 the roles start as the members' containers would, and the scale out
// is a new member of the group.
func RunScenario(ctx context.Context, tb *testbed.Testbed, cfg Config) (*Report, *Deployment, error) {
	r := &Report{Addresses: map[string][2]string{}}
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	def, err := AppDefinition()
	if err != nil {
		return r, nil, err
	}
	if cfg.Engine != "" {
		if err := def.SetValue("cnsmo", params.VPNEngine, cfg.Engine); err != nil {
			return r, nil, err
		}
	}
	r.Engine = cfg.Engine
	if r.Engine == "" {
		r.Engine = "openvpn"
	}
	cfg.Definition, cfg.Placement = def, FullPlacement
	d, err := Start(ctx, tb, cfg)
	if err != nil {
		return r, nil, err
	}
	webs := []string{"web.1", "web.2", "web.3"}
	all := append([]string{"cnsmo.1"}, webs...)
	for _, w := range append(webs, "web.4") {
		vm := tb.VM(strings.ReplaceAll(w, ".", ""))
		if err := ServeName(ctx, vm, w, WebPort, BlockedPort); err != nil {
			return r, d, err
		}
	}
	start := time.Now()
	for _, in := range all {
		if err := d.Launch(ctx, in); err != nil {
			return r, d, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	err = d.WaitEnabled(wctx, all...)
	cancel()
	if err != nil {
		return r, d, err
	}
	r.Enabled = time.Since(start)
	fmt.Fprintf(progress, "net.services.enabled on all %d VMs after %s\n", len(all), r.Enabled.Round(time.Millisecond))

	for _, in := range all {
		r.Addresses[in] = [2]string{d.Param(in + ":" + params.VPNAddress), d.Param(in + ":" + params.VPNAddress6)}
	}
	if VPN() {
		r.namesCheck(ctx, d, all, "start")
		r.Pings = d.PingMatrix(ctx, all, false)
		r.Pings6 = d.PingMatrix(ctx, all, true)
		for _, p := range append(append([]Ping{}, r.Pings...), r.Pings6...) {
			if !p.OK {
				r.fail("vpn: %s cannot ping %s at %q", p.From, p.To, p.Addr)
			}
		}
	}

	if VPN() && cfg.Throughput {
		if r.Mbps, err = d.Throughput(ctx, "web.1", "web.2", 3); err != nil {
			r.fail("vpn: throughput web.1 -> web.2: %v", err)
		}
	}

	server := d.VMOf("cnsmo.1")
	for _, w := range webs {
		for _, port := range []int{WebPort, BlockedPort} {
			c := FWCheck{From: "cnsmo.1", To: w, Port: port, Allowed: port == WebPort}
			body, err := Get(ctx, server, d.VMOf(w).PublicAddr, port)
			c.Got = err == nil && body == w
			if err != nil {
				c.Detail = err.Error()
			}
			if c.Got != c.Allowed {
				r.fail("fw: %s -> %s:%d reached=%v, want %v (%s)", c.From, c.To, port, c.Got, c.Allowed, c.Detail)
			}
			r.FW = append(r.FW, c)
		}
	}

	r.LBURL = d.Param("ss:" + "url.service")
	client := d.VMOf("web.1")
	r.LB, err = Distribution(ctx, client, server.PublicAddr, WebPort, 300)
	if err != nil {
		return r, d, err
	}
	for _, w := range webs {
		if n := r.LB[w]; n < 90 || n > 110 {
			r.fail("lb: %s got %d of 300 requests, want 100±10 (roundrobin)", w, n)
		}
	}

	// Scale out: a fourth VM joins the run (on Nuvla 2: a new member of the group).
	r.Joined = "web.4"
	if !d.Nuvla2() {
		names, err := d.Mock.ScaleUp(d.Run.UUID, "web", 1)
		if err != nil {
			return r, d, fmt.Errorf("scale up: %w", err)
		}
		r.Joined = names[0]
	}
	if err := d.Adopt(ctx, r.Joined, "web4"); err != nil {
		return r, d, err
	}
	jstart := time.Now()
	if err := d.Launch(ctx, r.Joined); err != nil {
		return r, d, err
	}
	for _, in := range all {
		if d.Nuvla2() {
			break // no hooks on Nuvla 2: the roles notice the new member by polling
		}
		if _, err := d.Recipe(ctx, in, "onvmadd.sh", "SLIPSTREAM_SCALING_NODE=web", "SLIPSTREAM_SCALING_VMS="+r.Joined, "SLIPSTREAM_SCALING_ACTION=vm_add"); err != nil {
			return r, d, err
		}
	}
	wctx, cancel = context.WithTimeout(ctx, 3*time.Minute)
	err = d.WaitEnabled(wctx, r.Joined)
	cancel()
	if err != nil {
		return r, d, err
	}
	r.JoinTime = time.Since(jstart)
	fmt.Fprintf(progress, "%s joined after %s\n", r.Joined, r.JoinTime.Round(time.Millisecond))
	r.Addresses[r.Joined] = [2]string{d.Param(r.Joined + ":" + params.VPNAddress), d.Param(r.Joined + ":" + params.VPNAddress6)}
	if r.Engine == vpn.EngineWireGuard {
		// Every member adds the new peer on its next steady poll (the server signs the entry
		// first): wait until each one counts every other member as a peer.
		if err := d.WaitMesh(ctx, append(all, r.Joined), time.Minute); err != nil {
			r.fail("scale-out: %v", err)
		}
	}
	for _, p := range d.PingMatrix(ctx, append(all, r.Joined), false) {
		if !VPN() {
			break
		}
		if p.From == r.Joined || p.To == r.Joined {
			r.JoinPings = append(r.JoinPings, p)
			if !p.OK {
				r.fail("scale-out: %s cannot ping %s at %q", p.From, p.To, p.Addr)
			}
		}
	}
	// The load balancer follows: poll (bounded) until the new backend receives requests.
	for i := 0; i < 20; i++ {
		r.JoinLB, err = Distribution(ctx, client, server.PublicAddr, WebPort, 40)
		if err != nil || r.JoinLB[r.Joined] > 0 {
			break
		}
	}
	if r.JoinLB[r.Joined] == 0 {
		r.fail("scale-out: the load balancer never sent a request to %s", r.Joined)
	}
	if VPN() {
		r.namesCheck(ctx, d, append(all, r.Joined), "scale out")
		if cfg.People {
			d.UserAccess(ctx, r, append(all, r.Joined))
		}
		if r.Engine == vpn.EngineWireGuard {
			r.meshChecks(ctx, d)
		}
		switch {
		case d.Nuvla2(): // the forged writes are SlipStream's keys; the same rules hold on Nuvla 2
		case r.Engine == vpn.EngineWireGuard:
			r.trustWG(ctx, d)
		default:
			r.trust(ctx, d)
		}
		r.checkAddresses()
		if n := len(d.Secrets(ctx)); r.Engine == vpn.EngineWireGuard && n < len(r.Addresses) {
			r.fail("vpn: read %d WireGuard keys from %d members: the scan for them would prove nothing", n, len(r.Addresses))
		}
		r.Leaks, r.Scanned, err = d.KeyLeaks(ctx)
		if err != nil {
			return r, d, err
		}
		for _, k := range r.Leaks {
			r.fail("vpn: parameter %s holds private key material", k)
		}
	}
	return r, d, nil
}

// namesCheck waits (bounded: one steady poll and a little) until every member's hosts file
// names every member with its overlay addresses.
func (r *Report) namesCheck(ctx context.Context, d *Deployment, members []string, when string) {
	var bad []string
	start := time.Now()
	_ = pollUntil(ctx, 30*time.Second, func() bool { bad = d.CheckNames(ctx, members, members); return len(bad) == 0 })
	for _, b := range bad {
		r.fail("names (%s): %s", when, b)
	}
	if len(bad) == 0 {
		r.Names = append(r.Names, fmt.Sprintf("%s: %d members name each other (/etc/hosts), after %s", when, len(members), time.Since(start).Round(100*time.Millisecond)))
	}
}

// trust plays a VM of the run that writes another VM's parameters: web.3 publishes a
// certificate request for web.2 made with a key of its own, and claims the overlay address
// 127.0.0.1 (the load balancer's own host). Neither gets it anything.
func (r *Report) trust(ctx context.Context, d *Deployment) {
	cert, addr, own := d.Param("web.2:"+params.VPNCert), d.Param("web.2:"+params.VPNAddress), d.Param("web.2:"+params.VPNCSR)
	key, err := pki.NewKey()
	var forged []byte
	if err == nil {
		forged, err = pki.NewCSR(key, "web.2")
	}
	if err != nil {
		r.fail("trust: %v", err)
		return
	}
	refused := false
	i := 0
	werr := wait.Backoff{Min: 100 * time.Millisecond, Max: 100 * time.Millisecond, Limit: 30 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		// Written again and again, as an attacker would: web.2 puts its own request back when it
		// next reads the run.
		if i++; i%10 == 1 {
			if err := d.Mock.SetParam(d.Run.UUID, "web.2:"+params.VPNCSR, string(forged)); err != nil {
				return false, err
			}
		}
		refused = strings.Contains(d.Param("cnsmo.1:statecustom"), "refused a certificate request for web.2")
		return refused, nil
	})
	if werr != nil && !errors.Is(werr, wait.ErrTimeout) {
		r.fail("trust: %v", werr)
		return
	}
	_ = d.Mock.SetParam(d.Run.UUID, "web.2:"+params.VPNCSR, own)
	switch {
	case !refused:
		r.fail("trust: the server did not say it refused web.3's request for web.2")
	case d.Param("web.2:"+params.VPNCert) != cert || d.Param("web.2:"+params.VPNAddress) != addr:
		r.fail("trust: web.2's certificate or address changed after a forged request")
	default:
		r.Trust = append(r.Trust, "ok   a request for web.2 with another key is refused: web.2 keeps its certificate and "+addr)
	}
	real3 := d.Param("web.3:" + params.VPNAddress)
	if err := d.Mock.SetParam(d.Run.UUID, "web.3:"+params.VPNAddress, "127.0.0.1"); err != nil {
		r.fail("trust: %v", err)
		return
	}
	gen := d.Param("cnsmo.1:" + params.Generation)
	_ = wait.Backoff{Min: 100 * time.Millisecond, Max: 100 * time.Millisecond, Limit: 30 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		return d.Param("cnsmo.1:"+params.Generation) != gen, nil // the server saw it
	})
	conf, err := d.HAProxyConfig(ctx)
	switch {
	case err != nil:
		r.fail("trust: %v", err)
	case strings.Contains(conf, "server web.3 127.0.0.1"):
		r.fail("trust: the load balancer serves a backend at 127.0.0.1")
	case !strings.Contains(conf, "server web.3 "+real3+":"):
		r.fail("trust: web.3 is not served at its assigned address %s", real3)
	default:
		r.Trust = append(r.Trust, "ok   web.3 claims the address 127.0.0.1: the load balancer serves it at "+real3+", assigned by the VPN server")
	}
	_ = d.Mock.SetParam(d.Run.UUID, "web.3:"+params.VPNAddress, real3)
}

// checkAddresses checks every instance has overlay addresses in the test prefixes, none shared.
func (r *Report) checkAddresses() {
	v4, v6 := netip.MustParsePrefix(TestSubnet), netip.MustParsePrefix(TestSubnet6)
	seen := map[string]string{}
	for in, a := range r.Addresses {
		for i, p := range []netip.Prefix{v4, v6} {
			addr, err := netip.ParseAddr(a[i])
			if err != nil || !p.Contains(addr) {
				r.fail("vpn: %s has address %q, not in %s", in, a[i], p)
				continue
			}
			if other, dup := seen[a[i]]; dup {
				r.fail("vpn: %s and %s share the address %s", in, other, a[i])
			}
			seen[a[i]] = in
		}
	}
}

// Print writes the human report of the demo.
func (r *Report) Print(w io.Writer) {
	if !VPN() {
		fmt.Fprintf(w, "\n== VPN: not in this version (services %s)\n", Services)
	} else {
		fmt.Fprintf(w, "\n== VPN addresses (engine %s)\n", r.Engine)
	}
	var ins []string
	for k := range r.Addresses {
		ins = append(ins, k)
	}
	sort.Strings(ins)
	for _, in := range ins {
		if VPN() {
			fmt.Fprintf(w, "  %-8s %-16s %s\n", in, r.Addresses[in][0], r.Addresses[in][1])
		}
	}
	// The matrices are of the first deployment; the scale-out's pings are summed up below.
	first := slices.DeleteFunc(slices.Clone(ins), func(s string) bool { return s == r.Joined })
	printMatrix(w, "== ping matrix (IPv4 overlay)", first, r.Pings)
	printMatrix(w, "== ping matrix (IPv6 overlay)", first, r.Pings6)
	if VPN() && r.Scanned > 0 {
		fmt.Fprintf(w, "\n== private keys in the run's parameters: %d found in %d parameters scanned\n", len(r.Leaks), r.Scanned)
	}
	fmt.Fprintf(w, "\n== firewall (rule: drop tcp %d from anywhere)\n", BlockedPort)
	for _, c := range r.FW {
		verdict := "ok  "
		if c.Got != c.Allowed {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "  %s %s -> %s:%d  expected %-7s got %s\n", verdict, c.From, c.To, c.Port, word(c.Allowed), word(c.Got))
	}
	fmt.Fprintf(w, "\n== load balancer %s: 300 requests, roundrobin\n", r.LBURL)
	printCounts(w, r.LB)
	if r.Joined != "" {
		fmt.Fprintf(w, "\n== scale out: %s joined in %s\n", r.Joined, r.JoinTime.Round(time.Millisecond))
		ok := 0
		for _, p := range r.JoinPings {
			if p.OK {
				ok++
			}
		}
		if VPN() {
			fmt.Fprintf(w, "  pings to/from %s: %d/%d ok\n", r.Joined, ok, len(r.JoinPings))
		}
		fmt.Fprintf(w, "  load balancer, 40 requests:\n")
		printCounts(w, r.JoinLB)
	}
	if c := r.Capture; c != nil {
		fmt.Fprintf(w, "\n== mesh: %s pings %s (%d pings), as seen at the internet router\n", c.From, c.To, c.Pings)
		fmt.Fprintf(w, "  %d WireGuard packets directly between their public addresses, %d via the server's, %d elsewhere\n", c.Direct, c.ViaServer, c.Other)
	}
	if r.Mbps > 0 {
		fmt.Fprintf(w, "\n== throughput web.1 -> web.2 through the VPN (%s): %.0f Mbit/s\n", r.Engine, r.Mbps)
	}
	if len(r.Names) > 0 {
		fmt.Fprintf(w, "\n== names (<node>-<i>.<vpn.domain> in every member's /etc/hosts, from the server's signed entries)\n")
		for _, l := range r.Names {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	if u := r.User; u != nil {
		fmt.Fprintf(w, "\n== user access: %s joins from %s (outside every cloud, behind NAT) with cnsmo-role join --up\n", u.Name, PersonVM)
		fmt.Fprintf(w, "  granted %s and %s (the people's block) in %s\n", u.V4, u.V6, u.Granted.Round(time.Millisecond))
		var names []string
		for n := range u.Reached {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(w, "  ping %-32s %s\n", n, map[bool]string{true: "ok", false: "FAIL"}[u.Reached[n]])
		}
		fmt.Fprintf(w, "  curl web-1:%d by name: %q; web-3 (rule dropping the people's block): %s\n", WebPort, u.TCP, word(!u.Blocked))
		fmt.Fprintf(w, "  named in %d members' /etc/hosts as %s.users\n", u.Names, u.Name)
		for _, l := range u.Trust {
			fmt.Fprintf(w, "  trust: %s\n", l)
		}
		fmt.Fprintf(w, "  cnsmo-role leave: cut off from every member within two server passes (%s)\n", u.CutOff.Round(time.Millisecond))
	}
	if len(r.Trust) > 0 {
		fmt.Fprintf(w, "\n== trust: a VM of the run writes another VM's parameters\n")
		for _, l := range r.Trust {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintf(w, "\n== time to net.services.enabled (server + 3 agents): %s\n", r.Enabled.Round(time.Millisecond))
}

func word(b bool) string {
	if b {
		return "allowed"
	}
	return "blocked"
}

func printMatrix(w io.Writer, title string, ins []string, pings []Ping) {
	if len(pings) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s (row pings column)\n  %-8s", title, "")
	for _, c := range ins {
		fmt.Fprintf(w, " %-8s", c)
	}
	fmt.Fprintln(w)
	cell := map[[2]string]bool{}
	seen := map[[2]string]bool{}
	for _, p := range pings {
		cell[[2]string{p.From, p.To}] = p.OK
		seen[[2]string{p.From, p.To}] = true
	}
	for _, r := range ins {
		fmt.Fprintf(w, "  %-8s", r)
		for _, c := range ins {
			s := "-"
			if seen[[2]string{r, c}] {
				s = "FAIL"
				if cell[[2]string{r, c}] {
					s = "ok"
				}
			}
			fmt.Fprintf(w, " %-8s", s)
		}
		fmt.Fprintln(w)
	}
}

func printCounts(w io.Writer, m map[string]int) {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name := k
		if name == "" {
			name = "(failed)"
		}
		fmt.Fprintf(w, "  %-10s %4d %s\n", name, m[k], strings.Repeat("#", m[k]/5))
	}
}
