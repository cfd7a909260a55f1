package mocknuvla

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
)

// The Nuvla 2 API (--api nuvla2): the subset cnsmo's Nuvla 2 backend uses, with the real server's
// behaviour from ../shared/spec/nuvla2.md: api-key sessions (cookie; 403, never 401),
// deployment-parameter create/get/put/delete by computed id and search (GET, or PUT with a form),
// the CIMI filter subset, JSON errors {"status","message","resource-id"}, rights (a deployment's key
// sees only its deployment unless its application requires user rights: then it acts with its
// group's), deployments with a state and a stop action, groups, and search staleness (edits seen by
// searches only after a delay, by id at once).

// Nuvla2CookieName is the session cookie of today's Nuvla (the client keeps whatever comes back).
const Nuvla2CookieName = "com.com.sixsq.nuvla.cookie"

// DefaultStaleness is the search index's refresh interval: a search shows a parameter's old value
// until the next refresh after an edit (at most this long).
const DefaultStaleness = time.Second

type n2deployment struct {
	id         string // deployment/<uuid>
	name       string // the deployment file's instance name (web.1)
	node       string
	state      string
	group      string // deployment-set/<uuid>
	userRights bool   // the application has requires-user-rights: its key acts with its group's rights
	key        string // credential/<uuid>
	owner      string // user/<name>: who started it (the ACL's owner; the user's own key sees it)
}

type n2acl struct {
	Owners   []string `json:"owners,omitempty"`
	ViewData []string `json:"view-data,omitempty"`
	EditData []string `json:"edit-data,omitempty"`
	EditACL  []string `json:"edit-acl,omitempty"`
}

type n2param struct {
	id, parent, nodeID, name, description string
	value                                 *string // nil: no value
	prev                                  *string // what searches show until changed+staleness
	changed                               time.Time
	acl                                   n2acl
	created, updated                      time.Time
	createdBy, updatedBy                  string
}

type n2state struct {
	deployments map[string]*n2deployment // by id
	groups      map[string][]string      // deployment-set id -> member deployment ids
	params      map[string]*n2param      // by id
	creds       map[string]n2cred        // api key -> secret, deployment
	sessions    map[string][]string      // cookie -> claims
	staleness   time.Duration
}

// n2cred is an API key: a deployment's (made at its start), or a user's own (user set).
type n2cred struct{ secret, deployment, user string }

func newN2State(staleness time.Duration) *n2state {
	return &n2state{deployments: map[string]*n2deployment{}, groups: map[string][]string{}, params: map[string]*n2param{},
		creds: map[string]n2cred{}, sessions: map[string][]string{}, staleness: staleness}
}

// Nuvla2Member is one member deployment of a group, as the env files describe it.
type Nuvla2Member struct {
	Name       string `json:"name"` // the deployment file's instance name
	Node       string `json:"node"`
	Deployment string `json:"deployment"` // deployment/<uuid>
	APIKey     string `json:"apiKey"`
	APISecret  string `json:"apiSecret"`
}

// Nuvla2Group describes a created deployment group.
type Nuvla2Group struct {
	ID      string         `json:"id"` // deployment-set/<uuid>
	Members []Nuvla2Member `json:"members"`
}

// CreateGroup creates a deployment group from a deployment file: one STARTED deployment per
// instance of every node (the node named cnsmo is the CNSMO server's), each with its API key and
// its hostname parameter, as Nuvla writes it. With userRights the applications require user rights
// (their keys act with the group's rights).
func (s *Server) CreateGroup(d *Deployment, userRights bool) (*Nuvla2Group, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := &Nuvla2Group{ID: "deployment-set/" + newUUID()}
	owner := "user/" + d.Username
	if d.Username == "" {
		owner = "user/mocknuvla"
	}
	for _, n := range d.Nodes {
		for i := 1; i <= n.Multiplicity; i++ {
			dep := &n2deployment{id: "deployment/" + newUUID(), name: fmt.Sprintf("%s.%d", n.Name, i), node: n.Name,
				state: "STARTED", group: g.ID, userRights: userRights, key: "credential/" + newUUID(), owner: owner}
			secret := randomHex(16)
			s.n2.deployments[dep.id] = dep
			s.n2.groups[g.ID] = append(s.n2.groups[g.ID], dep.id)
			s.n2.creds[dep.key] = n2cred{secret: secret, deployment: dep.id}
			g.Members = append(g.Members, Nuvla2Member{Name: dep.name, Node: n.Name, Deployment: dep.id, APIKey: dep.key, APISecret: secret})
		}
	}
	return g, nil
}

// SetNuvla2Param writes a parameter as Nuvla itself (or the admin API) does: no rights checked; a
// new parameter gets its deployment's ACL (the group may edit it).
func (s *Server) SetNuvla2Param(parent, nodeID, name, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := nuvla2.ParamID(parent, nodeID, name)
	p := s.n2.params[id]
	now := time.Now()
	if p == nil {
		// The deployment's ACL, as Nuvla gives the parameters it writes: its group may edit them.
		acl := n2acl{Owners: []string{"group/nuvla-admin"}, EditACL: []string{parent}}
		if d := s.n2.deployments[parent]; d != nil && d.group != "" {
			acl.EditData = []string{d.group}
		}
		p = &n2param{id: id, parent: parent, nodeID: nodeID, name: name, created: now, createdBy: "group/nuvla-admin", acl: acl}
		s.n2.params[id] = p
	}
	s.n2.edit(p, &value, "group/nuvla-admin", now)
}

// Nuvla2Param returns a parameter's value as a GET by id sees it (ok false: missing or no value).
func (s *Server) Nuvla2Param(parent, nodeID, name string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.n2.params[nuvla2.ParamID(parent, nodeID, name)]
	if p == nil || p.value == nil {
		return "", false
	}
	return *p.value, true
}

// SetDeploymentState moves a deployment to a state (STOPPING, STOPPED, ERROR…), as Nuvla's jobs do.
func (s *Server) SetDeploymentState(id, state string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.n2.deployments[id]
	if d == nil {
		return &StatusError{Code: http.StatusNotFound, Detail: id + " not found"}
	}
	d.state = state
	return nil
}

// The search index is refreshed every staleness (as Elasticsearch's periodic refresh): a search
// shows each parameter as it was at the last refresh; a read by id shows it now.
func (st *n2state) lastRefresh(now time.Time) time.Time { return now.Truncate(st.staleness) }

func (st *n2state) edit(p *n2param, v *string, by string, now time.Time) {
	if st.staleness > 0 && p.changed.Before(st.lastRefresh(now)) {
		p.prev = p.value // the value the last refresh indexed: searches show it until the next one
	}
	p.value, p.changed, p.updated, p.updatedBy = v, now, now, by
}

// searchValue is the value a search shows now.
func (st *n2state) searchValue(p *n2param, now time.Time) *string {
	if st.staleness > 0 && !p.changed.Before(st.lastRefresh(now)) {
		return p.prev
	}
	return p.value
}

func (p *n2param) json(v *string) map[string]any {
	m := map[string]any{"id": p.id, "resource-type": "deployment-parameter", "parent": p.parent, "name": p.name,
		"acl": p.acl, "created": p.created.UTC().Format(time.RFC3339Nano), "updated": p.updated.UTC().Format(time.RFC3339Nano),
		"created-by": p.createdBy, "updated-by": p.updatedBy}
	if p.nodeID != "" {
		m["node-id"] = p.nodeID
	}
	if v != nil {
		m["value"] = *v
	}
	if p.description != "" {
		m["description"] = p.description
	}
	return m
}

// n2error answers Nuvla's JSON error.
func n2error(w http.ResponseWriter, code int, msg, id string) {
	body := map[string]any{"status": code, "message": msg}
	if id != "" {
		body["resource-id"] = id
	}
	writeJSON(w, code, body)
}

// claims are the principals a session acts as.
func (s *Server) n2claims(r *http.Request) ([]string, bool) {
	if s.noAuth {
		return []string{"group/nuvla-admin"}, true
	}
	for _, c := range r.Cookies() {
		if c.Name != Nuvla2CookieName {
			continue
		}
		s.mu.Lock()
		cl, ok := s.n2.sessions[c.Value]
		s.mu.Unlock()
		return cl, ok
	}
	return nil, false
}

func hasAny(claims []string, lists ...[]string) bool {
	for _, l := range lists {
		for _, c := range claims {
			if slices.Contains(l, c) {
				return true
			}
		}
	}
	return false
}

func (st *n2state) canViewDeployment(claims []string, d *n2deployment) bool {
	return slices.Contains(claims, "group/nuvla-admin") || slices.Contains(claims, d.id) || d.group != "" && slices.Contains(claims, d.group) ||
		d.owner != "" && slices.Contains(claims, d.owner)
}

func (st *n2state) canView(claims []string, p *n2param) bool {
	return slices.Contains(claims, "group/nuvla-admin") || hasAny(claims, p.acl.Owners, p.acl.ViewData, p.acl.EditData, p.acl.EditACL)
}

func (st *n2state) canEdit(claims []string, p *n2param) bool {
	return slices.Contains(claims, "group/nuvla-admin") || hasAny(claims, p.acl.Owners, p.acl.EditData, p.acl.EditACL)
}

// canEditACL: changing a parameter's ACL, or deleting it, takes more than edit-data (inferred from
// Nuvla's ACL model: owners and edit-acl hold every right).
func (st *n2state) canEditACL(claims []string, p *n2param) bool {
	return slices.Contains(claims, "group/nuvla-admin") || hasAny(claims, p.acl.Owners, p.acl.EditACL)
}

// serveNuvla2 serves the Nuvla 2 routes.
func (s *Server) serveNuvla2(w http.ResponseWriter, r *http.Request, rt route) {
	if rt.kind == "n2session" {
		s.serveN2Session(w, r)
		return
	}
	claims, ok := s.n2claims(r)
	if !ok {
		n2error(w, http.StatusForbidden, "invalid credentials for '"+strings.TrimPrefix(r.URL.Path, "/api/")+"'", "")
		return
	}
	switch rt.kind {
	case "n2params":
		switch r.Method {
		case http.MethodPost:
			s.n2create(w, r, claims)
		case http.MethodGet, http.MethodPut:
			s.n2search(w, r, claims)
		default:
			n2error(w, http.StatusMethodNotAllowed, "invalid method "+r.Method, "")
		}
	case "n2param":
		s.n2param(w, r, claims, "deployment-parameter/"+rt.uuid)
	case "n2deployment":
		s.n2deployment(w, r, claims, "deployment/"+rt.uuid, rt.rest)
	case "n2group":
		s.n2group(w, r, claims, "deployment-set/"+rt.uuid)
	default:
		n2error(w, http.StatusNotFound, "no such route: "+r.URL.Path, "")
	}
}

func (s *Server) serveN2Session(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		n2error(w, http.StatusMethodNotAllowed, "invalid method "+r.Method, "")
		return
	}
	var req sessionRequest
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err == nil {
		err = json.Unmarshal(b, &req)
	}
	if err != nil || req.Template == nil {
		n2error(w, http.StatusBadRequest, `the session request needs {"template":{"href":"session-template/api-key","key":…,"secret":…}}`, "")
		return
	}
	t := req.Template
	s.mu.Lock()
	c, found := s.n2.creds[t.Key]
	d := s.n2.deployments[c.deployment]
	if t.Href != "session-template/api-key" || !found || t.Secret == "" || c.secret != t.Secret || d == nil && c.user == "" {
		s.mu.Unlock()
		n2error(w, http.StatusForbidden, "invalid API key/secret credentials", "")
		return
	}
	var claims []string
	switch {
	case c.user != "": // a user's own key: the user's rights
		claims = []string{c.user, "group/nuvla-user", "group/nuvla-anon"}
	default:
		claims = []string{d.id, "group/nuvla-user", "group/nuvla-anon"}
		if d.userRights && d.group != "" {
			claims = append(claims, d.group)
		}
	}
	token := randomHex(24)
	s.n2.sessions[token] = claims
	s.mu.Unlock()
	id := "session/" + newUUID()
	http.SetCookie(w, &http.Cookie{Name: Nuvla2CookieName, Value: token, Path: "/", Secure: true, HttpOnly: true})
	w.Header().Set("Location", id)
	writeJSON(w, http.StatusCreated, map[string]any{"status": 201, "message": id + " created", "resource-id": id})
}

var (
	n2parentRe = regexp.MustCompile(`^deployment/[0-9a-f]+(-[0-9a-f]+)*$`)
	n2tokenRe  = regexp.MustCompile(`^\S+$`)
)

// n2body reads a JSON object whose attributes are all in allowed (Nuvla's closed spec: 400 else).
func n2body(w http.ResponseWriter, r *http.Request, allowed ...string) (map[string]json.RawMessage, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var m map[string]json.RawMessage
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil || m == nil {
		n2error(w, http.StatusBadRequest, "the body is not a JSON object", "")
		return nil, false
	}
	for k := range m {
		if !slices.Contains(allowed, k) {
			n2error(w, http.StatusBadRequest, "resource does not satisfy defined schema: unknown attribute "+k, "")
			return nil, false
		}
	}
	return m, true
}

func rawString(m map[string]json.RawMessage, k string) (*string, bool) {
	raw, ok := m[k]
	if !ok || string(raw) == "null" {
		return nil, true
	}
	var v string
	if json.Unmarshal(raw, &v) != nil {
		return nil, false
	}
	return &v, true
}

func (s *Server) n2create(w http.ResponseWriter, r *http.Request, claims []string) {
	m, ok := n2body(w, r, "parent", "name", "node-id", "value", "description", "acl")
	if !ok {
		return
	}
	parent, ok1 := rawString(m, "parent")
	name, ok2 := rawString(m, "name")
	nodeID, ok3 := rawString(m, "node-id")
	value, ok4 := rawString(m, "value")
	desc, ok5 := rawString(m, "description")
	var acl n2acl
	if raw, has := m["acl"]; has && json.Unmarshal(raw, &acl) != nil {
		ok5 = false
	}
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || parent == nil || name == nil || !n2parentRe.MatchString(*parent) ||
		!n2tokenRe.MatchString(*name) || nodeID != nil && !n2tokenRe.MatchString(*nodeID) {
		n2error(w, http.StatusBadRequest, "resource does not satisfy defined schema", "")
		return
	}
	node := ""
	if nodeID != nil {
		node = *nodeID
	}
	id := nuvla2.ParamID(*parent, node, *name)
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.n2.deployments[*parent]
	switch {
	case d == nil:
		n2error(w, http.StatusNotFound, *parent+" not found", *parent)
		return
	case !s.n2.canViewDeployment(claims, d):
		n2error(w, http.StatusForbidden, "invalid credentials for '"+*parent+"'", *parent)
		return
	case s.n2.params[id] != nil:
		n2error(w, http.StatusConflict, "conflict with "+id, id)
		return
	}
	if len(acl.Owners) == 0 && len(acl.ViewData) == 0 && len(acl.EditData) == 0 && len(acl.EditACL) == 0 {
		acl.Owners = []string{claims[0]}
	}
	if !slices.Contains(acl.EditACL, *parent) {
		acl.EditACL = append(acl.EditACL, *parent) // the server always lets the parent edit
	}
	now := time.Now()
	p := &n2param{id: id, parent: *parent, nodeID: node, name: *name, value: value, acl: acl, created: now, updated: now,
		createdBy: claims[0], updatedBy: claims[0]}
	if desc != nil {
		p.description = *desc
	}
	s.n2.params[id] = p // a create is refreshed at once: searches see it
	w.Header().Set("Location", id)
	writeJSON(w, http.StatusCreated, map[string]any{"status": 201, "message": id + " created", "resource-id": id})
}

func (s *Server) n2param(w http.ResponseWriter, r *http.Request, claims []string, id string) {
	if r.Method != http.MethodGet && r.Method != http.MethodPut && r.Method != http.MethodDelete {
		n2error(w, http.StatusMethodNotAllowed, "invalid method "+r.Method, id)
		return
	}
	var body map[string]json.RawMessage
	if r.Method == http.MethodPut {
		var ok bool
		if body, ok = n2body(w, r, "parent", "name", "node-id", "value", "description", "acl", "id", "resource-type"); !ok {
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.n2.params[id]
	switch {
	case p == nil:
		n2error(w, http.StatusNotFound, id+" not found", id)
		return
	case !s.n2.canView(claims, p):
		n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"'", id)
		return
	}
	switch r.Method {
	case http.MethodGet:
		writeJSON(w, http.StatusOK, p.json(p.value)) // by id: real time
	case http.MethodDelete:
		if !s.n2.canEditACL(claims, p) {
			n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"'", id)
			return
		}
		delete(s.n2.params, id)
		writeJSON(w, http.StatusOK, map[string]any{"status": 200, "message": id + " deleted", "resource-id": id})
	case http.MethodPut:
		if !s.n2.canEdit(claims, p) {
			n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"'", id)
			return
		}
		v, ok := rawString(body, "value")
		d, okd := rawString(body, "description")
		if !ok || !okd {
			n2error(w, http.StatusBadRequest, "resource does not satisfy defined schema", id)
			return
		}
		if raw, has := body["acl"]; has {
			var acl n2acl
			if json.Unmarshal(raw, &acl) != nil {
				n2error(w, http.StatusBadRequest, "resource does not satisfy defined schema: acl", id)
				return
			}
			if !s.n2.canEditACL(claims, p) {
				n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"' (edit-acl)", id)
				return
			}
			if !slices.Contains(acl.EditACL, p.parent) {
				acl.EditACL = append(acl.EditACL, p.parent) // the parent keeps its right
			}
			p.acl = acl
		}
		_, hasValue := body["value"]
		selected := slices.Contains(strings.Split(r.URL.Query().Get("select"), ","), "value")
		if hasValue || selected { // select=value without a value deletes the attribute
			s.n2.edit(p, v, claims[0], time.Now())
		}
		if d != nil {
			p.description = *d
		}
		writeJSON(w, http.StatusOK, p.json(p.value))
	}
}

// n2search answers a search: filter (repeated: and), orderby (name only), first/last; the results
// are what the caller may see, as searches see them (stale for a while after an edit).
func (s *Server) n2search(w http.ResponseWriter, r *http.Request, claims []string) {
	q := r.URL.Query()
	if r.Method == http.MethodPut {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err == nil {
			q, err = url.ParseQuery(string(b))
		}
		if err != nil {
			n2error(w, http.StatusBadRequest, "the search form cannot be read", "")
			return
		}
	}
	var filters []cimiFilter
	for _, f := range q["filter"] {
		cf, err := parseCIMI(f)
		if err != nil {
			n2error(w, http.StatusBadRequest, err.Error(), "")
			return
		}
		filters = append(filters, cf)
	}
	first, last := 1, 10000
	if v := q.Get("first"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 1 {
			first = n
		}
	}
	if v := q.Get("last"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n >= 0 {
			last = n
		}
	}
	s.mu.Lock()
	now := time.Now()
	var hits []map[string]any
	for _, p := range s.n2.params {
		if !s.n2.canView(claims, p) {
			continue // left out, never a 403
		}
		v := s.n2.searchValue(p, now)
		attrs := map[string]string{"id": p.id, "parent": p.parent, "name": p.name}
		if p.nodeID != "" {
			attrs["node-id"] = p.nodeID
		}
		if v != nil {
			attrs["value"] = *v
		}
		match := true
		for _, f := range filters {
			match = match && f(attrs)
		}
		if match {
			hits = append(hits, p.json(v))
		}
	}
	s.mu.Unlock()
	sort.Slice(hits, func(i, j int) bool {
		a, b := hits[i]["name"].(string)+"\x00"+fmt.Sprint(hits[i]["node-id"]), hits[j]["name"].(string)+"\x00"+fmt.Sprint(hits[j]["node-id"])
		return a < b
	})
	count := len(hits)
	page := []map[string]any{}
	if last > 0 {
		for i := first - 1; i < len(hits) && i < last; i++ {
			page = append(page, hits[i])
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": count, "resource-type": "deployment-parameter-collection",
		"id": "deployment-parameter", "resources": page,
		"operations": []map[string]string{{"rel": "add", "href": "deployment-parameter"}}})
}

// n2deployment serves GET deployment/<uuid> (its state, for whoever may view it) and the stop action.
func (s *Server) n2deployment(w http.ResponseWriter, r *http.Request, claims []string, id, action string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.n2.deployments[id]
	switch {
	case d == nil:
		n2error(w, http.StatusNotFound, id+" not found", id)
		return
	case !s.n2.canViewDeployment(claims, d):
		n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"'", id)
		return
	}
	switch {
	case action == "" && r.Method == http.MethodGet:
		m := map[string]any{"id": d.id, "resource-type": "deployment", "state": d.state}
		if d.owner != "" {
			m["acl"] = map[string]any{"owners": []string{d.owner}}
		}
		if d.group != "" {
			m["deployment-set"] = d.group
		}
		writeJSON(w, http.StatusOK, m)
	case action == "stop" && r.Method == http.MethodPost:
		if !slices.Contains([]string{"PENDING", "STARTING", "UPDATING", "STARTED", "ERROR"}, d.state) {
			n2error(w, http.StatusConflict, "invalid state "+d.state+" for stop", id)
			return
		}
		d.state = "STOPPING"
		job := "job/" + newUUID()
		w.Header().Set("Location", job)
		writeJSON(w, http.StatusAccepted, map[string]any{"status": 202, "message": "starting " + id + " with async " + job,
			"resource-id": id, "location": job})
	default:
		n2error(w, http.StatusMethodNotAllowed, "invalid method "+r.Method, id)
	}
}

// AddNuvla2UserKey makes an API key of user (user/<name>): it acts with that user's rights (the
// deployments the user started, the parameters whose ACL names the user), as a person's own key.
func (s *Server) AddNuvla2UserKey(user string) (key, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	key, secret = "credential/"+newUUID(), randomHex(16)
	s.n2.creds[key] = n2cred{secret: secret, user: user}
	return key, secret
}

// AddMember adds a STARTED deployment of node to a group (a scale out: a new target or edge), as
// the group's bulk job does.
func (s *Server) AddMember(group, node string) (Nuvla2Member, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	members, ok := s.n2.groups[group]
	if !ok {
		return Nuvla2Member{}, &StatusError{Code: http.StatusNotFound, Detail: group + " not found"}
	}
	n, userRights, owner := 0, true, ""
	for _, id := range members {
		d := s.n2.deployments[id]
		owner = d.owner
		if d.node == node {
			n++
			userRights = d.userRights
		}
	}
	dep := &n2deployment{id: "deployment/" + newUUID(), name: fmt.Sprintf("%s.%d", node, n+1), node: node, state: "STARTED",
		group: group, userRights: userRights, key: "credential/" + newUUID(), owner: owner}
	secret := randomHex(16)
	s.n2.deployments[dep.id] = dep
	s.n2.groups[group] = append(members, dep.id)
	s.n2.creds[dep.key] = n2cred{secret: secret, deployment: dep.id}
	return Nuvla2Member{Name: dep.name, Node: node, Deployment: dep.id, APIKey: dep.key, APISecret: secret}, nil
}

// Nuvla2Params returns every parameter under parent ("node-id:name" -> value; ":name" without a
// node-id), as a GET by id sees them.
func (s *Server) Nuvla2Params(parent string) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for _, p := range s.n2.params {
		if p.parent != parent {
			continue
		}
		v := ""
		if p.value != nil {
			v = *p.value
		}
		out[p.nodeID+":"+p.name] = v
	}
	return out
}

// n2group serves GET deployment-set/<uuid>: visible to the group's own rights only (a member's
// default key is not named in the group's ACL).
func (s *Server) n2group(w http.ResponseWriter, r *http.Request, claims []string, id string) {
	if r.Method != http.MethodGet {
		n2error(w, http.StatusMethodNotAllowed, "invalid method "+r.Method, id)
		return
	}
	s.mu.Lock()
	_, ok := s.n2.groups[id]
	s.mu.Unlock()
	switch {
	case !ok:
		n2error(w, http.StatusNotFound, id+" not found", id)
	case !slices.Contains(claims, id) && !slices.Contains(claims, "group/nuvla-admin"):
		n2error(w, http.StatusForbidden, "invalid credentials for '"+id+"'", id)
	default:
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "resource-type": "deployment-set", "state": "STARTED"})
	}
}

// Nuvla2Group returns a group's members (the admin API; nil when there is no such group).
func (s *Server) Nuvla2Group(id string) *Nuvla2Group {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids, ok := s.n2.groups[id]
	if !ok {
		return nil
	}
	g := &Nuvla2Group{ID: id}
	for _, did := range ids {
		d := s.n2.deployments[did]
		g.Members = append(g.Members, Nuvla2Member{Name: d.name, Node: d.node, Deployment: d.id, APIKey: d.key,
			APISecret: s.n2.creds[d.key].secret})
	}
	return g
}

// adminGetGroup returns a group's members with their keys (GET /admin/nuvla2/groups/{uuid}).
func (s *Server) adminGetGroup(w http.ResponseWriter, r *http.Request) {
	g := s.Nuvla2Group("deployment-set/" + r.PathValue("uuid"))
	if g == nil {
		adminError(w, http.StatusNotFound, "no group deployment-set/"+r.PathValue("uuid"))
		return
	}
	writeJSON(w, http.StatusOK, g)
}

// adminAddMember adds a member deployment of node to a group: a scale out
// (POST /admin/nuvla2/groups/{uuid}/members/{node}).
func (s *Server) adminAddMember(w http.ResponseWriter, r *http.Request) {
	m, err := s.AddMember("deployment-set/"+r.PathValue("uuid"), r.PathValue("node"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, m)
}

// adminGetDeploymentParams returns every parameter under a deployment, as reads by id see them
// (GET /admin/nuvla2/deployments/{uuid}/params).
func (s *Server) adminGetDeploymentParams(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Nuvla2Params("deployment/"+r.PathValue("uuid")))
}

// adminSetDeploymentState moves a deployment to a state, as Nuvla's jobs do
// (PUT /admin/nuvla2/deployments/{uuid}/state, body STOPPING, STOPPED, ERROR…).
func (s *Server) adminSetDeploymentState(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if err := s.SetDeploymentState("deployment/"+r.PathValue("uuid"), strings.TrimSpace(body)); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
