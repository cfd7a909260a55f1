// Package nuvla2 is cnsmo's coordination store on Nuvla 2 (nuvla.io): deployment parameters under
// the CNSMO server's deployment, with the convention of docs/nuvla2.md. Client speaks the API
// (session login with the deployment's API key, parameters by computed id, searches); Store
// implements role.Store on it.
package nuvla2

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-resty/resty/v2"
	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/internal/wait"
)

// Typed errors of the client; test with errors.Is.
var (
	ErrNotFound   = errors.New("not found")               // 404
	ErrConflict   = errors.New("conflict")                // 409 (a create of an existing parameter)
	ErrForbidden  = errors.New("forbidden")               // 403 after one re-login: no right, or a refused key
	ErrBadRequest = errors.New("refused as invalid")      // 400 (schema, filter)
	ErrTimeout    = errors.New("timed out")               // the retries ran out, or the context ended
	ErrNoSession  = errors.New("the API key was refused") // 403 at login
)

// StatusError is an answer other than the one expected; it unwraps to its typed error.
type StatusError struct {
	Method, Path string
	Code         int
	Message      string // Nuvla's "message"
	kind         error
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Code, e.Message)
}

// Unwrap returns the typed error of the status.
func (e *StatusError) Unwrap() error { return e.kind }

// Config is what a program inside a Nuvla deployment knows: the variables Nuvla offers to the
// compose file (which must forward them), and cnsmo's own.
type Config struct {
	Endpoint   string // NUVLA_ENDPOINT, e.g. https://nuvla.io (no /api)
	Deployment string // NUVLA_DEPLOYMENT_ID, deployment/<uuid>
	APIKey     string // NUVLA_API_KEY (credential/<uuid>), or CNSMO_NUVLA_API_KEY (a user's key)
	APISecret  string // NUVLA_API_SECRET, or CNSMO_NUVLA_API_SECRET
	Group      string // NUVLA_DEPLOYMENT_GROUP_ID, deployment-set/<uuid> ("" outside a group)
	Node       string // CNSMO_NODE: the member's node name (web; cnsmo for the server)
	Hub        string // CNSMO_HUB: the CNSMO server's deployment ("" = found through the group)
}

// Present reports whether the environment holds a Nuvla 2 context (NUVLA_DEPLOYMENT_ID is set).
func Present(getenv func(string) string) bool { return getenv("NUVLA_DEPLOYMENT_ID") != "" }

// ConfigFromEnv reads the configuration; the error names the variable that is missing or wrong.
// A user key in CNSMO_NUVLA_API_KEY/SECRET takes the place of the deployment's.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	c := Config{Endpoint: strings.TrimSuffix(getenv("NUVLA_ENDPOINT"), "/"), Deployment: getenv("NUVLA_DEPLOYMENT_ID"),
		APIKey: getenv("NUVLA_API_KEY"), APISecret: getenv("NUVLA_API_SECRET"), Group: getenv("NUVLA_DEPLOYMENT_GROUP_ID"),
		Node: getenv("CNSMO_NODE"), Hub: getenv("CNSMO_HUB")}
	if k := getenv("CNSMO_NUVLA_API_KEY"); k != "" {
		c.APIKey, c.APISecret = k, getenv("CNSMO_NUVLA_API_SECRET")
	}
	return c, c.Validate()
}

// Validate checks the configuration, naming the variable at fault.
func (c Config) Validate() error {
	u, err := url.Parse(c.Endpoint)
	switch {
	case c.Endpoint == "":
		return errors.New("NUVLA_ENDPOINT is not set (forward it in the compose file: NUVLA_ENDPOINT: $NUVLA_ENDPOINT)")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("NUVLA_ENDPOINT: %q is not an http(s) URL", c.Endpoint)
	case !strings.HasPrefix(c.Deployment, "deployment/") || !validToken(c.Deployment):
		return fmt.Errorf("NUVLA_DEPLOYMENT_ID: %q is not a deployment id (deployment/<uuid>)", c.Deployment)
	case c.APIKey == "" || c.APISecret == "":
		return errors.New("NUVLA_API_KEY and NUVLA_API_SECRET are not both set (forward them in the compose file)")
	case c.Group != "" && (!strings.HasPrefix(c.Group, "deployment-set/") || !validToken(c.Group)):
		return fmt.Errorf("NUVLA_DEPLOYMENT_GROUP_ID: %q is not a deployment group id (deployment-set/<uuid>)", c.Group)
	case c.Node == "" || !validName(c.Node):
		return fmt.Errorf("CNSMO_NODE: %q is not a node name (letters, digits, - and _; e.g. web)", c.Node)
	case c.Hub != "" && (!strings.HasPrefix(c.Hub, "deployment/") || !validToken(c.Hub)):
		return fmt.Errorf("CNSMO_HUB: %q is not a deployment id (deployment/<uuid>)", c.Hub)
	}
	return nil
}

// validToken: no whitespace and no quote (Nuvla's filters cannot escape one).
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, " \t\r\n'\"")
}

func validName(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return s != ""
}

// Client speaks Nuvla 2's API for one deployment.
type Client struct {
	cfg      Config
	http     *resty.Client
	log      zerolog.Logger
	retryMax time.Duration

	mu     sync.Mutex
	cookie string // "name=value" of the session cookie, as the server named it
}

// Option configures New.
type Option func(*Client)

// WithLogger sets the logger (never given a secret).
func WithLogger(l zerolog.Logger) Option { return func(c *Client) { c.log = l } }

// WithRetry bounds the retries of one request (default 60 s).
func WithRetry(d time.Duration) Option { return func(c *Client) { c.retryMax = d } }

// WithHTTPClient sets the HTTP client (tests: a source address per simulated member).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = resty.NewWithClient(hc).SetBaseURL(c.cfg.Endpoint) }
}

// New returns a client; it logs in on its first request.
func New(cfg Config, opts ...Option) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: zerolog.Nop(), retryMax: time.Minute,
		http: resty.New().SetBaseURL(cfg.Endpoint).SetTimeout(30 * time.Second)}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Config returns the client's configuration.
func (c *Client) Config() Config { return c.cfg }

// login makes a session with the API key and keeps the cookie the server sets, whatever its name
// (it changed in 2024). The cookie is Secure: it is sent by hand, so that plain http works too.
func (c *Client) login(ctx context.Context) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cookie != "" {
		return c.cookie, nil
	}
	body, _ := json.Marshal(map[string]any{"template": map[string]string{
		"href": "session-template/api-key", "key": c.cfg.APIKey, "secret": c.cfg.APISecret}})
	res, err := c.http.R().SetContext(ctx).SetHeader("Content-Type", "application/json").
		SetHeader("Accept", "application/json").SetBody(body).Post("/api/session")
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	if res.StatusCode() == http.StatusForbidden || res.StatusCode() == http.StatusUnauthorized {
		return "", fmt.Errorf("login with %s: %w (%d)", c.cfg.APIKey, ErrNoSession, res.StatusCode())
	}
	if res.StatusCode() != http.StatusCreated {
		return "", statusError("POST", "/api/session", res)
	}
	for _, ck := range res.Cookies() {
		if ck.Value != "" {
			c.cookie = ck.Name + "=" + ck.Value
			c.log.Debug().Msg("logged in")
			return c.cookie, nil
		}
	}
	return "", fmt.Errorf("login: %w: no session cookie in the answer", ErrNoSession)
}

func statusError(method, path string, res *resty.Response) *StatusError {
	var m struct {
		Message string `json:"message"`
	}
	_ = json.Unmarshal(res.Body(), &m)
	e := &StatusError{Method: method, Path: path, Code: res.StatusCode(), Message: m.Message}
	switch res.StatusCode() {
	case http.StatusNotFound:
		e.kind = ErrNotFound
	case http.StatusConflict:
		e.kind = ErrConflict
	case http.StatusForbidden, http.StatusUnauthorized:
		e.kind = ErrForbidden
	case http.StatusBadRequest:
		e.kind = ErrBadRequest
	}
	return e
}

// request is one call: a JSON body, or a form (searches), never both.
type request struct {
	method, path string
	json         any
	form         url.Values
	ok           []int // the expected statuses
	// retry: a POST that may be sent again (a create by computed id: a second one answers 409).
	retry bool
}

// do sends a request: it logs in when needed and once more on a 403 (an expired session); it
// retries idempotent requests (GET, PUT, DELETE, and the create of a parameter, whose id is
// computed: a second create answers 409) with jittered backoff on 5xx, 429 and connection errors,
// for at most the client's retry budget. Any other POST is never sent twice.
func (c *Client) do(ctx context.Context, rq request) (*resty.Response, error) {
	bo := wait.Backoff{Min: 200 * time.Millisecond, Max: 5 * time.Second, Limit: c.retryMax}.New()
	relogged := false
	for {
		res, err := c.send(ctx, rq)
		if err == nil && res.StatusCode() == http.StatusForbidden && !relogged {
			relogged = true
			c.mu.Lock()
			c.cookie = ""
			c.mu.Unlock()
			continue
		}
		if errors.Is(err, ErrNoSession) {
			return nil, err
		}
		transient := err != nil || res.StatusCode() >= 500 || res.StatusCode() == http.StatusTooManyRequests
		if !transient {
			for _, ok := range rq.ok {
				if res.StatusCode() == ok {
					return res, nil
				}
			}
			return nil, statusError(rq.method, rq.path, res)
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s %s: %w (%v)", rq.method, rq.path, ErrTimeout, ctx.Err())
		}
		if rq.method == http.MethodPost && !rq.retry {
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", rq.method, rq.path, err)
			}
			return nil, statusError(rq.method, rq.path, res)
		}
		d := bo.NextBackOff()
		cause := err
		if cause == nil {
			cause = fmt.Errorf("status %d", res.StatusCode())
		}
		if d == backoff.Stop {
			return nil, fmt.Errorf("%s %s: giving up after %s: %w (%v)", rq.method, rq.path, c.retryMax, ErrTimeout, cause)
		}
		c.log.Warn().Str("path", rq.path).AnErr("cause", cause).Dur("retry_in", d).Msg("Nuvla failing; retrying")
		if err := wait.Sleep(ctx, d); err != nil {
			return nil, fmt.Errorf("%s %s: %w (%v)", rq.method, rq.path, ErrTimeout, err)
		}
	}
}

func (c *Client) send(ctx context.Context, rq request) (*resty.Response, error) {
	cookie, err := c.login(ctx)
	if err != nil {
		return nil, err
	}
	r := c.http.R().SetContext(ctx).SetHeader("Accept", "application/json").SetHeader("Cookie", cookie)
	switch {
	case rq.form != nil:
		r.SetFormDataFromValues(rq.form)
	case rq.json != nil:
		b, err := json.Marshal(rq.json)
		if err != nil {
			return nil, err
		}
		r.SetHeader("Content-Type", "application/json").SetBody(b)
	}
	return r.Execute(rq.method, rq.path)
}

// Param is a deployment parameter as the API returns it.
type Param struct {
	ID     string  `json:"id"`
	Parent string  `json:"parent"`
	Name   string  `json:"name"`
	NodeID string  `json:"node-id"`
	Value  *string `json:"value"`
}

// ACL is a parameter's access control list.
type ACL struct {
	Owners   []string `json:"owners,omitempty"`
	ViewData []string `json:"view-data,omitempty"`
	EditData []string `json:"edit-data,omitempty"`
}

// Get reads one parameter by id (real time, unlike a search); ErrNotFound when it does not exist.
func (c *Client) Get(ctx context.Context, id string) (Param, error) {
	res, err := c.do(ctx, request{method: http.MethodGet, path: "/api/" + id + "?select=value", ok: []int{http.StatusOK}})
	if err != nil {
		return Param{}, err
	}
	var p Param
	if err := json.Unmarshal(res.Body(), &p); err != nil {
		return Param{}, fmt.Errorf("GET %s: %w", id, err)
	}
	return p, nil
}

// Put writes a parameter's value by id; ErrNotFound when it does not exist yet.
func (c *Client) Put(ctx context.Context, id, value string) error {
	_, err := c.do(ctx, request{method: http.MethodPut, path: "/api/" + id, json: map[string]string{"value": value}, ok: []int{http.StatusOK}})
	return err
}

// Create creates a parameter; ErrConflict when it exists already.
func (c *Client) Create(ctx context.Context, parent, nodeID, name, value string, acl ACL) error {
	body := map[string]any{"parent": parent, "name": name, "value": value, "acl": acl}
	if nodeID != "" {
		body["node-id"] = nodeID
	}
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/api/deployment-parameter", json: body, ok: []int{http.StatusCreated}, retry: true})
	return err
}

// Set writes a value by computed id: PUT, on 404 create, on 409 (created meanwhile) PUT again.
func (c *Client) Set(ctx context.Context, parent, nodeID, name, value string, acl ACL) error {
	id := ParamID(parent, nodeID, name)
	err := c.Put(ctx, id, value)
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	err = c.Create(ctx, parent, nodeID, name, value, acl)
	if errors.Is(err, ErrConflict) {
		return c.Put(ctx, id, value)
	}
	return err
}

// Search returns the parameters a filter selects (at most 10 000), as searches see them: a value
// written in the last second may still show its old value.
func (c *Client) Search(ctx context.Context, filter string) ([]Param, error) {
	form := url.Values{"filter": {filter}, "last": {"10000"}, "select": {"id,parent,name,node-id,value"}}
	res, err := c.do(ctx, request{method: http.MethodPut, path: "/api/deployment-parameter", form: form, ok: []int{http.StatusOK}})
	if err != nil {
		return nil, err
	}
	var coll struct {
		Count     int     `json:"count"`
		Resources []Param `json:"resources"`
	}
	if err := json.Unmarshal(res.Body(), &coll); err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	return coll.Resources, nil
}

// DeploymentInfo returns a deployment's state and its group ("" outside one).
func (c *Client) DeploymentInfo(ctx context.Context, id string) (state, group string, err error) {
	res, err := c.do(ctx, request{method: http.MethodGet, path: "/api/" + id + "?select=state,deployment-set", ok: []int{http.StatusOK}})
	if err != nil {
		return "", "", err
	}
	var d struct {
		State string `json:"state"`
		Group string `json:"deployment-set"`
	}
	if err := json.Unmarshal(res.Body(), &d); err != nil {
		return "", "", fmt.Errorf("GET %s: %w", id, err)
	}
	return d.State, d.Group, nil
}

// SetWithACL writes a value by computed id and sets its ACL (the parent deployment may always
// edit the ACL of its parameters): PUT, on 404 create.
func (c *Client) SetWithACL(ctx context.Context, parent, nodeID, name, value string, acl ACL) error {
	id := ParamID(parent, nodeID, name)
	_, err := c.do(ctx, request{method: http.MethodPut, path: "/api/" + id, json: map[string]any{"value": value, "acl": acl}, ok: []int{http.StatusOK}})
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	err = c.Create(ctx, parent, nodeID, name, value, acl)
	if errors.Is(err, ErrConflict) {
		_, err = c.do(ctx, request{method: http.MethodPut, path: "/api/" + id, json: map[string]any{"value": value, "acl": acl}, ok: []int{http.StatusOK}})
	}
	return err
}

// DeploymentState returns a deployment's state (STARTED, STOPPING, …).
func (c *Client) DeploymentState(ctx context.Context, id string) (string, error) {
	res, err := c.do(ctx, request{method: http.MethodGet, path: "/api/" + id + "?select=state", ok: []int{http.StatusOK}})
	if err != nil {
		return "", err
	}
	var d struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(res.Body(), &d); err != nil {
		return "", fmt.Errorf("GET %s: %w", id, err)
	}
	return d.State, nil
}

// DeploymentOwners returns the users that own a deployment (its ACL's owners of the form
// user/<id>): the person who started the group.
func (c *Client) DeploymentOwners(ctx context.Context, id string) ([]string, error) {
	res, err := c.do(ctx, request{method: http.MethodGet, path: "/api/" + id + "?select=acl", ok: []int{http.StatusOK}})
	if err != nil {
		return nil, err
	}
	var d struct {
		ACL struct {
			Owners []string `json:"owners"`
		} `json:"acl"`
	}
	if err := json.Unmarshal(res.Body(), &d); err != nil {
		return nil, fmt.Errorf("GET %s: %w", id, err)
	}
	var out []string
	for _, o := range d.ACL.Owners {
		if strings.HasPrefix(o, "user/") && validToken(o) {
			out = append(out, o)
		}
	}
	return out, nil
}

// GroupVisible reports (nil) that the key can read its deployment group: it acts with the group's
// rights (the application requires user rights); ErrForbidden otherwise.
func (c *Client) GroupVisible(ctx context.Context) error {
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/api/" + c.cfg.Group + "?select=id", ok: []int{http.StatusOK}})
	return err
}
