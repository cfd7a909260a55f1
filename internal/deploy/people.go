package deploy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
	"github.com/cnsmo/cnsmo/testbed"
)

// The person of the scenarios: an account of the platform (not a VM of the run) on a computer
// outside every cloud of the run, behind its own cloud's NAT.
const (
	PersonVM   = "laptop"
	PersonName = "alice"
	PersonUser = "scientist"
	personDir  = "/root/.config/cnsmo"
)

// PersonEnv is the person's credentials for cnsmo-role join and leave: on SlipStream the user's
// login and the run; on Nuvla 2 the user's own API key and the CNSMO server's deployment.
func (d *Deployment) PersonEnv() []string {
	if d.Nuvla2() {
		return []string{"NUVLA_ENDPOINT=" + d.URL, "NUVLA_DEPLOYMENT_ID=" + d.hub, "NUVLA_API_KEY=" + d.personKey, "NUVLA_API_SECRET=" + d.personPW}
	}
	return []string{"SLIPSTREAM_SERVICEURL=" + d.URL, "SLIPSTREAM_DIID=" + d.Run.UUID,
		"SLIPSTREAM_USERNAME=" + PersonUser, "SLIPSTREAM_PASSWORD=" + d.personPW}
}

// UserReport is what the user access step saw.
type UserReport struct {
	Name     string
	V4, V6   string
	Granted  time.Duration   // from cnsmo-role join to the tunnel up
	Reached  map[string]bool // member name -> pinged by name through the overlay
	TCP      string          // the body web-1 answered by name
	Blocked  bool            // web-3's rule naming the people's block stopped the person
	Trust    []string        // forged writes and what came of them
	CutOff   time.Duration   // from cnsmo-role leave to no member answering
	Names    int             // members whose hosts file named the person while it was in
	Messages []string        // what join printed
}

// UserAccess plays a person on PersonVM: join with --up, reach every member by name (ping) and
// web-1's service (TCP), be stopped by a rule on web-3 that names the people's block, resist a
// name taken with another key and a leave not signed by the person, then leave: cut off from
// every member.
func (d *Deployment) UserAccess(ctx context.Context, r *Report, members []string) {
	u := &UserReport{Name: PersonName, Reached: map[string]bool{}}
	r.User = u
	laptop := d.TB.VM(PersonVM)
	if laptop == nil {
		r.fail("people: no VM %s in the testbed", PersonVM)
		return
	}
	srv := d.ServerNode() + ".1"
	in, err := vpn.ParseInputs(func(k string) string { return d.Param(srv + ":" + k) })
	if err != nil {
		r.fail("people: the server's inputs: %v", err)
		return
	}
	b4, b6 := vpn.PeopleBlock(in.V4, in.V6)
	// A rule on web.3 that names the people's block (as a developer would write it).
	const blockedFor = "web.3"
	rules := d.Param(blockedFor + ":" + params.FWRules)
	var list []map[string]any
	if err := json.Unmarshal([]byte(rules), &list); err != nil {
		r.fail("people: %s's rules: %v", blockedFor, err)
		return
	}
	for _, b := range []netip.Prefix{b4, b6} {
		list = append(list, map[string]any{"direction": "in", "protocol": "tcp", "dst_port": strconv.Itoa(WebPort), "ip_range": b.String(), "action": "drop"})
	}
	nb, _ := json.Marshal(list)
	if err := d.SetInput(blockedFor, params.FWRules, string(nb)); err != nil {
		r.fail("people: %v", err)
		return
	}

	start := time.Now()
	join, err := laptop.Start(ctx, d.PersonEnv(), "cnsmo-role", "join", PersonName, "--up", "--dir", personDir, "--out", "/root/"+PersonName+".conf", "--timeout", "3m")
	if err != nil {
		r.fail("people: start cnsmo-role join: %v", err)
		return
	}
	defer func() {
		_ = join.Signal(syscall.SIGTERM)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_ = join.Wait(wctx)
		cancel()
	}()
	if err := pollUntil(ctx, 3*time.Minute, func() bool {
		return strings.Contains(join.Output(), "\nup: ") || strings.HasPrefix(join.Output(), "up: ")
	}); err != nil {
		r.fail("people: cnsmo-role join did not bring the tunnel up: %s", tailOf(join.Output(), 1500))
		return
	}
	u.Granted = time.Since(start)
	for _, l := range strings.Split(strings.TrimSpace(join.Output()), "\n") {
		u.Messages = append(u.Messages, l)
	}
	dns4, _ := vpn.ServerAddrs(in)
	// The printed manual step (no systemd-resolved on the laptop): the overlay's DNS server.
	// (In place: a container's resolv.conf is a bind mount.)
	resolv, _, _ := laptop.Exec(ctx, "cat", "/etc/resolv.conf")
	if _, _, err := laptop.Exec(ctx, "sh", "-c", "echo nameserver "+dns4.String()+" > /etc/resolv.conf"); err != nil {
		r.fail("people: resolv.conf: %v", err)
		return
	}
	defer laptop.Exec(context.WithoutCancel(ctx), "sh", "-c", `printf %s "$0" > /etc/resolv.conf`, resolv) //nolint:errcheck
	name := func(inst string) string { return d.NameOf(inst) + "." + in.Domain }
	for _, m := range members {
		for _, fam := range []string{"-4", "-6"} {
			err := pollUntil(ctx, 30*time.Second, func() bool {
				_, _, err := laptop.Exec(ctx, "ping", fam, "-n", "-c", "1", "-W", "2", name(m))
				return err == nil
			})
			u.Reached[name(m)+" ("+map[string]string{"-4": "IPv4", "-6": "IPv6"}[fam]+")"] = err == nil
			if err != nil {
				r.fail("people: %s cannot ping %s by name through the overlay (ping %s)", PersonName, name(m), fam)
			}
		}
	}
	get := func(fam, inst string) (string, error) {
		out, _, err := laptop.Exec(ctx, "curl", fam, "-sS", "--max-time", "2", "http://"+name(inst)+":"+strconv.Itoa(WebPort)+"/")
		return strings.TrimSpace(out), err
	}
	for _, fam := range []string{"-4", "-6"} {
		if body, err := get(fam, "web.1"); err != nil || body != "web.1" {
			r.fail("people: %s -> %s:%d (curl %s): %q %v", PersonName, name("web.1"), WebPort, fam, body, err)
		} else {
			u.TCP = body
		}
	}
	if err := pollUntil(ctx, 45*time.Second, func() bool {
		_, err4 := get("-4", blockedFor)
		_, err6 := get("-6", blockedFor)
		return err4 != nil && err6 != nil
	}); err != nil {
		r.fail("people: %s's rule dropping the people's block %s, %s did not stop %s", blockedFor, b4, b6, PersonName)
	} else {
		u.Blocked = true
	}
	// The names on every member include the person.
	for _, m := range members {
		if hosts, _, err := d.VMOf(m).Exec(ctx, "cat", "/etc/hosts"); err == nil && strings.Contains(hosts, "\t"+PersonName+".users."+in.Domain+" ") {
			u.Names++
		}
	}
	if u.Names != len(members) {
		r.fail("people: %d of %d members name %s in /etc/hosts", u.Names, len(members), PersonName)
	}
	u.V4, u.V6 = d.personAddrs(ctx, laptop)
	if !b4.Contains(mustParse(u.V4)) || !b6.Contains(mustParse(u.V6)) {
		r.fail("people: %s got %s and %s, not from the people's block %s, %s", PersonName, u.V4, u.V6, b4, b6)
	}
	d.personTrust(ctx, r, u, in, laptop, name("web.1"))
	d.addSecrets(ctx, laptop)

	// Leave: cnsmo-role leave returns once the server's pass that took the leave has signed its
	// record; once the server's generation has moved after that (the end of that pass, at most
	// the next), no member answers the person any more: one look, no retries.
	start = time.Now()
	out, errOut, err := laptop.Exec(ctx, append(append([]string{"env"}, d.PersonEnv()...), "cnsmo-role", "leave", PersonName, "--dir", personDir, "--timeout", "2m")...)
	if err != nil {
		r.fail("people: cnsmo-role leave: %v: %s %s", err, out, errOut)
		return
	}
	g := d.Param(srv + ":" + params.Generation)
	if err := pollUntil(ctx, time.Minute, func() bool { return d.Param(srv+":"+params.Generation) != g }); err != nil {
		r.fail("people: the server's generation did not move after the leave")
	}
	var script strings.Builder
	for _, m := range members { // every member at once, one echo each
		fmt.Fprintf(&script, "(ping -n -c 1 -W 2 %s >/dev/null 2>&1 && echo %s) & ", d.Param(m+":"+params.VPNAddress), m)
	}
	script.WriteString("wait")
	answered, _, _ := laptop.Exec(ctx, "sh", "-c", script.String())
	if a := strings.Fields(answered); len(a) > 0 {
		r.fail("people: within two passes of the leave, %s still reaches %s", PersonName, strings.Join(a, ", "))
	}
	u.CutOff = time.Since(start)
	for _, m := range members {
		if err := pollUntil(ctx, time.Minute, func() bool {
			hosts, _, err := d.VMOf(m).Exec(ctx, "cat", "/etc/hosts")
			return err == nil && !strings.Contains(hosts, PersonName+".users.")
		}); err != nil {
			r.fail("people: %s still names %s after the leave", m, PersonName)
		}
	}
}

// personAddrs reads the addresses of the person's interface.
func (d *Deployment) personAddrs(ctx context.Context, laptop *testbed.VM) (string, string) {
	out, _, _ := laptop.Exec(ctx, "ip", "-o", "addr", "show", "dev", "cnsmo0")
	var v4, v6 string
	for _, f := range strings.Fields(out) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			continue
		}
		if p.Addr().Is4() && v4 == "" {
			v4 = p.Addr().String()
		} else if p.Addr().Is6() && !p.Addr().IsLinkLocalUnicast() && v6 == "" {
			v6 = p.Addr().String()
		}
	}
	return v4, v6
}

// personTrust plays a VM of the run against the person: a join for the person's name with
// another identity and key, and a leave not signed by the person's identity. Neither changes
// anything.
func (d *Deployment) personTrust(ctx context.Context, r *Report, u *UserReport, in vpn.Inputs, laptop *testbed.VM, web1 string) {
	if d.Nuvla2() {
		return // the same rules; the forged writes are played on SlipStream
	}
	srv := d.ServerNode() + ".1"
	mine := -1
	for i := 1; i <= params.UserSlots; i++ {
		if strings.HasPrefix(d.Param(srv+":"+params.UserGrant(i)), "cnsmo-vpn1 ") && strings.Contains(d.Param(srv+":"+params.UserGrant(i)), " inst="+PersonName+".users ") {
			mine = i
		}
	}
	free := 0
	for i := params.UserSlots; i >= 1; i-- {
		if d.Param(srv+":"+params.UserSlot(i)) == "" && d.Param(srv+":"+params.UserGrant(i)) == "" {
			free = i
			break
		}
	}
	if mine < 0 || free == 0 {
		r.fail("people: no grant of %s (slot %d) or no free slot (%d)", PersonName, mine, free)
		return
	}
	_, id, _ := ed25519.GenerateKey(rand.Reader)
	forged := vpn.Request{Name: PersonName, ID: id.Public().(ed25519.PublicKey), T: time.Now().UnixMilli()}
	if in.Engine == vpn.EngineWireGuard {
		k, _ := wgtypes.GeneratePrivateKey()
		forged.Key = k.PublicKey()
	} else {
		csr, err := newCSR(PersonName + vpn.PeopleSuffix)
		if err != nil {
			r.fail("people: %v", err)
			return
		}
		forged.CSR = csr
	}
	grant := d.Param(srv + ":" + params.UserGrant(mine))
	_ = d.Mock.SetParam(d.Run.UUID, srv+":"+params.UserSlot(free), forged.Sign(id))
	err := pollUntil(ctx, time.Minute, func() bool {
		n, _, ok := vpn.ParseRefusal(d.Param(srv + ":" + params.UserGrant(free)))
		return ok && n == PersonName
	})
	_, _, perr := laptop.Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", web1)
	switch {
	case err != nil:
		r.fail("people: a join of %s with another key was not refused: %q", PersonName, d.Param(srv+":"+params.UserGrant(free)))
	case d.Param(srv+":"+params.UserGrant(mine)) != grant || perr != nil:
		r.fail("people: a refused join of %s changed its grant or its access (%v)", PersonName, perr)
	default:
		u.Trust = append(u.Trust, fmt.Sprintf("a VM asks for the name %s with another key: refused (%s), %s keeps its grant and access", PersonName, strings.TrimPrefix(d.Param(srv+":"+params.UserGrant(free)), "refused: "+PersonName+": "), PersonName))
	}
	_ = d.Mock.SetParam(d.Run.UUID, srv+":"+params.UserSlot(free), "")

	// A leave of the person signed by another identity, in the person's own slot.
	req := d.Param(srv + ":" + params.UserSlot(mine))
	leave := vpn.Request{Leave: true, Name: PersonName, ID: id.Public().(ed25519.PublicKey), T: time.Now().UnixMilli() + 60000}
	gen := d.Param(srv + ":" + params.Generation)
	_ = d.Mock.SetParam(d.Run.UUID, srv+":"+params.UserSlot(mine), leave.Sign(id))
	// The server bumps the generation once it has seen the change: then a pass ran after it.
	err = pollUntil(ctx, time.Minute, func() bool { return d.Param(srv+":"+params.Generation) != gen })
	_, _, perr = laptop.Exec(ctx, "ping", "-n", "-c", "1", "-W", "2", web1)
	if err != nil || d.Param(srv+":"+params.UserGrant(mine)) != grant || perr != nil {
		r.fail("people: a leave of %s not signed by its key changed something (grant kept: %v, ping: %v, pass: %v)",
			PersonName, d.Param(srv+":"+params.UserGrant(mine)) == grant, perr, err)
	} else {
		u.Trust = append(u.Trust, fmt.Sprintf("a VM writes a leave of %s signed by another key: ignored, %s keeps its grant and access", PersonName, PersonName))
	}
	if req != "" {
		_ = d.Mock.SetParam(d.Run.UUID, srv+":"+params.UserSlot(mine), req)
	}
}

// addSecrets adds the person's private keys to the keys the parameter scan looks for.
func (d *Deployment) addSecrets(ctx context.Context, laptop *testbed.VM) {
	out, _, err := laptop.Exec(ctx, "sh", "-c", "cat "+personDir+"/*/"+PersonName+"/wg.key "+personDir+"/*/"+PersonName+"/identity.key 2>/dev/null; true")
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.extraSecrets = append(d.extraSecrets, strings.Fields(out)...)
}

// SetInput changes an input of instance as the developer would (the run's parameter; on Nuvla
// 2 the member's published input).
func (d *Deployment) SetInput(instance, key, value string) error {
	if d.Nuvla2() {
		d.Mock.SetNuvla2Param(d.hub, d.MemberName(instance), key, value)
		return nil
	}
	return d.Mock.SetParam(d.Run.UUID, instance+":"+key, value)
}

// pollUntil polls cond every 200 ms for at most limit.
func pollUntil(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tailOf(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func mustParse(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

// CheckNames reads every VM's hosts file: each of instances must be named there with its overlay
// IPv4 and IPv6 address; it returns what is missing or wrong.
func (d *Deployment) CheckNames(ctx context.Context, on, instances []string) []string {
	srv := d.ServerNode() + ".1"
	domain, _ := vpn.ParseDomain(d.Param(srv + ":" + params.VPNDomain))
	var bad []string
	for _, vmi := range on {
		hosts, _, err := d.VMOf(vmi).Exec(ctx, "cat", "/etc/hosts")
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", vmi, err))
			continue
		}
		for _, in := range instances {
			n := d.NameOf(in)
			for _, a := range []string{d.Param(in + ":" + params.VPNAddress), d.Param(in + ":" + params.VPNAddress6)} {
				if !strings.Contains(hosts, a+"\t"+n+"."+domain+" "+n+"\n") {
					bad = append(bad, fmt.Sprintf("%s does not name %s %s", vmi, n, a))
				}
			}
		}
	}
	return bad
}

// newCSR is a certificate request (DER) for cn, with a fresh key.
func newCSR(cn string) ([]byte, error) {
	k, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csrPEM, err := pki.NewCSR(k, cn)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(csrPEM)
	if b == nil {
		return nil, errors.New("people: certificate request: not PEM")
	}
	return b.Bytes, nil
}

// NameOf is an instance's name in the overlay (web.1 -> web-1; on Nuvla 2 after the member's name,
// web-3f2a9c01).
func (d *Deployment) NameOf(instance string) string {
	if d.Nuvla2() {
		return vpn.NameOf(d.MemberName(instance))
	}
	return vpn.NameOf(instance)
}
