// Command cnsmo-testbed manages simulated clouds outside of tests:
//
//	cnsmo-testbed clean [--force]
//	    remove what killed tests or demos left behind (VMs, routers, functions in VM namespaces,
//	    host links) in every slot that no running testbed holds; --force also removes running ones
//	cnsmo-testbed up --clouds a:vm1,vm2 --clouds b:vm3 [--image IMG] [--bin DIR]
//	    start a testbed, print its VMs and addresses, keep it until interrupted, then remove it
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/cnsmo/cnsmo/testbed"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "cnsmo-testbed:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage: cnsmo-testbed clean [--force] | up --clouds NAME:VM,VM... [--clouds ...] [--image IMG] [--bin DIR]")

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	switch args[0] {
	case "clean":
		fs := flag.NewFlagSet("clean", flag.ContinueOnError)
		fs.SetOutput(stderr)
		force := fs.Bool("force", false, "also remove testbeds that a running process holds")
		if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 0 {
			return errUsage
		}
		return clean(*force, stdout)
	case "up":
		opts, err := parseUp(args[1:], stderr)
		if err != nil {
			return err
		}
		return up(opts, stdout)
	}
	return errUsage
}

func clean(force bool, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := testbed.Clean(ctx, force)
	if len(res.InUse) > 0 {
		fmt.Fprintf(stdout, "cnsmo-testbed: slots %v are held by running testbeds: left alone (--force removes them)\n", res.InUse)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "cnsmo-testbed: clean (%d slots checked, %d orphaned functions removed)\n", len(res.Cleaned), res.Orphans)
	return nil
}

type cloudsFlag []testbed.CloudSpec

func (c *cloudsFlag) String() string { return fmt.Sprint(*c) }

func (c *cloudsFlag) Set(v string) error {
	name, vms, ok := strings.Cut(v, ":")
	if !ok || name == "" || vms == "" {
		return fmt.Errorf("--clouds %q: want NAME:VM,VM", v)
	}
	*c = append(*c, testbed.CloudSpec{Name: name, VMs: strings.Split(vms, ",")})
	return nil
}

func parseUp(args []string, stderr io.Writer) (testbed.Options, error) {
	var opts testbed.Options
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	clouds := cloudsFlag{}
	fs.Var(&clouds, "clouds", "a cloud and its VMs, NAME:VM,VM (repeat for more clouds)")
	fs.StringVar(&opts.Image, "image", testbed.DefaultImage, "VM image")
	fs.StringVar(&opts.BinDir, "bin", os.Getenv("CNSMO_BIN"), "directory mounted read-only at /opt/cnsmo/bin in the VMs")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 || len(clouds) == 0 {
		return opts, errUsage
	}
	opts.Clouds = clouds
	return opts, nil
}

func up(opts testbed.Options, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	tb, err := testbed.Create(cctx, opts)
	cancel()
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "slot %d, host address %s (listen there; every VM reaches it)\n", tb.Slot(), tb.HostAddr())
	fmt.Fprintln(tw, "VM\tCLOUD\tCONTAINER\tPRIVATE\tPUBLIC\tPUBLIC6")
	for _, vm := range tb.VMs() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", vm.Name, vm.Cloud, vm.Container, vm.PrivateAddr, vm.PublicAddr, vm.PublicAddr6)
	}
	tw.Flush()
	fmt.Fprintln(stdout, "up; interrupt (Ctrl-C) to remove it")
	<-ctx.Done()
	if err := tb.Close(); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "removed")
	return nil
}
