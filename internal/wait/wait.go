// Package wait is the one way cnsmo waits for a condition: polled with a jittered, capped
// exponential backoff (cenkalti/backoff), under a context and an optional time limit.
package wait

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Backoff says how to poll: from Min (default 100 ms), growing by half each time up to Max
// (default 2 s), for at most Limit (0: until the context ends).
type Backoff struct {
	Min, Max, Limit time.Duration
}

// ErrTimeout is returned when Limit passed before the condition held.
var ErrTimeout = errors.New("timed out")

// New returns the backoff as cenkalti/backoff's, reset and ready to use.
func (b Backoff) New() *backoff.ExponentialBackOff {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = b.Min, b.Max, b.Limit
	if bo.InitialInterval == 0 {
		bo.InitialInterval = 100 * time.Millisecond
	}
	if bo.MaxInterval == 0 {
		bo.MaxInterval = 2 * time.Second
	}
	bo.Multiplier = 1.5
	bo.Reset()
	return bo
}

// Until calls cond until it reports done, returns an error (returned as is), ctx ends (ctx's
// error) or Limit passes (ErrTimeout). The first call is at once.
func (b Backoff) Until(ctx context.Context, cond func(ctx context.Context) (done bool, err error)) error {
	bo := b.New()
	for {
		done, err := cond(ctx)
		if err != nil || done {
			return err
		}
		d := bo.NextBackOff()
		if d == backoff.Stop {
			return fmt.Errorf("%w after %s", ErrTimeout, b.Limit)
		}
		if err := Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Sleep waits for d or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
