// Command cnsmo-testbed removes what killed tests or demos left of the testbed:
//
//	cnsmo-testbed clean    remove every slot's VMs, routers, functions in VM namespaces and host links
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/docker/docker/client"

	"github.com/cnsmo/cnsmo/testbed"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] != "clean" {
		fmt.Fprintln(os.Stderr, "usage: cnsmo-testbed clean")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnsmo-testbed:", err)
		os.Exit(1)
	}
	defer cli.Close()
	failed := false
	for s := 0; s < testbed.MaxSlots; s++ {
		if err := testbed.RemoveSlot(ctx, cli, s); err != nil {
			fmt.Fprintf(os.Stderr, "cnsmo-testbed: slot %d: %v\n", s, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
	fmt.Println("cnsmo-testbed: clean")
}
