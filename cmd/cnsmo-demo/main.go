// Command cnsmo-demo is `make demo`: mocknuvla and a simulated multi-cloud deployment (a CNSMO
// server and three application VMs, each in a cloud of its own, VPN + firewall + load balancer), driven by
// the real recipes and cnsmo-role; it prints what works, scales out one VM, tears everything down,
// checks the host is as before; then the same deployment with the WireGuard engine (a direct
// full mesh), and on Nuvla 2 (a deployment group on mocknuvla's Nuvla 2 API); it measures a short
// client-to-client throughput per engine and ends with PASS or FAIL (exit code 0 or 1).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cnsmo/cnsmo/internal/deploy"
	"github.com/cnsmo/cnsmo/internal/hoststate"
	"github.com/cnsmo/cnsmo/roles/vpn"
	"github.com/cnsmo/cnsmo/testbed"
)

func main() {
	driver := flag.String("driver", "docker", "runtime of the roles on the VMs: docker or exec")
	withNuvla2 := flag.Bool("nuvla2", true, "also run the deployment on Nuvla 2 (a deployment group)")
	withWG := flag.Bool("wireguard", true, "also run the deployment with the WireGuard engine")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	type scenario struct{ api, engine, title string }
	list := []scenario{{"slipstream", vpn.EngineOpenVPN, ""}}
	if *withWG {
		list = append(list, scenario{"slipstream", vpn.EngineWireGuard,
			"the same deployment with vpn.engine=wireguard: a direct full mesh, every member a peer of every other"})
	}
	if *withNuvla2 {
		list = append(list, scenario{"nuvla2", vpn.EngineOpenVPN,
			"the same deployment on Nuvla 2: a deployment group, members coordinating through deployment parameters"})
	}
	ok := true
	var summary []string
	for i, sc := range list {
		if i > 0 {
			fmt.Printf("\n== %s\n", sc.title)
		}
		one, err := run(ctx, *driver, sc.api, sc.engine)
		verdict := "PASS"
		if err != nil || !one {
			verdict = "FAIL"
		}
		summary = append(summary, fmt.Sprintf("  %-4s %s, VPN engine %s, driver %s", verdict, sc.api, sc.engine, *driver))
		ok = ok && one && err == nil
		if err != nil {
			fmt.Fprintln(os.Stderr, "demo:", err)
			break
		}
	}
	fmt.Println("\n== scenarios")
	for _, l := range summary {
		fmt.Println(l)
	}
	// scripts/demo.sh prints the overall RESULT line; this exit code is its share.
	if !ok {
		fmt.Println("\nsimulated deployment: FAIL")
		os.Exit(1)
	}
	fmt.Println("\nsimulated deployment: PASS")
}

func run(ctx context.Context, driver, api, engine string) (bool, error) {
	if os.Geteuid() != 0 {
		return false, fmt.Errorf("needs root (network namespaces, veth, iptables)")
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	before, err := hoststate.Take(ctx, hoststate.Host, true)
	if err != nil {
		return false, err
	}
	fmt.Printf("== starting the testbed: %d clouds (driver %s, VPN engine %s)\n", len(deploy.FullClouds), driver, engine)
	tb, err := testbed.Create(ctx, testbed.Options{Clouds: deploy.FullClouds})
	if err != nil {
		return false, err
	}
	for _, vm := range tb.VMs() {
		fmt.Printf("  %-7s %-8s private %-15s public %s\n", vm.Name, vm.Cloud, vm.PrivateAddr, vm.PublicAddr)
	}
	vmsBefore, err := deploy.State(ctx, tb)
	if err != nil {
		_ = tb.Close()
		return false, err
	}
	report, d, runErr := deploy.RunScenario(ctx, tb, deploy.Config{Driver: driver, API: api, Compose: api == "nuvla2", Progress: os.Stdout,
		Engine: engine, Throughput: true, People: true})
	report.Print(os.Stdout)
	if runErr != nil && d != nil {
		for _, in := range d.Instances() {
			fmt.Printf("\n-- logs of %s\n%s", in, d.Logs(ctx, in))
		}
	}

	fmt.Println("\n== teardown")
	clean := true
	if d != nil && d.Nuvla2() {
		// Nuvla stops the group: every member's deployment is stopping, its container stopped.
		t0 := time.Now()
		if err := d.Stop(ctx); err != nil {
			fmt.Printf("  FAIL  stopping the group: %v\n", err)
			clean = false
		} else {
			fmt.Printf("  ok    the group stopped; every member tore down and said goodbye in %s\n", time.Since(t0).Round(time.Millisecond))
		}
	}
	if d != nil {
		// The onstop recipe on every VM: `cnsmo-role stop` signals the role and waits for it.
		for _, in := range d.Instances() {
			if d.Nuvla2() {
				break
			}
			t0 := time.Now()
			_, err := d.Recipe(ctx, in, "onstop.sh")
			took := time.Since(t0)
			switch {
			case err != nil:
				fmt.Printf("  FAIL  %-8s role stop: %v\n", in, err)
				clean = false
			case took > 10*time.Second:
				fmt.Printf("  FAIL  %-8s role stopped in %s (more than 10 s)\n", in, took.Round(time.Millisecond))
				clean = false
			default:
				fmt.Printf("  ok    %-8s role stopped and tore down in %s\n", in, took.Round(time.Millisecond))
			}
		}
		d.Close(ctx)
		vmsAfter, err := deploy.State(ctx, tb)
		if err != nil {
			_ = tb.Close()
			return false, err
		}
		if diff := deploy.StateDiff(vmsBefore, vmsAfter); diff != "" {
			fmt.Printf("  FAIL  the VMs are NOT as before the run:\n%s", diff)
			clean = false
		} else {
			fmt.Println("  ok    every VM as before the run: iptables, ip6tables, links, namespaces, /etc/hosts byte for byte, no function left")
		}
	}
	if err := tb.Close(); err != nil {
		fmt.Println("  testbed:", err)
		clean = false
	}
	after, err := hoststate.Take(ctx, hoststate.Host, true)
	if err != nil {
		return false, err
	}
	if diff := hoststate.Diff(before, after); diff != "" {
		fmt.Printf("  FAIL  host NOT clean:\n%s", diff)
		clean = false
	} else {
		fmt.Println("  ok    host clean once the testbed is gone: iptables, ip6tables, links, namespaces and containers as before")
	}
	for _, f := range report.Failures {
		fmt.Println("  FAIL:", f)
	}
	return runErr == nil && report.Pass() && clean, runErr
}
