// Command cnsmo-role is the one binary CNSMO's recipes run on every VM: `cnsmo-role server`,
// `cnsmo-role agent`, `cnsmo-role stop`, and the drop-in ss-* tools.
package main

import (
	"context"
	"os"

	"github.com/cnsmo/cnsmo/internal/cli"
)

func main() {
	os.Exit(cli.Main(context.Background(), os.Args, os.Stdout, os.Stderr))
}
