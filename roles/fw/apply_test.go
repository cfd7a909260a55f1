package fw

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/driver"
)

// fakeIPTables is a filter table per family in memory: `iptables -w -S` prints it, and
// `iptables-restore -w --noflush` applies the subset of the restore format cnsmo writes (a chain
// declaration creates or flushes it; -A, -I, -D, -F, -X). failRestore6 makes ip6tables-restore fail.
type fakeIPTables struct {
	mu           sync.Mutex
	tables       [2]*table
	failRestore6 bool
	restores     int
}

type table struct {
	order  []string // user chains in creation order
	chains map[string][]string
}

func newTable() *table {
	return &table{chains: map[string][]string{"INPUT": nil, "FORWARD": nil, "OUTPUT": nil}}
}

func newFakeIPTables() *fakeIPTables { return &fakeIPTables{tables: [2]*table{newTable(), newTable()}} }

func (f *fakeIPTables) Run(_ context.Context, argv []string, stdin io.Reader) (driver.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[0]
	if strings.HasPrefix(argv[0], "ip6") {
		t = f.tables[1]
	}
	switch {
	case strings.HasSuffix(argv[0], "-restore"):
		f.restores++
		if f.failRestore6 && strings.HasPrefix(argv[0], "ip6") {
			return driver.Result{ExitCode: 2, Stderr: []byte("ip6tables-restore: line 3 failed")}, nil
		}
		in, _ := io.ReadAll(stdin)
		next := t.clone()
		for _, l := range strings.Split(string(in), "\n") {
			if err := next.apply(l); err != nil {
				return driver.Result{ExitCode: 1, Stderr: []byte(err.Error())}, nil
			}
		}
		*t = *next // all or nothing, as a restore
		return driver.Result{}, nil
	case slices.Contains(argv, "-S"):
		return driver.Result{Stdout: []byte(t.save())}, nil
	}
	return driver.Result{ExitCode: 2, Stderr: []byte("fake iptables: unsupported " + strings.Join(argv, " "))}, nil
}

func (t *table) clone() *table {
	c := &table{order: slices.Clone(t.order), chains: map[string][]string{}}
	for k, v := range t.chains {
		c.chains[k] = slices.Clone(v)
	}
	return c
}

func (t *table) apply(l string) error {
	f := strings.Fields(l)
	switch {
	case len(f) == 0 || f[0] == "*filter" || f[0] == "COMMIT":
		return nil
	case strings.HasPrefix(f[0], ":"):
		name := strings.TrimPrefix(f[0], ":")
		if _, ok := t.chains[name]; !ok {
			t.order = append(t.order, name)
		}
		t.chains[name] = nil
		return nil
	case len(f) < 2:
		return fmt.Errorf("bad line %q", l)
	}
	chain := f[1]
	rules, ok := t.chains[chain]
	if !ok {
		return fmt.Errorf("no chain %s", chain)
	}
	rest := strings.Join(f[2:], " ")
	switch f[0] {
	case "-A":
		t.chains[chain] = append(rules, "-A "+chain+" "+rest)
	case "-I":
		n, err := strconv.Atoi(f[2])
		if err != nil {
			n, rest = 1, strings.Join(f[2:], " ")
		} else {
			rest = strings.Join(f[3:], " ")
		}
		t.chains[chain] = slices.Insert(rules, n-1, "-A "+chain+" "+rest)
	case "-D":
		i := slices.Index(rules, "-A "+chain+" "+rest)
		if i < 0 {
			return fmt.Errorf("no rule %q in %s", rest, chain)
		}
		t.chains[chain] = slices.Delete(rules, i, i+1)
	case "-F":
		t.chains[chain] = nil
	case "-X":
		delete(t.chains, chain)
		t.order = slices.DeleteFunc(t.order, func(c string) bool { return c == chain })
	default:
		return fmt.Errorf("unsupported %q", l)
	}
	return nil
}

func (t *table) save() string {
	var b strings.Builder
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		b.WriteString("-P " + c + " ACCEPT\n")
	}
	for _, c := range t.order {
		b.WriteString("-N " + c + "\n")
	}
	for _, c := range append([]string{"INPUT", "FORWARD", "OUTPUT"}, t.order...) {
		for _, r := range t.chains[c] {
			b.WriteString(r + "\n")
		}
	}
	return b.String()
}

var testRules = func() []Rule {
	r, err := ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"},{"policy":"denyall"}]`)
	if err != nil {
		panic(err)
	}
	return r
}()

// Apply puts the rendered rules in place in both families and verifies them; Check then finds no
// drift; Teardown leaves both tables as they were.
func TestApplyCheckTeardownOnAFakeIPTables(t *testing.T) {
	ipt := newFakeIPTables()
	a := &Applier{Runner: ipt}
	ctx := context.Background()
	before := [2]string{ipt.tables[0].save(), ipt.tables[1].save()}
	opts := Options{VPNPort: 1194, VPNDevice: "cnsmo-vpn"}
	require.NoError(t, a.Apply(ctx, testRules, opts))
	require.Equal(t, 2, ipt.restores)
	require.Contains(t, ipt.tables[0].save(), "-A INPUT -j "+ChainIn)
	require.Contains(t, ipt.tables[0].save(), "--dport 8081 -j DROP")
	d, err := a.Check(ctx, testRules, opts)
	require.NoError(t, err)
	require.Empty(t, d)
	require.NoError(t, a.Teardown(ctx))
	require.Equal(t, before, [2]string{ipt.tables[0].save(), ipt.tables[1].save()})
}

// A rule another tool puts before cnsmo's jump, or a flushed chain, is drift; applying again
// repairs it.
func TestCheckFindsDrift(t *testing.T) {
	ipt := newFakeIPTables()
	a := &Applier{Runner: ipt}
	ctx := context.Background()
	require.NoError(t, a.Apply(ctx, testRules, Options{}))
	ipt.tables[0].chains["INPUT"] = slices.Insert(ipt.tables[0].chains["INPUT"], 0, "-A INPUT -p tcp --dport 9999 -j ACCEPT")
	d, err := a.Check(ctx, testRules, Options{})
	require.NoError(t, err)
	require.Contains(t, d, "ipv4: a rule stands before cnsmo's jump")
	require.NoError(t, a.Apply(ctx, testRules, Options{}))
	d, _ = a.Check(ctx, testRules, Options{})
	require.Empty(t, d, "repaired")
	require.Equal(t, "-A INPUT -p tcp --dport 9999 -j ACCEPT", ipt.tables[0].chains["INPUT"][1], "the other tool's rule stays, after cnsmo's jump")

	ipt.tables[1].chains[ChainIn] = nil
	d, _ = a.Check(ctx, testRules, Options{})
	require.Contains(t, d, "ipv6: "+ChainIn+" holds 0 rules")
}

// When the second family fails, the first is put back as it was: nothing is partially applied.
func TestApplyRollsBackTheFirstFamily(t *testing.T) {
	ipt := newFakeIPTables()
	a := &Applier{Runner: ipt}
	ctx := context.Background()
	old, err := ParseRules(`[{"direction":"in","protocol":"tcp","dst_port":"22","action":"accept"}]`)
	require.NoError(t, err)
	require.NoError(t, a.Apply(ctx, old, Options{}))
	applied := ipt.tables[0].save()
	ipt.failRestore6 = true
	require.ErrorContains(t, a.Apply(ctx, testRules, Options{}), "ip6tables-restore")
	require.Equal(t, applied, ipt.tables[0].save(), "IPv4 holds the old rules again")

	fresh := newFakeIPTables()
	fresh.failRestore6 = true
	b := &Applier{Runner: fresh}
	empty := fresh.tables[0].save()
	require.Error(t, b.Apply(ctx, testRules, Options{}))
	require.Equal(t, empty, fresh.tables[0].save(), "nothing was there: IPv4 is torn down again")
}
