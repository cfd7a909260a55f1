// Package driver runs CNSMO's network functions (OpenVPN, iptables, HAProxy): as Docker
// containers through the Engine API, or as host processes. A role names each function it runs;
// the driver owns what it creates through labels (run, instance, service), so Cleanup removes
// exactly that and nothing else.
package driver

import (
	"context"
	"errors"
	"io"
	"os"
	"syscall"
)

// File is a file placed in the function's filesystem before it starts (or updated while it runs).
type File struct {
	Path string      // absolute path inside the function's filesystem
	Mode os.FileMode // e.g. 0o600 for keys
	Data []byte
}

// Spec describes one network function.
type Spec struct {
	Name    string   // unique per owner; the role chooses it, e.g. "vpn-server"
	Service string   // "vpn", "fw", "lb": goes into the labels
	Image   string   // used by the Docker driver only
	Cmd     []string // argv; the exec driver resolves Cmd[0] on PATH
	Env     []string // KEY=VALUE
	Files   []File
	CapAdd  []string // e.g. NET_ADMIN
	Devices []string // e.g. /dev/net/tun
	// Shared are directories of the role's filesystem (absolute, clean) that the function sees
	// at the same path, to share a control socket: a bind mount with Docker (on a simulated VM,
	// the VM container's own mount of that directory), the same directory with exec.
	Shared []string
}

// Result is the outcome of a one-shot Run.
type Result struct {
	ExitCode int
	Stdout   []byte
	Stderr   []byte
}

// State of a long-running function.
type State string

const (
	StateRunning State = "running"
	StateExited  State = "exited" // it ran and stopped (crash or Stop)
	StateAbsent  State = "absent" // nothing by that name
)

// Status reports a function's state.
type Status struct {
	State    State
	ExitCode int // meaningful when State is StateExited
}

// Driver is the small interface every role uses. Every call takes a context and stops on cancel.
type Driver interface {
	// Start starts a long-running function. If one with the same name and the same spec is
	// already running, it does nothing; with a different spec, it replaces it.
	Start(ctx context.Context, spec Spec) error
	// Run runs a one-shot command to completion, feeding stdin (may be nil).
	Run(ctx context.Context, spec Spec, stdin io.Reader) (Result, error)
	// Exec runs cmd to completion inside the running function name (its container with Docker,
	// a process beside it with exec), feeding stdin (may be nil): cheaper than a one-shot Run,
	// which creates a container each time. ErrNotFound when the function does not run.
	Exec(ctx context.Context, name string, cmd []string, stdin io.Reader) (Result, error)
	// PutFiles writes files into a running (or stopped) function's filesystem.
	PutFiles(ctx context.Context, name string, files []File) error
	// Signal sends a signal to the function's main process (e.g. SIGUSR2 to reload HAProxy).
	Signal(ctx context.Context, name string, sig syscall.Signal) error
	// Status reports whether the function runs.
	Status(ctx context.Context, name string) (Status, error)
	// Logs returns the function's combined output so far.
	Logs(ctx context.Context, name string) (string, error)
	// Stop stops the function, keeping it for inspection; Remove deletes it. Both are idempotent.
	Stop(ctx context.Context, name string) error
	Remove(ctx context.Context, name string) error
	// Cleanup removes every function this owner created (matched by labels / state dir).
	Cleanup(ctx context.Context) error
}

// Owner identifies who created a function: it becomes the labels cnsmo.run, cnsmo.instance
// (and cnsmo.service from the Spec), so that several simulated VMs can share one engine.
type Owner struct {
	Run      string
	Instance string
}

// ErrNotFound is returned (wrapped) when a named function does not exist.
var ErrNotFound = errors.New("no such function")
