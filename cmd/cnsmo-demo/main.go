// Command cnsmo-demo is `make demo`: mocknuvla and a simulated multi-cloud deployment (a CNSMO
// server and three application VMs in three clouds, VPN + firewall + load balancer), driven by
// the real recipes and cnsmo-role; it prints what works, scales out one VM, tears everything down,
// checks the host is as before, and ends with PASS or FAIL (exit code 0 or 1).
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
	"github.com/cnsmo/cnsmo/testbed"
)

func main() {
	driver := flag.String("driver", "docker", "runtime of the roles on the VMs: docker or exec")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ok, err := run(ctx, *driver)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
	if !ok || err != nil {
		fmt.Println("\nRESULT: FAIL")
		os.Exit(1)
	}
	fmt.Println("\nRESULT: PASS")
}

func run(ctx context.Context, driver string) (bool, error) {
	if os.Geteuid() != 0 {
		return false, fmt.Errorf("needs root (network namespaces, veth, iptables)")
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	before, err := hoststate.Take(ctx, hoststate.Host, true)
	if err != nil {
		return false, err
	}
	fmt.Printf("== starting the testbed: %d clouds (driver %s)\n", len(deploy.FullClouds), driver)
	tb, err := testbed.Create(ctx, testbed.Options{Clouds: deploy.FullClouds})
	if err != nil {
		return false, err
	}
	for _, vm := range tb.VMs() {
		fmt.Printf("  %-7s %-8s private %-15s public %s\n", vm.Name, vm.Cloud, vm.PrivateAddr, vm.PublicAddr)
	}
	report, d, runErr := deploy.RunFull(ctx, tb, driver, os.Stdout)
	report.Print(os.Stdout)
	if runErr != nil && d != nil {
		for _, in := range d.Instances() {
			fmt.Printf("\n-- logs of %s\n%s", in, d.Logs(ctx, in))
		}
	}

	fmt.Println("\n== teardown")
	clean := true
	if d != nil {
		if err := d.Stop(ctx); err != nil {
			fmt.Println("  roles stop:", err)
			clean = false
		} else {
			fmt.Println("  every role stopped and removed what it created")
		}
		d.Close(ctx)
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
		fmt.Printf("  host NOT clean:\n%s", diff)
		clean = false
	} else {
		fmt.Println("  host clean: iptables, ip6tables, links, namespaces and containers as before")
	}
	for _, f := range report.Failures {
		fmt.Println("  FAIL:", f)
	}
	return runErr == nil && report.Pass() && clean, runErr
}
