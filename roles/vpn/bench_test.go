package vpn

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/testutil"
	"github.com/cnsmo/cnsmo/params"
)

// iperf runs iperf3 from host from to addr (a server in host to) for secs seconds and returns
// the received throughput in Mbit/s.
func iperf(t *testing.T, from, to *host, addr string, secs int) float64 {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", to.ns, "iperf3", "-s", "-1", "-p", "5201")
	require.NoError(t, srv.Start())
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var mbps float64
	var err error
	for i := 0; i < 50; i++ { // bounded: until the iperf3 server listens and a run reports
		var out []byte
		if out, err = exec.Command("ip", "netns", "exec", from.ns, "iperf3", "-c", addr, "-p", "5201", "-t", fmt.Sprint(secs), "-J").Output(); err == nil {
			if mbps, err = benchreport.IperfMbps(out); err == nil {
				break
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	require.NoError(t, err, "iperf3")
	return mbps
}

// TestBenchVPN measures client-to-client TCP throughput through the overlay (crossing the
// server's OpenVPN twice) against the same pair over the underlay, and the time a new client
// takes from its role's start to its vpn.address being published.
func TestBenchVPN(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("benchmark: set CNSMO_BENCH=1")
	}
	testutil.RequireBinary(t, "iperf3")
	dev := os.Getenv("CNSMO_BENCH_VPN_DEVICE") // tap (default, shipped) or tun
	if dev == "" {
		dev = "tap"
	}
	l := newLab(t, 3, dev)
	l.start("cnsmo.1", "s")
	w1 := l.start("web.1", "1")
	w2 := l.start("web.2", "2")
	l.waitReady(90*time.Second, "web.1", "web.2")
	require.NoError(t, l.ping(w1.host, l.param("web.2:"+params.VPNAddress)))

	under := iperf(t, w1.host, w2.host, w2.host.addr, 5)
	over := iperf(t, w1.host, w2.host, l.param("web.2:"+params.VPNAddress), 5)

	names, err := l.mock.ScaleUp(l.uuid, "web", 1)
	require.NoError(t, err)
	start := time.Now()
	l.start(names[0], "3")
	require.Eventually(t, func() bool { return l.param(names[0]+":"+params.VPNAddress) != "" }, 90*time.Second, 100*time.Millisecond, names[0]+" vpn.address")
	join := time.Since(start)

	benchreport.Report(t,
		benchreport.Figure{Name: "vpn_throughput_mbps", Value: over, Baseline: "vpn_underlay_mbps", BaselineValue: under,
			Note: "iperf3 TCP 5 s client to client through the overlay (tap, AES-256-GCM, OpenVPN 2.6 user space, via the server), vs the same pair over the veth underlay"},
		benchreport.Figure{Name: "vpn_join_ms", Value: float64(join.Milliseconds()),
			Note: "a new client's role started (server running) to its vpn.address published: CSR, signing, OpenVPN connect, DAD, pings through the tunnel; exec driver in namespaces, mocknuvla in process"},
	)
}
