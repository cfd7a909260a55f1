// Package hoststate snapshots what a test, the demo or a role could leave behind on a host (or in
// a simulated VM): iptables and ip6tables rules, network links and namespaces, containers. Two
// snapshots are compared to prove that teardown left things exactly as they were.
package hoststate

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"sort"
	"strings"
)

// Runner runs a command and returns its stdout (the host, or a VM through the testbed).
type Runner func(ctx context.Context, argv ...string) (string, error)

// Host runs commands on this machine.
func Host(ctx context.Context, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	return string(out), err
}

// Snapshot is a normalized view of the host's network state, one section per source.
type Snapshot map[string]string

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// Take snapshots iptables-save, ip6tables-save, links, namespaces and (when docker is true)
// every container. Counters and comments that change by themselves are removed.
func Take(ctx context.Context, run Runner, docker bool) (Snapshot, error) {
	s := Snapshot{}
	cmds := map[string][]string{
		"iptables":  {"iptables-save"},
		"ip6tables": {"ip6tables-save"},
		"links":     {"ip", "-o", "link", "show"},
		"netns":     {"ip", "netns", "list"},
	}
	if docker {
		cmds["containers"] = []string{"docker", "ps", "-a", "--format", "{{.Names}} {{.Image}}"}
	}
	for name, argv := range cmds {
		out, err := run(ctx, argv...)
		if err != nil {
			return nil, fmt.Errorf("hoststate: %s: %w", strings.Join(argv, " "), err)
		}
		s[name] = normalize(name, out)
	}
	return s, nil
}

func normalize(kind, out string) string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "#") || strings.TrimSpace(l) == "" {
			continue
		}
		switch kind {
		case "iptables", "ip6tables":
			l = counters.ReplaceAllString(l, "")
		case "links":
			// "3: eth0@if4: <...> mtu ... state UP ..." -> name and flags only; link counters vary.
			f := strings.Fields(l)
			if len(f) >= 3 {
				l = strings.TrimSuffix(f[1], ":") + " " + f[2]
			}
		}
		lines = append(lines, l)
	}
	if kind != "iptables" && kind != "ip6tables" {
		sort.Strings(lines) // rule order matters; other lists are sets
	} else {
		lines = dropEmptyTables(lines)
	}
	return strings.Join(lines, "\n")
}

// Diff describes what differs between two snapshots ("" when equal).
func Diff(before, after Snapshot) string {
	var b strings.Builder
	keys := make([]string, 0, len(before))
	for k := range before {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if before[k] == after[k] {
			continue
		}
		bl, al := set(before[k]), set(after[k])
		for l := range al {
			if !bl[l] {
				fmt.Fprintf(&b, "%s: + %s\n", k, l)
			}
		}
		for l := range bl {
			if !al[l] {
				fmt.Fprintf(&b, "%s: - %s\n", k, l)
			}
		}
		if bl2, al2 := len(bl), len(al); bl2 == al2 && b.Len() == 0 {
			fmt.Fprintf(&b, "%s: same lines, different order\n", k)
		}
	}
	return b.String()
}

func set(s string) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.Split(s, "\n") {
		m[l] = true
	}
	return m
}

// dropEmptyTables removes table blocks that hold nothing but built-in chains with an ACCEPT
// policy: with the nf_tables backend, iptables-restore creates such a table in a namespace that
// had none, and an empty accepting table filters exactly as no table at all.
func dropEmptyTables(lines []string) []string {
	var out, block []string
	empty := true
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "*"):
			block, empty = []string{l}, true
		case l == "COMMIT" && block != nil:
			if !empty {
				out = append(out, append(block, l)...)
			}
			block = nil
		case block != nil:
			block = append(block, l)
			f := strings.Fields(l)
			if !(strings.HasPrefix(l, ":") && len(f) >= 2 && f[1] == "ACCEPT" && builtin[strings.TrimPrefix(f[0], ":")]) {
				empty = false
			}
		default:
			out = append(out, l)
		}
	}
	return out
}

var builtin = map[string]bool{"INPUT": true, "FORWARD": true, "OUTPUT": true, "PREROUTING": true, "POSTROUTING": true}

// Keep returns a copy where the given sections keep only the lines containing substr: a test
// that runs beside others compares only what is its own.
func (s Snapshot) Keep(substr string, sections ...string) Snapshot {
	out := Snapshot{}
	for k, v := range s {
		out[k] = v
	}
	for _, sec := range sections {
		var kept []string
		for _, l := range strings.Split(s[sec], "\n") {
			if strings.Contains(l, substr) {
				kept = append(kept, l)
			}
		}
		out[sec] = strings.Join(kept, "\n")
	}
	return out
}
