package amqp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"mime"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// Publisher sequences publications with a fencing token:
// middle.SourcePublisher (Node.Source("amqp")) is one.
type Publisher interface {
	PublishFenced(ctx context.Context, fence uint64, pubs []proto.Publication) ([]uint64, error)
}

// Claims divides the partitions among the nodes (docs/PROTOCOL.md,
// "Partitions and fencing"); redis.Claims is the cluster's.
type Claims interface {
	// Claim takes or renews this node's claim of partition; a new claim
	// gets a fencing token higher than any before, a renewal keeps it.
	// ok is false when another node holds it.
	Claim(ctx context.Context, partition int) (token uint64, ok bool, err error)
	// Release gives up the claim, if this node holds it.
	Release(ctx context.Context, partition int) error
	// Members heartbeats this node and returns how many are alive.
	Members(ctx context.Context) (int, error)
	// TTL is how long a claim lasts without renewal.
	TTL() time.Duration
}

// IngestConfig configures an Ingest. The zero value of every field but
// Conn, Publisher and Claims means its default.
type IngestConfig struct {
	// Conn is the node's AMQP connection (required; its Run must run).
	Conn *Conn
	// Publisher sequences what is consumed (required).
	Publisher Publisher
	// Claims divides the partitions among the nodes (required).
	Claims Claims
	// MaxPayload is the largest body accepted, in bytes (default
	// middle.DefaultMaxPayload; keep it equal to the node's MaxPayload).
	MaxPayload int
	// Prefetch bounds the unacked messages of one partition (default 256).
	Prefetch int
	// BatchSize bounds the publications handed to Publisher in one call
	// (default 64): the messages already received go together, nothing
	// waits to fill a batch.
	BatchSize int
	// PublishTimeout bounds one Publisher call (default 10s).
	PublishTimeout time.Duration
	// RequeueDelay is the pause before messages that could not be
	// published (the store unavailable) are requeued, so an outage does not
	// make the node spin (default 1s).
	RequeueDelay time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of IngestConfig.
const (
	DefaultPrefetch       = 256
	DefaultBatchSize      = 64
	DefaultPublishTimeout = 10 * time.Second
	DefaultRequeueDelay   = time.Second
)

func (c IngestConfig) withDefaults() IngestConfig {
	if c.MaxPayload == 0 {
		c.MaxPayload = middle.DefaultMaxPayload
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultPublishTimeout
	}
	if c.RequeueDelay == 0 {
		c.RequeueDelay = DefaultRequeueDelay
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c IngestConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("amqp connection: required")
	case c.Publisher == nil:
		return errors.New("publisher: required")
	case c.Claims == nil:
		return errors.New("claims: required")
	case c.Claims.TTL() <= 0:
		return fmt.Errorf("claims TTL %s: must be positive", c.Claims.TTL())
	case c.MaxPayload < 0:
		return fmt.Errorf("max payload %d: must be positive", c.MaxPayload)
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return fmt.Errorf("prefetch %d: must be 1 to 65535", c.Prefetch)
	case c.BatchSize < 0:
		return fmt.Errorf("batch size %d: must be positive", c.BatchSize)
	case c.PublishTimeout < 0:
		return fmt.Errorf("publish timeout %s: must be positive", c.PublishTimeout)
	case c.RequeueDelay < 0:
		return fmt.Errorf("requeue delay %s: must be positive", c.RequeueDelay)
	}
	return nil
}

// Reasons a message is dead-lettered, the values of the reason label
// (docs/PROTOCOL.md, "Acks, retries and dead letters").
const (
	DeadReasonRoutingKey   = "routing_key"    // not "<app>.<key>" with valid names
	DeadReasonInvalidJSON  = "invalid_json"   // content type JSON, body not JSON
	DeadReasonInvalidUTF8  = "invalid_utf8"   // content type JSON, body not UTF-8 (middle.ErrInvalidUTF8)
	DeadReasonOversized    = "oversized"      // body over MaxPayload
	DeadReasonBadMessageID = "bad_message_id" // message-id not a valid idempotency id
	DeadReasonRejected     = "rejected"       // the Publisher refused it (*middle.PublishError)
)

// Reasons a claim is lost, the values of the reason label.
const (
	lostTaken   = "taken"   // Claim said another node holds it
	lostExpired = "expired" // renewals failed for longer than the TTL
	lostFenced  = "fenced"  // the store refused a publication: a newer holder
)

// Ingest consumes the partition queues this node holds claims for
// (docs/PROTOCOL.md, "Partitions and fencing"): each message is published
// through the Publisher with the partition's fencing token and acked only
// once sequenced. A malformed message is rejected without requeue, so
// RabbitMQ dead-letters it to the dead queue; one that could not be
// published for want of the store is requeued after RequeueDelay.
//
// A message is routed by its routing key "<app>.<key>"; its body is the
// payload (docs/PROTOCOL.md, "Publishing"). It is JSON when its content
// type is application/json (or another +json type), and then must be
// valid JSON; with no content type, when the body happens to be valid
// JSON; otherwise it is binary. Its AMQP timestamp, when set, is its ts
// (the property has a resolution of one second); its message-id, when set,
// its idempotency id.
type Ingest struct {
	cfg     IngestConfig
	conn    *Conn
	topo    Topology
	log     *slog.Logger
	offset  int // where this node starts looking for partitions to claim
	running atomic.Bool

	held         prometheus.Gauge
	gained       prometheus.Counter
	lost         *prometheus.CounterVec
	released     prometheus.Counter
	consumed     prometheus.Counter
	ingested     prometheus.Counter
	deadLettered *prometheus.CounterVec
	requeued     prometheus.Counter
}

// NewIngest validates cfg and returns an ingest; call Run to consume.
func NewIngest(cfg IngestConfig) (*Ingest, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp ingest config: %w", err)
	}
	cfg = cfg.withDefaults()
	topo := cfg.Conn.Topology()
	in := &Ingest{
		cfg:    cfg,
		conn:   cfg.Conn,
		topo:   topo,
		log:    cfg.Logger,
		offset: rand.IntN(topo.Partitions),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wspush_amqp_partitions_held", Help: "AMQP ingest partitions this node holds a claim for and consumes.",
		}),
		gained: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_claims_gained_total", Help: "AMQP ingest partitions this node claimed.",
		}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_amqp_claims_lost_total", Help: "AMQP ingest partition claims lost, by reason (taken, expired, fenced).",
		}, []string{"reason"}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_claims_released_total", Help: "AMQP ingest partition claims released to rebalance or at shutdown.",
		}),
		consumed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_consumed_total", Help: "AMQP ingest messages received (redeliveries included).",
		}),
		ingested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_ingested_total", Help: "AMQP ingest messages sequenced and acked.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_amqp_dead_lettered_total", Help: "AMQP ingest messages rejected to the dead-letter queue, by reason.",
		}, []string{"reason"}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_requeued_total", Help: "AMQP ingest messages requeued because the store was unavailable.",
		}),
	}
	for _, r := range []string{DeadReasonRoutingKey, DeadReasonInvalidJSON, DeadReasonInvalidUTF8, DeadReasonOversized, DeadReasonBadMessageID, DeadReasonRejected} {
		in.deadLettered.WithLabelValues(r)
	}
	for _, r := range []string{lostTaken, lostExpired, lostFenced} {
		in.lost.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(in.held, in.gained, in.lost, in.released, in.consumed, in.ingested, in.deadLettered, in.requeued)
	}
	return in, nil
}

// Run balances and consumes partitions until ctx ends. At the end, each
// partition finishes its batch in flight (within PublishTimeout), acks it
// and releases its claim, so that a shutdown neither sequences a message
// twice nor makes the others wait for the claims to expire.
func (in *Ingest) Run(ctx context.Context) error {
	if !in.running.CompareAndSwap(false, true) {
		return errors.New("amqp ingest: Run called twice")
	}
	defer in.leave(ctx)
	for {
		s, err := in.conn.session(ctx)
		if err != nil {
			return nil
		}
		b := &balancer{in: in, s: s, held: map[int]*partition{}, cooldown: map[int]time.Time{}, kick: make(chan struct{}, 1)}
		b.run(ctx)
		if ctx.Err() != nil {
			return nil
		}
		// The connection failed: wait for Conn to replace it.
		select {
		case <-ctx.Done():
			return nil
		case <-s.done:
		}
	}
}

// leaver is Claims that can drop this node from the members at once
// (redis.Claims): the others then take its share without waiting for its
// heartbeat to expire.
type leaver interface {
	Leave(ctx context.Context) error
}

// leave drops this node from the members, when Claims can, at shutdown
// (after the claims were released).
func (in *Ingest) leave(ctx context.Context) {
	l, ok := in.cfg.Claims.(leaver)
	if !ok {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := l.Leave(lctx); err != nil {
		in.log.Warn("AMQP ingest: leaving the members failed; the others notice when the heartbeat expires", "error", err)
	}
}

// releaseTimeout bounds the Release of the claims when a session ends.
const releaseTimeout = 2 * time.Second

// balancer holds this node's share of the partitions on one connection
// (docs/PROTOCOL.md, "Partitions and fencing"). Its state belongs to the
// goroutine of run.
type balancer struct {
	in       *Ingest
	s        *session
	held     map[int]*partition
	cooldown map[int]time.Time // fenced partitions not to claim before then
	members  int               // the last count, 0 before the first
	kick     chan struct{}     // a partition's consumer stopped
}

// run balances every TTL/3 until ctx ends or the connection fails; then it
// stops the partitions and releases their claims.
func (b *balancer) run(ctx context.Context) {
	in := b.in
	defer b.shutdown(ctx)
	tick := time.NewTicker(max(in.cfg.Claims.TTL()/3, time.Millisecond))
	defer tick.Stop()
	for {
		if err := b.balance(ctx); err != nil {
			if ctx.Err() == nil {
				in.log.Warn("AMQP ingest: a partition's channel failed; reconnecting", "error", err)
				b.s.fail(err)
			}
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-b.s.done:
			return
		case <-b.s.failed:
			return
		case <-tick.C:
		case <-b.kick:
		}
	}
}

// shutdown stops every partition (each finishes its batch in flight), then
// releases the claims: stopping first makes the next holder's consumer the
// broker's active one as soon as it claims.
func (b *balancer) shutdown(ctx context.Context) {
	for _, p := range b.held {
		p.cancel()
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	for n, p := range b.held {
		<-p.done
		b.release(rctx, n)
	}
	b.set()
}

// set updates the gauge of held partitions.
func (b *balancer) set() { b.in.held.Set(float64(len(b.held))) }

// release gives partition n back and forgets it.
func (b *balancer) release(ctx context.Context, n int) {
	delete(b.held, n)
	b.in.released.Inc()
	if err := b.in.cfg.Claims.Release(ctx, n); err != nil {
		b.in.log.Warn("AMQP ingest: releasing a partition claim failed; it expires on its own", "partition", n, "error", err)
	}
}

// lose forgets partition n, whose claim is gone: its consumer is stopped
// at once, without acking what it has in flight (the next holder gets it).
func (b *balancer) lose(n int, reason string, err error) {
	p := b.held[n]
	delete(b.held, n)
	p.abort()
	b.in.lost.WithLabelValues(reason).Inc()
	b.in.log.Warn("AMQP ingest: lost the claim of a partition; stopped consuming it", "partition", n,
		"queue", p.queue, "reason", reason, "error", err)
}

// balance reaps the stopped consumers, renews the claims held, and claims
// or releases partitions to hold this node's share, ceil(P / members). An
// error is a channel failure: the connection starts over.
func (b *balancer) balance(ctx context.Context) error {
	in, claims, ttl, now := b.in, b.in.cfg.Claims, b.in.cfg.Claims.TTL(), time.Now()
	defer b.set()
	for n, p := range b.held {
		select {
		case <-p.done:
		default:
			continue
		}
		switch {
		case p.fenced:
			// A newer holder sequenced one of its keys: this node's claim
			// expired without it noticing. Leave the partition alone until
			// that claim would have expired.
			delete(b.held, n)
			in.lost.WithLabelValues(lostFenced).Inc()
			b.cooldown[n] = now.Add(ttl)
			in.log.Warn("AMQP ingest: fenced: another node sequences this partition now; stopped consuming it without acking",
				"partition", n, "queue", p.queue, "token", p.token.Load())
			if err := claims.Release(ctx, n); err != nil {
				in.log.Debug("AMQP ingest: release after fencing", "partition", n, "error", err)
			}
		case p.releasing:
			b.release(ctx, n)
		case p.err != nil:
			return fmt.Errorf("partition %d (%s): %w", n, p.queue, p.err)
		default: // stopped with its context: shutdown only
			delete(b.held, n)
		}
	}
	for n, until := range b.cooldown {
		if now.After(until) {
			delete(b.cooldown, n)
		}
	}

	if m, err := claims.Members(ctx); err != nil {
		in.log.Debug("AMQP ingest: members heartbeat failed", "error", err)
	} else {
		b.members = max(m, 1)
	}

	for n, p := range b.held {
		if p.releasing {
			continue
		}
		token, ok, err := claims.Claim(ctx, n)
		switch {
		case err != nil:
			if now.Sub(p.renewed) > ttl {
				b.lose(n, lostExpired, err)
			} else {
				in.log.Debug("AMQP ingest: claim renewal failed; retrying", "partition", n, "error", err)
			}
		case !ok:
			b.lose(n, lostTaken, nil)
		default:
			p.renewed = now
			if old := p.token.Swap(token); old != token {
				in.log.Info("AMQP ingest: partition claimed again with a new fencing token", "partition", n, "token", token, "old", old)
			}
		}
	}
	if b.members == 0 || ctx.Err() != nil {
		return nil
	}

	P := in.topo.Partitions
	share := (P + b.members - 1) / b.members
	active := 0
	for _, p := range b.held {
		if !p.releasing {
			active++
		}
	}
	// Release the partitions last in this node's order, claim the first:
	// every node prefers the ones from its own offset on, which spreads
	// them without coordination.
	for i := P - 1; i >= 0 && active > share; i-- {
		n := (in.offset + i) % P
		if p := b.held[n]; p != nil && !p.releasing {
			in.log.Info("AMQP ingest: releasing a partition to rebalance", "partition", n, "members", b.members, "share", share)
			p.releasing = true
			p.cancel() // finishes its batch in flight; reaped once done
			active--
		}
	}
	for i := 0; i < P && active < share; i++ {
		n := (in.offset + i) % P
		if b.held[n] != nil || now.Before(b.cooldown[n]) {
			continue
		}
		token, ok, err := claims.Claim(ctx, n)
		if err != nil {
			in.log.Debug("AMQP ingest: claim failed", "partition", n, "error", err)
			return nil
		}
		if !ok {
			continue
		}
		p, err := b.start(ctx, n, token)
		if err != nil {
			if rerr := claims.Release(context.WithoutCancel(ctx), n); rerr != nil {
				in.log.Debug("AMQP ingest: release after a failed start", "partition", n, "error", rerr)
			}
			return err
		}
		p.renewed = now
		b.held[n] = p
		active++
		in.gained.Inc()
		in.log.Info("AMQP ingest: claimed a partition", "partition", n, "queue", p.queue, "token", token,
			"members", b.members, "share", share)
	}
	return nil
}

// start consumes partition n with fencing token token.
func (b *balancer) start(ctx context.Context, n int, token uint64) (*partition, error) {
	pctx, cancel := context.WithCancel(ctx)
	p := &partition{n: n, queue: b.in.topo.Queue(n), cancel: cancel, done: make(chan struct{})}
	p.token.Store(token)
	ch, deliveries, closed, err := b.in.open(b.s, p)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		p.run(pctx, b.in, b.s, ch, deliveries, closed)
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}()
	return p, nil
}

// partition is the consumer of one claimed partition queue.
type partition struct {
	n         int
	queue     string
	token     atomic.Uint64 // the claim's fencing token
	cancel    context.CancelFunc
	done      chan struct{} // closed when its goroutine ends
	renewed   time.Time     // the last successful renewal; balancer only
	releasing bool          // stopping to be released; balancer only
	failing   bool          // the last publish failed; its goroutine only

	mu      sync.Mutex
	ch      *amqp091.Channel // the current channel
	aborted bool

	// Set before done is closed.
	fenced bool
	err    error
}

// abort closes the channel at once: what is in flight is not acked and
// goes back to the queue. It does not wait for the goroutine.
func (p *partition) abort() {
	p.mu.Lock()
	p.aborted = true
	ch := p.ch
	p.mu.Unlock()
	p.cancel()
	if ch != nil {
		_ = ch.Close()
	}
}

// open opens a channel and consumes p's queue on it.
func (in *Ingest) open(s *session, p *partition) (*amqp091.Channel, <-chan amqp091.Delivery, chan *amqp091.Error, error) {
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open channel: %w", err)
	}
	closed := ch.NotifyClose(make(chan *amqp091.Error, 1))
	if err := ch.Qos(in.cfg.Prefetch, 0, false); err != nil {
		_ = ch.Close()
		return nil, nil, nil, fmt.Errorf("qos %d: %w", in.cfg.Prefetch, err)
	}
	tag := in.conn.cfg.Name + " p" + strconv.Itoa(p.n)
	deliveries, err := ch.Consume(p.queue, tag, false, false, false, false, nil)
	if err != nil {
		_ = ch.Close()
		return nil, nil, nil, fmt.Errorf("consume %s: %w", p.queue, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.aborted {
		_ = ch.Close()
		return nil, nil, nil, errAborted
	}
	p.ch = ch
	return ch, deliveries, closed, nil
}

var errAborted = errors.New("partition aborted")

// result is how consume ended.
type result int

const (
	resStopped result = iota // ctx ended
	resRequeue               // messages requeued: consume again
	resFenced                // the store refused the token
	resFailed                // the channel failed
)

// run consumes until ctx ends, the partition is fenced or aborted, or its
// channel fails. Closing the channel gives every unacked message back to
// the queue, in order, for the next consumer of the partition.
func (p *partition) run(ctx context.Context, in *Ingest, s *session, ch *amqp091.Channel,
	deliveries <-chan amqp091.Delivery, closed chan *amqp091.Error) {
	defer close(p.done)
	for {
		res, err := in.consume(ctx, p, deliveries, closed)
		_ = ch.Close()
		p.mu.Lock()
		aborted := p.aborted
		p.mu.Unlock()
		switch {
		case aborted || res == resStopped:
			return
		case res == resFenced:
			p.fenced = true
			return
		case res == resFailed:
			p.err = err
			return
		}
		// Requeued: consume again, from the head of the queue.
		if ch, deliveries, closed, err = in.open(s, p); err != nil {
			if !errors.Is(err, errAborted) {
				p.err = err
			}
			return
		}
	}
}

// consume receives deliveries in batches and processes them.
func (in *Ingest) consume(ctx context.Context, p *partition, deliveries <-chan amqp091.Delivery, closed chan *amqp091.Error) (result, error) {
	batch := make([]amqp091.Delivery, 0, in.cfg.BatchSize)
	for {
		select {
		case <-ctx.Done():
			return resStopped, nil
		case e, ok := <-closed:
			return resFailed, fmt.Errorf("channel closed: %w", closeReason(e, ok))
		case d, ok := <-deliveries:
			if !ok {
				return resFailed, errors.New("consumer cancelled by the broker (queue deleted?)")
			}
			batch = append(batch[:0], d)
			// Take what the client library holds already. Its buffer hands
			// deliveries over one by one, so a miss yields once to let it
			// offer the next before the batch is closed.
			yielded := false
		fill:
			for len(batch) < in.cfg.BatchSize {
				select {
				case d, ok := <-deliveries:
					if !ok {
						break fill // the outer receive reports it
					}
					batch = append(batch, d)
					yielded = false
				default:
					if yielded {
						break fill
					}
					runtime.Gosched()
					yielded = true
				}
			}
			in.consumed.Add(float64(len(batch)))
			if res, err := in.process(ctx, p, batch); res != resStopped || err != nil {
				return res, err
			}
			if ctx.Err() != nil {
				// Stopped or released during the batch: take nothing more.
				// The deliveries prefetched behind it, and any the batch
				// left to requeue, stay unacked; closing the channel gives
				// them back. Acking a later one would cover those too.
				return resStopped, nil
			}
		}
	}
}

// item is a delivery and the publication decoded from it.
type item struct {
	d   *amqp091.Delivery
	pub proto.Publication
}

// deadItem is a delivery to dead-letter, and why.
type deadItem struct {
	d      *amqp091.Delivery
	reason string
	err    error
}

// outcome is what became of the items of a batch.
type outcome struct {
	published []item     // sequenced: ack
	rejected  []deadItem // refused by the Publisher
	retry     []item     // not published: requeue
	err       error      // why retry is not empty
}

// process publishes a batch with the partition's token and settles it:
// ack, dead-letter, or requeue (docs/PROTOCOL.md, "Acks, retries and dead
// letters"). resStopped means "go on".
//
// The valid messages of a batch go to the Publisher in one call, in
// delivery order, which keeps each key's order.
func (in *Ingest) process(ctx context.Context, p *partition, batch []amqp091.Delivery) (result, error) {
	var (
		dead  []deadItem
		items = make([]item, 0, len(batch))
	)
	for i := range batch {
		d := &batch[i]
		pub, reason, err := in.decode(d)
		if err != nil {
			dead = append(dead, deadItem{d, reason, err})
			continue
		}
		items = append(items, item{d: d, pub: pub})
	}
	o := in.publish(ctx, p.token.Load(), items)
	// Dead-letter first: then every delivery up to the last published one
	// is settled or published, and one multiple ack covers them.
	for _, x := range append(dead, o.rejected...) {
		if err := in.deadLetter(p, x); err != nil {
			return resFailed, err
		}
	}
	if n := len(o.published); n > 0 {
		last := o.published[n-1].d
		if err := last.Ack(true); err != nil {
			return resFailed, fmt.Errorf("ack %d messages: %w", n, err)
		}
		in.ingested.Add(float64(n))
		if p.failing && len(o.retry) == 0 {
			p.failing = false
			in.log.Info("AMQP ingest: publishing again", "partition", p.n)
		}
	}
	switch {
	case len(o.retry) == 0:
		return resStopped, nil
	case errors.Is(o.err, middle.ErrFenced):
		return resFenced, nil
	}
	level := slog.LevelDebug
	if !p.failing {
		p.failing, level = true, slog.LevelWarn
	}
	in.log.Log(ctx, level, "AMQP ingest: cannot publish; requeueing the partition's messages after a delay, until the store is back",
		"partition", p.n, "queue", p.queue, "messages", len(o.retry), "retry_in", in.cfg.RequeueDelay, "error", o.err)
	if !retry.Sleep(ctx, in.cfg.RequeueDelay) {
		return resStopped, nil // closing the channel requeues them
	}
	in.requeued.Add(float64(len(o.retry)))
	return resRequeue, nil
}

// publish publishes items in order with fencing token fence.
func (in *Ingest) publish(ctx context.Context, fence uint64, items []item) outcome {
	var out outcome
	pubs := make([]proto.Publication, 0, len(items))
	for len(items) > 0 {
		pubs = pubs[:0]
		for i := range items {
			pubs = append(pubs, items[i].pub)
		}
		// Not cancelled with ctx: a batch half sequenced at shutdown would
		// be redelivered and sequenced again.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.PublishTimeout)
		seqs, err := in.cfg.Publisher.PublishFenced(pctx, fence, pubs)
		cancel()
		if err == nil {
			out.published = append(out.published, items...)
			return out
		}
		var perr *middle.PublishError
		if errors.As(err, &perr) && perr.Index >= 0 && perr.Index < len(items) {
			// Nothing was published: drop the culprit, retry the rest.
			reason := DeadReasonRejected
			if errors.Is(perr.Err, middle.ErrInvalidUTF8) {
				reason = DeadReasonInvalidUTF8
			}
			out.rejected = append(out.rejected, deadItem{items[perr.Index].d, reason, perr.Err})
			items = append(items[:perr.Index:perr.Index], items[perr.Index+1:]...)
			continue
		}
		// The first len(seqs) went through; the rest, the one that failed
		// included, go back to the queue (with ids, a later one that was
		// sequenced anyway is not sequenced twice).
		done := min(len(seqs), len(items))
		out.published = append(out.published, items[:done]...)
		out.retry, out.err = items[done:], err
		return out
	}
	return out
}

// contentJSON is the media type of JSON payloads.
const contentJSON = "application/json"

// decode turns a delivery into a publication (docs/PROTOCOL.md,
// "Publishing"); on failure it returns the dead-letter reason.
func (in *Ingest) decode(d *amqp091.Delivery) (proto.Publication, string, error) {
	app, key, err := proto.ParseRoutingKey(d.RoutingKey)
	if err != nil {
		return proto.Publication{}, DeadReasonRoutingKey, err
	}
	if len(d.Body) > in.cfg.MaxPayload {
		return proto.Publication{}, DeadReasonOversized, fmt.Errorf("body of %d bytes is over the limit of %d", len(d.Body), in.cfg.MaxPayload)
	}
	if d.MessageId != "" {
		if err := proto.ValidateIdempotencyID(d.MessageId); err != nil {
			return proto.Publication{}, DeadReasonBadMessageID, fmt.Errorf("message-id: %w", err)
		}
	}
	p := proto.Publication{App: app, Key: key, Data: d.Body, ID: d.MessageId}
	switch mt := mediaType(d.ContentType); {
	case mt == contentJSON || strings.HasSuffix(mt, "+json"):
		if !json.Valid(d.Body) {
			return proto.Publication{}, DeadReasonInvalidJSON, fmt.Errorf("content type %q but the body is not valid JSON", d.ContentType)
		}
		p.JSON = true
	case mt == "":
		// Invalid UTF-8 is not JSON (RFC 8259, section 8.1): such a body
		// is bytes.
		p.JSON = json.Valid(d.Body) && utf8.Valid(d.Body)
	}
	if !d.Timestamp.IsZero() {
		p.TS = d.Timestamp.UnixMilli()
	}
	return p, "", nil
}

// mediaType is the lower-cased media type of a content type, parameters
// (charset) dropped.
func mediaType(ct string) string {
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	mt, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

// deadLetter rejects a delivery without requeue: the broker dead-letters it
// to the dead queue.
func (in *Ingest) deadLetter(p *partition, x deadItem) error {
	in.deadLettered.WithLabelValues(x.reason).Inc()
	in.log.Warn("AMQP ingest: message dead-lettered", "routing_key", x.d.RoutingKey, "reason", x.reason,
		"error", x.err, "bytes", len(x.d.Body), "content_type", x.d.ContentType, "message_id", x.d.MessageId,
		"partition", p.n, "dead_queue", in.topo.DeadQueue())
	if err := x.d.Nack(false, false); err != nil {
		return fmt.Errorf("reject %q: %w", x.d.RoutingKey, err)
	}
	return nil
}
