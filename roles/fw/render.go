package fw

import (
	"fmt"
	"net/netip"
	"strings"
)

// Chains owned by cnsmo. ChainDocker holds the in rules for the ports Docker publishes: their
// traffic is forwarded to containers (FORWARD, not INPUT), so it is jumped to from Docker's
// DOCKER-USER chain where that exists.
const (
	ChainIn     = "CNSMO-INPUT"
	ChainOut    = "CNSMO-OUTPUT"
	ChainDocker = "CNSMO-DOCKER"
	DockerUser  = "DOCKER-USER"
)

var ownChains = []string{ChainIn, ChainOut, ChainDocker}

// Jumps counts cnsmo's jumps in the chains it does not own, whether each chain's first rule is
// cnsmo's jump (a rule inserted before it would go around cnsmo's rules), and whether DOCKER-USER
// exists.
type Jumps struct {
	In, Out, Docker                int
	InFirst, OutFirst, DockerFirst bool
	DockerUser                     bool
}

// Options shape the rendered rules.
type Options struct {
	// NoAntiLockout drops the management-plane rules (net.i2cat.cnsmo.service.fw.lockout_ok=true).
	NoAntiLockout bool
	// VPNPort is the OpenVPN UDP port kept open outwards when the VPN is on (0 = none): the
	// firewall runs on the VPN's clients, whose server answers them; VPNDevice is the
	// overlay device whose readiness pings (ICMP echo requests out of it) stay open.
	VPNPort   int
	VPNDevice string
	// VPNMesh opens VPNPort inwards too: with the WireGuard engine every member is a peer of
	// every other one, each listening on that port.
	VPNMesh bool
	// Resolvers are the name servers kept reachable (UDP and TCP port 53), so that the Nuvla
	// endpoint's host name still resolves.
	Resolvers []netip.Addr
	// Endpoints are the Nuvla endpoint's addresses, kept reachable on EndpointPort (TCP).
	Endpoints    []netip.Addr
	EndpointPort int
}

// ndpTypes are ICMPv6 router solicitation/advertisement, neighbour solicitation/advertisement
// and redirect: without them IPv6 stops working, so they always pass.
var ndpTypes = []int{133, 134, 135, 136, 137}

func hostMask(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// Render returns the chain rules of one family (v6 false: iptables, true: ip6tables) exactly as
// `iptables -S <chain>` prints them, so the readback compares line by line. Pure.
func Render(rules []Rule, opts Options, v6 bool) []string {
	in := []string{"-N " + ChainIn}
	out := []string{"-N " + ChainOut}
	if v6 {
		for _, t := range ndpTypes {
			in = append(in, fmt.Sprintf("-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j ACCEPT", ChainIn, t))
			out = append(out, fmt.Sprintf("-A %s -p ipv6-icmp -m icmp6 --icmpv6-type %d -j ACCEPT", ChainOut, t))
		}
	}
	if !opts.NoAntiLockout {
		in = append(in, "-A "+ChainIn+" -i lo -j ACCEPT",
			"-A "+ChainIn+" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			"-A "+ChainIn+" -p tcp -m tcp --dport 22 -j ACCEPT")
		out = append(out, "-A "+ChainOut+" -o lo -j ACCEPT",
			"-A "+ChainOut+" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
		if opts.VPNPort > 0 { // the firewall runs on VPN clients: they only send to the server's port
			out = append(out, fmt.Sprintf("-A %s -p udp -m udp --dport %d -j ACCEPT", ChainOut, opts.VPNPort))
			if opts.VPNMesh {
				in = append(in, fmt.Sprintf("-A %s -p udp -m udp --dport %d -j ACCEPT", ChainIn, opts.VPNPort))
			}
		}
		if opts.VPNDevice != "" {
			if v6 {
				out = append(out, fmt.Sprintf("-A %s -o %s -p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT", ChainOut, opts.VPNDevice))
			} else {
				out = append(out, fmt.Sprintf("-A %s -o %s -p icmp -m icmp --icmp-type 8 -j ACCEPT", ChainOut, opts.VPNDevice))
			}
		}
		for _, a := range opts.Resolvers {
			if a.Is6() == v6 {
				for _, proto := range []string{"udp", "tcp"} {
					out = append(out, fmt.Sprintf("-A %s -d %s -p %s -m %s --dport 53 -j ACCEPT", ChainOut, hostMask(a), proto, proto))
				}
			}
		}
		for _, a := range opts.Endpoints {
			if a.Is6() == v6 && opts.EndpointPort > 0 {
				out = append(out, fmt.Sprintf("-A %s -d %s -p tcp -m tcp --dport %d -j ACCEPT", ChainOut, hostMask(a), opts.EndpointPort))
			}
		}
	}
	deny := false
	for _, r := range rules {
		if r.DenyAll { // the default after every rule, wherever it stands (as ufw's default policy)
			deny = true
			continue
		}
		has4, has6 := r.Family()
		if (v6 && !has6) || (!v6 && !has4) {
			continue
		}
		chain := ChainIn
		if r.Dir == "out" {
			chain = ChainOut
		}
		var b strings.Builder
		b.WriteString("-A " + chain)
		if r.Range.IsValid() && r.Range.Bits() > 0 {
			if r.MatchSrc {
				b.WriteString(" -s " + r.Range.String())
			} else {
				b.WriteString(" -d " + r.Range.String())
			}
		}
		switch r.Proto {
		case "tcp", "udp":
			b.WriteString(" -p " + r.Proto)
			if r.SrcPorts != "" || r.DstPorts != "" {
				b.WriteString(" -m " + r.Proto)
			}
			if r.SrcPorts != "" {
				b.WriteString(" --sport " + r.SrcPorts)
			}
			if r.DstPorts != "" {
				b.WriteString(" --dport " + r.DstPorts)
			}
		case "icmp":
			if v6 {
				b.WriteString(" -p ipv6-icmp")
			} else {
				b.WriteString(" -p icmp")
			}
		}
		b.WriteString(" -j " + r.Action)
		if r.Action == "REJECT" {
			if v6 {
				b.WriteString(" --reject-with icmp6-port-unreachable")
			} else {
				b.WriteString(" --reject-with icmp-port-unreachable")
			}
		}
		if chain == ChainIn {
			in = append(in, b.String())
		} else {
			out = append(out, b.String())
		}
	}
	if deny {
		in = append(in, "-A "+ChainIn+" -j DROP")
		out = append(out, "-A "+ChainOut+" -j DROP")
	}
	return append(in, out...)
}

// RestoreInput is the iptables-restore --noflush input that replaces cnsmo's chains with rules
// in one transaction: declaring the chains flushes them (or creates them), and exactly one jump
// to each remains (j says how many exist: a missing one is inserted first in its chain, extra
// ones are deleted). CNSMO-DOCKER and its jump exist only where DOCKER-USER does.
func RestoreInput(rules []string, j Jumps) string {
	var b strings.Builder
	b.WriteString("*filter\n:" + ChainIn + " - [0:0]\n:" + ChainOut + " - [0:0]\n")
	if j.DockerUser {
		b.WriteString(":" + ChainDocker + " - [0:0]\n")
	}
	for _, r := range rules {
		if strings.HasPrefix(r, "-N ") {
			continue
		}
		b.WriteString(r + "\n")
	}
	type jump struct {
		n            int
		first        bool
		parent, name string
	}
	jumps := []jump{{j.In, j.InFirst, "INPUT", ChainIn}, {j.Out, j.OutFirst, "OUTPUT", ChainOut}}
	if j.DockerUser {
		jumps = append(jumps, jump{j.Docker, j.DockerFirst, DockerUser, ChainDocker})
	}
	for _, j := range jumps {
		if j.n == 1 && j.first {
			continue
		}
		for i := 0; i < j.n; i++ { // misplaced or repeated: every one goes, one comes back first
			b.WriteString("-D " + j.parent + " -j " + j.name + "\n")
		}
		b.WriteString("-I " + j.parent + " 1 -j " + j.name + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// TeardownInput removes the jumps that exist and then cnsmo's chains that exist.
func TeardownInput(j Jumps, chainsExist, dockerExists bool) string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, x := range []struct {
		n            int
		parent, name string
	}{{j.In, "INPUT", ChainIn}, {j.Out, "OUTPUT", ChainOut}, {j.Docker, DockerUser, ChainDocker}} {
		for i := 0; i < x.n; i++ {
			b.WriteString("-D " + x.parent + " -j " + x.name + "\n")
		}
	}
	if chainsExist {
		b.WriteString("-F " + ChainIn + "\n-F " + ChainOut + "\n-X " + ChainIn + "\n-X " + ChainOut + "\n")
	}
	if dockerExists {
		b.WriteString("-F " + ChainDocker + "\n-X " + ChainDocker + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// RenderDocker returns the CNSMO-DOCKER rules of one family: every in rule for the connections
// Docker forwards to a published port (conntrack state DNAT, original direction), matched on the
// port the user wrote (the one before Docker's DNAT: --ctorigdstport). An accept returns to
// Docker's own chains (never accepting past its isolation), a drop or reject drops or rejects;
// denyall drops the rest of those connections. ICMP and out rules do not apply to published
// ports. Pure, in `iptables -S` form.
func RenderDocker(rules []Rule, opts Options, v6 bool) []string {
	out := []string{"-N " + ChainDocker}
	add := func(l string) { out = append(out, "-A "+ChainDocker+" "+l) }
	if !opts.NoAntiLockout {
		add("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN")
	}
	deny := false
	for _, r := range rules {
		if r.DenyAll {
			deny = true
			continue
		}
		has4, has6 := r.Family()
		if r.Dir != "in" || r.Proto == "icmp" || (v6 && !has6) || (!v6 && !has4) {
			continue
		}
		var b strings.Builder
		if r.Range.IsValid() && r.Range.Bits() > 0 && r.MatchSrc {
			b.WriteString("-s " + r.Range.String() + " ")
		}
		if r.Proto != "" {
			b.WriteString("-p " + r.Proto + " ")
			if r.SrcPorts != "" {
				b.WriteString("-m " + r.Proto + " --sport " + r.SrcPorts + " ")
			}
		}
		b.WriteString("-m conntrack --ctstate DNAT")
		if r.Range.IsValid() && r.Range.Bits() > 0 && !r.MatchSrc {
			if r.Range.IsSingleIP() { // as iptables -S prints it
				b.WriteString(" --ctorigdst " + r.Range.Addr().String())
			} else {
				b.WriteString(" --ctorigdst " + r.Range.String())
			}
		}
		if r.Proto != "" && r.DstPorts != "" {
			b.WriteString(" --ctorigdstport " + r.DstPorts)
		}
		b.WriteString(" --ctdir ORIGINAL")
		switch r.Action {
		case "ACCEPT":
			b.WriteString(" -j RETURN")
		case "REJECT":
			if v6 {
				b.WriteString(" -j REJECT --reject-with icmp6-port-unreachable")
			} else {
				b.WriteString(" -j REJECT --reject-with icmp-port-unreachable")
			}
		default:
			b.WriteString(" -j " + r.Action)
		}
		add(b.String())
	}
	if deny {
		add("-m conntrack --ctstate DNAT --ctdir ORIGINAL -j DROP")
	}
	return out
}
