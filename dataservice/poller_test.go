package dataservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/proto"
)

// subs is an in-memory Subscriptions.
type subs struct {
	mu   sync.Mutex
	keys map[string][]string
	err  error
}

func newSubs(keys map[string][]string) *subs { return &subs{keys: keys} }

func (s *subs) Apps(context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	var apps []string
	for app, keys := range s.keys {
		if len(keys) > 0 {
			apps = append(apps, app)
		}
	}
	slices.Sort(apps)
	return apps, nil
}

func (s *subs) Keys(_ context.Context, app string) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.keys[app]), nil
}

func (s *subs) set(app string, keys ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[app] = keys
}

func (s *subs) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

// recorder is a Publisher that records what it is given.
type recorder struct {
	mu   sync.Mutex
	pubs []proto.Publication
	err  error
}

func (r *recorder) Publish(_ context.Context, pubs []proto.Publication) ([]uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return nil, r.err
	}
	r.pubs = append(r.pubs, pubs...)
	return make([]uint64, len(pubs)), nil
}

// take returns and clears what was published.
func (r *recorder) take() []proto.Publication {
	r.mu.Lock()
	defer r.mu.Unlock()
	pubs := r.pubs
	r.pubs = nil
	return pubs
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pubs)
}

func (r *recorder) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

// pubKeys returns the "app/key" of pubs, sorted.
func pubKeys(pubs []proto.Publication) []string {
	out := make([]string, len(pubs))
	for i, p := range pubs {
		out[i] = p.App + "/" + p.Key
	}
	slices.Sort(out)
	return out
}

func keyRange(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%03d", prefix, i+1)
	}
	return keys
}

// logBuffer collects log lines safely across goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(msg string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), "msg=\""+msg+"\"")
}

type fixture struct {
	sim *simulator.Simulator
	clk *clock
	reg *prometheus.Registry
	sub *subs
	pub *recorder
	log *logBuffer
	p   *Poller
}

// newFixture starts a simulator on a fixed clock and a poller of it; cfg's
// URL, Registerer and Logger are filled in.
func newFixture(t *testing.T, cfg Config, simCfg simulator.Config, keys map[string][]string) *fixture {
	t.Helper()
	f := &fixture{clk: newClock(), reg: prometheus.NewRegistry(), sub: newSubs(keys), pub: &recorder{}, log: &logBuffer{}}
	if simCfg.Now == nil {
		simCfg.Now = f.clk.Now
	}
	var srv *httptest.Server
	f.sim, srv = startSimulator(t, simCfg)
	cfg.URL = srv.URL
	cfg.Registerer = f.reg
	cfg.Logger = slog.New(slog.NewTextHandler(f.log, nil))
	p, err := New(cfg, f.sub, f.pub)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.p = p
	t.Cleanup(p.client.closeIdle)
	return f
}

func (f *fixture) calls(t *testing.T, result string) float64 {
	return metricValue(t, f.reg, "wspush_poller_calls_total", "result", result)
}

func TestPollerPublishesSubscribedKeys(t *testing.T) {
	f := newFixture(t, Config{}, simulator.Config{}, map[string][]string{
		"plant-7": {"003", "001", "002"},
		"demo":    {"s001"},
	})
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	pubs := f.pub.take()
	want := []string{"demo/s001", "plant-7/001", "plant-7/002", "plant-7/003"}
	if got := pubKeys(pubs); !slices.Equal(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
	for _, p := range pubs {
		if p.Seq != 0 || !p.JSON || p.TS != stepStartMs || !bytes.HasPrefix(p.Data, []byte(`{"temp":`)) {
			t.Errorf("publication %+v (data %s): want seq 0, JSON, ts %d, a sensor reading", p, p.Data, int64(stepStartMs))
		}
	}
	if got := metricValue(t, f.reg, "wspush_poller_values_published_total"); got != 4 {
		t.Errorf("values_published_total = %v, want 4", got)
	}
	if got := f.calls(t, "ok"); got != 2 {
		t.Errorf("calls_total{ok} = %v, want 2 (one per app)", got)
	}
}

func TestPollerChunks(t *testing.T) {
	f := newFixture(t, Config{ChunkSize: 3}, simulator.Config{}, map[string][]string{"plant-7": keyRange("k", 7)})
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if got := f.sim.Requests(); got != 3 {
		t.Errorf("data center got %d requests, want 3 (7 keys in chunks of 3)", got)
	}
	if got := f.pub.count(); got != 7 {
		t.Errorf("published %d values, want 7", got)
	}
	if got := metricValue(t, f.reg, "wspush_poller_call_duration_seconds"); got != 3 {
		t.Errorf("call_duration_seconds has %v samples, want 3", got)
	}
}

func TestPollerPublishesOnlyChanges(t *testing.T) {
	f := newFixture(t, Config{ChunkSize: 3}, simulator.Config{}, map[string][]string{"plant-7": keyRange("k", 7)})
	ctx := context.Background()
	if err := f.p.PollOnce(ctx); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	first := f.pub.take()
	last := map[string][]byte{}
	for _, p := range first {
		last[p.Key] = p.Data
	}

	// Same step: the data center returns the same values.
	if err := f.p.PollOnce(ctx); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if pubs := f.pub.take(); len(pubs) != 0 {
		t.Errorf("same step: published %v, want nothing", pubKeys(pubs))
	}
	if got := metricValue(t, f.reg, "wspush_poller_values_unchanged_total"); got != 7 {
		t.Errorf("values_unchanged_total = %v, want 7", got)
	}

	// Next step: only what changed, each different from before.
	f.clk.Advance(time.Second)
	if err := f.p.PollOnce(ctx); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	pubs := f.pub.take()
	if len(pubs) == 0 {
		t.Fatal("next step: nothing published")
	}
	for _, p := range pubs {
		if bytes.Equal(p.Data, last[p.Key]) {
			t.Errorf("key %s republished unchanged value %s", p.Key, p.Data)
		}
		if p.TS != stepStartMs+1000 {
			t.Errorf("key %s: ts %d, want %d", p.Key, p.TS, int64(stepStartMs+1000))
		}
	}
}

func TestPollerForgetsUnsubscribedKeys(t *testing.T) {
	f := newFixture(t, Config{ChunkSize: 2}, simulator.Config{}, map[string][]string{
		"plant-7": keyRange("k", 5),
		"gone":    {"x"},
	})
	ctx := context.Background()
	if err := f.p.PollOnce(ctx); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	f.pub.take()
	reqs := f.sim.Requests()

	f.sub.set("plant-7", "k002", "k004")
	f.sub.set("gone")
	f.clk.Advance(time.Hour)
	if err := f.p.PollOnce(ctx); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if got := f.sim.Requests() - reqs; got != 1 {
		t.Errorf("data center got %d requests, want 1 (2 keys, chunk size 2)", got)
	}
	if got, want := pubKeys(f.pub.take()), []string{"plant-7/k002", "plant-7/k004"}; !slices.Equal(got, want) {
		t.Errorf("published %v, want %v", got, want)
	}
	// Memory follows the subscriptions: the dropped app and keys are gone.
	f.p.mu.Lock()
	defer f.p.mu.Unlock()
	if got := slices.Sorted(maps.Keys(f.p.states)); !slices.Equal(got, []string{"plant-7"}) {
		t.Errorf("apps remembered: %v, want [plant-7]", got)
	}
	if got := slices.Sorted(maps.Keys(f.p.states["plant-7"].keys)); !slices.Equal(got, []string{"k002", "k004"}) {
		t.Errorf("keys remembered: %v, want [k002 k004]", got)
	}
}

func TestPollerBacksOff(t *testing.T) {
	// A backoff far longer than the test: the second poll must not call.
	f := newFixture(t, Config{BackoffMin: time.Hour, BackoffMax: time.Hour}, simulator.Config{Fault: simulator.FaultError500},
		map[string][]string{"plant-7": {"001"}, "demo": {"s001"}})
	ctx := context.Background()
	err := f.p.PollOnce(ctx)
	var se *StatusError
	if !errors.As(err, &se) || se.Code != 500 {
		t.Fatalf("PollOnce: %v, want a status 500 error", err)
	}
	if got := f.calls(t, "error"); got != 2 {
		t.Errorf("calls_total{error} = %v, want 2", got)
	}
	if got := metricValue(t, f.reg, "wspush_poller_apps_failing"); got != 2 {
		t.Errorf("apps_failing = %v, want 2", got)
	}
	reqs := f.sim.Requests()
	f.sim.SetFault(simulator.FaultNone)
	if err := f.p.PollOnce(ctx); err != nil {
		t.Errorf("PollOnce while backing off: %v, want nil", err)
	}
	if got := f.sim.Requests(); got != reqs {
		t.Errorf("data center got %d requests while backing off, want 0", got-reqs)
	}
	if got := f.log.count("poll failing, backing off"); got != 2 {
		t.Errorf("%d 'failing' log lines, want 2 (one per app)", got)
	}
}

func TestPollerRecovers(t *testing.T) {
	f := newFixture(t, Config{BackoffMin: time.Millisecond, BackoffMax: 4 * time.Millisecond},
		simulator.Config{Fault: simulator.FaultGarbage}, map[string][]string{"plant-7": {"001"}})
	ctx := context.Background()
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		_ = f.p.PollOnce(ctx)
		if got := f.calls(t, "error"); got < 3 {
			return fmt.Errorf("calls_total{error} = %v, want 3 failed calls", got)
		}
		return nil
	})
	f.sim.SetFault(simulator.FaultNone)
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if err := f.p.PollOnce(ctx); err != nil {
			return err
		}
		if f.pub.count() == 0 {
			return errors.New("nothing published yet")
		}
		return nil
	})
	if got := metricValue(t, f.reg, "wspush_poller_apps_failing"); got != 0 {
		t.Errorf("apps_failing = %v, want 0", got)
	}
	// One line per change of state, not one per failed poll.
	if fail, rec := f.log.count("poll failing, backing off"), f.log.count("poll recovered"); fail != 1 || rec != 1 {
		t.Errorf("log has %d 'failing' and %d 'recovered' lines, want 1 and 1", fail, rec)
	}
}

func TestBackoffGrowsAndCaps(t *testing.T) {
	p := &Poller{cfg: Config{BackoffMin: time.Second, BackoffMax: 30 * time.Second}}
	for n, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 6: 30 * time.Second, 1000: 30 * time.Second} {
		for range 100 {
			if d := p.backoff(n); d > base || d <= base*3/4 {
				t.Fatalf("backoff(%d) = %s, want in (%s, %s]", n, d, base*3/4, base)
			}
		}
	}
}

func TestPollerPublishFailureRetries(t *testing.T) {
	f := newFixture(t, Config{BackoffMin: time.Millisecond, BackoffMax: time.Millisecond}, simulator.Config{},
		map[string][]string{"plant-7": {"001", "002"}})
	ctx := context.Background()
	f.pub.setErr(errors.New("sequencer down"))
	if err := f.p.PollOnce(ctx); err == nil || !strings.Contains(err.Error(), "sequencer down") {
		t.Fatalf("PollOnce: %v, want the publisher's error", err)
	}
	f.pub.setErr(nil)
	// Same step, so the same values: they were never published and must be
	// published now.
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if err := f.p.PollOnce(ctx); err != nil {
			return err
		}
		if f.pub.count() != 2 {
			return fmt.Errorf("published %d values, want 2", f.pub.count())
		}
		return nil
	})
}

func TestPollerListFailure(t *testing.T) {
	f := newFixture(t, Config{}, simulator.Config{}, map[string][]string{"plant-7": {"001"}})
	f.sub.setErr(errors.New("redis down"))
	if err := f.p.PollOnce(context.Background()); err == nil || !strings.Contains(err.Error(), "redis down") {
		t.Fatalf("PollOnce: %v, want the Subscriptions error", err)
	}
	if f.sim.Requests() != 0 {
		t.Errorf("data center got %d requests, want 0", f.sim.Requests())
	}
}

func TestPollerIgnoresBadEntries(t *testing.T) {
	f := newFixture(t, Config{}, simulator.Config{Fault: simulator.FaultExtra}, map[string][]string{"plant-7": {"001", "002"}})
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if got := pubKeys(f.pub.take()); !slices.Equal(got, []string{"plant-7/001", "plant-7/002"}) {
		t.Errorf("published %v, want both keys", got)
	}
	if got := metricValue(t, f.reg, "wspush_poller_values_ignored_total"); got != 4 {
		t.Errorf("values_ignored_total = %v, want 4", got)
	}
}

func TestPollerRun(t *testing.T) {
	f := newFixture(t, Config{Schedule: "* * * * * *"}, simulator.Config{}, map[string][]string{"plant-7": keyRange("k", 3)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.p.Run(ctx) }()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := f.pub.count(); n != 3 {
			return fmt.Errorf("published %d values, want 3", n)
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v, want nil", err)
	}
	if err := f.p.Run(context.Background()); err == nil {
		t.Error("second Run: no error")
	}
}

// TestPollerSlowDataCenter checks that a data center that never answers
// makes later ticks skip the app instead of piling up, and does not hold up
// shutdown.
func TestPollerSlowDataCenter(t *testing.T) {
	f := newFixture(t, Config{Schedule: "* * * * * *", Timeout: time.Minute},
		simulator.Config{Fault: simulator.FaultSlow}, map[string][]string{"plant-7": {"001"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.p.Run(ctx) }()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := metricValue(t, f.reg, "wspush_poller_ticks_skipped_total", "reason", skipRunning); got < 1 {
			return errors.New("no tick skipped yet")
		}
		return nil
	})
	if got := f.sim.Requests(); got != 1 {
		t.Errorf("data center got %d requests, want 1 (later ticks skip the running poll)", got)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel while a poll was in flight")
	}
	// The poll ended with the cancellation: no backoff, no failing app.
	if got := metricValue(t, f.reg, "wspush_poller_apps_failing"); got != 0 {
		t.Errorf("apps_failing = %v, want 0 after shutdown", got)
	}
}

// TestPollerBoundsConcurrency checks MaxConcurrentApps: with one slot and
// a data center that never answers, one app is polled and the ticks that
// cannot start the others are skipped whole, not queued.
func TestPollerBoundsConcurrency(t *testing.T) {
	f := newFixture(t, Config{Schedule: "* * * * * *", Timeout: time.Minute, MaxConcurrentApps: 1},
		simulator.Config{Fault: simulator.FaultSlow}, map[string][]string{"a": {"1"}, "b": {"1"}, "c": {"1"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.p.Run(ctx) }()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := metricValue(t, f.reg, "wspush_poller_ticks_skipped_total", "reason", skipBusy); got < 1 {
			return errors.New("no tick skipped yet")
		}
		return nil
	})
	if got := f.sim.Requests(); got != 1 {
		t.Errorf("data center got %d requests, want 1 (one slot)", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	s, p := newSubs(nil), &recorder{}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no url", Config{}, "URL"},
		{"bad url", Config{URL: "not a url"}, "URL"},
		{"bad schedule", Config{URL: "http://x", Schedule: "every second"}, "schedule"},
		{"bad cron fields", Config{URL: "http://x", Schedule: "61 * * * * *"}, "schedule"},
		{"negative chunk", Config{URL: "http://x", ChunkSize: -1}, "chunk size"},
		{"negative concurrency", Config{URL: "http://x", MaxConcurrentApps: -1}, "concurrent"},
		{"backoff min above max", Config{URL: "http://x", BackoffMin: time.Minute}, "backoff"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg, s, p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error about %q", err, tc.want)
			}
		})
	}
	for _, spec := range []string{"@every 1s", "*/5 * * * * *", "*/5 * * * *", "@hourly"} {
		if _, err := New(Config{URL: "http://x", Schedule: spec}, s, p); err != nil {
			t.Errorf("schedule %q: %v", spec, err)
		}
	}
	if _, err := New(Config{URL: "http://x"}, nil, p); err == nil {
		t.Error("nil Subscriptions: no error")
	}
}

func TestNewRegistersMetricsOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := Config{URL: "http://x", Registerer: reg}
	if _, err := New(cfg, newSubs(nil), &recorder{}); err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := New(cfg, newSubs(nil), &recorder{}); err == nil {
		t.Fatal("second poller on the same registry: no error")
	}
}

// BenchmarkPollOnce polls one app of 10,000 keys (20 calls of 500) from a
// simulator on a real socket: "unchanged" within one step (the common case
// of slow sensors), "changed" with a new step every millisecond.
func BenchmarkPollOnce(b *testing.B) {
	keys := keyRange("s", 10000)
	for _, bc := range []struct {
		name string
		step time.Duration
	}{{"unchanged", time.Hour}, {"changed", time.Millisecond}} {
		b.Run(bc.name, func(b *testing.B) {
			_, srv := startSimulator(b, simulator.Config{Step: bc.step})
			sub := newSubs(map[string][]string{"bench": keys})
			p, err := New(Config{URL: srv.URL}, sub, discard{})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if err := p.PollOnce(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			polls := 0
			for b.Loop() {
				if err := p.PollOnce(ctx); err != nil {
					b.Fatal(err)
				}
				polls++
			}
			b.ReportMetric(float64(polls*len(keys))/b.Elapsed().Seconds(), "keys/s")
		})
	}
}

type discard struct{}

func (discard) Publish(_ context.Context, pubs []proto.Publication) ([]uint64, error) {
	return make([]uint64, len(pubs)), nil
}
