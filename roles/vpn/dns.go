package vpn

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/rs/zerolog"
	"golang.org/x/net/dns/dnsmessage"
)

// DNSServer answers DNS queries for the overlay's domain on the CNSMO server's overlay addresses
// (UDP): A and AAAA of the names, NXDOMAIN for other names in the domain, REFUSED for any name
// outside it (it never recurses), so a person can send only the domain to it.
type DNSServer struct {
	// Port is the UDP port (53 when 0).
	Port int
	Log  zerolog.Logger

	mu     sync.Mutex
	domain string                  // without the trailing dot
	table  map[string][]netip.Addr // fully qualified, lower case, trailing dot -> addresses
	conns  map[netip.Addr]net.PacketConn
	wg     sync.WaitGroup
}

// DNSTTL is the time to live of every answer: names change with scale events.
const DNSTTL = 5

// SetTable replaces the names answered.
func (d *DNSServer) SetTable(domain string, recs []nameRecord) {
	t := map[string][]netip.Addr{}
	for _, r := range recs {
		fq := r.Name + "." + domain + "."
		t[fq] = append(t[fq], r.V4, r.V6)
	}
	d.mu.Lock()
	d.domain, d.table = domain, t
	d.mu.Unlock()
}

// Listen makes the server answer on each address (those already answering are kept, others
// closed). An address that cannot be bound yet (IPv6 duplicate address detection) is an error;
// the next call tries again.
func (d *DNSServer) Listen(addrs ...netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conns == nil {
		d.conns = map[netip.Addr]net.PacketConn{}
	}
	for a, c := range d.conns {
		if !containsAddr(addrs, a) {
			_ = c.Close()
			delete(d.conns, a)
		}
	}
	port := d.Port
	if port == 0 {
		port = 53
	}
	var errs []error
	for _, a := range addrs {
		if _, ok := d.conns[a]; ok || !a.IsValid() {
			continue
		}
		c, err := net.ListenPacket("udp", net.JoinHostPort(a.String(), strconv.Itoa(port)))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.conns[a] = c
		d.wg.Add(1)
		go d.serve(c)
		d.Log.Info().Str("address", a.String()).Int("port", port).Msg("vpn: names: answering DNS for the overlay")
	}
	return errors.Join(errs...)
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, b := range list {
		if a == b {
			return true
		}
	}
	return false
}

func (d *DNSServer) serve(c net.PacketConn) {
	defer d.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if out := d.Answer(buf[:n]); out != nil {
			_, _ = c.WriteTo(out, from)
		}
	}
}

// Close stops answering.
func (d *DNSServer) Close() {
	d.mu.Lock()
	for a, c := range d.conns {
		_ = c.Close()
		delete(d.conns, a)
	}
	d.mu.Unlock()
	d.wg.Wait()
}

// Answer is the response to one query message; nil when the message cannot be answered at all
// (not even its header parses, or it is itself a response).
func (d *DNSServer) Answer(req []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil || h.Response {
		return nil
	}
	resp := dnsmessage.Header{ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired}
	reply := func(rc dnsmessage.RCode, q *dnsmessage.Question, answers func(b *dnsmessage.Builder) error) []byte {
		resp.RCode = rc
		b := dnsmessage.NewBuilder(nil, resp)
		b.EnableCompression()
		if q != nil {
			if b.StartQuestions() != nil || b.Question(*q) != nil {
				return nil
			}
		}
		if answers != nil {
			if b.StartAnswers() != nil || answers(&b) != nil {
				return nil
			}
		}
		out, err := b.Finish()
		if err != nil {
			return nil
		}
		return out
	}
	if h.OpCode != 0 {
		return reply(dnsmessage.RCodeNotImplemented, nil, nil)
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return reply(dnsmessage.RCodeFormatError, nil, nil)
	}
	q := qs[0]
	name := strings.ToLower(q.Name.String())
	d.mu.Lock()
	domain, addrs := d.domain, d.table[name]
	d.mu.Unlock()
	if domain == "" || q.Class != dnsmessage.ClassINET || (name != domain+"." && !strings.HasSuffix(name, "."+domain+".")) {
		return reply(dnsmessage.RCodeRefused, &q, nil) // not ours: no recursion
	}
	resp.Authoritative = true
	if addrs == nil {
		return reply(dnsmessage.RCodeNameError, &q, nil)
	}
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: DNSTTL}
	return reply(dnsmessage.RCodeSuccess, &q, func(b *dnsmessage.Builder) error {
		for _, a := range addrs {
			switch {
			case q.Type == dnsmessage.TypeA && a.Is4():
				if err := b.AResource(rh, dnsmessage.AResource{A: a.As4()}); err != nil {
					return err
				}
			case q.Type == dnsmessage.TypeAAAA && a.Is6():
				if err := b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: a.As16()}); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
