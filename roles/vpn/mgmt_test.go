package vpn

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeMgmt answers like OpenVPN 2.6's management interface (transcript taken from a real one).
func fakeMgmt(t *testing.T, password string) (addr string, cmds chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	cmds = make(chan string, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				r := bufio.NewReader(c)
				_, _ = c.Write([]byte("ENTER PASSWORD:"))
				pw, _ := r.ReadString('\n')
				if strings.TrimSpace(pw) != password {
					_, _ = c.Write([]byte("ERROR: bad password\r\n"))
					return
				}
				_, _ = c.Write([]byte("SUCCESS: password is correct\r\n>INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"))
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					l = strings.TrimSpace(l)
					cmds <- l
					switch {
					case l == "status 3":
						_, _ = c.Write([]byte(strings.Join([]string{
							">CLIENT:ESTABLISHED,7",
							"TITLE\tOpenVPN 2.6.14 x86_64-pc-linux-gnu",
							"TIME\t2026-11-24 21:52:22\t1795557142",
							"HEADER\tCLIENT_LIST\tCommon Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\tBytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\tData Channel Cipher",
							"CLIENT_LIST\tweb.1\t198.18.99.2:47728\t198.19.0.2\t2001:db8:19::2\t3860\t4078\t2026-11-24 21:52:13\t1795557133\tUNDEF\t0\t0\tAES-256-GCM",
							"CLIENT_LIST\tweb.2\t198.18.99.3:55618\t198.19.0.3\t2001:db8:19::3\t3860\t4078\t2026-11-24 21:52:13\t1795557133\tUNDEF\t1\t1\tAES-256-GCM",
							"HEADER\tROUTING_TABLE\tVirtual Address\tCommon Name\tReal Address\tLast Ref\tLast Ref (time_t)",
							"ROUTING_TABLE\t4a:d9:d0:75:9f:f2@0\tweb.1\t198.18.99.2:47728\t2026-11-24 21:52:18\t1795557138",
							"GLOBAL_STATS\tMax bcast/mcast queue length\t1",
							"END", ""}, "\r\n")))
					case l == "kill web.1":
						_, _ = c.Write([]byte("SUCCESS: common name 'web.1' found, 1 client(s) killed\r\n"))
					case strings.HasPrefix(l, "kill "):
						_, _ = c.Write([]byte("ERROR: common name '" + strings.TrimPrefix(l, "kill ") + "' not found\r\n"))
					case l == "quit":
						return
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String(), cmds
}

func TestMgmtStatusAndKill(t *testing.T) {
	addr, cmds := fakeMgmt(t, "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := &Mgmt{Addr: addr, Password: "s3cret"}
	cl, err := m.Status(ctx)
	require.NoError(t, err)
	assert.Equal(t, []ClientStatus{
		{CN: "web.1", RealAddress: "198.18.99.2:47728", VirtualV4: "198.19.0.2", VirtualV6: "2001:db8:19::2"},
		{CN: "web.2", RealAddress: "198.18.99.3:55618", VirtualV4: "198.19.0.3", VirtualV6: "2001:db8:19::3"},
	}, cl)
	assert.Equal(t, "status 3", <-cmds)

	killed, err := m.Kill(ctx, "web.1")
	require.NoError(t, err)
	assert.True(t, killed)
	killed, err = m.Kill(ctx, "web.9")
	require.NoError(t, err)
	assert.False(t, killed)
	_, err = m.Kill(ctx, "web.1\nsignal SIGTERM")
	require.Error(t, err, "no command injection through a name")

	bad := &Mgmt{Addr: addr, Password: "wrong"}
	_, err = bad.Status(ctx)
	assert.True(t, errors.Is(err, ErrMgmtAuth), "%v", err)
}
