package mocknuvla

import (
	"encoding/json"
	"io"
	"net/http"
)

// sessionRequest is the body of POST /api/session. SlipStream reads "sessionTemplate"; Nuvla 2
// names it "template": both are accepted.
type sessionRequest struct {
	SessionTemplate *sessionTemplate `json:"sessionTemplate"`
	Template        *sessionTemplate `json:"template"`
}

type sessionTemplate struct {
	Href     string `json:"href"`
	Key      string `json:"key"`
	Secret   string `json:"secret"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// serveSession is /api/session: POST logs in (201 + Secure cookie), DELETE logs out.
func (s *Server) serveSession(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
	case http.MethodDelete:
		if c, err := r.Cookie(CookieName); err == nil {
			s.mu.Lock()
			delete(s.sessions, c.Value)
			s.mu.Unlock()
		}
		http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, Secure: true, HttpOnly: true})
		writeJSON(w, http.StatusOK, map[string]any{"status": 200, "message": "session deleted"})
		return
	default:
		w.Header().Set("Allow", "POST, DELETE")
		writeError(w, r, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed on /api/session")
		return
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "cannot read the session request: "+err.Error())
		return
	}
	var req sessionRequest
	if err := json.Unmarshal(b, &req); err != nil {
		writeError(w, r, http.StatusBadRequest, "session request is not JSON: "+err.Error())
		return
	}
	t := req.SessionTemplate
	if t == nil {
		t = req.Template
	}
	if t == nil {
		writeError(w, r, http.StatusBadRequest, `session request needs "sessionTemplate": {"href": ...}`)
		return
	}
	var sess session
	s.mu.Lock()
	ok := false
	switch t.Href {
	case "session-template/api-key":
		c, found := s.creds[t.Key]
		if found && t.Secret != "" && c.secret == t.Secret {
			ok, sess = true, session{run: c.run, user: t.Key}
		}
	case "session-template/internal":
		p, found := s.users[t.Username]
		if found && t.Password != "" && p == t.Password {
			ok, sess = true, session{user: t.Username}
		}
	default:
		s.mu.Unlock()
		writeError(w, r, http.StatusBadRequest, "unknown session template "+t.Href+" (want session-template/api-key or session-template/internal)")
		return
	}
	if !ok {
		s.mu.Unlock()
		s.log.Info().Str("template", t.Href).Msg("login refused")
		writeError(w, r, http.StatusForbidden, "invalid credentials for "+t.Href)
		return
	}
	token := randomHex(24)
	s.sessions[token] = sess
	s.mu.Unlock()
	id := "session/" + newUUID()
	// The real server marks the cookie Secure even when reached over plain http.
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: token, Path: "/", Secure: true, HttpOnly: true})
	s.log.Debug().Str("template", t.Href).Str("session", id).Msg("login")
	writeJSON(w, http.StatusCreated, map[string]any{"status": 201, "message": "created " + id, "resource-id": id})
}

// authorized checks the session cookie: none or unknown -> 401; a machine (API key) session
// of another run -> 403. It answers the error itself.
func (s *Server) authorized(w http.ResponseWriter, r *http.Request, uuid string) bool {
	if s.noAuth {
		return true
	}
	c, err := r.Cookie(CookieName)
	if err != nil || c.Value == "" {
		writeError(w, r, http.StatusUnauthorized, "authentication required: log in with POST /api/session")
		return false
	}
	s.mu.Lock()
	sess, ok := s.sessions[c.Value]
	s.mu.Unlock()
	if !ok {
		writeError(w, r, http.StatusUnauthorized, "invalid or expired session: log in with POST /api/session")
		return false
	}
	if sess.run != "" && sess.run != uuid {
		writeError(w, r, http.StatusForbidden, "this machine credential belongs to run "+sess.run+", not "+uuid)
		return false
	}
	return true
}
