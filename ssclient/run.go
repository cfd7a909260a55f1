package ssclient

import (
	"sort"
	"strconv"
	"strings"
)

// Run is one whole-run read: every runtime parameter of every instance, from one GET /run/{uuid}.
type Run struct {
	UUID   string
	State  string           // ss:state
	Params map[string]Param // by fully qualified key: "node.1:hostname", "ss:abort", "node:ids"
}

// Param is one runtime parameter as the server reports it.
type Param struct {
	Value string
	IsSet bool
}

// Value returns a set parameter's value; ok is false when it is unset or absent.
func (r *Run) Value(key string) (v string, ok bool) {
	p, found := r.Params[key]
	if !found || !p.IsSet {
		return "", false
	}
	return p.Value, true
}

// Nodes returns the run's application node names from ss:groups ("cloud:node,cloud2:node2"),
// in the order given, without duplicates.
func (r *Run) Nodes() []string {
	v, _ := r.Value("ss:groups")
	var out []string
	seen := map[string]bool{}
	for _, g := range strings.Split(v, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		if i := strings.LastIndex(g, ":"); i >= 0 {
			g = g[i+1:]
		}
		if g != "" && !seen[g] {
			seen[g] = true
			out = append(out, g)
		}
	}
	return out
}

// Instances returns the current instance names of node ("node.1", "node.3"), from <node>:ids,
// in ascending id order. Removed instances are not listed.
func (r *Run) Instances(node string) []string {
	v, _ := r.Value(node + ":ids")
	var ids []int
	for _, f := range strings.FieldsFunc(v, func(c rune) bool { return c == ',' || c == ' ' || c == '[' || c == ']' }) {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			ids = append(ids, n)
		}
	}
	sort.Ints(ids)
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		out = append(out, node+"."+strconv.Itoa(id))
	}
	return out
}
