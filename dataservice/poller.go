package dataservice

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/wspush/wspush/proto"
)

// Subscriptions tells which keys somebody watches.
type Subscriptions interface {
	// Apps lists the apps with at least one subscribed key.
	Apps(ctx context.Context) ([]string, error)
	// Keys lists the subscribed keys of app. The poller sorts the returned
	// slice in place, so it must be the caller's own copy.
	Keys(ctx context.Context, app string) ([]string, error)
}

// Publisher sequences and fans out values.
type Publisher interface {
	// Publish sequences pubs and hands them to fan-out, returning their
	// seqs. It may keep the Data slices, which the poller never modifies,
	// but not the pubs slice.
	Publish(ctx context.Context, pubs []proto.Publication) ([]uint64, error)
}

// Defaults of Config (Timeout and MaxResponseBytes: DefaultTimeout and
// DefaultMaxResponseBytes).
const (
	DefaultSchedule          = "@every 1s"
	DefaultChunkSize         = 500
	DefaultMaxConcurrentApps = 8
	DefaultBackoffMin        = time.Second
	DefaultBackoffMax        = 30 * time.Second
)

// Config configures a Poller. The zero value of every field except URL
// means its default.
type Config struct {
	// URL is the data center's base URL (POST URL/getRealTimeData).
	// Required.
	URL string
	// Timeout bounds one getRealTimeData call (default 5s).
	Timeout time.Duration
	// MaxResponseBytes is the largest response accepted (default 16 MiB).
	MaxResponseBytes int64
	// ChunkSize is the most IDs asked for in one call (default 500).
	ChunkSize int
	// Schedule is a robfig/cron spec: five fields, or six with a leading
	// seconds field, or a descriptor such as "@every 5s" or "@hourly"
	// (default "@every 1s", the smallest step cron has).
	Schedule string
	// MaxConcurrentApps bounds how many apps are polled at once (default 8).
	MaxConcurrentApps int
	// BackoffMin is the wait after an app's first failed poll; it doubles
	// with every further failure up to BackoffMax. Each wait is shortened by
	// a random up to 25% so that apps and nodes do not retry in step
	// (defaults 1s and 30s).
	BackoffMin time.Duration
	BackoffMax time.Duration
	// Logger receives one line per state change (an app starts failing, an
	// app recovers), never one per tick. Nil discards.
	Logger *slog.Logger
	// Registerer receives the wspush_poller_* metrics; nil does not
	// register them.
	Registerer prometheus.Registerer
	// Lease, when set, is asked before every poll of an app, and the app
	// is skipped unless this node holds its lease, so that one node of a
	// cluster polls each app. Nil: every app is polled.
	Lease Lease
}

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.ChunkSize == 0 {
		c.ChunkSize = DefaultChunkSize
	}
	if c.Schedule == "" {
		c.Schedule = DefaultSchedule
	}
	if c.MaxConcurrentApps == 0 {
		c.MaxConcurrentApps = DefaultMaxConcurrentApps
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) clientConfig() ClientConfig {
	return ClientConfig{URL: c.URL, Timeout: c.Timeout, MaxResponseBytes: c.MaxResponseBytes}
}

// Validate reports the first invalid field, judging each zero field by its
// default.
func (c Config) Validate() error {
	if err := c.clientConfig().Validate(); err != nil {
		return err
	}
	switch {
	case c.ChunkSize < 0:
		return fmt.Errorf("chunk size %d: must be positive", c.ChunkSize)
	case c.MaxConcurrentApps < 0:
		return fmt.Errorf("max concurrent apps %d: must be positive", c.MaxConcurrentApps)
	case c.BackoffMin < 0:
		return fmt.Errorf("backoff min %s: must be positive", c.BackoffMin)
	case c.BackoffMax < 0:
		return fmt.Errorf("backoff max %s: must be positive", c.BackoffMax)
	}
	d := c.withDefaults()
	if d.BackoffMin > d.BackoffMax {
		return fmt.Errorf("backoff min %s is above backoff max %s", d.BackoffMin, d.BackoffMax)
	}
	if _, err := parseSchedule(d.Schedule); err != nil {
		return err
	}
	return nil
}

// parseSchedule accepts what docs/PROTOCOL.md and Config.Schedule promise: an
// optional seconds field and descriptors.
func parseSchedule(spec string) (cron.Schedule, error) {
	p := cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)
	s, err := p.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	return s, nil
}

// Poller polls the data center for the subscribed keys of every app on a
// cron schedule and publishes the values that changed.
type Poller struct {
	cfg    Config
	log    *slog.Logger
	client *Client
	subs   Subscriptions
	pub    Publisher
	sched  cron.Schedule
	m      *metrics

	// dispatching is a one-slot semaphore held while a round starts its
	// polls: a tick that finds it taken is skipped rather than queued, so
	// ticks never pile up behind a slow data center.
	dispatching chan struct{}
	// slots bounds the polls running at once (MaxConcurrentApps).
	slots chan struct{}
	// inflight tracks the polls started by Run's ticks.
	inflight sync.WaitGroup
	started  atomic.Bool

	// listFailing is whether the last Subscriptions.Apps call failed;
	// written under dispatching, read by Health.
	listFailing atomic.Bool
	// errors counts failed polls and listings; lastSuccess is the
	// UnixNano of the end of the last poll that asked for IDs and
	// published without error. Both for Health.
	errors      atomic.Uint64
	lastSuccess atomic.Int64

	mu     sync.Mutex
	round  uint64
	states map[string]*appState
}

// appState is what the poller remembers of one app.
type appState struct {
	// Guarded by Poller.mu.
	busy         bool      // a poll of the app is running
	seen         uint64    // last round that listed the app
	failures     int       // consecutive failed polls
	failingSince time.Time // first of those failures
	retryAt      time.Time // no poll before this
	ids          int       // IDs the last poll asked for (0: another node holds the lease)

	// Owned by the poll that set busy.
	gen           uint64
	keys          map[string]*keyState
	warnedIgnored bool
	leased        bool // the last Acquire of Config.Lease succeeded
}

// keyState is the last value published for a key.
type keyState struct {
	last []byte // nil: nothing published yet
	gen  uint64 // last appState.gen that listed the key
}

// New validates cfg and returns a poller of the data center at cfg.URL;
// Run starts it.
func New(cfg Config, subs Subscriptions, pub Publisher) (*Poller, error) {
	if subs == nil || pub == nil {
		return nil, errors.New("poller: Subscriptions and Publisher are required")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("poller config: %w", err)
	}
	cfg = cfg.withDefaults()
	sched, err := parseSchedule(cfg.Schedule)
	if err != nil {
		return nil, fmt.Errorf("poller config: %w", err)
	}
	client, err := NewClient(cfg.clientConfig())
	if err != nil {
		return nil, fmt.Errorf("poller: %w", err)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("poller: %w", err)
	}
	return &Poller{
		cfg:         cfg,
		log:         cfg.Logger,
		client:      client,
		subs:        subs,
		pub:         pub,
		sched:       sched,
		m:           m,
		dispatching: make(chan struct{}, 1),
		slots:       make(chan struct{}, cfg.MaxConcurrentApps),
		states:      make(map[string]*appState),
	}, nil
}

// Run polls on the schedule until ctx ends, then stops the schedule, waits
// for the polls in flight (ctx cancels their requests) and returns nil. It
// may be called once.
func (p *Poller) Run(ctx context.Context) error {
	if !p.started.CompareAndSwap(false, true) {
		return errors.New("poller: Run called twice")
	}
	c := cron.New(cron.WithLogger(cronLogger{p.log}))
	c.Schedule(p.sched, cron.FuncJob(func() { p.tick(ctx) }))
	c.Start()
	p.log.Info("poller started", "url", p.cfg.URL, "schedule", p.cfg.Schedule)
	<-ctx.Done()
	// Stop waits for running ticks, which return once ctx is done; the
	// polls they started are waited for next.
	<-c.Stop().Done()
	p.inflight.Wait()
	p.client.closeIdle()
	p.log.Info("poller stopped")
	return nil
}

// PollOnce runs one round now: it polls every subscribed app that is neither
// still being polled nor backing off, and returns when those polls have
// ended, with their errors joined. Run does the same on every tick.
func (p *Poller) PollOnce(ctx context.Context) error {
	select {
	case p.dispatching <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	err := p.startRound(ctx, &wg, func(app string, err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, fmt.Errorf("app %s: %w", app, err))
			mu.Unlock()
		}
	})
	<-p.dispatching
	wg.Wait()
	return errors.Join(append([]error{err}, errs...)...)
}

// tick is the cron job.
func (p *Poller) tick(ctx context.Context) {
	select {
	case p.dispatching <- struct{}{}:
	default:
		p.m.skipBusy.Inc()
		return
	}
	defer func() { <-p.dispatching }()
	// Errors are logged by state change where they happen.
	_ = p.startRound(ctx, &p.inflight, nil)
}

// startRound starts a poll of every listed app that is due, at most
// MaxConcurrentApps at a time, and returns once the last one has started
// or ctx has ended. wg tracks the polls; done, when not nil, is called as
// each one ends. The caller holds dispatching.
func (p *Poller) startRound(ctx context.Context, wg *sync.WaitGroup, done func(app string, err error)) error {
	apps, err := p.subs.Apps(ctx)
	if err != nil {
		err = fmt.Errorf("list subscribed apps: %w", err)
		if ctx.Err() == nil {
			p.errors.Add(1)
		}
		if !p.listFailing.Load() && ctx.Err() == nil {
			p.listFailing.Store(true)
			p.log.Warn("poller cannot list subscribed apps", "err", err)
		}
		return err
	}
	if p.listFailing.Swap(false) {
		p.log.Info("poller lists subscribed apps again")
	}

	p.mu.Lock()
	p.round++
	round := p.round
	p.mu.Unlock()
	for _, app := range apps {
		st := p.claim(app, round, time.Now())
		if st == nil {
			continue
		}
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			p.mu.Lock()
			st.busy = false
			p.mu.Unlock()
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.pollApp(ctx, app, st)
			<-p.slots
			p.finish(ctx, app, st, err)
			if done != nil {
				done(app, err)
			}
		}()
	}
	p.forget(round)
	return nil
}

// claim marks app as being polled and returns its state, or returns nil
// when the app is still being polled or is backing off.
func (p *Poller) claim(app string, round uint64, now time.Time) *appState {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.states[app]
	if st == nil {
		st = &appState{keys: make(map[string]*keyState)}
		p.states[app] = st
	}
	st.seen = round
	switch {
	case st.busy:
		p.m.skipRunning.Inc()
		return nil
	case now.Before(st.retryAt):
		return nil
	}
	st.busy = true
	return st
}

// forget drops the state of apps that round did not list, so that memory
// follows the subscriptions.
func (p *Poller) forget(round uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for app, st := range p.states {
		if st.seen != round && !st.busy {
			if st.failures > 0 {
				p.m.appsFailing.Dec()
			}
			delete(p.states, app)
		}
	}
}

// finish records the outcome of a poll of app and logs a change of state.
func (p *Poller) finish(ctx context.Context, app string, st *appState, err error) {
	now := time.Now()
	p.mu.Lock()
	st.busy = false
	failures, since := st.failures, st.failingSince
	var delay time.Duration
	switch {
	case err == nil:
		if failures > 0 {
			p.m.appsFailing.Dec()
		}
		st.failures, st.retryAt = 0, time.Time{}
	case ctx.Err() != nil:
		// Stopping: the error is the cancellation, not the data center.
	default:
		p.errors.Add(1)
		st.failures++
		delay = p.backoff(st.failures)
		st.retryAt = now.Add(delay)
		if st.failures == 1 {
			st.failingSince = now
			p.m.appsFailing.Inc()
		}
	}
	p.mu.Unlock()

	switch {
	case err == nil && failures > 0:
		p.log.Info("poll recovered", "app", app, "failures", failures, "down_for", now.Sub(since).Round(time.Millisecond))
	case err != nil && ctx.Err() == nil && failures == 0:
		p.log.Warn("poll failing, backing off", "app", app, "err", err, "retry_in", delay.Round(time.Millisecond))
	}
}

// backoff is the wait after the n-th consecutive failure: BackoffMin
// doubled n-1 times, capped at BackoffMax, less a random up to 25%.
func (p *Poller) backoff(n int) time.Duration {
	d := p.cfg.BackoffMin
	for i := 1; i < n && d < p.cfg.BackoffMax; i++ {
		if d > p.cfg.BackoffMax/2 {
			d = p.cfg.BackoffMax
			break
		}
		d *= 2
	}
	d = min(d, p.cfg.BackoffMax)
	if j := d / 4; j > 0 {
		d -= rand.N(j)
	}
	return d
}

// pollApp asks the data center for the subscribed keys of app, chunk by
// chunk, and publishes the changed values; it does nothing when another
// node holds the app's lease. The caller holds st.busy.
func (p *Poller) pollApp(ctx context.Context, app string, st *appState) error {
	if held, err := p.holdsLease(ctx, app, st); err != nil || !held {
		if err == nil {
			p.setIDs(st, 0)
		}
		return err
	}
	keys, err := p.subs.Keys(ctx, app)
	if err != nil {
		return fmt.Errorf("list subscribed keys: %w", err)
	}
	// Sorted chunks ask for the same IDs together every time, which keeps
	// requests (and any cache in front of the data center) stable.
	slices.Sort(keys)
	keys = slices.Compact(keys)
	st.track(keys)
	p.setIDs(st, len(keys))
	for start := 0; start < len(keys); start += p.cfg.ChunkSize {
		chunk := keys[start:min(start+p.cfg.ChunkSize, len(keys))]
		if err := p.pollChunk(ctx, app, st, chunk); err != nil {
			return fmt.Errorf("keys %d to %d of %d: %w", start+1, start+len(chunk), len(keys), err)
		}
	}
	if len(keys) > 0 {
		p.lastSuccess.Store(time.Now().UnixNano())
	}
	return nil
}

func (p *Poller) pollChunk(ctx context.Context, app string, st *appState, chunk []string) error {
	t0 := time.Now()
	res, err := p.client.GetRealTimeData(ctx, app, chunk)
	p.m.callDuration.Observe(time.Since(t0).Seconds())
	if err != nil {
		p.m.callsError.Inc()
		return err
	}
	p.m.callsOK.Inc()
	if res.Ignored > 0 {
		p.m.ignored.Add(float64(res.Ignored))
		if !st.warnedIgnored {
			// Once per app: a data center that sends bad entries usually
			// sends them on every call.
			st.warnedIgnored = true
			p.log.Warn("data center sent unusable entries, ignoring them", "app", app, "ignored", res.Ignored, "first", res.IgnoredErr)
		}
	}

	now := time.Now().UnixMilli()
	var pubs []proto.Publication
	unchanged := 0
	for _, v := range res.Values {
		// Every ID the client returns was requested, and track added every
		// requested key.
		if last := st.keys[v.ID].last; last != nil && bytes.Equal(last, v.Value) {
			unchanged++
			continue
		}
		ts := v.TS
		if ts == 0 {
			ts = now
		}
		// v.Value has memory of its own, so the Publisher may keep it and
		// last can share it: neither is ever modified.
		pubs = append(pubs, proto.Publication{App: app, Key: v.ID, TS: ts, Data: v.Value, JSON: true})
	}
	p.m.unchanged.Add(float64(unchanged))
	if len(pubs) == 0 {
		return nil
	}
	if _, err := p.pub.Publish(ctx, pubs); err != nil {
		// last stays as it was, so the next poll publishes these again.
		return fmt.Errorf("publish %d values: %w", len(pubs), err)
	}
	p.m.published.Add(float64(len(pubs)))
	for i := range pubs {
		st.keys[pubs[i].Key].last = pubs[i].Data
	}
	return nil
}

// track makes keys (sorted, unique) the app's tracked keys: new ones start
// with nothing published, dropped ones are forgotten.
func (st *appState) track(keys []string) {
	st.gen++
	for _, k := range keys {
		ks := st.keys[k]
		if ks == nil {
			ks = &keyState{}
			st.keys[k] = ks
		}
		ks.gen = st.gen
	}
	stale := len(st.keys) - len(keys)
	switch {
	case stale == 0:
	case stale > len(keys):
		// Go maps do not shrink: after most keys went away, a new map
		// gives the memory back.
		live := make(map[string]*keyState, len(keys))
		for _, k := range keys {
			live[k] = st.keys[k]
		}
		st.keys = live
	default:
		for k, ks := range st.keys {
			if ks.gen != st.gen {
				delete(st.keys, k)
			}
		}
	}
}

// cronLogger routes robfig/cron's logging to slog: its Info lines (every
// wake-up) are debug noise, its errors are not.
type cronLogger struct{ log *slog.Logger }

func (l cronLogger) Info(msg string, kv ...any) {
	l.log.Debug("cron: "+msg, kv...)
}

func (l cronLogger) Error(err error, msg string, kv ...any) {
	l.log.Error("cron: "+msg, append(kv, "err", err)...)
}
