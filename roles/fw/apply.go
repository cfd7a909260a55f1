package fw

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

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
	// Runner, when set, runs the iptables commands instead of the driver (tests: a fake iptables).
	Runner Runner

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

// Runner runs one iptables command (iptables, ip6tables, iptables-restore, ip6tables-restore)
// where the rules live.
type Runner interface {
	Run(ctx context.Context, argv []string, stdin io.Reader) (driver.Result, error)
}

// command runs argv where the rules live and returns its result.
func (a *Applier) command(ctx context.Context, argv []string, stdin io.Reader) (driver.Result, error) {
	if a.Runner != nil {
		return a.Runner.Run(ctx, argv, stdin)
	}
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
	rules  map[string][]string // chain -> "-A" lines in order
	jumps  Jumps
	chains bool // CNSMO-INPUT or CNSMO-OUTPUT exists
	docker bool // CNSMO-DOCKER exists
}

func (a *Applier) read(ctx context.Context, v6 bool) (state, error) {
	out, err := a.run(ctx, v6, []string{"-w", "-S"}, "")
	if err != nil {
		return state{}, err
	}
	st := state{rules: map[string][]string{}}
	seen := map[string]bool{} // built-in chains (and DOCKER-USER) whose first rule was read
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for parent, jump := range map[string]*bool{"INPUT": &st.jumps.InFirst, "OUTPUT": &st.jumps.OutFirst, DockerUser: &st.jumps.DockerFirst} {
			if strings.HasPrefix(l, "-A "+parent+" ") && !seen[parent] {
				seen[parent] = true
				own := map[string]string{"INPUT": ChainIn, "OUTPUT": ChainOut, DockerUser: ChainDocker}[parent]
				*jump = l == "-A "+parent+" -j "+own
			}
		}
		switch {
		case l == "-N "+ChainIn || l == "-N "+ChainOut:
			st.chains = true
		case l == "-N "+ChainDocker:
			st.docker = true
		case l == "-N "+DockerUser:
			st.jumps.DockerUser = true
		case l == "-A INPUT -j "+ChainIn:
			st.jumps.In++
		case l == "-A OUTPUT -j "+ChainOut:
			st.jumps.Out++
		case l == "-A "+DockerUser+" -j "+ChainDocker:
			st.jumps.Docker++
		default:
			for _, c := range ownChains {
				if strings.HasPrefix(l, "-A "+c+" ") {
					st.rules[c] = append(st.rules[c], l)
				}
			}
		}
	}
	return st, nil
}

func byChain(lines []string) map[string][]string {
	m := map[string][]string{}
	for _, l := range lines {
		for _, c := range ownChains {
			if strings.HasPrefix(l, "-A "+c+" ") {
				m[c] = append(m[c], l)
			}
		}
	}
	return m
}

// want returns the rendered rules of one family for the tables st describes: the Docker chain
// only where Docker made its DOCKER-USER chain.
func want(rules []Rule, opts Options, v6 bool, st state) []string {
	w := Render(rules, opts, v6)
	if st.jumps.DockerUser {
		w = append(w, RenderDocker(rules, opts, v6)...)
	}
	return w
}

// applyFamily replaces cnsmo's chains of one family with the rendered rules and verifies by
// reading back.
func (a *Applier) applyFamily(ctx context.Context, v6 bool, rules []Rule, opts Options) error {
	st, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	if _, err := a.run(ctx, v6, []string{"restore", "-w", "--noflush"}, RestoreInput(want(rules, opts, v6, st), st.jumps)); err != nil {
		return err
	}
	got, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	if d := got.differs(want(rules, opts, v6, got)); d != "" {
		return fmt.Errorf("fw: read back (ipv6=%v) differs from what was applied: %s", v6, d)
	}
	return nil
}

// differs describes how st differs from the rendered rules want ("" when it holds exactly them
// and one jump to each of cnsmo's chains).
func (st state) differs(want []string) string {
	exp := byChain(want)
	for _, c := range ownChains {
		if !slices.Equal(st.rules[c], exp[c]) {
			return fmt.Sprintf("%s holds %d rules, want %d:\n got  %q\n want %q", c, len(st.rules[c]), len(exp[c]), st.rules[c], exp[c])
		}
	}
	wantDocker := 0
	if st.jumps.DockerUser {
		wantDocker = 1
	}
	if st.jumps.In != 1 || st.jumps.Out != 1 || st.jumps.Docker != wantDocker {
		return fmt.Sprintf("jumps to %s, %s and %s: %d, %d and %d; want 1, 1 and %d",
			ChainIn, ChainOut, ChainDocker, st.jumps.In, st.jumps.Out, st.jumps.Docker, wantDocker)
	}
	if !st.jumps.InFirst || !st.jumps.OutFirst || (wantDocker == 1 && !st.jumps.DockerFirst) {
		return "a rule stands before cnsmo's jump in INPUT, OUTPUT or DOCKER-USER"
	}
	return ""
}

// Check compares what the kernel holds of cnsmo's (both families, read side by side) with the
// rendered rules and describes the first difference ("" when there is none). It changes nothing.
func (a *Applier) Check(ctx context.Context, rules []Rule, opts Options) (string, error) {
	var sts [2]state
	var errs [2]error
	var wg sync.WaitGroup
	for i, v6 := range []bool{false, true} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts[i], errs[i] = a.read(ctx, v6)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		return "", err
	}
	for i, family := range []string{"ipv4", "ipv6"} {
		if d := sts[i].differs(want(rules, opts, i == 1, sts[i])); d != "" {
			return family + ": " + d, nil
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
	if err := a.applyFamily(ctx, false, rules, opts); err != nil {
		return err
	}
	if err := a.applyFamily(ctx, true, rules, opts); err != nil {
		var rerr error
		if prev4.chains {
			var lines []string
			for _, c := range ownChains {
				lines = append(lines, prev4.rules[c]...)
			}
			_, rerr = a.run(ctx, false, []string{"restore", "-w", "--noflush"}, RestoreInput(lines, prev4.jumps))
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
	if !st.chains && !st.docker && st.jumps.In == 0 && st.jumps.Out == 0 && st.jumps.Docker == 0 {
		return nil
	}
	_, err = a.run(ctx, v6, []string{"restore", "-w", "--noflush"}, TeardownInput(st.jumps, st.chains, st.docker))
	return err
}

// Teardown removes cnsmo's jumps and chains in both families, then the tools function.
func (a *Applier) Teardown(ctx context.Context) error {
	err := errors.Join(a.teardownFamily(ctx, false), a.teardownFamily(ctx, true))
	if a.LongLived && a.Runner == nil {
		if rerr := a.Driver.Remove(ctx, ToolsFunction); rerr != nil && !errors.Is(rerr, driver.ErrNotFound) {
			err = errors.Join(err, fmt.Errorf("fw: remove %s: %w", ToolsFunction, rerr))
		}
		a.started = false
	}
	return err
}
