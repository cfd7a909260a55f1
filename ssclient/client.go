package ssclient

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/go-resty/resty/v2"
	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/internal/wait"
)

// CookieName is the session cookie of SlipStream.
const CookieName = "com.sixsq.slipstream.cookie"

// StatusError is an unexpected HTTP answer; it unwraps to the typed error of its status.
type StatusError struct {
	Method, Path string
	Code         int
	Body         string
	kind         error
}

func (e *StatusError) Error() string {
	detail := strings.TrimSpace(e.Body)
	if i := strings.IndexByte(detail, '\n'); i >= 0 { // text bodies are "412 - Precondition Failed\ndetail"
		detail = strings.TrimSpace(detail[i+1:])
	}
	return fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Code, detail)
}

// Unwrap returns the typed error (ErrNotSet, ErrAborted, ...) or nil.
func (e *StatusError) Unwrap() error { return e.kind }

// session is shared by a Client and its IgnoreAbort copy.
type session struct {
	mu     sync.Mutex
	cookie string
}

// Client speaks the legacy run API for one instance of one run. It implements Params.
type Client struct {
	cfg         Config
	http        *resty.Client
	log         zerolog.Logger
	minPoll     time.Duration
	maxPoll     time.Duration
	retryMax    time.Duration
	ignoreAbort bool
	sess        *session
}

// Option configures New.
type Option func(*Client)

// WithLogger sets the logger (values are never logged, only keys and statuses).
func WithLogger(l zerolog.Logger) Option { return func(c *Client) { c.log = l } }

// WithPoll sets the wait backoff: from min, growing with jitter to max (capped at 5 s).
func WithPoll(min, max time.Duration) Option {
	return func(c *Client) { c.minPoll, c.maxPoll = min, max }
}

// WithRetry bounds the retries of one request on 5xx, 429 and connection errors.
func WithRetry(maxElapsed time.Duration) Option { return func(c *Client) { c.retryMax = maxElapsed } }

// WithHTTPClient uses hc for every request (tests, custom transports).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) { c.http = resty.NewWithClient(hc) }
}

// New returns a client for cfg.
func New(cfg Config, opts ...Option) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: zerolog.Nop(), minPoll: 100 * time.Millisecond, maxPoll: 2 * time.Second,
		retryMax: 2 * time.Minute, sess: &session{}}
	for _, o := range opts {
		o(c)
	}
	if c.http == nil {
		c.http = resty.New().SetTimeout(30 * time.Second)
	}
	c.http.SetBaseURL(strings.TrimRight(cfg.ServiceURL, "/"))
	// Redirects are not part of this API; a 3xx is an error to report, not to follow.
	c.http.SetRedirectPolicy(resty.NoRedirectPolicy())
	if c.maxPoll > 5*time.Second {
		c.maxPoll = 5 * time.Second
	}
	if c.minPoll <= 0 || c.minPoll > c.maxPoll {
		c.minPoll = min(100*time.Millisecond, c.maxPoll)
	}
	return c, nil
}

// IgnoreAbort returns a client whose requests pass ?ignoreabort=true (it shares the session).
func (c *Client) IgnoreAbort() *Client {
	cp := *c
	cp.ignoreAbort = true
	return &cp
}

// Instance is this VM's node instance name.
func (c *Client) Instance() string { return c.cfg.NodeInstance }

// Qualify qualifies key for this instance (see the package function Qualify).
func (c *Client) Qualify(key string) string { return Qualify(c.cfg.NodeInstance, key) }

func (c *Client) runPath(rest string) string {
	p := "/run/" + c.cfg.RunUUID
	if rest != "" {
		p += "/" + rest
	}
	if c.ignoreAbort {
		p += "?ignoreabort=true"
	}
	return p
}

type request struct {
	method string
	path   string
	body   string
	form   url.Values
	accept string
	key    string // for error messages
}

// do sends one request: logging in when needed, re-logging once on 401/403, and retrying
// idempotent requests with jittered backoff on 5xx, 429 and connection errors.
func (c *Client) do(ctx context.Context, rq request) (int, string, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 200*time.Millisecond, 5*time.Second, c.retryMax
	bo.Reset() // the intervals above apply from the first retry on
	retry := rq.method != http.MethodPost
	relogged := false
	for {
		code, body, err := c.send(ctx, rq)
		if err == nil && (code == http.StatusUnauthorized || code == http.StatusForbidden) && !relogged && c.hasCredentials() {
			relogged = true
			c.sess.mu.Lock()
			c.sess.cookie = ""
			c.sess.mu.Unlock()
			continue
		}
		var se *StatusError
		if errors.Is(err, ErrUnauthorized) || (errors.As(err, &se) && se.Code < 500 && se.Code != http.StatusTooManyRequests) {
			return 0, "", fmt.Errorf("%s %s: %w", rq.method, rq.key, err) // a refused login: retrying cannot help
		}
		transient := err != nil || code >= 500 || code == http.StatusTooManyRequests
		if !transient {
			return code, body, nil
		}
		if ctx.Err() != nil {
			return 0, "", fmt.Errorf("%s %s: %w (%v)", rq.method, rq.key, ErrTimeout, ctx.Err())
		}
		if !retry {
			if err != nil {
				return 0, "", fmt.Errorf("%s %s: %w", rq.method, rq.key, err)
			}
			return code, body, nil
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			c.log.Warn().Str("key", rq.key).Int("status", code).AnErr("cause", err).Dur("after", c.retryMax).Msg("parameter store failing; giving up")
			if err != nil {
				return 0, "", fmt.Errorf("%s %s: giving up after %s: %w", rq.method, rq.key, c.retryMax, err)
			}
			return code, body, nil
		}
		c.log.Warn().Str("key", rq.key).Int("status", code).AnErr("cause", err).Dur("retry_in", d).Msg("parameter store failing; retrying")
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, "", fmt.Errorf("%s %s: %w (%v)", rq.method, rq.key, ErrTimeout, ctx.Err())
		case <-t.C:
		}
	}
}

func (c *Client) hasCredentials() bool {
	return (c.cfg.APIKey != "" && c.cfg.APISecret != "") || (c.cfg.Username != "" && c.cfg.Password != "")
}

func (c *Client) send(ctx context.Context, rq request) (int, string, error) {
	cookie, err := c.cookie(ctx)
	if err != nil {
		return 0, "", err
	}
	r := c.http.R().SetContext(ctx).SetHeader("Accept", "text/plain")
	if rq.accept != "" {
		r.SetHeader("Accept", rq.accept)
	}
	if c.cfg.CacheKey != "" {
		r.SetHeader("ss-cache-key", c.cfg.CacheKey)
	}
	if cookie != "" {
		// Sent by hand: the server marks the cookie Secure, and a cookie jar would not send it
		// over plain http (as the Python client, we ignore the flag).
		r.SetHeader("Cookie", CookieName+"="+cookie)
	}
	switch {
	case rq.form != nil:
		r.SetFormDataFromValues(rq.form)
	case rq.method == http.MethodPut || rq.method == http.MethodPost:
		r.SetHeader("Content-Type", "text/plain; charset=utf-8").SetBody(rq.body)
	}
	res, err := r.Execute(rq.method, rq.path)
	if err != nil {
		return 0, "", err
	}
	return res.StatusCode(), res.String(), nil
}

// cookie returns the session cookie, logging in first when there is none.
func (c *Client) cookie(ctx context.Context) (string, error) {
	if !c.hasCredentials() {
		return "", nil
	}
	c.sess.mu.Lock()
	defer c.sess.mu.Unlock()
	if c.sess.cookie != "" {
		return c.sess.cookie, nil
	}
	tmpl := map[string]string{"href": "session-template/api-key", "key": c.cfg.APIKey, "secret": c.cfg.APISecret}
	if c.cfg.APIKey == "" {
		tmpl = map[string]string{"href": "session-template/internal", "username": c.cfg.Username, "password": c.cfg.Password}
	}
	body, _ := json.Marshal(map[string]any{"sessionTemplate": tmpl})
	res, err := c.http.R().SetContext(ctx).SetHeader("Content-Type", "application/json").
		SetHeader("Accept", "application/json").SetBody(body).Post("/api/session")
	if err != nil {
		return "", fmt.Errorf("login: %w", err)
	}
	if res.StatusCode() == http.StatusUnauthorized || res.StatusCode() == http.StatusForbidden {
		return "", fmt.Errorf("login: %w (%d)", ErrUnauthorized, res.StatusCode())
	}
	if res.StatusCode() >= 300 {
		return "", &StatusError{Method: "POST", Path: "/api/session", Code: res.StatusCode(), Body: res.String()}
	}
	for _, ck := range res.Cookies() {
		if ck.Name == CookieName {
			c.sess.cookie = ck.Value
			c.log.Debug().Msg("logged in")
			return ck.Value, nil
		}
	}
	return "", fmt.Errorf("login: %w: no %s cookie in the answer", ErrUnauthorized, CookieName)
}

// check maps a status to nil or a typed error.
func check(rq request, code int, body string, ok ...int) error {
	for _, o := range ok {
		if code == o {
			return nil
		}
	}
	e := &StatusError{Method: rq.method, Path: rq.key, Code: code, Body: body}
	switch {
	case code == http.StatusPreconditionFailed:
		e.kind = ErrNotSet
	case code == http.StatusConflict && strings.Contains(body, "Abort flag raised"):
		e.kind = ErrAborted
	case code == http.StatusConflict:
		e.kind = ErrConflict
	case code == http.StatusNotFound:
		e.kind = ErrUnknownKey
	case code == http.StatusBadRequest && len(rq.body) > MaxValueLen:
		e.kind = ErrTooLong
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.kind = ErrUnauthorized
	}
	return e
}

// Get reads key once. Values are stripped of surrounding whitespace and quotes, as the
// reference client does.
func (c *Client) Get(ctx context.Context, key string) (string, error) {
	q := c.Qualify(key)
	rq := request{method: http.MethodGet, path: c.runPath(q), key: q}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return "", err
	}
	if err := check(rq, code, body, http.StatusOK); err != nil {
		return "", err
	}
	return strings.Trim(body, " \t\r\n\"'"), nil
}

// Wait blocks until key is set, polling with jittered backoff from the poll minimum to its cap.
func (c *Client) Wait(ctx context.Context, key string) (v string, err error) {
	werr := c.poll().Until(ctx, func(ctx context.Context) (bool, error) {
		v, err = c.Get(ctx, key)
		return !errors.Is(err, ErrNotSet), nil
	})
	if werr != nil {
		return "", fmt.Errorf("waiting for %s: %w (%v)", c.Qualify(key), ErrTimeout, werr)
	}
	return v, err
}

// poll is how the client polls: from its poll minimum to its cap.
func (c *Client) poll() wait.Backoff { return wait.Backoff{Min: c.minPoll, Max: c.maxPoll} }

// Set writes value; an empty value un-sets the key. Values over 4096 characters are refused
// before anything is sent.
func (c *Client) Set(ctx context.Context, key, value string) error {
	q := c.Qualify(key)
	if n := len([]rune(value)); n > MaxValueLen {
		return fmt.Errorf("set %s: %w (%d characters)", q, ErrTooLong, n)
	}
	rq := request{method: http.MethodPut, path: c.runPath(q), body: value, key: q}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return err
	}
	return check(rq, code, body, http.StatusOK, http.StatusNoContent)
}

// Unset un-sets key (an empty PUT).
func (c *Client) Unset(ctx context.Context, key string) error { return c.Set(ctx, key, "") }

// Display sets this instance's statecustom (progress in the Nuvla UI).
func (c *Client) Display(ctx context.Context, msg string) error {
	if r := []rune(msg); len(r) > MaxValueLen {
		msg = string(r[:MaxValueLen])
	}
	return c.Set(ctx, "statecustom", msg)
}

// Abort raises this instance's abort flag (the server copies it to ss:abort) with a reason.
func (c *Client) Abort(ctx context.Context, reason string) error {
	if reason == "" {
		reason = "aborted by " + c.cfg.NodeInstance
	}
	// As the reference client: no ignoreabort, so aborting an aborted run is refused (409,
	// ErrAborted) and the first reason stays.
	return c.Set(ctx, "abort", TruncateMiddle(reason, MaxValueLen))
}

// truncMarker is what the reference client puts where it cut a value.
const truncMarker = "\n(truncated)\n"

// TruncateMiddle cuts s to at most max characters by keeping its start and its end around
// "\n(truncated)\n", as the reference client's truncate_middle does.
func TruncateMiddle(s string, max int) string {
	r := []rune(s)
	if len(r) <= max {
		return s
	}
	keep := (max - len(truncMarker)) / 2
	return string(r[:keep]) + truncMarker + string(r[len(r)-keep:])
}

// CancelAbort clears the abort flags of this instance and of the run.
func (c *Client) CancelAbort(ctx context.Context) error {
	ia := c.IgnoreAbort()
	for _, k := range []string{c.Qualify("abort"), "ss:abort"} {
		rq := request{method: http.MethodDelete, path: ia.runPath(k), key: k}
		code, body, err := ia.do(ctx, rq)
		if err != nil {
			return err
		}
		if err := check(rq, code, body, http.StatusOK, http.StatusNoContent); err != nil {
			return err
		}
	}
	return nil
}

// Run reads the whole run (every instance's parameters) in one request.
func (c *Client) Run(ctx context.Context) (*Run, error) {
	rq := request{method: http.MethodGet, path: c.runPath(""), key: "run " + c.cfg.RunUUID, accept: "application/xml"}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return nil, err
	}
	if err := check(rq, code, body, http.StatusOK); err != nil {
		return nil, err
	}
	return ParseRunXML([]byte(body))
}

// ParseRunXML parses the XML of GET /run/{uuid}: the run's uuid and state, and every
// <entry><string>key</string><runtimeParameter key="key" isSet="…">value</runtimeParameter></entry>.
// It reads the tokens as they come (a whole run of 200 instances is about half a megabyte, read by
// the CNSMO server on every pass), without reflection.
func ParseRunXML(b []byte) (*Run, error) {
	d := xml.NewDecoder(bytes.NewReader(b))
	r := &Run{Params: map[string]Param{}}
	var (
		entryKey, key, isSet string
		text                 []byte
		in                   string // the element whose text is collected: "string" or "runtimeParameter"
		depth                int
	)
	for {
		tok, err := d.RawToken()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parse run: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			depth++
			switch t.Name.Local {
			case "run":
				for _, a := range t.Attr {
					switch a.Name.Local {
					case "uuid":
						r.UUID = a.Value
					case "state":
						r.State = a.Value
					}
				}
			case "entry":
				entryKey = ""
			case "string":
				in, text = "string", text[:0]
			case "runtimeParameter":
				key, isSet = "", ""
				for _, a := range t.Attr {
					switch a.Name.Local {
					case "key":
						key = a.Value
					case "isSet":
						isSet = a.Value
					}
				}
				in, text = "runtimeParameter", text[:0]
			}
		case xml.CharData:
			if in != "" {
				text = append(text, t...)
			}
		case xml.EndElement:
			depth--
			switch t.Name.Local {
			case "string":
				if in == "string" {
					entryKey = string(text)
				}
			case "runtimeParameter":
				k := key
				if k == "" {
					k = entryKey
				}
				set, _ := strconv.ParseBool(isSet)
				r.Params[k] = Param{Value: string(text), IsSet: set}
			}
			in = ""
		}
	}
	if depth != 0 || r.UUID == "" && len(r.Params) == 0 && !bytes.Contains(b, []byte("<run")) {
		return nil, fmt.Errorf("parse run: not a run document")
	}
	if r.State == "" {
		r.State, _ = r.Value("ss:state")
	}
	return r, nil
}

// WaitRun polls the whole run (one request per poll) until cond holds.
func (c *Client) WaitRun(ctx context.Context, cond func(*Run) bool) (r *Run, err error) {
	werr := c.poll().Until(ctx, func(ctx context.Context) (bool, error) {
		if r, err = c.Run(ctx); err != nil {
			return false, err
		}
		if v, ok := r.Value("ss:abort"); ok && v != "" && !c.ignoreAbort {
			return false, fmt.Errorf("%w: %s", ErrAborted, v)
		}
		return cond(r), nil
	})
	switch {
	case err != nil:
		return r, err
	case werr != nil:
		return r, fmt.Errorf("%w (%v)", ErrTimeout, werr)
	}
	return r, nil
}

// WaitAll is the barrier: it waits until key is set on every instance (and, when match is not
// nil, match accepts its value), reading the whole run once per poll. It returns the values.
func (c *Client) WaitAll(ctx context.Context, key string, instances []string, match func(string) bool) (map[string]string, error) {
	out := map[string]string{}
	_, err := c.WaitRun(ctx, func(r *Run) bool {
		for _, in := range instances {
			v, ok := r.Value(in + ":" + key)
			if !ok || (match != nil && !match(v)) {
				return false
			}
			out[in] = v
		}
		return true
	})
	if err != nil {
		return nil, fmt.Errorf("barrier %s on %d instances: %w", key, len(instances), err)
	}
	return out, nil
}

// ScaleUp adds n instances of node; it returns their names.
func (c *Client) ScaleUp(ctx context.Context, node string, n int) ([]string, error) {
	rq := request{method: http.MethodPost, path: c.runPath(node), form: url.Values{"n": {strconv.Itoa(n)}}, key: node}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return nil, err
	}
	if err := check(rq, code, body, http.StatusCreated, http.StatusOK); err != nil {
		return nil, err
	}
	var names []string
	for _, s := range strings.Split(strings.TrimSpace(body), ",") {
		if s = strings.TrimSpace(s); s != "" {
			names = append(names, s)
		}
	}
	return names, nil
}

// ScaleDown removes instances of node by id (idsOnly: only remove them from <node>:ids).
func (c *Client) ScaleDown(ctx context.Context, node string, ids []int, idsOnly bool) error {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = strconv.Itoa(id)
	}
	form := url.Values{"ids": {strings.Join(s, ",")}}
	if idsOnly {
		form.Set("delete-ids-only", "true")
	}
	rq := request{method: http.MethodDelete, path: c.runPath(node), form: form, key: node}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return err
	}
	return check(rq, code, body, http.StatusNoContent, http.StatusOK)
}

// Complete marks this instance's current state complete; it returns the run's state.
func (c *Client) Complete(ctx context.Context) (string, error) {
	k := c.cfg.NodeInstance + ":complete"
	rq := request{method: http.MethodPost, path: c.runPath(k), body: "reset", key: k}
	code, body, err := c.do(ctx, rq)
	if err != nil {
		return "", err
	}
	if err := check(rq, code, body, http.StatusOK, http.StatusCreated, http.StatusNoContent); err != nil {
		return "", err
	}
	return strings.TrimSpace(body), nil
}

var _ Params = (*Client)(nil)
