// Package execdriver runs network functions as host processes, for VMs without Docker and for
// fast tests. Each function has a directory under the owner's state dir holding its spec hash,
// pid, process start time, output log, exit code and the list of files it wrote, so a restarted
// role finds what it started, and Cleanup removes exactly that.
package execdriver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cnsmo/cnsmo/driver"
	"github.com/cnsmo/cnsmo/internal/atomicfile"
	"github.com/cnsmo/cnsmo/internal/wait"
)

// Driver is the exec driver of one owner.
type Driver struct {
	dir string // <stateDir>/<run>/<instance>
}

// New returns the exec driver of owner, keeping its state under stateDir (default
// /var/lib/cnsmo/exec). Spec files are written to their real paths on the host.
func New(owner driver.Owner, stateDir string) (*Driver, error) {
	if stateDir == "" {
		stateDir = "/var/lib/cnsmo/exec"
	}
	if owner.Run == "" || owner.Instance == "" {
		return nil, errors.New("execdriver: owner needs a run and an instance")
	}
	d := &Driver{dir: filepath.Join(stateDir, driver.SafeName(owner.Run), driver.SafeName(owner.Instance))}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, fmt.Errorf("execdriver: %w", err)
	}
	return d, nil
}

var _ driver.Driver = (*Driver)(nil)

func (d *Driver) fdir(name string) string { return filepath.Join(d.dir, driver.SafeName(name)) }

func read(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

// startTime is field 22 of /proc/<pid>/stat: it tells a live process from a reused pid.
func startTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	if f[0] == "Z" { // a zombie has exited
		return ""
	}
	return f[19]
}

// alive returns the function's pid when its process still runs.
func (d *Driver) alive(name string) (int, bool) {
	dir := d.fdir(name)
	pid, err := strconv.Atoi(read(filepath.Join(dir, "pid")))
	if err != nil || pid <= 0 {
		return 0, false
	}
	st := startTime(pid)
	return pid, st != "" && st == read(filepath.Join(dir, "starttime"))
}

func writeFiles(files []driver.File) ([]string, error) {
	var paths []string
	for _, f := range files {
		if !filepath.IsAbs(f.Path) {
			return paths, fmt.Errorf("file %q: path must be absolute", f.Path)
		}
		if err := os.MkdirAll(filepath.Dir(f.Path), 0o755); err != nil {
			return paths, err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := atomicfile.Write(f.Path, f.Data, mode); err != nil {
			return paths, err
		}
		paths = append(paths, f.Path)
	}
	return paths, nil
}

// missingDirs lists the directories that writing files would create, deepest first.
func missingDirs(files []driver.File) []string {
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		for dir := filepath.Dir(f.Path); dir != "/" && dir != "." && !seen[dir]; dir = filepath.Dir(dir) {
			if _, err := os.Stat(dir); err == nil {
				break
			}
			seen[dir] = true
			out = append(out, dir)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// created keeps the paths written that did not exist before.
func created(paths []string, fresh []driver.File) []string {
	var out []string
	for _, p := range paths {
		for _, f := range fresh {
			if f.Path == p {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// removeAll deletes files, then the directories (empty ones only).
func removeAll(files, dirs []string) {
	for _, p := range files {
		_ = os.Remove(p)
	}
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

func (d *Driver) recordFiles(name string, paths []string) error {
	p := filepath.Join(d.fdir(name), "files")
	old := read(p)
	seen := map[string]bool{}
	var all []string
	for _, l := range append(strings.Split(old, "\n"), paths...) {
		if l != "" && !seen[l] {
			seen[l] = true
			all = append(all, l)
		}
	}
	return os.WriteFile(p, []byte(strings.Join(all, "\n")+"\n"), 0o600)
}

// Start starts spec as a process in its own session, unless it already runs with this spec.
func (d *Driver) Start(ctx context.Context, spec driver.Spec) error {
	if len(spec.Cmd) == 0 {
		return fmt.Errorf("execdriver: %s: empty command", spec.Name)
	}
	hash := driver.Hash(spec)
	dir := d.fdir(spec.Name)
	if _, ok := d.alive(spec.Name); ok && read(filepath.Join(dir, "hash")) == hash {
		return nil
	}
	if err := d.Stop(ctx, spec.Name); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("execdriver: %w", err)
	}
	paths, err := writeFiles(spec.Files)
	if rerr := d.recordFiles(spec.Name, paths); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("execdriver: %s: files: %w", spec.Name, err)
	}
	bin, err := exec.LookPath(spec.Cmd[0])
	if err != nil {
		return fmt.Errorf("execdriver: %s: %w", spec.Name, err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("execdriver: %w", err)
	}
	defer logf.Close()
	_ = os.Remove(filepath.Join(dir, "exitcode"))
	cmd := exec.Command(bin, spec.Cmd[1:]...) // not tied to ctx: it outlives this call
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("execdriver: start %s: %w", spec.Name, err)
	}
	pid := cmd.Process.Pid
	for _, kv := range [][2]string{{"pid", strconv.Itoa(pid)}, {"starttime", startTime(pid)}, {"hash", hash}} {
		if err := os.WriteFile(filepath.Join(dir, kv[0]), []byte(kv[1]+"\n"), 0o600); err != nil {
			return fmt.Errorf("execdriver: %w", err)
		}
	}
	go func() { // record the exit code while this process lives; a restarted role sees -1
		err := cmd.Wait()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		_ = os.WriteFile(filepath.Join(dir, "exitcode"), []byte(strconv.Itoa(code)+"\n"), 0o600)
	}()
	return nil
}

// Run runs spec to completion with stdin.
func (d *Driver) Run(ctx context.Context, spec driver.Spec, stdin io.Reader) (driver.Result, error) {
	if len(spec.Cmd) == 0 {
		return driver.Result{}, fmt.Errorf("execdriver: %s: empty command", spec.Name)
	}
	// The files of a one-shot are for it alone: removed after it, with the directories made for
	// them; a file that was there before it stays.
	newDirs := missingDirs(spec.Files)
	var fresh []driver.File
	for _, f := range spec.Files {
		if _, err := os.Lstat(f.Path); errors.Is(err, os.ErrNotExist) {
			fresh = append(fresh, f)
		}
	}
	paths, err := writeFiles(spec.Files)
	defer removeAll(created(paths, fresh), newDirs)
	if err != nil {
		return driver.Result{}, fmt.Errorf("execdriver: %s: files: %w", spec.Name, err)
	}
	cmd := exec.CommandContext(ctx, spec.Cmd[0], spec.Cmd[1:]...)
	cmd.Env = append(os.Environ(), spec.Env...)
	var out, errOut bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &out, &errOut
	err = cmd.Run()
	res := driver.Result{Stdout: out.Bytes(), Stderr: errOut.Bytes()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil:
		res.ExitCode = ee.ExitCode()
	case err != nil:
		return res, fmt.Errorf("execdriver: run %s: %w", spec.Name, err)
	}
	return res, nil
}

// Exec runs cmd as a host process beside the running function name (the exec driver's functions
// share the host's filesystem and namespaces).
func (d *Driver) Exec(ctx context.Context, name string, cmd []string, stdin io.Reader) (driver.Result, error) {
	st, err := d.Status(ctx, name)
	if err != nil {
		return driver.Result{}, err
	}
	if st.State != driver.StateRunning {
		return driver.Result{}, fmt.Errorf("execdriver: exec in %s: %w", name, driver.ErrNotFound)
	}
	return d.Run(ctx, driver.Spec{Name: name + "-exec", Cmd: cmd}, stdin)
}

// PutFiles writes files for a function that exists.
func (d *Driver) PutFiles(_ context.Context, name string, files []driver.File) error {
	if _, err := os.Stat(d.fdir(name)); err != nil {
		return fmt.Errorf("execdriver: %s: %w", name, driver.ErrNotFound)
	}
	paths, err := writeFiles(files)
	if rerr := d.recordFiles(name, paths); err == nil {
		err = rerr
	}
	return err
}

// Signal sends sig to the function's process group.
func (d *Driver) Signal(_ context.Context, name string, sig syscall.Signal) error {
	pid, ok := d.alive(name)
	if !ok {
		return fmt.Errorf("execdriver: signal %s: %w", name, driver.ErrNotFound)
	}
	return syscall.Kill(-pid, sig)
}

// Status reports the function's state.
func (d *Driver) Status(_ context.Context, name string) (driver.Status, error) {
	if _, err := os.Stat(d.fdir(name)); err != nil {
		return driver.Status{State: driver.StateAbsent}, nil
	}
	if _, ok := d.alive(name); ok {
		return driver.Status{State: driver.StateRunning}, nil
	}
	code, err := strconv.Atoi(read(filepath.Join(d.fdir(name), "exitcode")))
	if err != nil {
		code = -1 // ended while no role watched it
	}
	return driver.Status{State: driver.StateExited, ExitCode: code}, nil
}

// Logs returns the function's output so far.
func (d *Driver) Logs(_ context.Context, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.fdir(name), "log"))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("execdriver: logs of %s: %w", name, driver.ErrNotFound)
	}
	return string(b), err
}

// Stop ends the function: SIGTERM to its process group, SIGKILL after 5 s.
func (d *Driver) Stop(ctx context.Context, name string) error {
	pid, ok := d.alive(name)
	if !ok {
		return nil
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	err := wait.Backoff{Min: 20 * time.Millisecond, Max: 20 * time.Millisecond, Limit: 5 * time.Second}.Until(ctx, func(context.Context) (bool, error) {
		_, ok := d.alive(name)
		return !ok, nil
	})
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}

// Remove stops the function and deletes its state and the files it wrote.
func (d *Driver) Remove(ctx context.Context, name string) error {
	if err := d.Stop(ctx, name); err != nil {
		return err
	}
	dir := d.fdir(name)
	for _, p := range strings.Split(read(filepath.Join(dir, "files")), "\n") {
		if p != "" {
			_ = os.Remove(p)
		}
	}
	return os.RemoveAll(dir)
}

// Cleanup removes every function of this owner.
func (d *Driver) Cleanup(ctx context.Context) error {
	entries, err := os.ReadDir(d.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() {
			errs = append(errs, d.Remove(ctx, e.Name()))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(d.dir)
}
