package vpn

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// Names: every member of the overlay is <node>-<i>.<domain> (the instance name with '.' made
// '-'), a person <name>.users.<domain>. The names follow the server's signed entries only (a VM
// cannot point a name at itself by rewriting an address parameter); on every member they go into
// a managed block of /etc/hosts, and the CNSMO server answers DNS for the domain on its overlay
// addresses (see dns.go).

// DefaultDomain is vpn.domain's default.
const DefaultDomain = "cnsmo.internal"

// PeopleSuffix ends a person's instance name in an entry (alice.users): no member instance ends
// so (SlipStream's indexes are numbers, Nuvla 2's eight hex digits).
const PeopleSuffix = ".users"

// ParseDomain validates vpn.domain: DNS labels of letters, digits and '-', lower-cased, at most
// 200 characters; "" is the default.
func ParseDomain(v string) (string, error) {
	d := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(v)), ".")
	if d == "" {
		return DefaultDomain, nil
	}
	if len(d) > 200 {
		return "", role.Invalid(params.VPNDomain, "", "%d characters: at most 200", len(d))
	}
	for _, l := range strings.Split(d, ".") {
		if !validLabel(l) {
			return "", role.Invalid(params.VPNDomain, "", "%q is not a DNS name (labels of letters, digits and '-', 1-63 characters)", v)
		}
	}
	return d, nil
}

// validLabel accepts a DNS label: 1-63 letters, digits or '-', not starting or ending with '-'.
func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for _, r := range l {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// NameOf is the host name of an entry's instance under no domain: web.1 -> web-1, a person
// alice.users -> alice.users; "" when the instance makes no valid name.
func NameOf(inst string) string {
	inst = strings.ToLower(inst)
	if p, ok := strings.CutSuffix(inst, PeopleSuffix); ok {
		if validLabel(p) {
			return inst
		}
		return ""
	}
	n := strings.NewReplacer(".", "-", "_", "-").Replace(inst)
	if !validLabel(n) {
		return ""
	}
	return n
}

// nameRecord is one name and its overlay addresses.
type nameRecord struct {
	Name   string // without the domain
	V4, V6 netip.Addr
}

// records turns verified entries into names: entries without a valid name are left out, and of
// entries sharing a name or an address the one granted first (lowest generation) wins.
func records(entries []Entry) []nameRecord {
	list := slices.Clone(entries)
	slices.SortStableFunc(list, func(a, b Entry) int {
		if a.Gen != b.Gen {
			if a.Gen < b.Gen {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Instance, b.Instance)
	})
	seen := map[string]bool{}
	var out []nameRecord
	for _, e := range list {
		n := NameOf(e.Instance)
		if n == "" || seen["n"+n] || seen["a"+e.V4.String()] || seen["a"+e.V6.String()] {
			continue
		}
		seen["n"+n], seen["a"+e.V4.String()], seen["a"+e.V6.String()] = true, true, true
		out = append(out, nameRecord{Name: n, V4: e.V4, V6: e.V6})
	}
	slices.SortFunc(out, func(a, b nameRecord) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// The managed block of /etc/hosts.
const (
	hostsBegin   = "# BEGIN cnsmo names (managed by cnsmo-role: rewritten on scale events, removed on teardown)"
	hostsBeginNL = "# BEGIN cnsmo names (managed by cnsmo-role: rewritten on scale events, removed on teardown; a newline was added before this line)"
	hostsEnd     = "# END cnsmo names"
)

// renderHosts is the block's lines for the records (no markers).
func renderHosts(domain string, recs []nameRecord) string {
	var b strings.Builder
	for _, r := range recs {
		fmt.Fprintf(&b, "%s\t%s.%s %s\n", r.V4, r.Name, domain, r.Name)
		fmt.Fprintf(&b, "%s\t%s.%s %s\n", r.V6, r.Name, domain, r.Name)
	}
	return b.String()
}

// stripHosts returns content without the managed block (and the newline it added, if any).
func stripHosts(content []byte) ([]byte, error) {
	lines := bytes.SplitAfter(content, []byte("\n"))
	begin, end := -1, -1
	for i, l := range lines {
		t := string(bytes.TrimRight(l, "\n"))
		switch {
		case begin < 0 && (t == hostsBegin || t == hostsBeginNL):
			begin = i
		case begin >= 0 && t == hostsEnd:
			end = i
		}
		if end >= 0 {
			break
		}
	}
	if begin < 0 {
		return content, nil
	}
	if end < 0 {
		return nil, errors.New("the cnsmo block has no end line: fix the file by hand")
	}
	out := bytes.Join(lines[:begin], nil)
	if string(bytes.TrimRight(lines[begin], "\n")) == hostsBeginNL {
		out = bytes.TrimSuffix(out, []byte("\n"))
	}
	return append(out, bytes.Join(lines[end+1:], nil)...), nil
}

// withHosts returns content with the managed block holding body ("" removes the block).
func withHosts(content []byte, body string) ([]byte, error) {
	out, err := stripHosts(content)
	if err != nil || body == "" {
		return out, err
	}
	begin := hostsBegin
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out, begin = append(out, '\n'), hostsBeginNL
	}
	return append(out, []byte(begin+"\n"+body+hostsEnd+"\n")...), nil
}

// writeHosts rewrites the managed block of the hosts file at path in place (a container's
// /etc/hosts is a bind mount that cannot be renamed over); nothing else in the file changes.
func writeHosts(path, body string) (changed bool, err error) {
	old, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && body == "" {
		return false, nil
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("vpn: names: %w", err)
	}
	b, err := withHosts(old, body)
	if err != nil {
		return false, fmt.Errorf("vpn: names: %s: %w", path, err)
	}
	if bytes.Equal(b, old) {
		return false, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return false, fmt.Errorf("vpn: names: %w", err)
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return false, fmt.Errorf("vpn: names: write %s: %w", path, err)
	}
	return true, nil
}

// Names keeps this VM's names of the overlay: the hosts block, and on the CNSMO server the DNS
// answers.
type Names struct {
	env role.Env
	// Hosts is the hosts file the block goes into; "" leaves every file alone.
	Hosts string
	// DNS answers for the domain on the server's overlay addresses (nil on members).
	DNS *DNSServer

	ms   *membership // a member: the entries it verified (its own seen generations)
	pins signerPins
	body string // the block last written
	said string
}

// NewNames returns the names of the VM env describes, writing into hosts.
func NewNames(env role.Env, hosts string) *Names {
	return &Names{env: env, Hosts: hosts, pins: signerPins{env: env}}
}

// apply writes the block and the DNS table for the records.
func (n *Names) apply(domain string, recs []nameRecord) error {
	if n.DNS != nil {
		n.DNS.SetTable(domain, recs)
	}
	if n.Hosts == "" {
		return nil
	}
	body := renderHosts(domain, recs)
	if body == n.body {
		return nil
	}
	changed, err := writeHosts(n.Hosts, body)
	if err != nil {
		return err
	}
	n.body = body
	if changed {
		n.env.Log.Info().Int("names", len(recs)).Str("domain", domain).Str("file", n.Hosts).Msg("vpn: names updated")
	}
	return nil
}

// member brings the names of an application VM up to date: every current instance's and every
// person's entry that verifies with the pinned server's signing key.
func (n *Names) member(s role.Snapshot) error {
	if n == nil {
		return nil
	}
	srv := n.pins.server(s)
	if srv == "" {
		return nil
	}
	in, err := ParseInputs(func(k string) string { return s.Get(srv, k) })
	if err != nil {
		return nil // the server aborts the run with the message
	}
	signer, err := n.pins.signer(s, srv)
	if signer == nil || err != nil {
		return err
	}
	if n.ms == nil {
		ms := &membership{seenFile: jsonFile(filepath.Join(n.env.StateDir, namesSeenFile)), seen: map[string]uint64{}}
		if err := ms.seenFile.load(&ms.seen); err != nil {
			return err
		}
		n.ms = ms
	}
	n.ms.signer = signer
	var entries []Entry
	if e, ok := n.ms.entry(s, s.Self(), n.env); ok {
		entries = append(entries, e)
	}
	entries = append(entries, n.ms.peers(s, s.Self(), n.env)...)
	entries = append(entries, n.ms.people(s, srv, n.env)...)
	return n.apply(in.Domain, records(entries))
}

// server brings the server's names up to date from its ledger: itself, the current members and
// the people it granted.
func (n *Names) server(s role.Snapshot, domain string, led *ledger) error {
	if n == nil || led == nil {
		return nil
	}
	var entries []Entry
	for inst := range led.st.Members {
		if inst == n.env.Instance || strings.HasSuffix(inst, PeopleSuffix) || !s.Gone(inst) {
			if e, ok := led.record(inst); ok {
				entries = append(entries, e)
			}
		}
	}
	return n.apply(domain, records(entries))
}

// Teardown removes the hosts block (the file as it was before, byte for byte) and stops DNS.
func (n *Names) Teardown() error {
	if n == nil {
		return nil
	}
	if n.DNS != nil {
		n.DNS.Close()
	}
	n.body = ""
	if n.Hosts == "" {
		return nil
	}
	_, err := writeHosts(n.Hosts, "")
	return err
}

// namesSeenFile keeps the generations a member's names have seen.
const namesSeenFile = "names-seen.json"
