package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/cnsmo/cnsmo/backend/nuvla2"
	"github.com/cnsmo/cnsmo/backend/slipstream"
	"github.com/cnsmo/cnsmo/internal/wait"
	"github.com/cnsmo/cnsmo/params"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// backend is the coordination store a role runs on, and what the process needs of it beyond
// role.Store: who it is, what to wait for at start, why a deployment was aborted.
type backend struct {
	kind     string // "slipstream" or "nuvla2"
	store    role.Store
	run      string // for logs and the functions' owner: the run, or the hub deployment's uuid
	endpoint string // the platform's URL (the firewall keeps the path to it open)
	// waitServer waits for the CNSMO server's instance (an agent's mapped input).
	waitServer func(ctx context.Context) (string, error)
	// abortReason says why the deployment was aborted ("" when it cannot be read).
	abortReason func(ctx context.Context) string
	// left says goodbye when the member really leaves (Nuvla 2: its deployment is stopping).
	left func(ctx context.Context)
}

// Backends are the --backend values.
var Backends = []string{"auto", "slipstream", "nuvla2"}

// openBackend connects to the store: Nuvla 2 when asked for, or with --backend auto when the
// NUVLA_* variables are present; SlipStream otherwise.
func openBackend(ctx context.Context, opts Options, log zerolog.Logger) (*backend, error) {
	kind := opts.Backend
	if kind == "" || kind == "auto" {
		kind = "slipstream"
		if nuvla2.Present(os.Getenv) {
			kind = "nuvla2"
		}
	}
	if kind == "nuvla2" {
		return openNuvla2(ctx, opts, log)
	}
	cfg, err := ssclient.LoadConfig()
	if err != nil {
		return nil, err
	}
	client, err := ssclient.New(cfg, ssclient.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return &backend{kind: kind, store: slipstream.New(client), run: cfg.RunUUID, endpoint: cfg.ServiceURL,
		waitServer: func(ctx context.Context) (string, error) {
			return waitValue(ctx, slipstream.New(client), client.Instance(), params.ServerInstanceID, log)
		},
		abortReason: func(ctx context.Context) string {
			v, err := client.IgnoreAbort().Get(ctx, "ss:abort")
			if err != nil {
				return ""
			}
			return strings.TrimSpace(v)
		},
		left: func(context.Context) {},
	}, nil
}

func openNuvla2(ctx context.Context, opts Options, log zerolog.Logger) (*backend, error) {
	cfg, err := nuvla2.ConfigFromEnv(os.Getenv)
	if err != nil {
		return nil, err
	}
	c, err := nuvla2.New(cfg, nuvla2.WithLogger(log))
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	st, err := nuvla2.Open(octx, c, opts.Server)
	if err != nil {
		return nil, err
	}
	if err := st.PublishInputs(octx, os.Getenv); err != nil {
		return nil, err
	}
	if err := st.Announce(octx); err != nil { // the server, once its inputs are in place
		return nil, err
	}
	read := func(ctx context.Context) (role.Snapshot, error) { return st.Read(ctx) }
	return &backend{kind: "nuvla2", store: st, run: strings.TrimPrefix(st.Hub(), "deployment/"), endpoint: cfg.Endpoint,
		waitServer: func(ctx context.Context) (string, error) {
			var srv string
			err := wait.Backoff{Min: time.Second, Max: 10 * time.Second}.Until(ctx, func(ctx context.Context) (bool, error) {
				snap, err := read(ctx)
				if err != nil {
					log.Warn().Err(err).Msg("Nuvla failing; waiting on")
					return false, nil
				}
				if reason, aborted := snap.Aborted(); aborted {
					return false, fmt.Errorf("%w: %s", role.ErrAborted, reason)
				}
				srv = snap.Get(st.Self(), params.ServerInstanceID)
				return srv != "", nil
			})
			return srv, err
		},
		abortReason: func(ctx context.Context) string {
			snap, err := read(ctx)
			if err != nil {
				return ""
			}
			reason, _ := snap.Aborted()
			return reason
		},
		left: func(ctx context.Context) {
			// A stop of the container is not a leave (a reboot stops it too): only a stop of the
			// member's deployment in Nuvla releases its name and identities.
			state, err := c.DeploymentState(ctx, cfg.Deployment)
			if err == nil && (state == "STOPPING" || state == "STOPPED") || errors.Is(err, nuvla2.ErrNotFound) {
				if err := st.Leave(ctx); err != nil {
					log.Warn().Err(err).Msg("could not say goodbye")
				}
			}
		},
	}, nil
}
