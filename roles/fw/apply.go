package fw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/driver"
)

// DefaultImage holds iptables-restore (the nf_tables backend, as the hosts').
const DefaultImage = "cnsmo/fw:latest"

// ToolsFunction is the firewall's long-lived function (Docker driver): iptables commands run in
// it (Driver.Exec) instead of a new container each time, so the per-pass comparison with the
// kernel stays cheap.
const ToolsFunction = "fw-tools"

// Applier applies rendered rules through a driver: iptables-restore to write and iptables -S to
// read back. With LongLived (the Docker driver) the commands run inside the ToolsFunction, started
// on first use; otherwise (the exec driver: host processes) as one-shot runs.
type Applier struct {
	Driver    driver.Driver
	Image     string
	LongLived bool

	started bool // the tools function was started by this process
}

func (a *Applier) image() string {
	if a.Image != "" {
		return a.Image
	}
	return DefaultImage
}

// toolsSpec is the long-lived function: a shell that idles until it is told to stop.
func (a *Applier) toolsSpec() driver.Spec {
	return driver.Spec{Name: ToolsFunction, Service: "fw", Image: a.image(),
		Cmd:    []string{"sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"},
		CapAdd: []string{"NET_ADMIN", "NET_RAW"}}
}

// command runs argv where the rules live and returns its result.
func (a *Applier) command(ctx context.Context, argv []string, stdin io.Reader) (driver.Result, error) {
	if !a.LongLived {
		return a.Driver.Run(ctx, driver.Spec{Name: "fw-" + argv[0], Service: "fw", Image: a.image(), Cmd: argv,
			CapAdd: []string{"NET_ADMIN", "NET_RAW"}}, stdin)
	}
	for try := 0; ; try++ {
		if !a.started {
			if err := a.Driver.Start(ctx, a.toolsSpec()); err != nil {
				return driver.Result{}, fmt.Errorf("fw: start %s: %w", ToolsFunction, err)
			}
			a.started = true
		}
		res, err := a.Driver.Exec(ctx, ToolsFunction, argv, stdin)
		if errors.Is(err, driver.ErrNotFound) && try == 0 && stdin == nil {
			a.started = false // removed behind our back: start it again, once
			continue
		}
		return res, err
	}
}

func (a *Applier) run(ctx context.Context, v6 bool, args []string, stdin string) (string, error) {
	bin := "iptables"
	if v6 {
		bin = "ip6tables"
	}
	if args[0] == "restore" {
		bin += "-restore"
		args = args[1:]
	}
	var in io.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	res, err := a.command(ctx, append([]string{bin}, args...), in)
	if err != nil {
		return "", fmt.Errorf("fw: %s: %w", bin, err)
	}
	if res.ExitCode != 0 {
		return "", fmt.Errorf("fw: %s %s: exit %d: %s", bin, strings.Join(args, " "), res.ExitCode, strings.TrimSpace(string(res.Stderr)))
	}
	return string(res.Stdout), nil
}

// state is what the filter table holds of cnsmo's.
type state struct {
	rules             map[string][]string // chain -> "-A" lines in order
	jumpsIn, jumpsOut int
	chains            bool
}

func (a *Applier) read(ctx context.Context, v6 bool) (state, error) {
	out, err := a.run(ctx, v6, []string{"-w", "-S"}, "")
	if err != nil {
		return state{}, err
	}
	st := state{rules: map[string][]string{}}
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "-N "+ChainIn || l == "-N "+ChainOut:
			st.chains = true
		case l == "-A INPUT -j "+ChainIn:
			st.jumpsIn++
		case l == "-A OUTPUT -j "+ChainOut:
			st.jumpsOut++
		case strings.HasPrefix(l, "-A "+ChainIn+" "):
			st.rules[ChainIn] = append(st.rules[ChainIn], l)
		case strings.HasPrefix(l, "-A "+ChainOut+" "):
			st.rules[ChainOut] = append(st.rules[ChainOut], l)
		}
	}
	return st, nil
}

func byChain(lines []string) map[string][]string {
	m := map[string][]string{}
	for _, l := range lines {
		for _, c := range []string{ChainIn, ChainOut} {
			if strings.HasPrefix(l, "-A "+c+" ") {
				m[c] = append(m[c], l)
			}
		}
	}
	return m
}

// applyFamily replaces cnsmo's chains of one family with want and verifies by reading back.
func (a *Applier) applyFamily(ctx context.Context, v6 bool, want []string) error {
	st, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	if _, err := a.run(ctx, v6, []string{"restore", "-w", "--noflush"}, RestoreInput(want, st.jumpsIn, st.jumpsOut)); err != nil {
		return err
	}
	got, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	if d := got.differs(want); d != "" {
		return fmt.Errorf("fw: read back (ipv6=%v) differs from what was applied: %s", v6, d)
	}
	return nil
}

// differs describes how st differs from the rendered rules want ("" when it holds exactly them
// and one jump to each chain).
func (st state) differs(want []string) string {
	exp := byChain(want)
	for _, c := range []string{ChainIn, ChainOut} {
		if !slices.Equal(st.rules[c], exp[c]) {
			return fmt.Sprintf("%s holds %d rules, want %d:\n got  %q\n want %q", c, len(st.rules[c]), len(exp[c]), st.rules[c], exp[c])
		}
	}
	if st.jumpsIn != 1 || st.jumpsOut != 1 {
		return fmt.Sprintf("%d jumps to %s and %d to %s, want one each", st.jumpsIn, ChainIn, st.jumpsOut, ChainOut)
	}
	return ""
}

// Check compares what the kernel holds of cnsmo's (both families) with the rendered rules and
// describes the first difference ("" when there is none). It changes nothing.
func (a *Applier) Check(ctx context.Context, rules []Rule, opts Options) (string, error) {
	for _, v6 := range []bool{false, true} {
		st, err := a.read(ctx, v6)
		if err != nil {
			return "", err
		}
		if d := st.differs(Render(rules, opts, v6)); d != "" {
			if v6 {
				return "ipv6: " + d, nil
			}
			return "ipv4: " + d, nil
		}
	}
	return "", nil
}

// Apply puts the rules in place in both families, or, when the second family fails, puts the
// first back as it was: nothing partially applied.
func (a *Applier) Apply(ctx context.Context, rules []Rule, opts Options) error {
	prev4, err := a.read(ctx, false)
	if err != nil {
		return err
	}
	if err := a.applyFamily(ctx, false, Render(rules, opts, false)); err != nil {
		return err
	}
	if err := a.applyFamily(ctx, true, Render(rules, opts, true)); err != nil {
		var rerr error
		if prev4.chains {
			var lines []string
			lines = append(lines, prev4.rules[ChainIn]...)
			lines = append(lines, prev4.rules[ChainOut]...)
			_, rerr = a.run(ctx, false, []string{"restore", "-w", "--noflush"}, RestoreInput(lines, prev4.jumpsIn, prev4.jumpsOut))
		} else {
			rerr = a.teardownFamily(ctx, false)
		}
		return errors.Join(err, rerr)
	}
	return nil
}

func (a *Applier) teardownFamily(ctx context.Context, v6 bool) error {
	st, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	if !st.chains && st.jumpsIn == 0 && st.jumpsOut == 0 {
		return nil
	}
	_, err = a.run(ctx, v6, []string{"restore", "-w", "--noflush"}, TeardownInput(st.jumpsIn, st.jumpsOut, st.chains))
	return err
}

// Teardown removes cnsmo's jumps and chains in both families, then the tools function.
func (a *Applier) Teardown(ctx context.Context) error {
	err := errors.Join(a.teardownFamily(ctx, false), a.teardownFamily(ctx, true))
	if a.LongLived {
		if rerr := a.Driver.Remove(ctx, ToolsFunction); rerr != nil && !errors.Is(rerr, driver.ErrNotFound) {
			err = errors.Join(err, fmt.Errorf("fw: remove %s: %w", ToolsFunction, rerr))
		}
		a.started = false
	}
	return err
}
