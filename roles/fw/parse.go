// Package fw is the firewall service: the rules of net.i2cat.cnsmo.service.fw.rules, validated
// as a whole, rendered by a pure function into iptables-restore input that touches only cnsmo's
// own chains (CNSMO-INPUT, CNSMO-OUTPUT, jumped to from INPUT and OUTPUT), applied atomically in
// one restore call per family through the runtime driver, and verified by reading them back.
package fw

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Rule is one validated rule.
type Rule struct {
	DenyAll  bool   // {"policy":"denyall"}: the default after every rule, wherever it stands
	Dir      string // "in" or "out"
	Proto    string // "tcp", "udp", "icmp" or "" (all)
	DstPorts string // "N" or "N:M" ("" = any)
	SrcPorts string
	Range    netip.Prefix // zero = any address, both families
	MatchSrc bool         // Range matches the source (else the destination)
	Action   string       // ACCEPT, DROP or REJECT
}

// Family reports which families the rule applies to.
func (r Rule) Family() (v4, v6 bool) {
	if !r.Range.IsValid() {
		return true, true
	}
	return r.Range.Addr().Is4(), r.Range.Addr().Is6()
}

var knownFields = map[string]bool{"direction": true, "protocol": true, "dst_port": true, "src_port": true,
	"ip_range": true, "action": true, "dst_src": true, "policy": true, "description": true}

// ParseRules validates the whole list; on the first invalid field it returns an error naming
// the parameter, the rule index and the field, e.g.
// `net.i2cat.cnsmo.service.fw.rules[3].dst_port: 70000 is out of range 1-65535`.
func ParseRules(value string) ([]Rule, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil
	}
	if n := len([]rune(value)); n > role.MaxValueLen {
		return nil, role.Invalid(params.FWRules, "", "value is %d characters, over the %d limit", n, role.MaxValueLen)
	}
	var raw []json.RawMessage
	dec := json.NewDecoder(bytes.NewReader([]byte(value)))
	if err := dec.Decode(&raw); err != nil {
		return nil, role.Invalid(params.FWRules, "", "not a JSON list of rule objects (%s)", jsonProblem(err))
	}
	if dec.More() {
		return nil, role.Invalid(params.FWRules, "", "text after the JSON list")
	}
	rules := make([]Rule, 0, len(raw))
	policy := -1
	for i, elem := range raw {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(elem, &m); err != nil || m == nil {
			return nil, role.Invalid(params.FWRules, fmt.Sprintf("[%d]", i), `a rule must be a JSON object such as {"direction":"in","protocol":"tcp","dst_port":"8081","action":"drop"} or {"policy":"denyall"}, not %s`,
				clip(string(elem), 40))
		}
		r, err := parseRule(m)
		if err != nil {
			var fe *fieldError
			if errors.As(err, &fe) {
				return nil, role.Invalid(params.FWRules, fmt.Sprintf("[%d].%s", i, fe.field), "%s", fe.msg)
			}
			return nil, role.Invalid(params.FWRules, fmt.Sprintf("[%d]", i), "%v", err)
		}
		if r.DenyAll {
			if policy >= 0 {
				return nil, role.Invalid(params.FWRules, fmt.Sprintf("[%d].policy", i), "a second policy (the first is rule %d); a list has at most one", policy)
			}
			policy = i
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// jsonProblem says what is wrong with a JSON text without Go type names.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at character %d: %v", se.Offset, se)
	case errors.As(err, &te):
		return fmt.Sprintf("found a JSON %s", te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the text ends early"
	}
	return err.Error()
}

func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

type fieldError struct {
	field, msg string
}

func (e *fieldError) Error() string { return e.field + ": " + e.msg }

func ferr(field, format string, args ...any) error {
	return &fieldError{field: field, msg: fmt.Sprintf(format, args...)}
}

func parseRule(m map[string]json.RawMessage) (Rule, error) {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !knownFields[k] {
			return Rule{}, ferr(k, "unknown field (known: direction, protocol, dst_port, src_port, ip_range, dst_src, action, policy)")
		}
	}
	str := func(k string) (string, bool, error) {
		v, ok := m[k]
		if !ok {
			return "", false, nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", true, ferr(k, "must be a string, not %s", string(v))
		}
		return strings.TrimSpace(s), true, nil
	}
	if _, ok := m["policy"]; ok {
		p, _, err := str("policy")
		if err != nil {
			return Rule{}, err
		}
		if strings.ToLower(p) != "denyall" {
			return Rule{}, ferr("policy", "%q is not a policy (known: denyall)", p)
		}
		if len(m) > 1 && !(len(m) == 2 && m["description"] != nil) {
			return Rule{}, ferr("policy", "a policy rule has no other fields")
		}
		return Rule{DenyAll: true}, nil
	}
	var r Rule
	dir, ok, err := str("direction")
	if err != nil {
		return r, err
	}
	switch strings.ToLower(dir) {
	case "in", "input", "ingress":
		r.Dir = "in"
	case "out", "output", "egress":
		r.Dir = "out"
	default:
		if !ok {
			return r, ferr("direction", "is required (in or out)")
		}
		return r, ferr("direction", "%q is not in or out", dir)
	}
	proto, _, err := str("protocol")
	if err != nil {
		return r, err
	}
	switch p := strings.ToLower(proto); p {
	case "tcp", "udp", "icmp":
		r.Proto = p
	case "", "all", "any":
	default:
		return r, ferr("protocol", "%q is not tcp, udp, icmp or all", proto)
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"dst_port", &r.DstPorts}, {"src_port", &r.SrcPorts}} {
		v, ok := m[f.name]
		if !ok {
			continue
		}
		ports, err := parsePorts(f.name, v)
		if err != nil {
			return r, err
		}
		if ports != "" && r.Proto != "tcp" && r.Proto != "udp" {
			return r, ferr(f.name, "ports need protocol tcp or udp, not %q", proto)
		}
		*f.dst = ports
	}
	rng, _, err := str("ip_range")
	if err != nil {
		return r, err
	}
	if rng != "" {
		p, err := netip.ParsePrefix(rng)
		if err != nil {
			a, aerr := netip.ParseAddr(rng)
			if aerr != nil {
				return r, ferr("ip_range", "%q is not an IPv4 or IPv6 address or CIDR range", rng)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		r.Range = p.Masked()
	}
	r.MatchSrc = r.Dir == "in"
	ds, ok, err := str("dst_src")
	if err != nil {
		return r, err
	}
	if ok {
		switch strings.ToLower(ds) {
		case "src":
			r.MatchSrc = true
		case "dst":
			r.MatchSrc = false
		default:
			return r, ferr("dst_src", "%q is not src or dst", ds)
		}
	}
	act, ok, err := str("action")
	if err != nil {
		return r, err
	}
	switch strings.ToLower(act) {
	case "accept", "acpt", "allow":
		r.Action = "ACCEPT"
	case "drop", "deny":
		r.Action = "DROP"
	case "reject":
		r.Action = "REJECT"
	default:
		if !ok {
			return r, ferr("action", "is required (accept, acpt, drop or reject)")
		}
		return r, ferr("action", "%q is not accept, acpt, drop or reject", act)
	}
	return r, nil
}

// parsePorts accepts "N", "N:M" (also "N-M") or a JSON number, each in 1-65535, N <= M.
func parsePorts(field string, v json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		var n json.Number
		if err := json.Unmarshal(v, &n); err != nil {
			return "", ferr(field, "must be a port number or a string \"N\" or \"N:M\", not %s", string(v))
		}
		s = n.String()
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return "", nil
	}
	lo, hi, isRange := strings.Cut(strings.ReplaceAll(s, "-", ":"), ":")
	a, err := port(field, lo)
	if err != nil {
		return "", err
	}
	if !isRange {
		return strconv.Itoa(a), nil
	}
	b, err := port(field, hi)
	if err != nil {
		return "", err
	}
	if a > b {
		return "", ferr(field, "range %d:%d is reversed", a, b)
	}
	if a == b {
		return strconv.Itoa(a), nil
	}
	return fmt.Sprintf("%d:%d", a, b), nil
}

func port(field, s string) (int, error) {
	n, err := role.Port(s)
	if err != nil {
		return 0, ferr(field, "%v", err)
	}
	return n, nil
}
