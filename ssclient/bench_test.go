package ssclient_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cnsmo/cnsmo/internal/benchreport"
	"github.com/cnsmo/cnsmo/mocknuvla"
	"github.com/cnsmo/cnsmo/ssclient"
)

// countingTransport counts the requests of one client.
type countingTransport struct{ n atomic.Int64 }

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	return http.DefaultTransport.RoundTrip(r)
}

// TestBenchBarrier: a barrier over 100 instances of one node whose last flag is set at a random
// time within 0-20 s. Ours reads the whole run once per poll (jittered backoff from 100 ms, capped
// at 2 s); the reference behaviour (ss-get on each instance in turn, re-polling every 5 s) runs
// beside it in the same trial. 10 trials run concurrently against one mocknuvla on loopback.
func TestBenchBarrier(t *testing.T) {
	if os.Getenv("CNSMO_BENCH") != "1" {
		t.Skip("skipping: benchmark (CNSMO_BENCH=1, make bench)")
	}
	const instances, trials = 100, 10
	srv := mocknuvla.New(mocknuvla.Options{NoAuth: true})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	d, err := mocknuvla.ParseDeployment([]byte(fmt.Sprintf(`{"name":"b","nodes":[{"name":"web","cloud":"c","multiplicity":%d,"parameters":[{"name":"flag"}]}]}`, instances)))
	require.NoError(t, err)

	type result struct {
		reqOurs, reqRef   int64
		wakeOurs, wakeRef time.Duration
	}
	results := make([]result, trials)
	var wg sync.WaitGroup
	for i := 0; i < trials; i++ {
		ri, err := srv.CreateRun(d)
		require.NoError(t, err)
		names := make([]string, instances)
		for j := range names {
			names[j] = fmt.Sprintf("web.%d", j+1)
		}
		wg.Add(1)
		go func(i int, uuid string) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			newClient := func(tr http.RoundTripper) *ssclient.Client {
				c, err := ssclient.New(ssclient.Config{ServiceURL: hs.URL, RunUUID: uuid, NodeInstance: "web.1"},
					ssclient.WithHTTPClient(&http.Client{Transport: tr}))
				if err != nil {
					panic(err)
				}
				return c
			}
			for _, n := range names[:instances-1] {
				_ = srv.SetParam(uuid, n+":flag", "up")
			}
			// The straggler's delay is drawn from a fixed seed per trial, so that runs compare.
			delay := time.Duration(rand.New(rand.NewPCG(uint64(i), 7)).Int64N(int64(20 * time.Second)))
			var lastSet atomic.Int64
			go func() {
				time.Sleep(delay) // the simulated straggler's own timing, not a wait for a condition
				lastSet.Store(time.Now().UnixNano())
				_ = srv.SetParam(uuid, names[instances-1]+":flag", "up")
			}()
			var inner sync.WaitGroup
			inner.Add(2)
			go func() { // ours
				defer inner.Done()
				tr := &countingTransport{}
				_, err := newClient(tr).WaitAll(ctx, "flag", names, nil)
				if err == nil {
					results[i].wakeOurs = time.Since(time.Unix(0, lastSet.Load()))
				}
				results[i].reqOurs = tr.n.Load()
			}()
			go func() { // reference: one blocking get per instance, polling every 5 s
				defer inner.Done()
				tr := &countingTransport{}
				c := newClient(tr)
				for _, n := range names {
					for {
						_, err := c.Get(ctx, n+":flag")
						if !errors.Is(err, ssclient.ErrNotSet) {
							break
						}
						select {
						case <-ctx.Done():
							return
						case <-time.After(5 * time.Second):
						}
					}
				}
				results[i].wakeRef = time.Since(time.Unix(0, lastSet.Load()))
				results[i].reqRef = tr.n.Load()
			}()
			inner.Wait()
		}(i, ri.UUID)
	}
	wg.Wait()
	var ro, rr []float64
	var wo, wr []float64
	for _, r := range results {
		ro, rr = append(ro, float64(r.reqOurs)), append(rr, float64(r.reqRef))
		wo, wr = append(wo, float64(r.wakeOurs.Milliseconds())), append(wr, float64(r.wakeRef.Milliseconds()))
	}
	benchreport.Report(t,
		benchreport.Figure{Name: "barrier100_requests_wholerun", Value: median(ro),
			Baseline: "barrier100_requests_perinstance_5s", BaselineValue: median(rr),
			Note: "requests of one barrier over 100 instances, last flag set at random within 0-20 s; median of 10 trials"},
		benchreport.Figure{Name: "barrier100_wake_ms_p50", Value: median(wo),
			Baseline: "barrier100_wake_ms_p50_ref_5s", BaselineValue: median(wr),
			Note: "time from the last flag set to the barrier returning; median of 10 trials"},
	)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
