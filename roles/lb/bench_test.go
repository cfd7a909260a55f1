package lb

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/driver/dockerdriver"
	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/internal/testutil"
)

var wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)

func wrk(t *testing.T, url string) float64 {
	t.Helper()
	out, err := exec.Command("wrk", "-t", "2", "-c", "32", "-d", "5s", url).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		t.Fatalf("wrk output: %s", out)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestBenchLB: our HAProxy (its container, host network, our rendered configuration) in front
// of one HTTP backend on loopback, against the same backend direct, with the same wrk load (32
// connections, 5 s) in the same run; and the connections that fail while the backend set changes
// 20 times under a bounded load.
func TestBenchLB(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	testutil.RequireDocker(t)
	testutil.RequireImage(t, DefaultImage)
	testutil.RequireBinary(t, "wrk")
	ctx := context.Background()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("web.1\n")) })} //nolint:errcheck
	go srv.Serve(ln)                                                                                                            //nolint:errcheck
	defer srv.Close()
	backendPort := ln.Addr().(*net.TCPAddr).Port

	d, err := dockerdriver.New(driver.Owner{Run: "lb-bench", Instance: "host"}, dockerdriver.WithNetwork("host"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Cleanup(context.Background()) //nolint:errcheck
	cfg := Config{Port: freePort(t), BackendPort: backendPort, Mode: "roundrobin", CheckInter: 500, Fall: 2, Rise: 2, StatsPort: freePort(t)}
	one := []Backend{{Instance: "web.1", Addr: netip.MustParseAddr("127.0.0.1")}}
	r := &Role{Driver: d}
	if err := r.apply(ctx, cfg.StatsPort, Render(cfg, one), driver.Status{}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ { // until HAProxy answers
		if _, _, err := r.backendsUp(ctx, cfg); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("haproxy did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	lbURL := fmt.Sprintf("http://127.0.0.1:%d/", cfg.Port)
	lbRPS := wrk(t, lbURL)
	direct := wrk(t, fmt.Sprintf("http://127.0.0.1:%d/", backendPort))

	// 20 backend-set changes (adding and removing a second server) under a bounded load.
	failed, total := 0, 0
	var firstErr error
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; i < 200000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			total++
			res, err := c.Get(lbURL)
			if err != nil {
				if failed == 0 {
					firstErr = err
				}
				failed++
				continue
			}
			res.Body.Close()
		}
	}()
	two := append(one, Backend{Instance: "web.2", Addr: netip.MustParseAddr("127.0.0.1")})
	for i := 0; i < 20; i++ {
		set := two
		if i%2 == 1 {
			set = one
		}
		if err := r.apply(ctx, cfg.StatsPort, Render(cfg, set), driver.Status{State: driver.StateRunning}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the load runs between changes: this paces the changes, it waits for nothing
	}
	close(stop)
	<-done
	if firstErr != nil {
		t.Logf("first failure: %v", firstErr)
	}
	benchreport.Report(t,
		benchreport.Figure{Name: "lb_rps", Value: lbRPS, Baseline: "direct_rps", BaselineValue: direct,
			Note: "wrk -c32 -d5s through our HAProxy container (host network, rendered config) vs the same Go backend direct, loopback"},
		benchreport.Figure{Name: "lb_failed_connections_during_20_changes", Value: float64(failed),
			Note: fmt.Sprintf("new-connection requests that failed while the backend set changed 20 times (%d requests)", total)},
	)
}
