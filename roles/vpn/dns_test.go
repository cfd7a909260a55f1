package vpn

import (
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/dns/dnsmessage"
)

func query(t testing.TB, name string, typ dnsmessage.Type, extra ...dnsmessage.Question) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 7, RecursionDesired: true})
	require.NoError(t, b.StartQuestions())
	for _, q := range append([]dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}, extra...) {
		require.NoError(t, b.Question(q))
	}
	out, err := b.Finish()
	require.NoError(t, err)
	return out
}

func parseAnswer(t testing.TB, b []byte) (dnsmessage.Header, []netip.Addr) {
	var m dnsmessage.Message
	require.NoError(t, m.Unpack(b))
	var addrs []netip.Addr
	for _, a := range m.Answers {
		switch r := a.Body.(type) {
		case *dnsmessage.AResource:
			addrs = append(addrs, netip.AddrFrom4(r.A))
		case *dnsmessage.AAAAResource:
			addrs = append(addrs, netip.AddrFrom16(r.AAAA))
		}
	}
	return m.Header, addrs
}

func testDNS() *DNSServer {
	d := &DNSServer{Log: zerolog.Nop()}
	d.SetTable("cnsmo.internal", []nameRecord{
		{Name: "web-1", V4: mustAddr("198.18.0.2"), V6: mustAddr("2001:db8::2")},
		{Name: "alice.users", V4: mustAddr("198.18.0.200"), V6: mustAddr("2001:db8::c8")},
	})
	return d
}

func TestDNSAnswers(t *testing.T) {
	d := testDNS()
	for _, c := range []struct {
		name  string
		typ   dnsmessage.Type
		rcode dnsmessage.RCode
		want  []netip.Addr
	}{
		{"web-1.cnsmo.internal.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []netip.Addr{mustAddr("198.18.0.2")}},
		{"WEB-1.Cnsmo.Internal.", dnsmessage.TypeAAAA, dnsmessage.RCodeSuccess, []netip.Addr{mustAddr("2001:db8::2")}},
		{"alice.users.cnsmo.internal.", dnsmessage.TypeA, dnsmessage.RCodeSuccess, []netip.Addr{mustAddr("198.18.0.200")}},
		{"web-1.cnsmo.internal.", dnsmessage.TypeMX, dnsmessage.RCodeSuccess, nil}, // the name exists: no data
		{"web-9.cnsmo.internal.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"cnsmo.internal.", dnsmessage.TypeA, dnsmessage.RCodeNameError, nil},
		{"example.org.", dnsmessage.TypeA, dnsmessage.RCodeRefused, nil}, // no recursion
		{"xcnsmo.internal.", dnsmessage.TypeA, dnsmessage.RCodeRefused, nil},
	} {
		h, addrs := parseAnswer(t, d.Answer(query(t, c.name, c.typ)))
		assert.Equal(t, uint16(7), h.ID)
		assert.True(t, h.Response)
		assert.False(t, h.RecursionAvailable, "never recursion")
		assert.Equal(t, c.rcode, h.RCode, c.name)
		assert.Equal(t, c.want, addrs, c.name)
		assert.Equal(t, c.rcode != dnsmessage.RCodeRefused, h.Authoritative, c.name)
	}
	two := query(t, "web-1.cnsmo.internal.", dnsmessage.TypeA, dnsmessage.Question{Name: dnsmessage.MustNewName("x."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	h, _ := parseAnswer(t, d.Answer(two))
	assert.Equal(t, dnsmessage.RCodeFormatError, h.RCode)
	resp := d.Answer(query(t, "web-1.cnsmo.internal.", dnsmessage.TypeA))
	assert.Nil(t, d.Answer(resp), "a response is never answered (no loops)")
	assert.Nil(t, d.Answer([]byte{1, 2, 3}))
}

func FuzzDNSAnswer(f *testing.F) {
	f.Add(query(f, "web-1.cnsmo.internal.", dnsmessage.TypeA))
	f.Add(query(f, "example.org.", dnsmessage.TypeAAAA))
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0})
	d := testDNS()
	f.Fuzz(func(t *testing.T, b []byte) {
		out := d.Answer(b)
		if out == nil {
			return
		}
		var m dnsmessage.Message
		require.NoError(t, m.Unpack(out), "every answer is a valid message")
		require.True(t, m.Header.Response)
	})
}

func TestDNSServesOnLoopback(t *testing.T) {
	d := testDNS()
	d.Port = freeUDPPort(t)
	require.NoError(t, d.Listen(mustAddr("127.0.0.1")))
	defer d.Close()
	c, err := net.Dial("udp", net.JoinHostPort("127.0.0.1", itoa(d.Port)))
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = c.Write(query(t, "web-1.cnsmo.internal.", dnsmessage.TypeA))
	require.NoError(t, err)
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	require.NoError(t, err)
	_, addrs := parseAnswer(t, buf[:n])
	assert.Equal(t, []netip.Addr{mustAddr("198.18.0.2")}, addrs)
	require.NoError(t, d.Listen(), "no address: stops listening")
	assert.Empty(t, d.conns)
}

func freeUDPPort(t testing.TB) int {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	require.NoError(t, err)
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func itoa(i int) string { return strconv.Itoa(i) }
