package vpn

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/roles/role/roletest"
	"github.com/cnsmo/cnsmo/roles/vpn/pki"
)

func newID(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

func newWGPub(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	require.NoError(t, err)
	return k.PublicKey()
}

func TestParseRequest(t *testing.T) {
	id := newID(t)
	pub := id.Public().(ed25519.PublicKey)
	key := newWGPub(t)
	ck, err := pki.NewKey()
	require.NoError(t, err)
	csrPEM, err := pki.NewCSR(ck, "alice.users")
	require.NoError(t, err)
	blk, _ := pem.Decode(csrPEM)

	join := Request{Name: "alice", ID: pub, Key: key, T: 1700000000}
	for _, r := range []Request{join, {Name: "bob-2", ID: pub, CSR: blk.Bytes, T: 5}, {Leave: true, Name: "alice", ID: pub, T: 1700000001}} {
		got, err := ParseRequest(r.Sign(id))
		require.NoError(t, err)
		assert.Equal(t, r.body(), got.body())
	}
	v := join.Sign(id)
	other := newID(t)
	edit := func(old, new string) string { return strings.Replace(v, old, new, 1) }
	for name, bad := range map[string]string{
		"empty":            "",
		"no signature":     strings.Split(v, " sig=")[0],
		"magic":            edit(joinMagic, "cnsmo-join2"),
		"upper-case name":  edit("name=alice", "name=Alice"),
		"name too long":    Request{Name: strings.Repeat("a", 33), ID: pub, Key: key, T: 1}.Sign(id),
		"name with dot":    Request{Name: "a.b", ID: pub, Key: key, T: 1}.Sign(id),
		"leading dash":     Request{Name: "-a", ID: pub, Key: key, T: 1}.Sign(id),
		"no key, no csr":   Request{Name: "a", ID: pub, T: 1}.Sign(id),
		"zero time":        Request{Name: "a", ID: pub, Key: key, T: 0}.Sign(id),
		"negative time":    edit("t=1700000000", "t=-1"),
		"leading zero t":   edit("t=1700000000", "t=01700000000"),
		"signed by other":  Request{Name: "alice", ID: pub, Key: key, T: 1700000000}.Sign(other),
		"changed after":    edit("t=1700000000", "t=1700000009"),
		"bad id":           edit("id=", "id=AAAA"),
		"bad key":          edit("key="+key.String(), "key=xyz"),
		"zero key":         edit("key="+key.String(), "key="+wgtypes.Key{}.String()),
		"bad csr":          edit("csr=-", "csr=AAAA"),
		"field order":      edit("name=alice id=", "id=X name=alice id="),
		"double space":     edit(" t=", "  t="),
		"too long":         v + strings.Repeat("A", role.MaxValueLen),
		"leave with a key": strings.Replace(Request{Leave: true, Name: "alice", ID: pub, T: 9}.Sign(id), " t=", " key=- t=", 1),
	} {
		_, err := ParseRequest(bad)
		assert.ErrorIs(t, err, ErrBadRequest, name)
	}
}

func FuzzParseRequest(f *testing.F) {
	id := newID(f)
	f.Add(Request{Name: "alice", ID: id.Public().(ed25519.PublicKey), Key: newWGPub(f), T: 1}.Sign(id))
	f.Add(Request{Leave: true, Name: "a", ID: id.Public().(ed25519.PublicKey), T: 2}.Sign(id))
	f.Add("cnsmo-join1 name= id= key= csr= t= sig=")
	f.Fuzz(func(t *testing.T, v string) {
		r, err := ParseRequest(v)
		if err != nil {
			return
		}
		// Whatever parses is canonical and verifies with the identity it names.
		body, sig, _ := strings.Cut(v, " sig=")
		require.Equal(t, body, r.body())
		raw, _ := base64.StdEncoding.DecodeString(sig)
		require.True(t, ed25519.Verify(r.ID, []byte(body), raw))
		require.NoError(t, ValidPersonName(r.Name))
	})
}

// peopleLab is a WireGuard mesh (fakes) with people joining through Person against the same store.
type peopleLab struct {
	*meshLab
	stop func()
}

// every runs pass every 5 ms in the background until the returned halt is called.
func every(pass func()) (halt func()) {
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
				pass()
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(stop); <-done }) }
}

// serve runs the server's passes in the background until halt.
func (l *peopleLab) serve() {
	l.stop = every(func() { _, _ = l.srv.Reconcile(context.Background(), l.snap()) })
	l.t.Cleanup(l.halt)
}

func (l *peopleLab) halt() {
	if l.stop != nil {
		l.stop()
		l.stop = nil
	}
}

func (l *peopleLab) person(name string, store role.Store) *Person {
	return &Person{Name: name, Dir: filepath.Join(l.t.TempDir(), name), Store: store, Say: func(m string) { l.t.Log(name + ": " + m) },
		Poll: wait.Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond, Limit: 10 * time.Second}}
}

func newPeopleLab(t *testing.T) *peopleLab {
	l := &peopleLab{meshLab: newMeshLab(t, true, "web.1")}
	l.converge()
	return l
}

func (l *peopleLab) grant(slot int) string { return l.st.Value("cnsmo.1:" + params.UserGrant(slot)) }

func TestPersonJoinsAndLeavesWireGuard(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	alice := l.person("alice", l.st)
	j, err := alice.Join(context.Background())
	require.NoError(t, err)
	assert.Equal(t, "alice.users", j.Self.Instance)
	b4, b6 := PeopleBlock(j.Inputs.V4, j.Inputs.V6)
	assert.True(t, b4.Contains(j.Self.V4) && b6.Contains(j.Self.V6), "from the people's block")
	assert.Contains(t, j.Config, "PrivateKey = ")
	assert.NotContains(t, j.Config, "DNS")
	k, err := alice.WGKey()
	require.NoError(t, err)
	assert.Contains(t, j.Config, k.String(), "the private key only in the local configuration")
	for _, v := range l.st.Sets() {
		assert.NotContains(t, v, k.String(), "the private key never goes into the run")
	}
	// The hub has the person as a peer with its addresses, no endpoint (behind NAT).
	l.halt()
	peers := l.peers("cnsmo.1")
	p, ok := peers[k.PublicKey().String()]
	require.True(t, ok, "the person is a peer of the hub")
	assert.Nil(t, p.Endpoint)
	// Running join again changes nothing and gets the same grant.
	l.serve()
	j2, err := alice.Join(context.Background())
	require.NoError(t, err)
	assert.Equal(t, j.Self, j2.Self)

	// A request for alice with another identity: refused, nothing changes.
	mallory := l.person("alice", l.st)
	_, err = mallory.Join(context.Background())
	require.ErrorContains(t, err, "the name is taken")
	// A leave not signed by alice's identity: ignored.
	forged := Request{Leave: true, Name: "alice", ID: newID(t).Public().(ed25519.PublicKey), T: time.Now().UnixMilli() + 100000}
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserSlot(j.Slot), forged.Sign(newID(t))) })
	mid := newID(t)
	forged.ID = mid.Public().(ed25519.PublicKey)
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserSlot(j.Slot), forged.Sign(mid)) })
	l.halt() // two passes of the server, run here: a leave not proven by alice's key changes nothing
	grant := l.grant(j.Slot)
	for i := 0; i < 2; i++ {
		_, _ = l.srv.Reconcile(context.Background(), l.snap())
	}
	require.Equal(t, grant, l.grant(j.Slot), "a leave not proven by alice's key changes nothing")
	require.Contains(t, l.srv.desk.st.People, "alice")
	l.serve()

	require.NoError(t, alice.Leave(context.Background()))
	assert.Equal(t, "", l.st.Value("cnsmo.1:"+params.UserSlot(j.Slot)), "the slot is free again")
	require.Eventually(t, func() bool { return l.grant(j.Slot) == "" }, 5*time.Second, 5*time.Millisecond, "and so its grant")
	_, err = os.Stat(alice.Dir)
	assert.True(t, os.IsNotExist(err), "the keys are deleted")
	l.halt()
	_, ok = l.peers("cnsmo.1")[k.PublicKey().String()]
	assert.False(t, ok, "the hub dropped the peer")
	_, ok = l.srv.alloc.Get("alice.users")
	assert.False(t, ok, "the address is free")
}

func TestPersonJoinReplayedAfterLeaveIsRefused(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	alice := l.person("alice", l.st)
	j, err := alice.Join(context.Background())
	require.NoError(t, err)
	old := l.st.Value("cnsmo.1:" + params.UserSlot(j.Slot))
	require.NoError(t, alice.Leave(context.Background()))
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserSlot(3), old) }) // a VM replays the old join
	require.Eventually(t, func() bool { return strings.HasPrefix(l.grant(3), grantRefused) }, 5*time.Second, 5*time.Millisecond)
	assert.Contains(t, l.grant(3), "replay")
}

// orderedStore lets both joins read the slots before either writes: they pick the same slot.
type orderedStore struct {
	*roletest.Store
	first sync.WaitGroup
	once  sync.Map
}

type joinerStore struct {
	*orderedStore
	name string
}

func (j joinerStore) Set(ctx context.Context, inst, key, value string) error {
	if _, done := j.once.LoadOrStore(j.name, true); !done && strings.HasPrefix(key, "vpn.user.") {
		j.first.Done()
		j.first.Wait() // both have chosen a slot from the same reads
	}
	return j.Store.Set(ctx, inst, key, value)
}

func TestInterleavedJoinsBothGetIn(t *testing.T) {
	l := newPeopleLab(t)
	os := &orderedStore{Store: l.st}
	os.first.Add(2)
	l.serve()
	var wg sync.WaitGroup
	got := map[string]*Joined{}
	var mu sync.Mutex
	for _, n := range []string{"alice", "bob"} {
		p := l.person(n, joinerStore{orderedStore: os, name: n})
		wg.Add(1)
		go func() {
			defer wg.Done()
			j, err := p.Join(context.Background())
			assert.NoError(t, err, n)
			mu.Lock()
			got[n] = j
			mu.Unlock()
		}()
	}
	wg.Wait()
	require.Len(t, got, 2)
	require.NotNil(t, got["alice"])
	require.NotNil(t, got["bob"])
	assert.NotEqual(t, got["alice"].Self.V4, got["bob"].Self.V4)
	assert.NotEqual(t, got["alice"].Slot, got["bob"].Slot)
	writes := 0
	for _, s := range l.st.Sets() {
		if strings.HasPrefix(s, "cnsmo.1:"+params.UserSlot(1)+"=") {
			writes++
		}
	}
	assert.GreaterOrEqual(t, writes, 2, "both wrote slot 1 first: the joins really interleaved")
}

func TestPersonKeyOfAMemberIsRefused(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	id := newID(t)
	memberKey, err := wgtypes.ParseKey(l.st.Value("web.1:" + params.VPNWGKey))
	require.NoError(t, err)
	r := Request{Name: "eve", ID: id.Public().(ed25519.PublicKey), Key: memberKey, T: time.Now().UnixMilli()}
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserSlot(1), r.Sign(id)) })
	require.Eventually(t, func() bool { return strings.HasPrefix(l.grant(1), grantRefused) }, 5*time.Second, 5*time.Millisecond)
	assert.Contains(t, l.grant(1), "another member's")
}

func TestNamesFollowSignedEntries(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	_, err := l.person("alice", l.st).Join(context.Background())
	require.NoError(t, err)
	l.halt()
	hosts := filepath.Join(t.TempDir(), "hosts")
	before := "127.0.0.1\tlocalhost\n# keep me\n::1 localhost ip6-localhost" // no newline at the end
	require.NoError(t, os.WriteFile(hosts, []byte(before), 0o644))
	fi, err := os.Stat(hosts)
	require.NoError(t, err)
	env := role.Env{Params: l.st, Instance: "web.1", StateDir: t.TempDir(), Log: zerolog.Nop()}
	n := NewNames(env, hosts)
	require.NoError(t, n.member(l.snap()))
	b, err := os.ReadFile(hosts)
	require.NoError(t, err)
	s := string(b)
	web1 := l.st.Value("web.1:" + params.VPNAddress)
	srv := l.st.Value("cnsmo.1:" + params.VPNAddress)
	assert.Contains(t, s, web1+"\tweb-1.cnsmo.internal web-1\n")
	assert.Contains(t, s, srv+"\tcnsmo-1.cnsmo.internal cnsmo-1\n")
	assert.Contains(t, s, "\talice.users.cnsmo.internal alice.users\n")
	assert.True(t, strings.HasPrefix(s, before+"\n"+hostsBeginNL+"\n"))
	fi2, err := os.Stat(hosts)
	require.NoError(t, err)
	assert.True(t, os.SameFile(fi, fi2), "written in place")

	// A VM rewriting an address parameter or forging an entry moves no name.
	l.st.Edit(func(s *roletest.Snapshot) {
		s.Put("web.1:"+params.VPNAddress, "198.19.200.99")
		s.Put("cnsmo.1:"+params.VPNMember, strings.Replace(s.Get("cnsmo.1", params.VPNMember), "v4="+srv, "v4=198.19.200.99", 1))
	})
	require.NoError(t, n.member(l.snap()))
	b, err = os.ReadFile(hosts)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "198.19.200.99")
	assert.Contains(t, string(b), srv+"\tcnsmo-1.cnsmo.internal")

	require.NoError(t, n.Teardown())
	b, err = os.ReadFile(hosts)
	require.NoError(t, err)
	assert.Equal(t, before, string(b), "teardown leaves the file byte-identical")
}

func TestHostsBlock(t *testing.T) {
	for _, before := range []string{"", "127.0.0.1 localhost\n", "no newline", "a\n\n\n"} {
		with, err := withHosts([]byte(before), "198.18.0.1\tx.cnsmo.internal x\n")
		require.NoError(t, err)
		again, err := withHosts(with, "198.18.0.2\ty.cnsmo.internal y\n")
		require.NoError(t, err)
		assert.NotContains(t, string(again), "198.18.0.1", "the block is replaced, not added")
		assert.Equal(t, 1, strings.Count(string(again), hostsEnd))
		out, err := withHosts(again, "")
		require.NoError(t, err)
		assert.Equal(t, before, string(out), "%q", before)
	}
	_, err := withHosts([]byte(hostsBegin+"\n1.2.3.4 x\n"), "")
	require.ErrorContains(t, err, "no end line", "a block cut by hand is not guessed at")
	// Lines around the block (added by someone else later) stay.
	with, _ := withHosts([]byte("a\n"), "b\n")
	out, err := withHosts(append(with, "c\n"...), "")
	require.NoError(t, err)
	assert.Equal(t, "a\nc\n", string(out))
}

func TestParseDomain(t *testing.T) {
	for in, want := range map[string]string{"": DefaultDomain, "Example.ORG.": "example.org", " cnsmo.internal ": "cnsmo.internal", "a": "a"} {
		got, err := ParseDomain(in)
		require.NoError(t, err, in)
		assert.Equal(t, want, got)
	}
	for _, bad := range []string{"a..b", "-a.b", "a_b.c", "a b", strings.Repeat("a", 64) + ".b", strings.Repeat("abcdefghi.", 21), "x.-", "é.org"} {
		_, err := ParseDomain(bad)
		assert.Error(t, err, bad)
	}
	for inst, want := range map[string]string{"web.1": "web-1", "cnsmo.1": "cnsmo-1", "Web_A.3f2a9c01": "web-a-3f2a9c01", "alice.users": "alice.users", "-x.1": "", "a.users.users": ""} {
		assert.Equal(t, want, NameOf(inst), inst)
	}
}

func TestRecordsFirstGrantWins(t *testing.T) {
	e1 := Entry{Gen: 1, Instance: "web.1", V4: mustAddr("198.18.0.2"), V6: mustAddr("2001:db8::2")}
	e2 := Entry{Gen: 2, Instance: "web_1", V4: mustAddr("198.18.0.3"), V6: mustAddr("2001:db8::3")} // the same name
	e3 := Entry{Gen: 3, Instance: "db.1", V4: mustAddr("198.18.0.2"), V6: mustAddr("2001:db8::4")}  // the same address
	recs := records([]Entry{e3, e2, e1})
	require.Len(t, recs, 1)
	assert.Equal(t, "web-1", recs[0].Name)
	assert.Equal(t, e1.V4, recs[0].V4)
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// The OpenVPN engine's side of a person: a certificate for <name>.users with its ccd entry; a
// proven leave revokes it and closes the connection; the person may join again.
func TestPersonJoinsAndLeavesOpenVPN(t *testing.T) {
	st := roletest.NewStore("cnsmo.1", nil)
	st.Edit(func(s *roletest.Snapshot) {
		s.AddNode("cnsmo", "cnsmo.1").AddNode("web", "web.1")
		s.Put("cnsmo.1:"+params.VPNSubnet, "198.19.200.0/24").Put("cnsmo.1:"+params.VPNSubnet6, "2001:db8:c5e0::/64").
			Put("cnsmo.1:"+params.Hostname, "198.19.1.10")
	})
	env := role.Env{Params: st, Instance: "cnsmo.1", StateDir: t.TempDir(), Log: zerolog.Nop()}
	s := newServer(env)
	snap, err := st.Read(context.Background())
	require.NoError(t, err)
	in, err := ParseInputs(func(k string) string { return snap.Get("cnsmo.1", k) })
	require.NoError(t, err)
	require.NoError(t, s.open(in))
	st.Edit(func(x *roletest.Snapshot) {
		x.Put("cnsmo.1:"+params.VPNServerInstanceID, "cnsmo.1").Put("cnsmo.1:"+params.VPNSigner, FormatSigner(s.led.signer.Public().(ed25519.PublicKey))).
			Put("cnsmo.1:"+params.VPNCACert, string(s.ca.CertPEM())).Put("cnsmo.1:"+params.VPNEndpoint, Endpoint("198.19.1.10", 1194))
	})
	var mu sync.Mutex
	var last *serverPass
	pass := func() {
		snap, err := st.Read(context.Background())
		require.NoError(t, err)
		p := &serverPass{in: in, cfg: s.config(in), files: map[string]string{}}
		op := &ovpnPeople{s: s, p: p}
		require.NoError(t, s.desk.pass(context.Background(), env, snap, s.alloc, s.led, op, rosterInfo{in: in, ca: CAFingerprint(s.ca.CertPEM()), ep: "198.19.1.10:1194"}))
		op.ccds()
		mu.Lock()
		last = p
		mu.Unlock()
	}
	halt := every(pass)
	alice := &Person{Name: "alice", Dir: filepath.Join(t.TempDir(), "alice"), Store: st,
		Poll: wait.Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond, Limit: 10 * time.Second}}
	j, err := alice.Join(context.Background())
	require.NoError(t, err)
	assert.Equal(t, EngineOpenVPN, j.Engine)
	for _, want := range []string{"client\n", "dev cnsmo0\n", "dev-type tap\n", "remote 198.19.1.10 1194\n", "<ca>\n-----BEGIN CERTIFICATE-----", "<cert>\n-----BEGIN CERTIFICATE-----", "<key>\n-----BEGIN"} {
		assert.Contains(t, j.Config, want)
	}
	assert.NotContains(t, j.Config, "user nobody")
	for _, v := range st.Sets() {
		assert.NotContains(t, v, "PRIVATE KEY", "no private key in the run")
	}
	issued := s.ca.IssuedTo("alice.users")
	require.Len(t, issued, 1)
	mu.Lock()
	ccd := last.files[path.Join(last.cfg.CCDDir(), "alice.users")]
	mu.Unlock()
	assert.Contains(t, ccd, "ifconfig-push "+j.Self.V4.String()+" ")

	require.NoError(t, alice.Leave(context.Background()))
	halt()
	issued = s.ca.IssuedTo("alice.users")
	require.True(t, issued[0].Revoked, "the certificate is revoked")
	crl, err := s.ca.CRLPEM()
	require.NoError(t, err)
	serials, err := s.ca.RevokedSerials(crl)
	require.NoError(t, err)
	assert.Contains(t, serials, issued[0].Serial)

	// Joining again (a new key, a new identity: the old ones were deleted) works.
	halt = every(pass)
	j2, err := alice.Join(context.Background())
	require.NoError(t, err)
	halt()
	assert.Len(t, s.ca.IssuedTo("alice.users"), 2)
	assert.NotEqual(t, j.Cert, j2.Cert)
}

// A person's old grant, replayed in a slot after the person left, names nobody: members take
// people from the newest signed roster only (else alice.users would name the next person's
// address).
func TestReplayedGrantOfAPersonThatLeftNamesNobody(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	alice := l.person("alice", l.st)
	j, err := alice.Join(context.Background())
	require.NoError(t, err)
	old := l.grant(j.Slot)
	require.NoError(t, alice.Leave(context.Background()))
	bob := l.person("bob", l.st)
	jb, err := bob.Join(context.Background())
	require.NoError(t, err)
	require.Equal(t, j.Self.V4, jb.Self.V4, "bob gets the address alice freed")
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserGrant(8), old) })
	l.halt()
	hosts := filepath.Join(t.TempDir(), "hosts")
	n := NewNames(role.Env{Params: l.st, Instance: "web.1", StateDir: t.TempDir(), Log: zerolog.Nop()}, hosts)
	require.NoError(t, n.member(l.snap()))
	b, err := os.ReadFile(hosts)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "alice.users")
	assert.Contains(t, string(b), jb.Self.V4.String()+"\tbob.users.cnsmo.internal bob.users\n")
}

// A grant that merely vanishes is no leave: the person's tool keeps its keys and waits for the
// server's signed record.
func TestLeaveWaitsForTheServersRecord(t *testing.T) {
	l := newPeopleLab(t)
	l.serve()
	alice := l.person("alice", l.st)
	j, err := alice.Join(context.Background())
	require.NoError(t, err)
	l.halt() // the server does not answer; a VM blanks the grant
	l.st.Edit(func(s *roletest.Snapshot) { s.Put("cnsmo.1:"+params.UserGrant(j.Slot), "") })
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	require.Error(t, alice.Leave(ctx))
	_, err = os.Stat(filepath.Join(alice.Dir, personIdentity))
	require.NoError(t, err, "the identity is kept: only it can prove the leave")
	require.True(t, strings.HasPrefix(l.st.Value("cnsmo.1:"+params.UserSlot(j.Slot)), leaveMagic), "the leave went to the recorded slot")
	l.serve()
	require.NoError(t, alice.Leave(context.Background()))
	_, err = os.Stat(alice.Dir)
	assert.True(t, os.IsNotExist(err))
}

func TestParseRoster(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	pub := key.Public().(ed25519.PublicKey)
	v4, v6, _ := ParsePrefixes("198.19.200.0/24", "2001:db8:c5e0::/64")
	r := Roster{Gen: 3, Server: "cnsmo.1", Engine: EngineOpenVPN, Device: "tap", V4: v4, V6: v6, Domain: "cnsmo.internal",
		CA: strings.Repeat("ab", 32), Endpoint: "198.19.1.10:1194", People: []string{"alice", "bob"}}
	got, err := ParseRoster(r.Sign(key), pub)
	require.NoError(t, err)
	assert.Equal(t, r, got)
	v := r.Sign(key)
	edit := func(o, n string) string { return strings.Replace(v, o, n, 1) }
	for name, bad := range map[string]string{
		"other key":       r.Sign(newID(t)),
		"changed":         edit("gen=3", "gen=4"),
		"unsorted people": Roster{Gen: 1, Server: "c.1", Engine: EngineWireGuard, Device: "tun", V4: v4, V6: v6, Domain: "d", People: []string{"bob", "alice"}}.Sign(key),
		"twice":           Roster{Gen: 1, Server: "c.1", Engine: EngineWireGuard, Device: "tun", V4: v4, V6: v6, Domain: "d", People: []string{"a", "a"}}.Sign(key),
		"endpoint":        Roster{Gen: 1, Server: "c.1", Engine: EngineOpenVPN, Device: "tun", V4: v4, V6: v6, Domain: "d", Endpoint: "[x\nremote evil]:1"}.Sign(key),
		"ca":              edit("ca=abab", "ca=zzab"),
		"engine":          edit("eng=openvpn", "eng=ipsec"),
		"public prefix":   Roster{Gen: 1, Server: "c.1", Engine: EngineWireGuard, Device: "tun", V4: netip.MustParsePrefix("0.0.0.0/0"), V6: v6, Domain: "d"}.Sign(key),
		"no sig":          strings.Split(v, " sig=")[0],
	} {
		_, err := ParseRoster(bad, pub)
		assert.ErrorIs(t, err, ErrBadRoster, name)
	}
}

func FuzzParseRoster(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	v4, v6, _ := ParsePrefixes("", "")
	f.Add(Roster{Gen: 1, Server: "cnsmo.1", Engine: EngineWireGuard, Device: "tap", V4: v4, V6: v6, Domain: DefaultDomain}.Sign(key))
	f.Add("cnsmo-roster1 gen=1 srv=a eng=openvpn dev=tap v4=1.2.3.0/24 v6=::/64 domain=x ca=- ep=- people=- sig=")
	pub := key.Public().(ed25519.PublicKey)
	f.Fuzz(func(t *testing.T, v string) {
		r, err := ParseRoster(v, pub)
		if err != nil {
			return
		}
		body, _, _ := strings.Cut(v, " sig=")
		require.Equal(t, body, r.body(), "what parses is canonical")
	})
}

// Whatever a VM writes around the CA or the certificate, only the verified certificates, re-encoded,
// go into a person's .ovpn.
func TestOnePEMDropsEverythingElse(t *testing.T) {
	ca, err := pki.LoadOrCreateCA(filepath.Join(t.TempDir(), "ca"))
	require.NoError(t, err)
	good := string(ca.CertPEM())
	out, err := onePEM(good + "</ca>\nscript-security 2\nup /bin/sh\n<ca>\n" + good)
	require.NoError(t, err)
	assert.Equal(t, good, out)
	assert.NotContains(t, out, "script-security")
	_, err = onePEM("garbage")
	require.Error(t, err)
}
