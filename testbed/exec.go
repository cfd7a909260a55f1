package testbed

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// ExitError is a command that ran in a VM and exited non-zero (or was killed).
type ExitError struct {
	Code   int
	Argv   []string
	Stderr string // the end of its stderr
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("%s: exit %d: %s", strings.Join(e.Argv, " "), e.Code, strings.TrimSpace(e.Stderr))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// exec runs argv in a container through the Engine API and waits. If ctx ends first, the
// process is killed.
func (tb *Testbed) exec(ctx context.Context, cont string, env []string, stdin []byte, argv []string) (string, string, int, error) {
	id, err := tb.cli.ContainerExecCreate(ctx, cont, container.ExecOptions{Cmd: argv, Env: env,
		AttachStdin: stdin != nil, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return "", "", 0, fmt.Errorf("testbed: exec %q in %s: %w", argv[0], cont, err)
	}
	att, err := tb.cli.ContainerExecAttach(ctx, id.ID, container.ExecAttachOptions{})
	if err != nil {
		return "", "", 0, fmt.Errorf("testbed: exec %q in %s: %w", argv[0], cont, err)
	}
	defer att.Close()
	if stdin != nil {
		go func() {
			_, _ = io.Copy(att.Conn, bytes.NewReader(stdin))
			_ = att.CloseWrite()
		}()
	}
	var out, errOut bytes.Buffer
	done := make(chan error, 1)
	go func() { _, err := stdcopy.StdCopy(&out, &errOut, att.Reader); done <- err }()
	select {
	case <-ctx.Done():
		tb.killExec(id.ID)
		att.Close()
		<-done
		return out.String(), errOut.String(), 0, fmt.Errorf("testbed: exec %q in %s: %w", argv[0], cont, ctx.Err())
	case err := <-done:
		if err != nil {
			return out.String(), errOut.String(), 0, fmt.Errorf("testbed: exec %q in %s: read output: %w", argv[0], cont, err)
		}
	}
	ins, err := tb.cli.ContainerExecInspect(context.WithoutCancel(ctx), id.ID)
	if err != nil {
		return out.String(), errOut.String(), 0, fmt.Errorf("testbed: exec %q in %s: %w", argv[0], cont, err)
	}
	return out.String(), errOut.String(), ins.ExitCode, nil
}

// killExec kills an exec'd process (through its pid on the host: the API has no exec kill).
func (tb *Testbed) killExec(id string) {
	if ins, err := tb.cli.ContainerExecInspect(context.Background(), id); err == nil && ins.Running && ins.Pid > 0 {
		_ = syscall.Kill(ins.Pid, syscall.SIGKILL)
	}
}

// Exec runs argv in the VM (docker exec through the API) and waits for it. A non-zero exit is an
// *ExitError carrying the code; if ctx ends first the process is killed and ctx's error returned.
func (vm *VM) Exec(ctx context.Context, argv ...string) (stdout, stderr string, err error) {
	out, errOut, code, err := vm.tb.exec(ctx, vm.Container, nil, nil, argv)
	if err != nil {
		return out, errOut, fmt.Errorf("%s: %w", vm.Name, err)
	}
	if code != 0 {
		return out, errOut, &ExitError{Code: code, Argv: argv, Stderr: tail(errOut, 2000)}
	}
	return out, errOut, nil
}

// Process is a command running in the background in a VM.
type Process struct {
	tb   *Testbed
	id   string
	argv []string
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

// Start runs argv in the background in the VM, with env ("K=V") added to the VM's environment.
// ctx bounds the start only; the process runs until it exits, is signalled, or the VM stops.
func (vm *VM) Start(ctx context.Context, env []string, argv ...string) (*Process, error) {
	tb := vm.tb
	id, err := tb.cli.ContainerExecCreate(ctx, vm.Container, container.ExecOptions{Cmd: argv, Env: env, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return nil, fmt.Errorf("testbed: start %q in %s: %w", argv[0], vm.Name, err)
	}
	att, err := tb.cli.ContainerExecAttach(context.WithoutCancel(ctx), id.ID, container.ExecAttachOptions{})
	if err != nil {
		return nil, fmt.Errorf("testbed: start %q in %s: %w", argv[0], vm.Name, err)
	}
	p := &Process{tb: tb, id: id.ID, argv: argv, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer att.Close()
		w := lockedWriter{&p.mu, &p.out}
		_, _ = stdcopy.StdCopy(w, w, att.Reader)
		ins, err := tb.cli.ContainerExecInspect(context.Background(), id.ID)
		if err != nil {
			p.err = fmt.Errorf("testbed: %q in %s: %w", argv[0], vm.Name, err)
		} else if ins.ExitCode != 0 {
			p.err = &ExitError{Code: ins.ExitCode, Argv: argv, Stderr: tail(p.Output(), 2000)}
		}
	}()
	return p, nil
}

// Signal sends sig to the process (through its pid on the host).
func (p *Process) Signal(sig syscall.Signal) error {
	ins, err := p.tb.cli.ContainerExecInspect(context.Background(), p.id)
	if err != nil {
		return fmt.Errorf("testbed: signal %q: %w", p.argv[0], err)
	}
	if !ins.Running || ins.Pid == 0 {
		return fmt.Errorf("testbed: signal %q: the process has exited", p.argv[0])
	}
	if err := syscall.Kill(ins.Pid, sig); err != nil {
		return fmt.Errorf("testbed: signal %q (pid %d): %w", p.argv[0], ins.Pid, err)
	}
	return nil
}

// Wait waits for the process to end; a non-zero exit is an *ExitError (a process killed by a
// signal exits 128+signal, as a shell reports it).
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.done:
		return p.err
	}
}

// Output is what the process printed so far, stdout and stderr interleaved.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}
