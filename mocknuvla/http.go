package mocknuvla

import (
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// CookieName is the session cookie of SlipStream.
const CookieName = "com.sixsq.slipstream.cookie"

// maxBody bounds what the server reads of a request body.
const maxBody = 1 << 20

// route is a parsed request path of the public API.
type route struct {
	pattern string // for counters, e.g. "GET /run/{uuid}/{key}"
	kind    string // "run", "key", "node", "session", ""
	uuid    string
	rest    string // key or node
}

func (s *Server) parseRoute(r *http.Request) route {
	if s.api == "nuvla2" {
		return parseNuvla2Route(r)
	}
	p := r.URL.Path
	switch {
	case p == "/api/session":
		return route{pattern: r.Method + " /api/session", kind: "session"}
	case strings.HasPrefix(p, "/run/"):
		rest := strings.TrimPrefix(p, "/run/")
		uuid, sub, _ := strings.Cut(rest, "/")
		if uuid == "" || strings.Contains(sub, "/") {
			break
		}
		if sub == "" {
			return route{pattern: r.Method + " /run/{uuid}", kind: "run", uuid: uuid}
		}
		if strings.Contains(sub, ":") {
			return route{pattern: r.Method + " /run/{uuid}/{key}", kind: "key", uuid: uuid, rest: sub}
		}
		return route{pattern: r.Method + " /run/{uuid}/{node}", kind: "node", uuid: uuid, rest: sub}
	}
	return route{pattern: r.Method + " (unknown route)"}
}

// parseNuvla2Route parses the Nuvla 2 routes (uuid is the resource's, rest an action).
func parseNuvla2Route(r *http.Request) route {
	p := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case p == "/api/session":
		return route{pattern: r.Method + " /api/session", kind: "n2session"}
	case p == "/api/deployment-parameter":
		return route{pattern: r.Method + " /api/deployment-parameter", kind: "n2params"}
	case strings.HasPrefix(p, "/api/deployment-parameter/"):
		id := strings.TrimPrefix(p, "/api/deployment-parameter/")
		if id != "" && !strings.Contains(id, "/") {
			return route{pattern: r.Method + " /api/deployment-parameter/{uuid}", kind: "n2param", uuid: id}
		}
	case strings.HasPrefix(p, "/api/deployment-set/"):
		id := strings.TrimPrefix(p, "/api/deployment-set/")
		if id != "" && !strings.Contains(id, "/") {
			return route{pattern: r.Method + " /api/deployment-set/{uuid}", kind: "n2group", uuid: id}
		}
	case strings.HasPrefix(p, "/api/deployment/"):
		id, action, _ := strings.Cut(strings.TrimPrefix(p, "/api/deployment/"), "/")
		if id != "" && !strings.Contains(action, "/") {
			pat := r.Method + " /api/deployment/{uuid}"
			if action != "" {
				pat += "/" + action
			}
			return route{pattern: pat, kind: "n2deployment", uuid: id, rest: action}
		}
	}
	return route{pattern: r.Method + " (unknown route)", kind: "n2unknown"}
}

// ServeHTTP serves the legacy run API and /api/session: what every VM reaches. The admin API
// (no login) is served by Admin, on a listener of its own.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := s.parseRoute(r)
	s.mu.Lock()
	s.counters[rt.pattern]++
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		s.byClient[host]++
	}
	f := s.global
	if run := s.runs[rt.uuid]; run != nil && run.faults != nil {
		f = *run.faults
	}
	s.mu.Unlock()
	if !f.zero() && s.injectFault(w, r, rt, f) {
		return
	}
	rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
	start := time.Now()
	s.serveAPI(rec, r, rt)
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		s.mu.Lock()
		s.bytesByClient[host] += rec.bytes
		s.mu.Unlock()
	}
	ev := s.log.Debug()
	if rec.code >= 500 {
		ev = s.log.Warn()
	}
	// Values are never logged (they may be certificates or tokens); the key and status are.
	ev.Str("route", rt.pattern).Str("run", rt.uuid).Str("key", rt.rest).Int("status", rec.code).
		Dur("took", time.Since(start)).Msg("request")
}

type statusRecorder struct {
	http.ResponseWriter
	code   int
	bytes  int64 // bytes of the answer: status line, headers and body
	headed bool
}

// head counts the status line and the headers, once.
func (s *statusRecorder) head(code int) {
	if s.headed {
		return
	}
	s.headed = true
	n := len(fmt.Sprintf("HTTP/1.1 %d %s\r\n", code, http.StatusText(code))) + 2 // + the blank line
	for k, vs := range s.Header() {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + 2
		}
	}
	s.bytes += int64(n)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	s.head(s.code)
	n, err := s.ResponseWriter.Write(b)
	s.bytes += int64(n)
	return n, err
}

func (s *statusRecorder) WriteHeader(code int) {
	s.head(code)
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// injectFault sleeps for the latency, then maybe drops the connection or answers 5xx. It
// returns true when the request has been answered (or dropped).
func (s *Server) injectFault(w http.ResponseWriter, r *http.Request, rt route, f Faults) bool {
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
		s.countFault("latency")
	}
	if f.DropRatio > 0 && rand.Float64() < f.DropRatio {
		s.countFault("drop")
		s.log.Debug().Str("route", rt.pattern).Msg("fault: connection dropped")
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler) // HTTP/2 or no hijacker: net/http aborts the stream
	}
	if f.Error5xxRatio > 0 && rand.Float64() < f.Error5xxRatio {
		s.countFault("5xx")
		code := http.StatusServiceUnavailable
		if rand.IntN(2) == 0 {
			code = http.StatusInternalServerError
		}
		s.log.Debug().Str("route", rt.pattern).Int("status", code).Msg("fault: error answer")
		writeError(w, r, code, "injected fault")
		return true
	}
	return false
}

func (s *Server) countFault(kind string) {
	s.mu.Lock()
	s.faultCnt[kind]++
	s.mu.Unlock()
}

func (s *Server) serveAPI(w http.ResponseWriter, r *http.Request, rt route) {
	if strings.HasPrefix(rt.kind, "n2") {
		s.serveNuvla2(w, r, rt)
		return
	}
	switch rt.kind {
	case "session":
		s.serveSession(w, r)
		return
	case "":
		writeError(w, r, http.StatusNotFound, "no such route: "+r.URL.Path)
		return
	}
	if !s.authorized(w, r, rt.uuid) {
		return
	}
	switch rt.kind {
	case "run":
		s.serveRun(w, r, rt.uuid)
	case "key":
		s.serveKey(w, r, rt.uuid, rt.rest)
	case "node":
		s.serveNode(w, r, rt.uuid, rt.rest)
	}
}

func ignoreAbort(r *http.Request) bool {
	return strings.EqualFold(r.URL.Query().Get("ignoreabort"), "true")
}

// serveKey is /run/{uuid}/{key}: load (unknown key aborts the run), abort check, then method.
func (s *Server) serveKey(w http.ResponseWriter, r *http.Request, uuid, key string) {
	var body string
	if r.Method == http.MethodPut {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, r, http.StatusBadRequest, fmt.Sprintf("Bad value for key: %s with details: %v", key, err))
			return
		}
		body = string(b)
	}
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, PUT, DELETE, POST")
		writeError(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on a runtime parameter")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	run, p, err := s.lookupParam(uuid, key)
	if err != nil {
		if run != nil { // the run exists, the key doesn't: SlipStream aborts the run
			run.abortOrReset("Unknown key "+key, nodeNamePart(key))
			s.log.Info().Str("run", uuid).Str("key", key).Msg("unknown key: run aborted")
		}
		writeStatusError(w, r, err)
		return
	}
	if !ignoreAbort(r) && run.aborted() {
		writeError(w, r, http.StatusConflict, "Abort flag raised!")
		return
	}
	switch r.Method {
	case http.MethodGet:
		if !p.set && !strings.HasSuffix(key, ":vmstate") {
			writeError(w, r, http.StatusPreconditionFailed, "key "+key+" not yet set")
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, p.value)
	case http.MethodPut:
		if err := run.put(key, body, false); err != nil {
			writeStatusError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusOK)
	case http.MethodDelete:
		run.del(key)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPost:
		st, err := run.complete(key)
		if err != nil {
			writeStatusError(w, r, err)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, st)
	}
}

// formValues parses a body as an urlencoded form whatever its content type, merged over the
// query string (SlipStream's Form(entity) reads any body).
func formValues(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		return nil, err
	}
	v, err := url.ParseQuery(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("body is not an urlencoded form: %w", err)
	}
	for k, vs := range r.URL.Query() {
		if k == "ignoreabort" {
			continue
		}
		if _, ok := v[k]; !ok {
			v[k] = vs
		}
	}
	return v, nil
}

// serveNode is /run/{uuid}/{node}: GET lists instances, POST scales up, DELETE scales down.
func (s *Server) serveNode(w http.ResponseWriter, r *http.Request, uuid, nodeName string) {
	// Parse the request first, without the lock.
	var (
		n       = 1
		ids     []int
		idsOnly bool
	)
	switch r.Method {
	case http.MethodGet:
	case http.MethodPost, http.MethodDelete:
		form, err := formValues(w, r)
		if err != nil {
			writeError(w, r, http.StatusBadRequest, err.Error())
			return
		}
		if r.Method == http.MethodPost {
			if _, ok := form["n"]; ok {
				if n, err = strconv.Atoi(strings.TrimSpace(form.Get("n"))); err != nil {
					writeError(w, r, http.StatusBadRequest, "Number of instances to add should be an integer.")
					return
				}
			} else if len(form) > 0 {
				writeError(w, r, http.StatusBadRequest, "No form parameter n=# found in the scale-up request.")
				return
			}
			break
		}
		idsOnly = strings.TrimSpace(form.Get("delete-ids-only")) == "true"
		if ids, err = parseIDs(form.Get("ids")); err != nil {
			writeError(w, r, http.StatusBadRequest, "Invalid instance name: "+nodeName+"."+err.Error())
			return
		}
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		writeError(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on a node")
		return
	}

	s.mu.Lock()
	run, err := s.lookup(uuid)
	if err != nil {
		s.mu.Unlock()
		writeStatusError(w, r, err)
		return
	}
	// SlipStream honours ignoreabort only for GET on this resource.
	if run.aborted() && !(r.Method == http.MethodGet && ignoreAbort(r)) {
		s.mu.Unlock()
		writeError(w, r, http.StatusConflict, "Abort flag raised!")
		return
	}
	switch r.Method {
	case http.MethodGet:
		if run.nodeByName[nodeName] == nil {
			s.mu.Unlock()
			writeError(w, r, http.StatusNotFound, "Unknown node "+nodeName)
			return
		}
		var names []string
		for _, id := range run.currentIDs(nodeName) {
			names = append(names, nodeName+"."+strconv.Itoa(id))
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, strings.Join(names, ","))
	case http.MethodPost:
		names, created, err := s.scaleUpLocked(run, nodeName, n)
		s.mu.Unlock()
		if err != nil {
			writeStatusError(w, r, err)
			return
		}
		s.notifyInstances(uuid, created)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, strings.Join(names, ","))
	case http.MethodDelete:
		err := s.scaleDownLocked(run, nodeName, ids, idsOnly)
		s.mu.Unlock()
		if err != nil {
			writeStatusError(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// parseIDs reads "1, 2,3" (empty fields skipped); the error is the field that is no integer.
func parseIDs(s string) ([]int, error) {
	var ids []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		id, err := strconv.Atoi(f)
		if err != nil {
			return nil, errors.New(f)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// serveRun is /run/{uuid}: GET the whole run (XML, or JSON on request), DELETE terminates it.
func (s *Server) serveRun(w http.ResponseWriter, r *http.Request, uuid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	run, err := s.lookup(uuid)
	if err != nil {
		writeStatusError(w, r, err)
		return
	}
	switch r.Method {
	case http.MethodGet:
		if wantsJSON(r) {
			writeJSON(w, http.StatusOK, runJSON(run))
			return
		}
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		_, _ = io.WriteString(w, runXML(run))
	case http.MethodDelete:
		run.terminate()
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Allow", "GET, DELETE")
		writeError(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on a run")
	}
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// runXML renders the run as SlipStream does: every runtimeParameter in an entry.
func runXML(r *run) string {
	var b strings.Builder
	b.WriteString(`<?xml version="1.0" encoding="UTF-8" standalone="yes"?>` + "\n")
	fmt.Fprintf(&b, `<run uuid="%s" name="%s" state="%s" type="Orchestration" category="Deployment" mutable="%t" user="%s" groups="%s" creation="%s">`,
		xmlEscape(r.uuid), xmlEscape(r.name), xmlEscape(r.state()), r.mutable, xmlEscape(r.username),
		xmlEscape(r.params["ss:groups"].value), r.created.UTC().Format(time.RFC3339))
	b.WriteString("<runtimeParameters>")
	for _, k := range r.sortedKeys() {
		p := r.params[k]
		ek := xmlEscape(k)
		fmt.Fprintf(&b, `<entry><string>%s</string><runtimeParameter key="%s" isSet="%t" group="%s">%s</runtimeParameter></entry>`,
			ek, ek, p.set, xmlEscape(p.group), xmlEscape(p.value))
	}
	b.WriteString("</runtimeParameters></run>")
	return b.String()
}

// RunParamJSON is one parameter in the JSON form of a run.
type RunParamJSON struct {
	Value   string `json:"value"`
	IsSet   bool   `json:"isSet"`
	Group   string `json:"group"`
	Removed bool   `json:"removed,omitempty"` // the parameter of a scaled-down instance
}

// RunJSON is the JSON form of a run (GET /run/{uuid} with Accept: application/json, and the
// admin API).
type RunJSON struct {
	UUID              string                  `json:"uuid"`
	Name              string                  `json:"name"`
	State             string                  `json:"state"`
	Mutable           bool                    `json:"mutable"`
	User              string                  `json:"user"`
	Groups            string                  `json:"groups"`
	RuntimeParameters map[string]RunParamJSON `json:"runtimeParameters"`
}

func runJSON(r *run) RunJSON {
	out := RunJSON{UUID: r.uuid, Name: r.name, State: r.state(), Mutable: r.mutable, User: r.username,
		Groups: r.params["ss:groups"].value, RuntimeParameters: make(map[string]RunParamJSON, len(r.params))}
	for k, p := range r.params {
		out.RuntimeParameters[k] = RunParamJSON{Value: p.value, IsSet: p.set, Group: p.group, Removed: r.isRemovedKey(k)}
	}
	return out
}

func wantsJSON(r *http.Request) bool {
	return strings.Contains(strings.ToLower(r.Header.Get("Accept")), "json")
}

func wantsXML(r *http.Request) bool {
	return strings.Contains(strings.ToLower(r.Header.Get("Accept")), "xml")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeStatusError(w http.ResponseWriter, r *http.Request, err error) {
	var se *StatusError
	if errors.As(err, &se) {
		writeError(w, r, se.Code, se.Detail)
		return
	}
	writeError(w, r, http.StatusInternalServerError, err.Error())
}

// writeError answers an error in the format the Accept header asks for: JSON
// {"error":{"code","reason","detail"}}, XML <error code reason detail/>, or text
// "412 - Precondition Failed\ndetail".
func writeError(w http.ResponseWriter, r *http.Request, code int, detail string) {
	reason := http.StatusText(code)
	switch {
	case wantsJSON(r):
		type body struct {
			Code   int    `json:"code"`
			Reason string `json:"reason"`
			Detail string `json:"detail"`
		}
		writeJSON(w, code, map[string]body{"error": {Code: code, Reason: reason, Detail: detail}})
	case wantsXML(r):
		w.Header().Set("Content-Type", "application/xml; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<error code="%d" reason="%s" detail="%s"/>`,
			code, xmlEscape(reason), xmlEscape(detail))
	default:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		fmt.Fprintf(w, "%d - %s\n%s", code, reason, detail)
	}
}
