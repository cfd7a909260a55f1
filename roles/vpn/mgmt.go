package vpn

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// DialFunc opens a TCP connection (to the OpenVPN management interface on 127.0.0.1).
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

func defaultDial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Mgmt talks to OpenVPN's management interface: one short connection per command.
type Mgmt struct {
	Addr     string // 127.0.0.1:<port>
	Password string // the content of the management password file (without newline)
	Dial     DialFunc
}

// ClientStatus is one connected client from `status 3`.
type ClientStatus struct {
	CN          string
	RealAddress string
	VirtualV4   string
	VirtualV6   string
}

// ErrMgmtAuth is returned when the management interface refuses the password.
var ErrMgmtAuth = errors.New("management interface refused the password")

// session connects, authenticates and returns a reader/writer positioned after the banner.
func (m *Mgmt) session(ctx context.Context) (net.Conn, *bufio.Reader, error) {
	dial := m.Dial
	if dial == nil {
		dial = defaultDial
	}
	c, err := dial(ctx, m.Addr)
	if err != nil {
		return nil, nil, fmt.Errorf("vpn: management %s: %w", m.Addr, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	r := bufio.NewReader(c)
	// With a password file OpenVPN first prints "ENTER PASSWORD:" (no newline); without one, the
	// ">INFO:" banner. Read up to the colon of the prompt or the end of the banner line.
	first, err := readPrompt(r)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("vpn: management %s: %w", m.Addr, err)
	}
	if strings.HasPrefix(first, "ENTER PASSWORD") {
		if _, err := fmt.Fprintf(c, "%s\n", m.Password); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("vpn: management %s: %w", m.Addr, err)
		}
		line, err := readLine(r)
		if err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("vpn: management %s: %w", m.Addr, err)
		}
		if !strings.HasPrefix(line, "SUCCESS") {
			c.Close()
			return nil, nil, fmt.Errorf("vpn: management %s: %w", m.Addr, ErrMgmtAuth)
		}
	}
	return c, r, nil
}

// readPrompt reads either a full line or "ENTER PASSWORD:".
func readPrompt(r *bufio.Reader) (string, error) {
	var b strings.Builder
	for {
		ch, err := r.ReadByte()
		if err != nil {
			return b.String(), err
		}
		if ch == '\n' {
			return strings.TrimRight(b.String(), "\r"), nil
		}
		b.WriteByte(ch)
		if b.String() == "ENTER PASSWORD:" {
			return b.String(), nil
		}
	}
}

func readLine(r *bufio.Reader) (string, error) {
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return "", err
		}
		l = strings.TrimRight(l, "\r\n")
		if strings.HasPrefix(l, ">") { // real-time notification: not an answer
			continue
		}
		return l, nil
	}
}

// Status runs `status 3` and returns the connected clients.
func (m *Mgmt) Status(ctx context.Context) ([]ClientStatus, error) {
	c, r, err := m.session(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := fmt.Fprint(c, "status 3\n"); err != nil {
		return nil, fmt.Errorf("vpn: management status: %w", err)
	}
	var out []ClientStatus
	for i := 0; i < 100000; i++ {
		l, err := readLine(r)
		if err != nil {
			return nil, fmt.Errorf("vpn: management status: %w", err)
		}
		if l == "END" {
			_, _ = fmt.Fprint(c, "quit\n")
			return out, nil
		}
		if strings.HasPrefix(l, "ERROR") {
			return nil, fmt.Errorf("vpn: management status: %s", l)
		}
		if cs, ok := ParseClientListLine(l); ok {
			out = append(out, cs)
		}
	}
	return nil, errors.New("vpn: management status: no END")
}

// ParseClientListLine parses one CLIENT_LIST line of `status 3` (tab-separated):
// CLIENT_LIST, Common Name, Real Address, Virtual Address, Virtual IPv6 Address, ...
func ParseClientListLine(l string) (ClientStatus, bool) {
	f := strings.Split(l, "\t")
	if len(f) < 5 || f[0] != "CLIENT_LIST" {
		return ClientStatus{}, false
	}
	return ClientStatus{CN: f[1], RealAddress: f[2], VirtualV4: f[3], VirtualV6: f[4]}, true
}

// Kill disconnects every client with common name cn. It reports whether one was connected.
func (m *Mgmt) Kill(ctx context.Context, cn string) (bool, error) {
	if cn == "" || strings.ContainsAny(cn, " \t\r\n\"'") {
		return false, fmt.Errorf("vpn: management kill: bad common name %q", cn)
	}
	c, r, err := m.session(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "kill %s\n", cn); err != nil {
		return false, fmt.Errorf("vpn: management kill %s: %w", cn, err)
	}
	l, err := readLine(r)
	if err != nil {
		return false, fmt.Errorf("vpn: management kill %s: %w", cn, err)
	}
	_, _ = fmt.Fprint(c, "quit\n")
	switch {
	case strings.HasPrefix(l, "SUCCESS"):
		return true, nil
	case strings.HasPrefix(l, "ERROR") && strings.Contains(l, "not found"):
		return false, nil
	}
	return false, fmt.Errorf("vpn: management kill %s: %s", cn, l)
}
