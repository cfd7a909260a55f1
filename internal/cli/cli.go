// Package cli is cnsmo-role's command line: the role subcommands and the drop-in ss-* tools
// (ss-get, ss-set, ss-display, ss-abort, ss-random) with the reference tools' flags, output and
// exit codes. Invoked through a link named ss-get (etc.), the binary behaves as that tool.
package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/cnsmo/cnsmo/internal/logx"
	"github.com/cnsmo/cnsmo/internal/version"
	"github.com/cnsmo/cnsmo/roles/role"
	"github.com/cnsmo/cnsmo/ssclient"
)

// Exit codes of the reference ss-* tools.
const (
	ExitOK        = 0
	ExitNotYetSet = 1
	ExitUsage     = 2
	ExitValue     = 3
	ExitNetwork   = 4
	ExitServer    = 5
	ExitSecurity  = 6
	ExitClient    = 7
	ExitAbort     = 8
	ExitTimeout   = 9
)

// Tools are the ss-* names the binary answers to.
var Tools = []string{"ss-get", "ss-set", "ss-display", "ss-abort", "ss-random"}

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// Usagef is a usage error (exit code 2): a bad flag value or argument.
func Usagef(format string, args ...any) error { return exitf(ExitUsage, format, args...) }

// errQuiet is an exit code whose command already said everything on stdout.
var errQuiet = errors.New("quiet exit")

// Quiet ends the command with code and prints nothing more (the command said why).
func Quiet(code int) error { return &exitError{code: code, err: errQuiet} }

func exitf(code int, format string, args ...any) error {
	return &exitError{code: code, err: fmt.Errorf(format, args...)}
}

// ExitCode maps an error to the reference tools' exit codes.
func ExitCode(err error) int {
	var ee *exitError
	var se *ssclient.StatusError
	var ne net.Error
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, ssclient.ErrAborted), errors.Is(err, role.ErrAborted):
		return ExitAbort
	case errors.Is(err, ssclient.ErrTimeout):
		return ExitTimeout
	case errors.Is(err, ssclient.ErrNotSet):
		return ExitNotYetSet
	case errors.Is(err, ssclient.ErrTooLong):
		return ExitValue
	case errors.Is(err, ssclient.ErrUnauthorized):
		return ExitSecurity
	case errors.Is(err, ssclient.ErrUnknownKey):
		return ExitClient
	case errors.As(err, &se) && se.Code >= 500:
		return ExitServer
	case errors.As(err, &se):
		return ExitClient
	case errors.As(err, &ne):
		return ExitNetwork
	}
	return 1
}

type globals struct {
	logFormat, logLevel string
}

// NewRoot builds cnsmo-role's command tree; extra adds the role subcommands.
func NewRoot(extra ...*cobra.Command) *cobra.Command {
	extra = append(roleCommands(), extra...)
	g := &globals{}
	root := &cobra.Command{
		Use:   "cnsmo-role",
		Short: "CNSMO network services (VPN, firewall, load balancer) for SlipStream/Nuvla applications",
		Long: `cnsmo-role runs the CNSMO role of a VM of a SlipStream/Nuvla run (server or agent), and answers
as the ss-* tools (ss-get, ss-set, ss-display, ss-abort, ss-random) when invoked through a link of
that name or as a subcommand. The run's context comes from slipstream.context or SLIPSTREAM_*.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "auto", "log format: json, console, or auto (console on a terminal)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(&cobra.Command{
		Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "cnsmo-role", version.Version) },
	})
	root.AddCommand(getCmd(g), setCmd(g), displayCmd(g), abortCmd(g), randomCmd(g))
	root.AddCommand(extra...)
	return root
}

// Logger returns the logger the global flags ask for.
func Logger(cmd *cobra.Command) (zerolog.Logger, error) {
	f := cmd.Flags()
	format, _ := f.GetString("log-format")
	level, _ := f.GetString("log-level")
	return logx.New(os.Stderr, format, level)
}

// Main runs the command line for args (os.Args) and returns the exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, extra ...*cobra.Command) int {
	root := NewRoot(extra...)
	root.SetOut(stdout)
	root.SetErr(stderr)
	rest := args[1:]
	if name := filepath.Base(args[0]); isTool(name) {
		rest = append([]string{name}, rest...)
	}
	root.SetArgs(rest)
	err := root.ExecuteContext(ctx)
	if err != nil {
		code := ExitCode(err)
		if errors.Is(err, errQuiet) {
			return code
		}
		if !strings.Contains(err.Error(), "unknown flag") && !strings.Contains(err.Error(), "accepts") {
			fmt.Fprintln(stderr, "error:", err)
		} else {
			fmt.Fprintln(stderr, "usage error:", err)
			code = ExitUsage
		}
		return code
	}
	return ExitOK
}

func isTool(name string) bool {
	for _, t := range Tools {
		if t == name {
			return true
		}
	}
	return false
}

func client(cmd *cobra.Command, ignoreAbort bool) (*ssclient.Client, error) {
	cfg, err := ssclient.LoadConfig()
	if err != nil {
		// The reference client ends with 1 when it has no context.
		return nil, &exitError{code: ExitNotYetSet, err: err}
	}
	log, err := Logger(cmd)
	if err != nil {
		return nil, &exitError{code: ExitUsage, err: err}
	}
	c, err := ssclient.New(cfg, ssclient.WithLogger(log), ssclient.WithPoll(100*time.Millisecond, 5*time.Second))
	if err != nil {
		return nil, &exitError{code: ExitUsage, err: err}
	}
	if ignoreAbort {
		c = c.IgnoreAbort()
	}
	return c, nil
}

func getCmd(g *globals) *cobra.Command {
	var timeout int
	var noblock, ignoreAbort bool
	c := &cobra.Command{
		Use:   "ss-get [--timeout S] [--noblock] [--ignore-abort] key",
		Short: "Print a run parameter, waiting until it is set",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client(cmd, ignoreAbort)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			v, err := cl.Get(ctx, args[0])
			if errors.Is(err, ssclient.ErrNotSet) {
				if noblock {
					fmt.Fprintln(cmd.OutOrStdout())
					return nil
				}
				fmt.Fprintln(cmd.ErrOrStderr(), "Waiting for", cl.Qualify(args[0]))
				if timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Duration(timeout)*time.Second)
					defer cancel()
				}
				v, err = cl.Wait(ctx, args[0])
				if errors.Is(err, ssclient.ErrTimeout) {
					return exitf(ExitTimeout, "timed out after %d s waiting for %s", timeout, cl.Qualify(args[0]))
				}
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), v)
			return nil
		},
	}
	c.Flags().IntVar(&timeout, "timeout", 60, "seconds to wait for the key to be set (0 = forever)")
	c.Flags().BoolVar(&noblock, "noblock", false, "do not wait: print an empty line if the key is not set")
	c.Flags().BoolVar(&ignoreAbort, "ignore-abort", false, "read even when the run is aborted")
	return c
}

func setCmd(g *globals) *cobra.Command {
	var ignoreAbort bool
	c := &cobra.Command{
		Use:   "ss-set [--ignore-abort] key value",
		Short: "Set a run parameter (an empty value un-sets it)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := strings.ReplaceAll(args[1], "\x1b", "")
			if n := len([]rune(v)); n > ssclient.MaxValueLen {
				return exitf(ExitValue, "ss-set %s: value is %d characters, over the %d limit", args[0], n, ssclient.MaxValueLen)
			}
			cl, err := client(cmd, ignoreAbort)
			if err != nil {
				return err
			}
			return cl.Set(cmd.Context(), args[0], v)
		},
	}
	c.Flags().BoolVar(&ignoreAbort, "ignore-abort", false, "write even when the run is aborted")
	return c
}

func displayCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "ss-display message",
		Short: "Show a message in the Nuvla UI (this instance's statecustom)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client(cmd, false)
			if err != nil {
				return err
			}
			return cl.Display(cmd.Context(), args[0])
		},
	}
}

func abortCmd(g *globals) *cobra.Command {
	var cancel bool
	c := &cobra.Command{
		Use:   "ss-abort [--cancel] [reason]",
		Short: "Abort the run with a reason (or, with --cancel, clear the abort flag)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := client(cmd, false) // as the reference: an aborted run refuses a second abort (exit 8)
			if err != nil {
				return err
			}
			if cancel {
				return cl.CancelAbort(cmd.Context())
			}
			reason := ""
			if len(args) == 1 {
				reason = args[0]
			}
			return cl.Abort(cmd.Context(), reason)
		},
	}
	c.Flags().BoolVar(&cancel, "cancel", false, "clear the abort flag of this instance and of the run")
	return c
}

func randomCmd(g *globals) *cobra.Command {
	var size int
	c := &cobra.Command{
		Use:   "ss-random [-s N] [key]",
		Short: "Print a random alphanumeric string (and set it in key when given)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size < 1 || size > ssclient.MaxValueLen {
				return exitf(ExitUsage, "-s: %d is out of range 1-%d", size, ssclient.MaxValueLen)
			}
			const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
			b := make([]byte, size)
			for i := range b {
				n, err := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
				if err != nil {
					return err
				}
				b[i] = alphabet[n.Int64()]
			}
			if len(args) == 1 {
				cl, err := client(cmd, false)
				if err != nil {
					return err
				}
				if err := cl.Set(cmd.Context(), args[0], string(b)); err != nil {
					return err
				}
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return nil
		},
	}
	c.Flags().IntVarP(&size, "size", "s", 12, "length of the string")
	return c
}
