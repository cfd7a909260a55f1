package nuvla2_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
)

// The id of a parameter is Nuvla's: the spec's check value.
func TestParamIDIsNuvlas(t *testing.T) {
	assert.Equal(t, "deployment-parameter/15a25726-573d-333f-a972-b8ce7e1d89d3",
		nuvla2.ParamID("deployment/324c6138-aaaa-bbbb-cccc-af3ad15815db", "", "hostname"))
	assert.Equal(t, "deployment-parameter/f8579f7f-75f4-308b-b082-74e803451113",
		nuvla2.ParamID("deployment/324c6138-aaaa-bbbb-cccc-af3ad15815db", "machine", "param1"))
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// Every variable is checked, and the error names it.
func TestConfigFromEnvNamesTheVariable(t *testing.T) {
	good := map[string]string{"NUVLA_ENDPOINT": "https://nuvla.io/", "NUVLA_DEPLOYMENT_ID": "deployment/6b1f2c3a-0000-4000-8000-000000000001",
		"NUVLA_API_KEY": "credential/k", "NUVLA_API_SECRET": "s", "NUVLA_DEPLOYMENT_GROUP_ID": "deployment-set/g1", "CNSMO_NODE": "web"}
	c, err := nuvla2.ConfigFromEnv(env(good))
	require.NoError(t, err)
	assert.Equal(t, "https://nuvla.io", c.Endpoint)
	assert.True(t, nuvla2.Present(env(good)))
	assert.False(t, nuvla2.Present(env(nil)))
	for k, bad := range map[string]string{
		"NUVLA_ENDPOINT": "nuvla.io", "NUVLA_DEPLOYMENT_ID": "6b1f", "NUVLA_API_SECRET": "", "NUVLA_DEPLOYMENT_GROUP_ID": "group/x",
		"CNSMO_NODE": "web 1", "CNSMO_HUB": "deployment/x'y",
	} {
		m := map[string]string{}
		for kk, v := range good {
			m[kk] = v
		}
		m[k] = bad
		_, err := nuvla2.ConfigFromEnv(env(m))
		require.Error(t, err, k)
		assert.Contains(t, err.Error(), strings.TrimSuffix(k, "_SECRET"), "the error names %s: %v", k, err)
	}
	user := map[string]string{"CNSMO_NUVLA_API_KEY": "credential/user", "CNSMO_NUVLA_API_SECRET": "us"}
	for k, v := range good {
		user[k] = v
	}
	c, err = nuvla2.ConfigFromEnv(env(user))
	require.NoError(t, err)
	assert.Equal(t, "credential/user", c.APIKey, "a user's key takes the deployment's place")
}

// group is a mocknuvla serving the Nuvla 2 API with a group of one server (cnsmo) and two web members.
type group struct {
	mock    *mocknuvla.Server
	url     string
	g       *mocknuvla.Nuvla2Group
	members map[string]mocknuvla.Nuvla2Member
}

func newGroup(t *testing.T, userRights bool, staleness time.Duration) *group {
	t.Helper()
	m := mocknuvla.New(mocknuvla.Options{API: "nuvla2", Staleness: staleness, Logger: zerolog.Nop()})
	srv := httptest.NewServer(m)
	t.Cleanup(srv.Close)
	d, err := mocknuvla.ParseDeployment([]byte(`{"name":"app","nodes":[{"name":"cnsmo","cloud":"cloud-a","multiplicity":1},{"name":"web","cloud":"cloud-b","multiplicity":2}]}`))
	require.NoError(t, err)
	g, err := m.CreateGroup(d, userRights)
	require.NoError(t, err)
	gr := &group{mock: m, url: srv.URL, g: g, members: map[string]mocknuvla.Nuvla2Member{}}
	for _, mb := range g.Members {
		gr.members[mb.Name] = mb
		m.SetNuvla2Param(mb.Deployment, "", "hostname", "198.18.7."+map[string]string{"cnsmo.1": "1", "web.1": "11", "web.2": "12"}[mb.Name])
	}
	return gr
}

func (g *group) client(t *testing.T, name string, retry time.Duration) *nuvla2.Client {
	t.Helper()
	mb := g.members[name]
	c, err := nuvla2.New(nuvla2.Config{Endpoint: g.url, Deployment: mb.Deployment, APIKey: mb.APIKey, APISecret: mb.APISecret,
		Group: g.g.ID, Node: mb.Node}, nuvla2.WithRetry(retry))
	require.NoError(t, err)
	return c
}

func (g *group) open(t *testing.T, name string) *nuvla2.Store {
	t.Helper()
	st, err := nuvla2.Open(context.Background(), g.client(t, name, 5*time.Second), name == "cnsmo.1")
	require.NoError(t, err)
	require.NoError(t, st.Announce(context.Background()))
	return st
}

// The server opens the hub; members find it through the group and join; a snapshot holds the
// members, their values, the server's identity as every member's mapped input, and who left.
func TestStoreJoinsAndReads(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	require.Equal(t, g.members["cnsmo.1"].Deployment, srv.Hub())
	web1, web2 := g.open(t, "web.1"), g.open(t, "web.2")
	require.Equal(t, srv.Hub(), web1.Hub(), "found through the group")
	require.Equal(t, nuvla2.MemberName("web", g.members["web.1"].Deployment), web1.Self())
	require.True(t, strings.HasPrefix(web1.Self(), "web."))

	require.NoError(t, srv.Set(ctx, srv.Self(), params.ServerInstanceID, srv.Self()))
	require.NoError(t, web1.Set(ctx, web1.Self(), params.FWRules, `[]`))
	require.NoError(t, web1.Set(ctx, web1.Self(), params.FWRules, `[{"policy":"denyall"}]`), "an update of an existing value")
	require.NoError(t, srv.Set(ctx, role.Deployment, params.URLService, "198.18.7.1:8080"))

	snap, err := web2.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"cnsmo", "web"}, snap.Nodes())
	assert.Equal(t, []string{srv.Self()}, snap.Instances("cnsmo"))
	assert.ElementsMatch(t, []string{web1.Self(), web2.Self()}, snap.Instances("web"))
	assert.Equal(t, `[{"policy":"denyall"}]`, snap.Get(web1.Self(), params.FWRules))
	assert.Equal(t, "198.18.7.11", snap.Get(web1.Self(), params.Hostname), "the hostname Nuvla wrote, published at join")
	assert.Equal(t, srv.Self(), snap.Get(web2.Self(), params.ServerInstanceID), "the mapped input")
	assert.Equal(t, "198.18.7.1:8080", snap.Get(role.Deployment, params.URLService))
	assert.Equal(t, web2.Self(), snap.Self())
	_, aborted := snap.Aborted()
	assert.False(t, aborted)

	v, err := web2.Get(ctx, web1.Self(), params.FWRules)
	require.NoError(t, err)
	assert.Equal(t, `[{"policy":"denyall"}]`, v)
	_, err = web2.Get(ctx, web1.Self(), params.VPNAddress)
	assert.ErrorIs(t, err, role.ErrNotSet)

	// A goodbye written by another member releases nobody: the server checks the deployment.
	require.NoError(t, web2.Set(ctx, web1.Self(), nuvla2.KeyState, nuvla2.Left))
	snap, err = srv.Read(ctx)
	require.NoError(t, err)
	assert.False(t, snap.Gone(web1.Self()), "a forged goodbye: web.1's deployment still runs")
	snap, err = web2.Read(ctx)
	require.NoError(t, err)
	assert.True(t, snap.Gone(web1.Self()), "a member takes a goodbye as said")

	// A real leave: the deployment stops, the member says goodbye; the server sees it at once.
	require.NoError(t, g.mock.SetDeploymentState(g.members["web.1"].Deployment, "STOPPING"))
	require.NoError(t, web1.Leave(ctx))
	snap, err = srv.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{web2.Self()}, snap.Instances("web"))
	assert.True(t, snap.Gone(web1.Self()))
	assert.False(t, snap.Gone(web2.Self()))
	assert.True(t, snap.Gone("web.nobody"))
}

// An abort is a value under the hub: every snapshot says so, and a member polling one value sees
// it within two polls; the first reason stays. A stopping hub counts as an abort.
func TestAbortIsSeenByPollingAgents(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	web1 := g.open(t, "web.1")
	require.NoError(t, srv.Set(ctx, srv.Self(), params.Generation, "3"))
	require.NoError(t, web1.Abort(ctx, "cnsmo agent on web.1: bad rule"))
	require.NoError(t, srv.Abort(ctx, "a second reason"))
	seen := false
	for i := 0; i < 2 && !seen; i++ {
		_, err := web1.Get(ctx, srv.Self(), params.Generation)
		seen = errors.Is(err, role.ErrAborted)
	}
	assert.True(t, seen, "an abort is seen within two polls")
	snap, err := srv.Read(ctx)
	require.NoError(t, err)
	reason, aborted := snap.Aborted()
	assert.True(t, aborted)
	assert.Equal(t, "cnsmo agent on web.1: bad rule", reason)

	g2 := newGroup(t, true, -1)
	srv2 := g2.open(t, "cnsmo.1")
	require.NoError(t, g2.mock.SetDeploymentState(srv2.Hub(), "STOPPING"))
	snap, err = srv2.Read(ctx)
	require.NoError(t, err)
	reason, aborted = snap.Aborted()
	assert.True(t, aborted)
	assert.Contains(t, reason, "STOPPING")
}

// Without user rights a member's key sees only its own deployment: it cannot reach the hub, and
// the error says which right is missing and how to grant it.
func TestMissingRightsAreExplained(t *testing.T) {
	g := newGroup(t, false, -1)
	_, err := nuvla2.Open(context.Background(), g.client(t, "cnsmo.1", time.Second), true)
	require.NoError(t, err, "the server writes under its own deployment")
	_, err = nuvla2.Open(context.Background(), g.client(t, "web.1", time.Second), false)
	require.ErrorIs(t, err, nuvla2.ErrNoRights)
	assert.Contains(t, err.Error(), "requires-user-rights: true")
	c := g.client(t, "web.1", time.Second)
	cfg := c.Config()
	cfg.Hub = g.members["cnsmo.1"].Deployment
	c2, err := nuvla2.New(cfg)
	require.NoError(t, err)
	_, err = nuvla2.Open(context.Background(), c2, false)
	require.ErrorIs(t, err, nuvla2.ErrNoRights, "named by CNSMO_HUB: a 403 on the hub")
}

// A bad key is refused at login with a typed error; nothing is retried.
func TestBadKeyIsRefused(t *testing.T) {
	g := newGroup(t, true, -1)
	mb := g.members["web.1"]
	c, err := nuvla2.New(nuvla2.Config{Endpoint: g.url, Deployment: mb.Deployment, APIKey: mb.APIKey, APISecret: "wrong", Node: "web"})
	require.NoError(t, err)
	_, err = c.Get(context.Background(), nuvla2.ParamID(mb.Deployment, "", "hostname"))
	require.ErrorIs(t, err, nuvla2.ErrNoSession)
	assert.NotContains(t, err.Error(), "wrong", "no secret in an error")
}

// A search lags an edit (the mock's staleness, as Elasticsearch's refresh); a read by id does not.
func TestSearchIsStaleAndGetIsNot(t *testing.T) {
	g := newGroup(t, true, 500*time.Millisecond)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	searched := func() string {
		s, err := srv.Read(ctx)
		require.NoError(t, err)
		return s.Get(srv.Self(), params.Generation)
	}
	// A write followed at once by a search: the search shows the value of the last refresh. (A
	// refresh may fall between the two, rarely: then the next value is tried.)
	stale := false
	for i := 1; i <= 5 && !stale; i++ {
		old, cur := strconv.Itoa(i), strconv.Itoa(i+1)
		require.NoError(t, srv.Set(ctx, srv.Self(), params.Generation, old))
		require.Eventually(t, func() bool { return searched() == old }, 5*time.Second, 50*time.Millisecond, "refreshed into searches")
		require.NoError(t, srv.Set(ctx, srv.Self(), params.Generation, cur))
		stale = searched() == old
		v, err := srv.Get(ctx, srv.Self(), params.Generation)
		require.NoError(t, err)
		require.Equal(t, cur, v, "by id: at once")
		require.Eventually(t, func() bool { return searched() == cur }, 5*time.Second, 50*time.Millisecond, "then the search shows it")
	}
	assert.True(t, stale, "the search showed the old value")
}

// 5xx answers and latency are retried within the budget (never a POST).
func TestRetriesThrough5xx(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	g.mock.SetFaults("", mocknuvla.Faults{Error5xxRatio: 0.3, Latency: 20 * time.Millisecond})
	for i := 0; i < 10; i++ {
		require.NoError(t, srv.Set(ctx, srv.Self(), params.Generation, "x"))
		_, err := srv.Read(ctx)
		require.NoError(t, err)
	}
}

var _ = http.StatusOK

// A member that starts before the server waits for the server's cnsmo.hub, then joins.
func TestMemberStartedFirstWaitsForTheServer(t *testing.T) {
	g := newGroup(t, true, -1)
	got := make(chan error, 1)
	var web *nuvla2.Store
	go func() {
		st, err := nuvla2.Open(context.Background(), g.client(t, "web.1", 5*time.Second), false)
		web = st
		got <- err
	}()
	require.Eventually(t, func() bool { return g.mock.Counters()["PUT /api/deployment-parameter"] >= 2 }, 10*time.Second, 20*time.Millisecond,
		"the member searches for the server again")
	select {
	case err := <-got:
		t.Fatalf("the member did not wait for the server: %v", err)
	default:
	}
	srv := g.open(t, "cnsmo.1")
	select {
	case err := <-got:
		require.NoError(t, err)
		require.Equal(t, srv.Hub(), web.Hub())
	case <-time.After(20 * time.Second):
		t.Fatal("the member never found the server")
	}
}

// The server declares the group's nodes (CNSMO_NODES, by default the load balancer's): a node is
// known before its first member joins.
func TestDeclaredNodes(t *testing.T) {
	for in, want := range map[[2]string]string{
		{"", "web"}: "web", {"", `["web","api"]`}: "web,api", {"web,db", "web"}: "web,db", {"", ""}: "", {"", "web 1,db"}: "db",
	} {
		assert.Equal(t, want, nuvla2.DeclaredNodes(env(map[string]string{"CNSMO_NODES": in[0], "CNSMO_LB_NODE": in[1]})), in)
	}
	g := newGroup(t, true, -1)
	srv := g.open(t, "cnsmo.1")
	require.NoError(t, srv.PublishInputs(context.Background(), env(map[string]string{"CNSMO_LB_NODE": "web", "CNSMO_SERVICES": `["lb"]`})))
	snap, err := srv.Read(context.Background())
	require.NoError(t, err)
	assert.Equal(t, []string{"cnsmo", "web"}, snap.Nodes(), "web is known before a member joins")
	assert.Empty(t, snap.Instances("web"))
	assert.Equal(t, `["lb"]`, snap.Get(srv.Self(), params.ServicesEnable), "the server's input from its environment")
}

// A member whose deployment stopped without a goodbye (its VM vanished) has left, as the server
// sees it: its name is released, the server stops counting it.
func TestServerReleasesAStoppedMember(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	srv.StatesEvery = time.Nanosecond
	web1, web2 := g.open(t, "web.1"), g.open(t, "web.2")
	snap, err := srv.Read(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{web1.Self(), web2.Self()}, snap.Instances("web"))
	require.NoError(t, g.mock.SetDeploymentState(g.members["web.2"].Deployment, "STOPPED"))
	snap, err = srv.Read(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{web1.Self()}, snap.Instances("web"))
	assert.True(t, snap.Gone(web2.Self()))
	snap, err = web1.Read(ctx)
	require.NoError(t, err)
	assert.False(t, snap.Gone(web2.Self()), "a member reads no other deployment's state: the server decides")
}

// A member restarted while its deployment stops, or once the deployment is aborted, does not join
// again (its container's restart policy may start it once more).
func TestNoRejoinWhenStoppingOrAborted(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	web1 := g.open(t, "web.1")
	require.NoError(t, web1.Leave(ctx))
	require.NoError(t, g.mock.SetDeploymentState(g.members["web.1"].Deployment, "STOPPING"))
	_, err := nuvla2.Open(ctx, g.client(t, "web.1", time.Second), false)
	require.ErrorIs(t, err, nuvla2.ErrStopping)
	snap, err := srv.Read(ctx)
	require.NoError(t, err)
	assert.True(t, snap.Gone(web1.Self()), "still gone: not joined again")

	require.NoError(t, srv.Abort(ctx, "bad input"))
	_, err = nuvla2.Open(ctx, g.client(t, "web.2", time.Second), false)
	require.ErrorIs(t, err, role.ErrAborted)
}

// A member cannot have another released by pointing its cnsmo.deployment at a stopped deployment:
// a name carries its deployment's uuid prefix, and a value that does not match it is ignored.
func TestAForgedDeploymentReleasesNobody(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	srv.StatesEvery = time.Nanosecond
	web1, web2 := g.open(t, "web.1"), g.open(t, "web.2")
	require.NoError(t, g.mock.SetDeploymentState(g.members["web.2"].Deployment, "STOPPED"))
	// web.2's deployment is stopped; web.1's name now claims it (written by web.2's key: any member can).
	require.NoError(t, web2.Set(ctx, web1.Self(), nuvla2.KeyDeployment, g.members["web.2"].Deployment))
	snap, err := srv.Read(ctx)
	require.NoError(t, err)
	assert.False(t, snap.Gone(web1.Self()), "the forged deployment does not match web.1's name: ignored")
	assert.True(t, snap.Gone(web2.Self()), "web.2 itself stopped")
}

// A member cannot pose as the server: the server's name is an anchor only the server may write;
// what a member writes under another's name, or a member claiming the hub's deployment, changes
// nothing a member follows.
func TestNoMemberPosesAsTheServer(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	web1, web2 := g.open(t, "web.1"), g.open(t, "web.2")
	require.NoError(t, web2.Set(ctx, web1.Self(), params.ServerInstanceID, web2.Self()))
	require.NoError(t, web2.Set(ctx, "evil.1", nuvla2.KeyDeployment, srv.Hub()))
	require.NoError(t, web2.Set(ctx, "evil.1", params.ServerInstanceID, "evil.1"))
	err := web2.Set(ctx, role.Deployment, nuvla2.KeyServer, web2.Self())
	require.ErrorIs(t, err, nuvla2.ErrForbidden, "only the server writes its anchor")
	for i := 0; i < 5; i++ {
		snap, err := web1.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, srv.Self(), snap.Get(web1.Self(), params.ServerInstanceID))
	}
}

// A second deployment claiming to be the hub makes discovery fail with a clear message rather
// than pick one.
func TestTwoHubsAreRefused(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	g.open(t, "cnsmo.1")
	web1 := g.client(t, "web.1", time.Second)
	dep := g.members["web.1"].Deployment
	require.NoError(t, web1.Set(ctx, dep, "", nuvla2.KeyHub, dep, nuvla2.ACL{ViewData: []string{g.g.ID}, EditData: []string{g.g.ID}}))
	_, err := nuvla2.Open(ctx, g.client(t, "web.2", time.Second), false)
	require.ErrorContains(t, err, "claim to be the CNSMO server")
}

// A member cannot have another released by pointing its name at a deployment id made up with the
// same uuid prefix (one that does not exist): the server pinned the first deployment it saw.
func TestAMadeUpDeploymentReleasesNobody(t *testing.T) {
	g := newGroup(t, true, -1)
	ctx := context.Background()
	srv := g.open(t, "cnsmo.1")
	srv.StatesEvery = time.Nanosecond
	web1, web2 := g.open(t, "web.1"), g.open(t, "web.2")
	_, err := srv.Read(ctx) // the server sees web.1 with its deployment
	require.NoError(t, err)
	real := g.members["web.1"].Deployment
	fake := real[:len("deployment/")+8] + "-0000-4000-8000-000000000000"
	for _, forged := range []string{fake, real[:len("deployment/")+8]} {
		require.NoError(t, web2.Set(ctx, web1.Self(), nuvla2.KeyDeployment, forged))
		require.NoError(t, web2.Set(ctx, web1.Self(), nuvla2.KeyState, nuvla2.Left))
		snap, err := srv.Read(ctx)
		require.NoError(t, err)
		assert.False(t, snap.Gone(web1.Self()), "forged %s", forged)
	}
}
