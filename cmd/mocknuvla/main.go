// Command mocknuvla serves the mock SlipStream run API (package mocknuvla) on an address: it
// creates a run from a deployment file at start, writes each instance's SLIPSTREAM_* context
// into an env dir, prints one ready line, and serves until SIGTERM or SIGINT.
//
//	mocknuvla --listen 127.0.0.1:8080 --deployment app.json --env-dir ./ctx
//	mocknuvla: listening on http://127.0.0.1:8080 run 3f1c...
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/cnsmo/cnsmo/mocknuvla"
)

type config struct {
	adminListen string
	listen      string
	deployment  string
	envDir      string
	advertise   string
	noAuth      bool
	logFormat   string
	logLevel    string
	users       []string
	api         string
	staleness   time.Duration
	noRights    bool
}

func (c *config) validate() error {
	if c.listen == "" {
		return errors.New("--listen: an address is needed, e.g. 127.0.0.1:0")
	}
	if c.envDir != "" && c.deployment == "" {
		return errors.New("--env-dir needs --deployment (the run whose instances get files)")
	}
	if c.advertise != "" {
		u, err := url.Parse(c.advertise)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("--advertise %q: want an http(s) URL such as http://198.18.0.1:8080", c.advertise)
		}
	}
	if c.api != "slipstream" && c.api != "nuvla2" {
		return fmt.Errorf("--api %q: want slipstream or nuvla2", c.api)
	}
	if c.staleness < 0 {
		return fmt.Errorf("--staleness %s: want 0 (none) or a positive duration", c.staleness)
	}
	if c.noRights && c.api != "nuvla2" {
		return errors.New("--no-user-rights is a Nuvla 2 option (--api nuvla2)")
	}
	if c.logFormat != "json" && c.logFormat != "console" {
		return fmt.Errorf("--log-format %q: want json or console", c.logFormat)
	}
	if _, err := zerolog.ParseLevel(c.logLevel); err != nil {
		return fmt.Errorf("--log-level %q: %w", c.logLevel, err)
	}
	for _, u := range c.users {
		if name, pw, ok := strings.Cut(u, ":"); !ok || name == "" || pw == "" {
			return errors.New("--user: want NAME:PASSWORD")
		}
	}
	return nil
}

func main() {
	cfg := &config{}
	cmd := &cobra.Command{
		Use:           "mocknuvla",
		Short:         "A mock SlipStream/Nuvla run API for tests: runs from a deployment file, admin API, faults, counters",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := cfg.validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return run(ctx, cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.listen, "listen", "127.0.0.1:0", "address to listen on (port 0 picks a free one)")
	f.StringVar(&cfg.deployment, "deployment", "", "deployment file (JSON) of the run created at start")
	f.StringVar(&cfg.envDir, "env-dir", "", "directory for each instance's <node>.<i>.env and <node>.<i>/slipstream.context")
	f.StringVar(&cfg.adminListen, "admin-listen", "127.0.0.1:0", "address of the admin API (no login: keep it where only the test driver reaches it)")
	f.StringVar(&cfg.advertise, "advertise", "", "service URL given to instances (default http://<listen address>)")
	f.BoolVar(&cfg.noAuth, "no-auth", false, "serve the run API without a session cookie")
	f.StringVar(&cfg.logFormat, "log-format", "json", "log format on stderr: json or console")
	f.StringVar(&cfg.logLevel, "log-level", "info", "log level: debug logs every request (never a value)")
	f.StringArrayVar(&cfg.users, "user", nil, "internal account NAME:PASSWORD for session-template/internal (repeatable)")
	f.StringVar(&cfg.api, "api", "slipstream", "API served: slipstream (the legacy run API) or nuvla2 (deployment parameters of a deployment group, docs/mocknuvla.md)")
	f.DurationVar(&cfg.staleness, "staleness", mocknuvla.DefaultStaleness, "Nuvla 2: how long a search shows a parameter's old value after an edit (0: none)")
	f.BoolVar(&cfg.noRights, "no-user-rights", false, "Nuvla 2: the applications do not ask for user rights (a member's key sees only its own deployment)")
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "mocknuvla:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	var w io.Writer = stderr
	if cfg.logFormat == "console" {
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.RFC3339}
	}
	lvl, _ := zerolog.ParseLevel(cfg.logLevel)
	log := zerolog.New(w).Level(lvl).With().Timestamp().Str("component", "mocknuvla").Logger()

	var dep *mocknuvla.Deployment
	if cfg.deployment != "" {
		var err error
		if dep, err = mocknuvla.LoadDeployment(cfg.deployment); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.listen, err)
	}
	defer ln.Close()
	aln, err := net.Listen("tcp", cfg.adminListen)
	if err != nil {
		return fmt.Errorf("admin API: listen on %s: %w", cfg.adminListen, err)
	}
	defer aln.Close()
	serviceURL := cfg.advertise
	if serviceURL == "" {
		serviceURL = "http://" + ln.Addr().String()
	}
	serviceURL = strings.TrimRight(serviceURL, "/")

	users := map[string]string{}
	for _, u := range cfg.users {
		name, pw, _ := strings.Cut(u, ":")
		users[name] = pw
	}
	var srv *mocknuvla.Server
	staleness := cfg.staleness
	if staleness == 0 {
		staleness = -1 // none
	}
	opts := mocknuvla.Options{Logger: log, NoAuth: cfg.noAuth, Users: users, ServiceURL: serviceURL, API: cfg.api, Staleness: staleness}
	if cfg.envDir != "" {
		// Instances created by a scale up get their files too.
		opts.OnInstances = func(uuid string, created []mocknuvla.InstanceInfo) {
			ri, err := srv.RunInfo(uuid)
			if err == nil {
				err = mocknuvla.WriteEnvFiles(cfg.envDir, serviceURL, ri, created)
			}
			if err != nil {
				log.Error().Err(err).Str("run", uuid).Msg("env files of new instances")
			}
		}
	}
	srv = mocknuvla.New(opts)

	runID := "none"
	if dep != nil && cfg.api == "nuvla2" {
		g, err := srv.CreateGroup(dep, !cfg.noRights)
		if err != nil {
			return err
		}
		runID = strings.TrimPrefix(g.ID, "deployment-set/") // the group's uuid
		if cfg.envDir != "" {
			if err := mocknuvla.WriteNuvla2EnvDir(cfg.envDir, serviceURL, g, g.Members); err != nil {
				return err
			}
			log.Info().Str("dir", cfg.envDir).Int("members", len(g.Members)).Msg("member environments written")
		}
	} else if dep != nil {
		ri, err := srv.CreateRun(dep)
		if err != nil {
			return err
		}
		runID = ri.UUID
		if cfg.envDir != "" {
			if err := mocknuvla.WriteEnvDir(cfg.envDir, serviceURL, ri); err != nil {
				return err
			}
			log.Info().Str("dir", cfg.envDir).Int("instances", len(ri.Instances)).Msg("instance contexts written")
		}
	}

	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	as := &http.Server{Handler: srv.Admin(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(ln) }()
	go func() { errc <- as.Serve(aln) }()
	fmt.Fprintf(stdout, "mocknuvla: listening on http://%s run %s admin http://%s\n", ln.Addr(), runID, aln.Addr())
	log.Info().Str("addr", ln.Addr().String()).Str("admin", aln.Addr().String()).Str("serviceurl", serviceURL).Str("run", runID).Bool("noAuth", cfg.noAuth).Msg("listening")

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info().Msg("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, h := range []*http.Server{hs, as} {
		if err := h.Shutdown(sctx); err != nil {
			_ = h.Close()
		}
	}
	return nil
}
