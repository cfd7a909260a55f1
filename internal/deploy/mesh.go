package deploy

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/vpn"
)

// MeshCapture is what the internet router saw while one application VM pinged another through
// the WireGuard mesh: the pings' packets (large UDP datagrams) between the two VMs' public
// addresses, and any to or from the server's.
type MeshCapture struct {
	From, To  string
	Pings     int // echo requests sent
	Direct    int // large UDP packets between From's and To's public addresses (each seen in and out)
	ViaServer int // large UDP packets to or from the server's public address
	Other     int // large packets between any other addresses
	NotWG     int // of Direct, those not on the WireGuard port at both ends
}

// OK reports whether the pings crossed the internet directly, as WireGuard UDP only.
func (c MeshCapture) OK() bool { return c.Direct >= c.Pings*2 && c.ViaServer == 0 && c.NotWG == 0 }

var udpLine = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)\.(\d+) > (\d+\.\d+\.\d+\.\d+)\.(\d+): UDP`)

// CaptureMesh captures on the internet router (tcpdump on every link) while from pings to's
// overlay address 5 times with 400-byte payloads, larger than any keepalive or handshake.
func (d *Deployment) CaptureMesh(ctx context.Context, from, to string, port int) (MeshCapture, error) {
	c := MeshCapture{From: from, To: to, Pings: 5}
	inet := d.TB.Internet()
	p, err := inet.Start(ctx, nil, "tcpdump", "-i", "any", "-n", "-l", "--immediate-mode", "udp and greater 400")
	if err != nil {
		return c, err
	}
	if err := (wait.Backoff{Min: 50 * time.Millisecond, Max: 50 * time.Millisecond, Limit: 10 * time.Second}).Until(ctx, func(context.Context) (bool, error) {
		return strings.Contains(p.Output(), "listening on"), nil
	}); err != nil {
		_ = p.Signal(syscall.SIGINT)
		return c, fmt.Errorf("tcpdump on the internet router: %w: %s", err, p.Output())
	}
	addr := d.Param(to + ":" + params.VPNAddress)
	_, _, perr := d.VMOf(from).Exec(ctx, "ping", "-n", "-q", "-c", fmt.Sprint(c.Pings), "-i", "0.2", "-W", "2", "-s", "400", addr)
	if err := p.Signal(syscall.SIGINT); err != nil {
		return c, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = p.Wait(wctx)
	if perr != nil {
		return c, fmt.Errorf("%s cannot ping %s at %s: %w", from, to, addr, perr)
	}
	a, b := d.VMOf(from).PublicAddr, d.VMOf(to).PublicAddr
	srv := d.VMOf(d.ServerNode() + ".1").PublicAddr
	for _, l := range strings.Split(p.Output(), "\n") {
		m := udpLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		src, dst := m[1], m[3]
		switch {
		case src == srv || dst == srv:
			c.ViaServer++
		case src == a && dst == b || src == b && dst == a:
			c.Direct++
			if m[2] != fmt.Sprint(port) || m[4] != fmt.Sprint(port) {
				c.NotWG++
			}
		default:
			c.Other++
		}
	}
	return c, nil
}

// trustWG plays a VM of the run (web.3) against web.2 with the WireGuard engine: it publishes a
// key of its own as web.2's, then a membership entry for web.2 with its own key signed by a key
// of its own. The server refuses the key and puts web.2's signed entry back; web.1's pings to
// web.2 still go to web.2 and nowhere else.
func (r *Report) trustWG(ctx context.Context, d *Deployment) {
	entry, key := d.Param("web.2:"+params.VPNMember), d.Param("web.2:"+params.VPNWGKey)
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		r.fail("trust: %v", err)
		return
	}
	forgedKey := k.PublicKey().String()
	i := 0
	refused := false
	werr := wait.Backoff{Min: 100 * time.Millisecond, Max: 100 * time.Millisecond, Limit: 30 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		if i++; i%10 == 1 { // written again and again: web.2 puts its own key back when it next reads the run
			if err := d.Mock.SetParam(d.Run.UUID, "web.2:"+params.VPNWGKey, forgedKey); err != nil {
				return false, err
			}
		}
		refused = strings.Contains(d.Param("cnsmo.1:statecustom"), "refused a new WireGuard key for web.2")
		return refused, nil
	})
	if werr != nil && !errors.Is(werr, wait.ErrTimeout) {
		r.fail("trust: %v", werr)
		return
	}
	_ = d.Mock.SetParam(d.Run.UUID, "web.2:"+params.VPNWGKey, key)
	switch {
	case !refused:
		r.fail("trust: the server did not say it refused web.3's key for web.2")
	case d.Param("web.2:"+params.VPNMember) != entry:
		r.fail("trust: web.2's membership entry changed after a forged key")
	default:
		r.Trust = append(r.Trust, "ok   a WireGuard key for web.2 written by web.3 is refused: web.2's signed entry stays")
	}

	// A forged entry: web.2's addresses with web.3's key and endpoint, signed by web.3's own key.
	e, err := vpn.ParseEntry(entry, r.signer(d))
	if err != nil {
		r.fail("trust: web.2's entry does not verify with the server's published key: %v", err)
		return
	}
	_, sk, _ := ed25519.GenerateKey(rand.Reader)
	three, _ := wgtypes.ParseKey(d.Param("web.3:" + params.VPNWGKey))
	forged := vpn.Entry{Gen: e.Gen + 1000, Instance: "web.2", Key: three, Endpoint: d.VMOf("web.3").PublicAddr + ":51820", V4: e.V4, V6: e.V6}
	if err := d.Mock.SetParam(d.Run.UUID, "web.2:"+params.VPNMember, forged.Sign(sk)); err != nil {
		r.fail("trust: %v", err)
		return
	}
	restored := wait.Backoff{Min: 100 * time.Millisecond, Max: 200 * time.Millisecond, Limit: 30 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		return d.Param("web.2:"+params.VPNMember) == entry, nil
	}) == nil
	cap, err := d.CaptureMesh(ctx, "web.1", "web.2", vpn.DefaultWGPort)
	switch {
	case !restored:
		r.fail("trust: the server did not put web.2's signed entry back after a forged one")
	case err != nil:
		r.fail("trust: after a forged entry for web.2: %v", err)
	case !cap.OK():
		r.fail("trust: after a forged entry for web.2, web.1's pings to web.2: %+v", cap)
	default:
		r.Trust = append(r.Trust, "ok   an entry for web.2 with web.3's key, signed by web.3, is refused: web.1's pings to web.2 still go to web.2 only")
	}
}

// signer is the server's published signing key.
func (r *Report) signer(d *Deployment) ed25519.PublicKey {
	k, _ := vpn.ParseSigner(d.Param(d.ServerNode() + ".1:" + params.VPNSigner))
	return k
}

// meshChecks checks the WireGuard mesh: a capture at the internet router shows web.1's pings to
// web.2 (different clouds) only as WireGuard UDP between their public addresses.
func (r *Report) meshChecks(ctx context.Context, d *Deployment) {
	c, err := d.CaptureMesh(ctx, "web.1", "web.2", vpn.DefaultWGPort)
	r.Capture = &c
	switch {
	case err != nil:
		r.fail("mesh: %v", err)
	case !c.OK():
		r.fail("mesh: web.1's pings to web.2 at the internet router: %d direct (want ≥ %d), %d via the server's address, %d not on the WireGuard port",
			c.Direct, 2*c.Pings, c.ViaServer, c.NotWG)
	}
}

// WaitMesh waits (at most within) until every instance's vpn.wg.handshakes counts all the other
// instances as peers with a recent handshake ("n/n", n = len(instances)-1).
func (d *Deployment) WaitMesh(ctx context.Context, instances []string, within time.Duration) error {
	want := fmt.Sprintf("%d/%d", len(instances)-1, len(instances)-1)
	var last []string
	err := wait.Backoff{Min: 100 * time.Millisecond, Max: 500 * time.Millisecond, Limit: within}.Until(ctx, func(context.Context) (bool, error) {
		last = last[:0]
		for _, in := range instances {
			if v := d.Param(in + ":" + params.VPNWGHandshakes); v != want {
				last = append(last, in+"="+v)
			}
		}
		return len(last) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("the mesh is not complete (want %s handshakes everywhere): %s: %w", want, strings.Join(last, " "), err)
	}
	return nil
}

// Throughput runs iperf3 (TCP, secs seconds) from one instance's VM to another's overlay
// address and returns the received Mbit/s.
func (d *Deployment) Throughput(ctx context.Context, from, to string, secs int) (float64, error) {
	srv, err := d.VMOf(to).Start(ctx, nil, "iperf3", "-s", "-1", "-p", "5201")
	if err != nil {
		return 0, err
	}
	defer func() {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if srv.Wait(wctx) != nil {
			_ = srv.Signal(syscall.SIGKILL)
		}
	}()
	addr := d.Param(to + ":" + params.VPNAddress)
	var mbps float64
	var last error
	err = wait.Backoff{Min: 100 * time.Millisecond, Max: 300 * time.Millisecond, Limit: 20 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		out, _, e := d.VMOf(from).Exec(ctx, "iperf3", "-c", addr, "-p", "5201", "-t", fmt.Sprint(secs), "-J")
		if e == nil {
			mbps, e = benchreport.IperfMbps([]byte(out)) // the server may not listen yet: again
		}
		last = e
		return e == nil, nil
	})
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %w (%v)", addr, err, last)
	}
	return mbps, nil
}
