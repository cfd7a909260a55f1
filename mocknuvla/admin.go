package mocknuvla

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The admin API (documented in docs/mocknuvla.md) is for tests and operators: it needs no
// session, is never faulted and is not counted. Answers are JSON unless said otherwise.

func adminError(w http.ResponseWriter, code int, detail string) {
	type body struct {
		Code   int    `json:"code"`
		Reason string `json:"reason"`
		Detail string `json:"detail"`
	}
	writeJSON(w, code, map[string]body{"error": {Code: code, Reason: http.StatusText(code), Detail: detail}})
}

func adminErr(w http.ResponseWriter, err error) {
	var se *StatusError
	if errors.As(err, &se) {
		adminError(w, se.Code, err.Error())
		return
	}
	adminError(w, http.StatusBadRequest, err.Error())
}

func readBody(w http.ResponseWriter, r *http.Request) (string, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		adminError(w, http.StatusBadRequest, "read body: "+err.Error())
		return "", false
	}
	return string(b), true
}

func writeText(w http.ResponseWriter, code int, s string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, s)
}

// faultsJSON is the wire form of Faults: latency as a Go duration ("200ms").
type faultsJSON struct {
	Latency       string  `json:"latency"`
	Error5xxRatio float64 `json:"error5xxRatio"`
	DropRatio     float64 `json:"dropRatio"`
}

func toFaultsJSON(f Faults) faultsJSON {
	return faultsJSON{Latency: f.Latency.String(), Error5xxRatio: f.Error5xxRatio, DropRatio: f.DropRatio}
}

func parseFaults(body string) (Faults, error) {
	var fj faultsJSON
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fj); err != nil {
		return Faults{}, fmt.Errorf("faults: decode JSON: %w", err)
	}
	var f Faults
	if fj.Latency != "" {
		d, err := time.ParseDuration(fj.Latency)
		if err != nil {
			return Faults{}, fmt.Errorf("faults: latency: %w", err)
		}
		if d < 0 || d > 10*time.Minute {
			return Faults{}, fmt.Errorf("faults: latency %s is outside 0..10m", d)
		}
		f.Latency = d
	}
	if fj.Error5xxRatio < 0 || fj.Error5xxRatio > 1 {
		return Faults{}, fmt.Errorf("faults: error5xxRatio %v is outside 0..1", fj.Error5xxRatio)
	}
	if fj.DropRatio < 0 || fj.DropRatio > 1 {
		return Faults{}, fmt.Errorf("faults: dropRatio %v is outside 0..1", fj.DropRatio)
	}
	f.Error5xxRatio, f.DropRatio = fj.Error5xxRatio, fj.DropRatio
	return f, nil
}

// runSummary is one entry of GET /admin/runs.
type runSummary struct {
	UUID      string `json:"uuid"`
	Name      string `json:"name"`
	State     string `json:"state"`
	Mutable   bool   `json:"mutable"`
	Aborted   bool   `json:"aborted"`
	Abort     string `json:"abort,omitempty"`
	Created   string `json:"created"`
	Instances int    `json:"instances"`
}

// adminRoutes are the admin API's routes, one handler each.
func (s *Server) adminRoutes() []struct {
	pattern string
	handler http.HandlerFunc
} {
	return []struct {
		pattern string
		handler http.HandlerFunc
	}{
		{"GET /admin/runs", s.adminListRuns},
		{"POST /admin/runs", s.adminCreateRun},
		{"GET /admin/runs/{uuid}", s.adminGetRun},
		{"GET /admin/runs/{uuid}/params", s.adminGetParams},
		{"GET /admin/runs/{uuid}/params/{key}", s.adminGetParam},
		{"PUT /admin/runs/{uuid}/params/{key}", s.adminSetParam},
		{"DELETE /admin/runs/{uuid}/params/{key}", s.adminUnsetParam},
		{"GET /admin/runs/{uuid}/state", s.adminGetState},
		{"PUT /admin/runs/{uuid}/state", s.adminSetState},
		{"POST /admin/runs/{uuid}/abort", s.adminAbort},
		{"POST /admin/runs/{uuid}/complete/{instance}", s.adminComplete},
		{"POST /admin/runs/{uuid}/nodes/{node}", s.adminScaleUp},
		{"DELETE /admin/runs/{uuid}/nodes/{node}", s.adminScaleDown},
		{"GET /admin/runs/{uuid}/instances/{name}", s.adminGetInstance},
		{"GET /admin/runs/{uuid}/instances/{name}/env", s.adminInstanceFile((*RunInfo).EnvFile)},
		{"GET /admin/runs/{uuid}/instances/{name}/context", s.adminInstanceFile((*RunInfo).ContextFile)},

		{"GET /admin/faults", s.adminFaults},
		{"PUT /admin/faults", s.adminFaults},
		{"DELETE /admin/faults", s.adminFaults},
		{"GET /admin/runs/{uuid}/faults", s.adminFaults},
		{"PUT /admin/runs/{uuid}/faults", s.adminFaults},
		{"DELETE /admin/runs/{uuid}/faults", s.adminFaults},
		{"GET /admin/nuvla2/groups/{uuid}", s.adminGetGroup},
		{"POST /admin/nuvla2/groups/{uuid}/members/{node}", s.adminAddMember},
		{"GET /admin/nuvla2/deployments/{uuid}/params", s.adminGetDeploymentParams},
		{"PUT /admin/nuvla2/deployments/{uuid}/state", s.adminSetDeploymentState},
		{"GET /admin/counters", s.adminGetCounters},
		{"DELETE /admin/counters", s.adminResetCounters},
		{"/admin/", s.adminNotFound},
	}
}

func (s *Server) newAdminMux() *http.ServeMux {
	m := http.NewServeMux()
	for _, rt := range s.adminRoutes() {
		m.HandleFunc(rt.pattern, rt.handler)
	}
	return m
}

// adminListRuns lists the runs (GET /admin/runs).
func (s *Server) adminListRuns(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	out := make([]runSummary, 0, len(s.runOrder))
	for _, id := range s.runOrder {
		run := s.runs[id]
		out = append(out, runSummary{UUID: id, Name: run.name, State: run.state(), Mutable: run.mutable,
			Aborted: run.aborted(), Abort: run.params["ss:abort"].value,
			Created: run.created.UTC().Format(time.RFC3339Nano), Instances: len(run.currentInstances())})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

// adminCreateRun creates a run from a deployment file (POST /admin/runs).
func (s *Server) adminCreateRun(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	d, err := ParseDeployment([]byte(body))
	if err != nil {
		adminError(w, http.StatusBadRequest, err.Error())
		return
	}
	ri, err := s.CreateRun(d)
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, ri)
}

// adminGetRun returns a run's instances and endpoints (GET /admin/runs/{uuid}).
func (s *Server) adminGetRun(w http.ResponseWriter, r *http.Request) {
	ri, err := s.RunInfo(r.PathValue("uuid"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ri)
}

// adminGetParams returns every parameter of a run (GET /admin/runs/{uuid}/params).
func (s *Server) adminGetParams(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	run, err := s.lookup(r.PathValue("uuid"))
	var out RunJSON
	if err == nil {
		out = runJSON(run)
	}
	s.mu.Unlock()
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// adminGetParam returns one parameter (GET /admin/runs/{uuid}/params/{key}).
func (s *Server) adminGetParam(w http.ResponseWriter, r *http.Request) {
	v, set, err := s.Param(r.PathValue("uuid"), r.PathValue("key"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"key": r.PathValue("key"), "value": v, "isSet": set})
}

// adminSetParam sets one parameter (as an operator: no role checks) (PUT /admin/runs/{uuid}/params/{key}).
func (s *Server) adminSetParam(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if err := s.SetParam(r.PathValue("uuid"), r.PathValue("key"), body); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminUnsetParam un-sets one parameter (DELETE /admin/runs/{uuid}/params/{key}).
func (s *Server) adminUnsetParam(w http.ResponseWriter, r *http.Request) {
	if err := s.SetParam(r.PathValue("uuid"), r.PathValue("key"), ""); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminGetState returns a run's state (GET /admin/runs/{uuid}/state).
func (s *Server) adminGetState(w http.ResponseWriter, r *http.Request) {
	st, err := s.State(r.PathValue("uuid"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeText(w, http.StatusOK, st)
}

// adminSetState moves a run to a state (PUT /admin/runs/{uuid}/state).
func (s *Server) adminSetState(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if err := s.SetState(r.PathValue("uuid"), strings.TrimSpace(body)); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminAbort aborts a run with a reason (POST /admin/runs/{uuid}/abort).
func (s *Server) adminAbort(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if err := s.Abort(r.PathValue("uuid"), body); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminComplete completes an instance's state (POST /admin/runs/{uuid}/complete/{instance}).
func (s *Server) adminComplete(w http.ResponseWriter, r *http.Request) {
	st, err := s.Complete(r.PathValue("uuid"), r.PathValue("instance"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeText(w, http.StatusOK, st)
}

// adminScaleUp adds n instances to a node (POST /admin/runs/{uuid}/nodes/{node}).
func (s *Server) adminScaleUp(w http.ResponseWriter, r *http.Request) {
	n := 1
	if v := r.URL.Query().Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			adminError(w, http.StatusBadRequest, "n: not an integer: "+v)
			return
		}
	}
	names, err := s.ScaleUp(r.PathValue("uuid"), r.PathValue("node"), n)
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"instances": names})
}

// adminScaleDown removes instances of a node by id (DELETE /admin/runs/{uuid}/nodes/{node}).
func (s *Server) adminScaleDown(w http.ResponseWriter, r *http.Request) {
	ids, err := parseIDs(r.URL.Query().Get("ids"))
	if err != nil {
		adminError(w, http.StatusBadRequest, "ids: not an integer: "+err.Error())
		return
	}
	if err := s.ScaleDown(r.PathValue("uuid"), r.PathValue("node"), ids); err != nil {
		adminErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// adminGetInstance returns one instance (GET /admin/runs/{uuid}/instances/{name}).
func (s *Server) adminGetInstance(w http.ResponseWriter, r *http.Request) {
	in, err := s.Instance(r.PathValue("uuid"), r.PathValue("name"))
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, in)
}

// adminGetCounters returns the request counters (GET /admin/counters).
func (s *Server) adminGetCounters(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]map[string]int64{"routes": s.Counters(), "clients": s.ClientCounters(),
		"client_bytes": s.ClientBytes(), "faults": s.FaultCounters()})
}

// adminResetCounters resets the counters (DELETE /admin/counters).
func (s *Server) adminResetCounters(w http.ResponseWriter, r *http.Request) {
	s.ResetCounters()
	w.WriteHeader(http.StatusNoContent)
}

// adminNotFound answers 404 for any other admin route (/admin/).
func (s *Server) adminNotFound(w http.ResponseWriter, r *http.Request) {
	adminError(w, http.StatusNotFound, "no admin route "+r.Method+" "+r.URL.Path+" (see docs/mocknuvla.md)")
}

// adminInstanceFile serves a file rendered for an instance (its env or context file).
func (s *Server) adminInstanceFile(render func(ri *RunInfo, url, name string) (string, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ri, err := s.RunInfo(r.PathValue("uuid"))
		if err != nil {
			adminErr(w, err)
			return
		}
		url := r.URL.Query().Get("serviceurl")
		if url == "" {
			url = s.serviceURL
		}
		if url == "" {
			adminError(w, http.StatusBadRequest, "no service URL: pass ?serviceurl=URL (the run API's URL as instances reach it)")
			return
		}
		txt, err := render(ri, url, r.PathValue("name"))
		if err != nil {
			adminError(w, http.StatusNotFound, err.Error())
			return
		}
		writeText(w, http.StatusOK, txt)
	}
}

// adminFaults reads (GET), sets (PUT) or clears (DELETE) the faults of the mock or of one run.
func (s *Server) adminFaults(w http.ResponseWriter, r *http.Request) {
	uuid := r.PathValue("uuid") // "" for /admin/faults
	if uuid != "" {
		if _, err := s.RunInfo(uuid); err != nil {
			adminErr(w, err)
			return
		}
	}
	switch r.Method {
	case http.MethodPut:
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		f, err := parseFaults(body)
		if err != nil {
			adminError(w, http.StatusBadRequest, err.Error())
			return
		}
		s.SetFaults(uuid, f)
		s.log.Info().Str("run", uuid).Dur("latency", f.Latency).Float64("error5xxRatio", f.Error5xxRatio).
			Float64("dropRatio", f.DropRatio).Msg("faults set")
	case http.MethodDelete:
		s.SetFaults(uuid, Faults{})
	}
	f, err := s.GetFaults(uuid)
	if err != nil {
		adminErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toFaultsJSON(f))
}

// Admin returns the handler of the admin API (routes under /admin/). It needs no login, so it is
// served on a listener of its own that the simulated VMs do not reach (loopback by default),
// never on the run API's.
func (s *Server) Admin() http.Handler {
	s.adminOnce.Do(func() { s.admin = s.newAdminMux() })
	return s.admin
}
