// Package ssclient speaks the legacy SlipStream run-parameter API over HTTP, and nothing else.
//
// The roles depend only on the small Params interface below, so a second backend (Nuvla 2's
// deployment-parameter resource) can be added without touching them.
package ssclient

import (
	"context"
	"errors"
)

// Params is what a CNSMO role needs from the run-parameter store. Keys are given as a recipe would
// give them to ss-get/ss-set: they are qualified exactly as the reference tools do (see Qualify).
type Params interface {
	// Get reads a key once; an unset key yields an error matching ErrNotSet.
	Get(ctx context.Context, key string) (string, error)
	// Wait blocks until the key is set, polling with jittered capped backoff under ctx.
	Wait(ctx context.Context, key string) (string, error)
	// Set writes a value; an empty value un-sets the key.
	Set(ctx context.Context, key, value string) error
	// Run reads the whole run (every instance's parameters) in one request.
	Run(ctx context.Context) (*Run, error)
	// Abort raises the abort flag of this instance (and so of the run) with a reason.
	Abort(ctx context.Context, reason string) error
	// Display sets this instance's statecustom (progress shown in the Nuvla UI).
	Display(ctx context.Context, msg string) error
	// Instance is this VM's node instance name, e.g. "webserver.2".
	Instance() string
}

// Typed errors; test with errors.Is. Errors returned by the client wrap these with context
// (the key and the status), and *StatusError carries the HTTP details for errors.As.
var (
	ErrNotSet       = errors.New("parameter not yet set")             // 412
	ErrAborted      = errors.New("run aborted")                       // 409 "Abort flag raised!"
	ErrUnknownKey   = errors.New("unknown key")                       // 404 (the server aborts the run)
	ErrTooLong      = errors.New("value longer than 4096 characters") // 400 or refused locally
	ErrUnauthorized = errors.New("unauthorized")                      // 401/403 after one re-login
	ErrTimeout      = errors.New("timed out")                         // context deadline while waiting or retrying
	ErrConflict     = errors.New("conflict")                          // 409 other than abort (state, scale)
)

// MaxValueLen is the longest value the server accepts.
const MaxValueLen = 4096
