package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RunWorker is a worker: it reads its config and the coordinator's
// messages as JSON lines from in, holds its share of the connections and
// writes progress and its result as JSON lines to out (see wire.go). It
// returns once in has ended: the coordinator closes it when it is done
// with the worker, and a worker process whose coordinator died sees it
// end too. ctx ending (a signal, the deadline) stops the connections and
// sends an error message.
func RunWorker(ctx context.Context, in io.Reader, out io.Writer) error {
	dec := json.NewDecoder(in)
	lw := &lineWriter{enc: json.NewEncoder(out)}
	var first wireMsg
	if err := dec.Decode(&first); err != nil {
		err = fmt.Errorf("worker: read config: %w", err)
		_ = lw.send(wireMsg{Type: msgError, Error: err.Error()})
		return err
	}
	msgs := make(chan wireMsg, 4)
	go func() { // ends when in ends; RunWorker drains msgs until then
		defer close(msgs)
		for {
			var m wireMsg
			if err := dec.Decode(&m); err != nil {
				return
			}
			msgs <- m
		}
	}()
	err := runWorker(ctx, first, msgs, lw)
	if err != nil {
		_ = lw.send(wireMsg{Type: msgError, Error: err.Error()})
	}
	for range msgs {
	}
	return err
}

// lineWriter writes protocol messages from several goroutines.
type lineWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (l *lineWriter) send(m wireMsg) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.enc.Encode(m); err != nil {
		return fmt.Errorf("send %s: %w", m.Type, err)
	}
	return nil
}

// latencyShards is how many locks the latency histogram of a worker is
// split into: its connections record into it concurrently, connection i
// into shard i mod latencyShards.
const latencyShards = 16

// worker is one worker's state during a step.
type worker struct {
	cfg       WorkerConfig
	handshake *Histogram
	subscribe *Histogram
	latency   *Histogram

	connected, failed, dropped atomic.Int64
	counted, stale, foreign    atomic.Uint64
	windowStart, windowEnd     atomic.Int64

	unresolved  atomic.Int64
	allResolved chan struct{}

	mu         sync.Mutex
	errs       []string
	closeCodes map[string]int

	clients []*client // by position in the worker's range; nil: never started
	conns   sync.WaitGroup
}

func newWorker(cfg WorkerConfig) *worker {
	w := &worker{
		cfg:         cfg,
		handshake:   NewHistogram(),
		subscribe:   NewHistogram(),
		latency:     newShardedHistogram(latencyShards),
		allResolved: make(chan struct{}),
		closeCodes:  make(map[string]int),
		clients:     make([]*client, cfg.Count),
	}
	w.unresolved.Store(int64(cfg.Count))
	return w
}

func runWorker(ctx context.Context, first wireMsg, msgs <-chan wireMsg, lw *lineWriter) error {
	if first.Type != msgConfig || first.Config == nil {
		return fmt.Errorf("worker: want a config message first, got %q", first.Type)
	}
	cfg := *first.Config
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("worker %d: config: %w", cfg.ID, err)
	}
	if !cfg.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, cfg.Deadline)
		defer cancel()
	}
	w := newWorker(cfg)

	var bg sync.WaitGroup
	connCtx, stopConns := context.WithCancel(ctx)
	progCtx, stopProgress := context.WithCancel(ctx)
	defer func() { // every path out stops the connections first
		stopConns()
		stopProgress()
		bg.Wait()
		w.conns.Wait()
	}()
	bg.Go(func() { w.ramp(connCtx) })
	bg.Go(func() {
		t := time.NewTicker(cfg.ProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-progCtx.Done():
				return
			case <-t.C:
				p := w.progress()
				_ = lw.send(wireMsg{Type: msgProgress, Progress: &p})
			}
		}
	})

	allResolved := w.allResolved
	var expected, finals map[uint64]uint64
loop:
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker %d: %w", cfg.ID, context.Cause(ctx))
		case <-allResolved:
			allResolved = nil
			p := w.progress()
			if err := lw.send(wireMsg{Type: msgReady, Progress: &p}); err != nil {
				return err
			}
		case m, ok := <-msgs:
			if !ok { // the coordinator gave up on the step: nobody wants a result
				return nil
			}
			switch m.Type {
			case msgStart:
				w.windowEnd.Store(m.WindowEnd)
				w.windowStart.Store(m.WindowStart)
				if err := lw.send(wireMsg{Type: msgStarted}); err != nil {
					return err
				}
			case msgFinish:
				expected, finals = perNodeKey(m.Expected), perNodeKey(m.Finals)
				if err := w.drain(ctx, expected, finals); err != nil {
					return err
				}
				p := w.progress()
				if err := lw.send(wireMsg{Type: msgDrained, Progress: &p}); err != nil {
					return err
				}
			case msgStop:
				break loop
			default:
				return fmt.Errorf("worker %d: unexpected message %q", cfg.ID, m.Type)
			}
		}
	}
	stopConns()
	stopProgress()
	bg.Wait()
	w.conns.Wait()
	return lw.send(wireMsg{Type: msgResult, Result: w.result(expected, finals)})
}

func nodeKey(node int, key int32) uint64 { return uint64(node)<<32 | uint64(uint32(key)) }

// perNodeKey maps the [node, key, n] of a finish message by nodeKey.
func perNodeKey(list [][3]uint64) map[uint64]uint64 {
	m := make(map[uint64]uint64, len(list))
	for _, e := range list {
		m[nodeKey(int(e[0]), int32(e[1]))] = e[2]
	}
	return m
}

// ramp starts the worker's connections at cfg.RampRate per second, with
// at most cfg.MaxDialing handshakes in flight.
func (w *worker) ramp(ctx context.Context) {
	p := &w.cfg.Plan
	dialers := newDialers(p, w.cfg.HandshakeTimeout)
	dialing := make(chan struct{}, w.cfg.MaxDialing)
	start := time.Now()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for k := range w.cfg.Count {
		due := start.Add(time.Duration(float64(k) / w.cfg.RampRate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			timer.Reset(d)
			select {
			case <-timer.C:
			case <-ctx.Done():
				w.abandon(w.cfg.Count - k)
				return
			}
		}
		select {
		case dialing <- struct{}{}:
		case <-ctx.Done():
			w.abandon(w.cfg.Count - k)
			return
		}
		idx := w.cfg.First + k
		c := newClient(w, idx)
		w.clients[k] = c
		d := dialerFor(p, dialers, idx)
		w.conns.Go(func() { c.run(ctx, d, dialing) })
	}
}

// resolved records that a connection is up (err nil) or has failed.
func (w *worker) resolved(_ *client, err error) {
	if err != nil {
		w.failed.Add(1)
		w.mu.Lock()
		w.errs = addErrorSample(w.errs, err.Error())
		w.mu.Unlock()
	} else {
		w.connected.Add(1)
	}
	w.resolve(1)
}

// abandon counts n connections never started (the run was stopped) as
// failed.
func (w *worker) abandon(n int) {
	w.failed.Add(int64(n))
	w.resolve(n)
}

func (w *worker) resolve(n int) {
	if w.unresolved.Add(-int64(n)) == 0 {
		close(w.allResolved)
	}
}

// droppedConn records a connection that ended during the run.
func (w *worker) droppedConn(err error) {
	w.dropped.Add(1)
	w.mu.Lock()
	w.closeCodes[strconv.Itoa(closeCode(err))]++
	w.mu.Unlock()
}

func (w *worker) progress() Progress {
	return Progress{
		Connected: w.connected.Load(),
		Failed:    w.failed.Load(),
		Dropped:   w.dropped.Load(),
		Counted:   w.counted.Load(),
		Stale:     w.stale.Load(),
		Foreign:   w.foreign.Load(),
	}
}

// drain waits, for the sources of wsbench, until the connections still
// open have received every value published to their keys (in latest
// mode: the last value of each key), or cfg.Drain has passed.
func (w *worker) drain(ctx context.Context, expected, finals map[uint64]uint64) error {
	if !w.cfg.Plan.Source.FromWsbench() {
		return nil
	}
	live := func(c *client) bool { return c != nil && c.ready.Load() && !c.dropped.Load() }
	var due uint64
	for _, c := range w.clients {
		if !live(c) {
			continue
		}
		for _, k := range c.keys {
			due += expected[nodeKey(c.node, k)]
		}
	}
	done := func() bool { return w.counted.Load() >= due }
	if w.cfg.Plan.latest() {
		done = func() bool {
			for _, c := range w.clients {
				if !live(c) {
					continue
				}
				for j, k := range c.keys {
					if c.tops[j].Load() < finals[nodeKey(c.node, k)] {
						return false
					}
				}
			}
			return true
		}
	}
	deadline := time.Now().Add(w.cfg.Drain)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for !done() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("worker %d: drain: %w", w.cfg.ID, context.Cause(ctx))
		case <-t.C:
		}
	}
	return nil
}

// result gathers the worker's figures; the connections must have ended.
func (w *worker) result(expected, finals map[uint64]uint64) *WorkerResult {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := &WorkerResult{
		Planned:   w.cfg.Count,
		Progress:  w.progress(),
		Errors:    w.errs,
		Handshake: w.handshake,
		Subscribe: w.subscribe,
		Latency:   w.latency,
	}
	if len(w.closeCodes) > 0 {
		r.CloseCodes = w.closeCodes
	}
	plan := &w.cfg.Plan
	if plan.latest() {
		r.Latest = &LatestFigures{MaxRate: plan.MaxRate}
	}
	for _, c := range w.clients {
		if c == nil {
			continue
		}
		r.LastReceive = max(r.LastReceive, c.lastReceive)
		for j, k := range c.keys {
			nk := nodeKey(c.node, k)
			switch src := plan.Source; {
			case src.FromWsbench() && plan.latest():
				r.Loss.AccountLatest(&c.subs[j], finals[nk])
				r.Latest.add(expected[nk], c.subs[j].Distinct(), c.seconds[j].most, plan.rateLimit())
			case src.FromWsbench():
				r.Loss.Account(&c.subs[j], expected[nodeKey(c.node, k)])
			case src == SourcePoller:
				r.Loss.AccountGaps(&c.subs[j], w.cfg.SilentExpect)
			}
		}
	}
	return r
}
