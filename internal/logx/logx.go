// Package logx builds cnsmo's zerolog loggers: JSON by default (for an ELK stack), console
// format on a terminal or on request. Secrets are never given to a logger: callers log keys and
// statuses, never values of credentials.
package logx

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/rs/zerolog"
)

// New returns a logger writing to w in format "json", "console" or "auto" (console when w is a
// terminal) at level ("debug", "info", "warn", "error").
func New(w io.Writer, format, level string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("--log-level: %q is not one of debug, info, warn, error", level)
	}
	switch format {
	case "auto":
		format = "json"
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			format = "console"
		}
	case "json", "console":
	default:
		return zerolog.Nop(), fmt.Errorf("--log-format: %q is not json, console or auto", format)
	}
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
