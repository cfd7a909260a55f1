package fw

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/driver"
)

// DefaultImage holds iptables-restore (the nf_tables backend, as the hosts').
const DefaultImage = "cnsmo/fw:latest"

// Applier applies rendered rules through a driver: one-shot runs of iptables-restore (and
// iptables -S to read back), in the fw image with the Docker driver or on the host with exec.
type Applier struct {
	Driver driver.Driver
	Image  string
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
	img := a.Image
	if img == "" {
		img = DefaultImage
	}
	var in *strings.Reader
	if stdin != "" {
		in = strings.NewReader(stdin)
	}
	spec := driver.Spec{Name: "fw-" + bin, Service: "fw", Image: img, Cmd: append([]string{bin}, args...),
		CapAdd: []string{"NET_ADMIN", "NET_RAW"}}
	var res driver.Result
	var err error
	if in != nil {
		res, err = a.Driver.Run(ctx, spec, in)
	} else {
		res, err = a.Driver.Run(ctx, spec, nil)
	}
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
	if _, err := a.run(ctx, v6, []string{"restore", "-w", "--noflush"}, RestoreInput(want, st.jumpsIn > 0, st.jumpsOut > 0)); err != nil {
		return err
	}
	got, err := a.read(ctx, v6)
	if err != nil {
		return err
	}
	exp := byChain(want)
	for _, c := range []string{ChainIn, ChainOut} {
		if !slices.Equal(got.rules[c], exp[c]) {
			return fmt.Errorf("fw: read back of %s (ipv6=%v) differs from what was applied:\n got  %q\n want %q", c, v6, got.rules[c], exp[c])
		}
	}
	if got.jumpsIn != 1 || got.jumpsOut != 1 {
		return fmt.Errorf("fw: expected one jump to each chain, found %d and %d (ipv6=%v)", got.jumpsIn, got.jumpsOut, v6)
	}
	return nil
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
			_, rerr = a.run(ctx, false, []string{"restore", "-w", "--noflush"}, RestoreInput(lines, true, true))
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

// Teardown removes cnsmo's jumps and chains in both families.
func (a *Applier) Teardown(ctx context.Context) error {
	return errors.Join(a.teardownFamily(ctx, false), a.teardownFamily(ctx, true))
}
