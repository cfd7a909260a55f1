package testbed

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

func (tb *Testbed) exec(ctx context.Context, cont string, env []string, argv []string) (string, string, int, error) {
	id, err := tb.cli.ContainerExecCreate(ctx, cont, container.ExecOptions{Cmd: argv, Env: env, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", "", 0, fmt.Errorf("testbed: exec in %s: %w", cont, err)
	}
	att, err := tb.cli.ContainerExecAttach(ctx, id.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", "", 0, fmt.Errorf("testbed: exec in %s: %w", cont, err)
	}
	defer att.Close()
	var out, errOut bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := stdcopy.StdCopy(&out, &errOut, att.Reader); done <- err }()
	select {
	case <-ctx.Done():
		return out.String(), errOut.String(), 0, ctx.Err()
	case <-done:
	}
	ins, err := tb.cli.ContainerExecInspect(ctx, id.ID)
	if err != nil {
		return out.String(), errOut.String(), 0, err
	}
	return out.String(), errOut.String(), ins.ExitCode, nil
}

// Process is a command running in the background in a VM.
type Process struct {
	tb   *Testbed
	id   string
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(b)
}

// Start runs argv in the background in the VM with extra environment variables.
func (vm *VM) Start(ctx context.Context, env []string, argv ...string) (*Process, error) {
	tb := vm.tb
	id, err := tb.cli.ContainerExecCreate(ctx, vm.Container, container.ExecOptions{Cmd: argv, Env: env, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return nil, fmt.Errorf("testbed: start in %s: %w", vm.Name, err)
	}
	att, err := tb.cli.ContainerExecAttach(context.WithoutCancel(ctx), id.ID, container.ExecAttachOptions{})
	if err != nil {
		return nil, fmt.Errorf("testbed: start in %s: %w", vm.Name, err)
	}
	p := &Process{tb: tb, id: id.ID, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer att.Close()
		w := lockedWriter{&p.mu, &p.out}
		_, _ = stdcopy.StdCopy(w, w, att.Reader)
		ins, err := tb.cli.ContainerExecInspect(context.Background(), id.ID)
		if err == nil && ins.ExitCode != 0 {
			err = &ExitError{Code: ins.ExitCode, Argv: argv}
		}
		p.err = err
	}()
	return p, nil
}

// Signal sends sig to the process (through its pid on the host).
func (p *Process) Signal(sig syscall.Signal) error {
	ins, err := p.tb.cli.ContainerExecInspect(context.Background(), p.id)
	if err != nil {
		return err
	}
	if !ins.Running || ins.Pid == 0 {
		return fmt.Errorf("testbed: process has exited")
	}
	return syscall.Kill(ins.Pid, sig)
}

// Wait waits for the process to end; a non-zero exit is an *ExitError.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return p.err
	}
}

// Output is what the process printed so far (stdout and stderr).
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}
