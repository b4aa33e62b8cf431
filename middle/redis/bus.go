package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// BusConfig configures a Bus. The zero value of every field but Client
// means its default.
type BusConfig struct {
	// Client is a *goredis.Client (one Redis) or a *goredis.ClusterClient
	// (Redis Cluster), as NewClient returns.
	Client goredis.UniversalClient
	// Prefix starts every key and channel name (default DefaultPrefix); the
	// Store that publishes must use the same.
	Prefix string
	// PingInterval is how often an idle pub/sub connection is pinged; one
	// that has answered nothing for three intervals is taken for lost
	// (default 2s).
	PingInterval time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// DefaultBusPingInterval is the default of BusConfig.PingInterval.
const DefaultBusPingInterval = 2 * time.Second

// Validate reports the first invalid field.
func (c BusConfig) Validate() error {
	switch c.Client.(type) {
	case *goredis.Client, *goredis.ClusterClient:
	case nil:
		return errors.New("bus: no Redis client")
	default:
		return fmt.Errorf("bus: Redis client %T: want a single Redis or a Redis Cluster client", c.Client)
	}
	if c.PingInterval < 0 {
		return fmt.Errorf("bus: ping interval %s: must be positive", c.PingInterval)
	}
	return ValidatePrefix(c.Prefix)
}

// Bus is the middle.Bus of a cluster whose Store is Redis: it receives the
// publications the append script SPUBLISHes on each key's sharded channel
// (docs/PROTOCOL.md, "Fan-out between nodes"). It holds one pub/sub
// connection per Redis primary that owns a watched key's slot (one on a
// single Redis) and re-subscribes by itself after a connection loss.
type Bus struct {
	cfg     BusConfig
	keys    keys
	log     *slog.Logger
	single  *goredis.Client        // nil on Redis Cluster
	cluster *goredis.ClusterClient // nil on a single Redis
	m       busMetrics

	// resyncC tells Run that every watch lost with a connection is
	// confirmed again on a new one.
	resyncC chan struct{}

	mu      sync.Mutex
	watches map[string]*watch // by channel
	shards  map[string]*shard // by primary address; "" on a single Redis
	run     *busRun           // nil while Run is not running
	// resubs counts the watches confirmed on a connection that was lost
	// and not yet confirmed on its successor; resyncDue is set when a
	// connection with confirmed watches was lost, until Run is told.
	resubs    int
	resyncDue bool
}

// watch is one watched key's channel. Guarded by Bus.mu.
type watch struct {
	channel   string
	shard     *shard
	confirmed bool          // Redis confirmed the SSUBSCRIBE (Watch returned)
	resub     bool          // confirmed on a lost connection, awaits its successor's confirmation
	done      chan struct{} // closed when confirmed, or failed before that (err)
	err       error
}

// shard is the pub/sub connection to one Redis primary and the channels it
// carries. Its fields but lastSeen and busy are guarded by Bus.mu.
type shard struct {
	addr    string
	client  *goredis.Client
	chans   map[string]*watch
	ps      *goredis.PubSub // nil while not connected and subscribed
	running bool            // its goroutine runs

	lastSeen atomic.Int64 // Unix ns of the last reply read
	busy     atomic.Bool  // waiting for Run to take a publication
}

type busRun struct {
	ctx context.Context
	wg  *sync.WaitGroup
	out chan proto.Publication
}

type busMetrics struct {
	received, malformed, reconnects prometheus.Counter
	watched                         prometheus.Gauge
}

// Timeouts of single commands on a pub/sub connection.
const (
	busDialTimeout  = 5 * time.Second
	busWriteTimeout = 5 * time.Second
	// busSubscribeBatch bounds the channels of one SSUBSCRIBE on a single
	// Redis (on Redis Cluster every channel has a slot of its own).
	busSubscribeBatch = 512
)

var (
	errBusIdle     = errors.New("no watched key left on this primary")
	errBusPingLost = errors.New("no answer to pings")
	// errBusSlotMoved: the connection is re-established, and its channels
	// routed again, when Redis unsubscribed a watched channel.
	errBusSlotMoved = errors.New("Redis unsubscribed a watched channel (its slot moved)")
	errBusStopped   = errors.New("bus stopped")
	errUnwatched    = errors.New("unwatched")
)

// NewBus returns a Bus; it connects when Run runs.
func NewBus(cfg BusConfig) (*Bus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.PingInterval == 0 {
		cfg.PingInterval = DefaultBusPingInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Bus{
		cfg: cfg, keys: newKeys(cfg.Prefix), log: cfg.Logger,
		resyncC: make(chan struct{}, 1),
		watches: map[string]*watch{}, shards: map[string]*shard{},
		m: busMetrics{
			received: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "wspush_bus_received_total", Help: "Fan-out messages received from Redis sharded pub/sub.",
			}),
			malformed: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "wspush_bus_malformed_total", Help: "Fan-out messages dropped because they could not be decoded.",
			}),
			reconnects: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "wspush_bus_reconnects_total", Help: "Redis pub/sub connections lost (each is re-established, re-subscribed and followed by a resync).",
			}),
			watched: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "wspush_bus_watched_keys", Help: "Keys this node receives through Redis sharded pub/sub.",
			}),
		},
	}
	switch c := cfg.Client.(type) {
	case *goredis.Client:
		b.single = c
	case *goredis.ClusterClient:
		b.cluster = c
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(b.m.received, b.m.malformed, b.m.reconnects, b.m.watched)
	}
	return b, nil
}

// Run receives until ctx ends. It calls deliver from this goroutine, in the
// order each primary's connection received them (for one key: seq order,
// docs/PROTOCOL.md, "Fan-out between nodes"), and resync once every key
// watched on a lost connection is confirmed on a new one.
func (b *Bus) Run(ctx context.Context, deliver func(*proto.Publication), resync func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	run := &busRun{ctx: ctx, wg: &wg, out: make(chan proto.Publication, 256)}
	b.mu.Lock()
	if b.run != nil {
		b.mu.Unlock()
		return errors.New("bus: Run is already running")
	}
	b.run = run
	for _, s := range b.shards {
		b.startShardLocked(s)
	}
	b.mu.Unlock()
	defer func() {
		// No shard starts once b.run is nil, so wg.Wait sees them all.
		b.mu.Lock()
		b.run = nil
		b.mu.Unlock()
		cancel()
		wg.Wait()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-run.out:
			deliver(&p)
		case <-b.resyncC:
			resync()
		}
	}
}

// Watch subscribes this node to (app, key)'s channel and returns once
// Redis confirmed the SSUBSCRIBE: everything published after that reaches
// Run (docs/PROTOCOL.md, "Fan-out between nodes"). It needs Run running to
// read the confirmation. Its errors wrap middle.ErrUnavailable.
func (b *Bus) Watch(ctx context.Context, app, key string) error {
	ch := b.keys.pub(app, key)
	addr, client, err := b.route(ctx, ch)
	if err != nil {
		return fmt.Errorf("%w: bus: watch %s: %w", middle.ErrUnavailable, ch, err)
	}
	b.mu.Lock()
	w := b.watches[ch]
	if w == nil {
		s := b.shardLocked(addr, client)
		w = &watch{channel: ch, shard: s, done: make(chan struct{})}
		s.chans[ch] = w
		b.watches[ch] = w
		b.m.watched.Set(float64(len(b.watches)))
		if s.ps != nil {
			if err := b.subscribeLocked(s.ps, ch); err != nil {
				// The receive loop sees the connection fail too.
				b.removeLocked(w, err)
				b.mu.Unlock()
				return fmt.Errorf("%w: bus: ssubscribe %s: %w", middle.ErrUnavailable, ch, err)
			}
		}
	}
	b.mu.Unlock()

	select {
	case <-w.done:
		b.mu.Lock()
		err := w.err
		b.mu.Unlock()
		if err != nil {
			return fmt.Errorf("%w: bus: watch %s: %w", middle.ErrUnavailable, ch, err)
		}
		return nil
	case <-ctx.Done():
		b.mu.Lock()
		if !w.confirmed && b.watches[ch] == w {
			b.unsubscribeLocked(w)
		}
		b.mu.Unlock()
		return fmt.Errorf("%w: bus: watch %s: %w", middle.ErrUnavailable, ch, ctx.Err())
	}
}

// Unwatch unsubscribes this node from (app, key)'s channel without waiting
// for Redis: what still arrives for it is dropped.
func (b *Bus) Unwatch(_ context.Context, app, key string) error {
	ch := b.keys.pub(app, key)
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.watches[ch]
	if w == nil {
		return nil
	}
	if err := b.unsubscribeLocked(w); err != nil {
		return fmt.Errorf("%w: bus: sunsubscribe %s: %w", middle.ErrUnavailable, ch, err)
	}
	return nil
}

// route returns the primary that owns ch's slot: the single Redis, or the
// Redis Cluster primary.
func (b *Bus) route(ctx context.Context, ch string) (string, *goredis.Client, error) {
	if b.single != nil {
		return "", b.single, nil
	}
	c, err := b.cluster.MasterForKey(ctx, ch)
	if err != nil {
		return "", nil, fmt.Errorf("primary of %s: %w", ch, err)
	}
	return c.Options().Addr, c, nil
}

// shardLocked returns the shard of addr, created and started as needed.
func (b *Bus) shardLocked(addr string, client *goredis.Client) *shard {
	s := b.shards[addr]
	if s == nil {
		s = &shard{addr: addr, client: client, chans: map[string]*watch{}}
		b.shards[addr] = s
	}
	b.startShardLocked(s)
	return s
}

// startShardLocked starts s's goroutine if Run runs and it does not.
func (b *Bus) startShardLocked(s *shard) {
	if b.run == nil || s.running {
		return
	}
	s.running = true
	run := b.run
	run.wg.Go(func() { b.runShard(run.ctx, s, run.out) })
}

// subscribeLocked sends SSUBSCRIBE for chans on ps: in batches on a single
// Redis, one command per channel on Redis Cluster (the channels of one
// command must share a slot). The confirmations arrive in the receive loop.
func (b *Bus) subscribeLocked(ps *goredis.PubSub, chans ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), busWriteTimeout)
	defer cancel()
	n := busSubscribeBatch
	if b.cluster != nil {
		n = 1
	}
	for c := range slices.Chunk(chans, n) {
		if err := ps.SSubscribe(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// unsubscribeLocked forgets w and sends SUNSUBSCRIBE if its connection is up.
func (b *Bus) unsubscribeLocked(w *watch) error {
	s := b.removeLocked(w, errUnwatched)
	if s.ps == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), busWriteTimeout)
	defer cancel()
	return s.ps.SUnsubscribe(ctx, w.channel)
}

// removeLocked forgets w; a Watch still waiting for it fails with err.
func (b *Bus) removeLocked(w *watch, err error) *shard {
	s := w.shard
	delete(s.chans, w.channel)
	delete(b.watches, w.channel)
	b.m.watched.Set(float64(len(b.watches)))
	if !w.confirmed {
		w.err = err
		close(w.done)
	}
	if w.resub {
		w.resub = false
		b.resubDoneLocked()
	}
	return s
}

// resubDoneLocked counts one re-subscription done (or no longer needed)
// and tells Run to resync when it was the last.
func (b *Bus) resubDoneLocked() {
	b.resubs--
	if b.resubs == 0 && b.resyncDue {
		b.resyncDue = false
		b.log.Info("bus re-subscribed every watched key after a connection loss; resyncing", "keys", len(b.watches))
		select {
		case b.resyncC <- struct{}{}:
		default: // one is pending already
		}
	}
}

// runShard keeps s connected, subscribed and received until ctx ends or s
// has no channel left when it (re)connects.
func (b *Bus) runShard(ctx context.Context, s *shard, out chan<- proto.Publication) {
	bo := retry.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	for {
		ps, err := b.connect(ctx, s)
		if errors.Is(err, errBusIdle) {
			return
		}
		if err == nil {
			bo.Reset()
			err = b.receive(ctx, s, ps, out)
		}
		if ctx.Err() != nil {
			b.lost(s, errBusStopped, false)
			b.mu.Lock()
			s.running = false
			b.mu.Unlock()
			return
		}
		b.lost(s, err, true)
		if !retry.Sleep(ctx, bo.Next()) {
			b.mu.Lock()
			s.running = false
			b.mu.Unlock()
			return
		}
	}
}

// connect opens a pub/sub connection to s's primary and subscribes every
// channel of s on it. On Redis Cluster it first moves the channels whose
// slot another primary owns now (a failover, a resharding) to that
// primary's shard.
func (b *Bus) connect(ctx context.Context, s *shard) (*goredis.PubSub, error) {
	if b.cluster != nil {
		b.reroute(ctx, s)
	}
	b.mu.Lock()
	if len(s.chans) == 0 {
		if b.shards[s.addr] == s {
			delete(b.shards, s.addr)
		}
		s.running = false
		b.mu.Unlock()
		return nil, errBusIdle
	}
	b.mu.Unlock()

	ps := s.client.SSubscribe(ctx) // no channel yet: no connection either
	pctx, cancel := context.WithTimeout(ctx, busDialTimeout)
	err := ps.Ping(pctx) // dials; the pong arrives in the receive loop
	cancel()
	if err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	s.lastSeen.Store(time.Now().UnixNano())
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.subscribeLocked(ps, slices.Collect(maps.Keys(s.chans))...); err != nil {
		_ = ps.Close()
		return nil, fmt.Errorf("ssubscribe: %w", err)
	}
	s.ps = ps
	return ps, nil
}

// reroute moves the channels of s whose slot another primary owns to that
// primary's shard (Redis Cluster).
func (b *Bus) reroute(ctx context.Context, s *shard) {
	b.mu.Lock()
	chans := slices.Collect(maps.Keys(s.chans))
	b.mu.Unlock()
	type move struct {
		ch     string
		addr   string
		client *goredis.Client
	}
	var moves []move
	for _, ch := range chans {
		addr, client, err := b.route(ctx, ch)
		if err != nil {
			b.log.Warn("bus: cannot route a channel to its Redis Cluster primary; trying the previous one", "channel", ch, "error", err)
			continue
		}
		if addr != s.addr {
			moves = append(moves, move{ch, addr, client})
		}
	}
	if len(moves) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, m := range moves {
		w := s.chans[m.ch]
		if w == nil {
			continue
		}
		t := b.shardLocked(m.addr, m.client)
		delete(s.chans, m.ch)
		w.shard = t
		t.chans[m.ch] = w
		if t.ps != nil {
			if err := b.subscribeLocked(t.ps, m.ch); err != nil {
				b.log.Warn("bus: ssubscribe failed on the new primary of a channel; it reconnects", "channel", m.ch, "primary", m.addr, "error", err)
			}
		}
	}
	b.log.Info("bus: channels moved to their new Redis Cluster primary", "from", s.addr, "channels", len(moves))
}

// lost records that s's connection is gone: the Watch calls still waiting
// on it fail, and the confirmed watches await their confirmation on the
// next connection, after which Run resyncs.
func (b *Bus) lost(s *shard, err error, reconnect bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s.ps = nil
	resubs := 0
	for _, w := range s.chans {
		if !w.confirmed {
			b.removeLocked(w, err)
			continue
		}
		if !w.resub {
			w.resub = true
			b.resubs++
			resubs++
		}
	}
	if resubs > 0 {
		b.resyncDue = true
	}
	if !reconnect {
		return
	}
	b.m.reconnects.Inc()
	b.log.Warn("bus: Redis pub/sub connection lost; reconnecting, then resyncing the keys it carried",
		"primary", s.addr, "keys", len(s.chans), "error", err)
	if b.cluster != nil {
		b.cluster.ReloadState(context.Background())
	}
}

// receive reads s's connection until it fails or ctx ends, routing the
// subscription confirmations to the watches and the publications to out.
func (b *Bus) receive(ctx context.Context, s *shard, ps *goredis.PubSub, out chan<- proto.Publication) error {
	stopClose := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stopClose()
	var pingLost atomic.Bool
	healthDone := make(chan struct{})
	var hwg sync.WaitGroup
	hwg.Go(func() { b.health(ctx, s, ps, healthDone, &pingLost) })
	defer func() {
		close(healthDone)
		hwg.Wait()
	}()

	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			_ = ps.Close()
			if pingLost.Load() {
				err = errBusPingLost
			}
			return err
		}
		s.lastSeen.Store(time.Now().UnixNano())
		switch m := msg.(type) {
		case *goredis.Subscription:
			switch m.Kind {
			case "ssubscribe":
				b.confirm(s, m.Channel)
			case "sunsubscribe":
				if b.dropped(s, m.Channel) {
					_ = ps.Close()
					return fmt.Errorf("%w: %s", errBusSlotMoved, m.Channel)
				}
			}
		case *goredis.Message:
			b.m.received.Inc()
			p, ok := b.decode(s, m)
			if !ok {
				continue
			}
			s.busy.Store(true)
			select {
			case out <- p:
			case <-ctx.Done():
			}
			s.busy.Store(false)
			s.lastSeen.Store(time.Now().UnixNano())
		}
	}
}

// confirm marks ch confirmed on s's current connection.
func (b *Bus) confirm(s *shard, ch string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := s.chans[ch]
	if w == nil {
		return // unwatched meanwhile
	}
	if !w.confirmed {
		w.confirmed = true
		close(w.done)
	}
	if w.resub {
		w.resub = false
		b.resubDoneLocked()
	}
}

// dropped reports whether Redis unsubscribed this node from a channel it
// still watches: on Redis Cluster, the channel's slot moved to another
// primary. (The reply to Unwatch's SUNSUBSCRIBE is for a channel no longer
// watched, or watched again and not yet confirmed: the replies come in
// order.)
func (b *Bus) dropped(s *shard, ch string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	w := s.chans[ch]
	return w != nil && w.confirmed
}

// decode returns the publication m carries, if m is of a watched channel
// and well formed.
func (b *Bus) decode(s *shard, m *goredis.Message) (proto.Publication, bool) {
	var p proto.Publication
	b.mu.Lock()
	_, watched := s.chans[m.Channel]
	b.mu.Unlock()
	if !watched {
		return p, false // unwatched: a message sent before the SUNSUBSCRIBE
	}
	app, key, ok := b.keys.parsePub(m.Channel)
	if !ok {
		b.m.malformed.Inc()
		b.log.Warn("bus: message on a channel that names no key; dropped", "channel", m.Channel)
		return p, false
	}
	if err := decodePub(app, key, m.Payload, &p); err != nil {
		b.m.malformed.Inc()
		b.log.Warn("bus: malformed fan-out message dropped", "channel", m.Channel, "bytes", len(m.Payload), "error", err)
		return p, false
	}
	return p, true
}

// health pings ps while it is idle and closes it (the receive loop then
// fails) when it has answered nothing for three ping intervals: a
// connection whose peer vanished without a reset would otherwise be read
// forever.
func (b *Bus) health(ctx context.Context, s *shard, ps *goredis.PubSub, done <-chan struct{}, pingLost *atomic.Bool) {
	every := b.cfg.PingInterval
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.busy.Load() {
			continue // Run holds the receive loop back, not Redis
		}
		idle := time.Since(time.Unix(0, s.lastSeen.Load()))
		switch {
		case idle >= 3*every:
			pingLost.Store(true)
			_ = ps.Close()
			return
		case idle >= every:
			pctx, cancel := context.WithTimeout(ctx, every)
			_ = ps.Ping(pctx) // a failed write makes the receive loop fail too
			cancel()
		}
	}
}
