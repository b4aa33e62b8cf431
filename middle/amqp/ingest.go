package middle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/proto"
)

// Publisher sequences publications and hands them to fan-out: the ingest
// publishes through Node.Source("amqp").
type Publisher interface {
	Publish(ctx context.Context, pubs []proto.Publication) ([]uint64, error)
}

// AMQPIngestConfig configures an AMQPIngest. The zero value of every field
// but Conn and Publisher means its default.
type AMQPIngestConfig struct {
	// Conn is the node's AMQP connection (required; its Run must run).
	Conn *AMQPConn
	// Publisher sequences what is consumed (required).
	Publisher Publisher
	// Prefetch bounds the unacked messages this node holds (default 256).
	Prefetch int
	// MaxBatch bounds the publications handed to Publisher in one call
	// (default 64): the messages already received when one is handled go
	// together, nothing waits to fill a batch.
	MaxBatch int
	// MaxPayload is the largest body accepted, in bytes (default
	// DefaultMaxPayload; keep it equal to the node's Config.MaxPayload).
	MaxPayload int
	// PublishTimeout bounds one Publisher call (default 10s).
	PublishTimeout time.Duration
	// RequeueDelay is the pause before messages that could not be
	// published (the store or bus unavailable) are requeued, so an outage
	// does not make the node spin (default 1s).
	RequeueDelay time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of AMQPIngestConfig.
const (
	DefaultAMQPIngestPrefetch       = 256
	DefaultAMQPIngestMaxBatch       = 64
	DefaultAMQPIngestPublishTimeout = 10 * time.Second
	DefaultAMQPIngestRequeueDelay   = time.Second
)

func (c AMQPIngestConfig) withDefaults() AMQPIngestConfig {
	if c.Prefetch == 0 {
		c.Prefetch = DefaultAMQPIngestPrefetch
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultAMQPIngestMaxBatch
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.PublishTimeout == 0 {
		c.PublishTimeout = DefaultAMQPIngestPublishTimeout
	}
	if c.RequeueDelay == 0 {
		c.RequeueDelay = DefaultAMQPIngestRequeueDelay
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c AMQPIngestConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("amqp connection: required")
	case c.Publisher == nil:
		return errors.New("publisher: required")
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return fmt.Errorf("prefetch %d: must be 1 to 65535", c.Prefetch)
	case c.MaxBatch < 0:
		return fmt.Errorf("max batch %d: must be positive", c.MaxBatch)
	case c.MaxPayload < 0:
		return fmt.Errorf("max payload %d: must be positive", c.MaxPayload)
	case c.PublishTimeout < 0:
		return fmt.Errorf("publish timeout %s: must be positive", c.PublishTimeout)
	case c.RequeueDelay < 0:
		return fmt.Errorf("requeue delay %s: must be positive", c.RequeueDelay)
	}
	return nil
}

// Reasons a message is dead-lettered, the values of the reason label.
const (
	DeadReasonRoutingKey  = "routing_key"  // not "<app>.<key>" with valid names
	DeadReasonInvalidJSON = "invalid_json" // content type JSON, body not JSON
	DeadReasonOversized   = "oversized"    // body over MaxPayload
	DeadReasonRejected    = "rejected"     // the Publisher refused it (*PublishError)
)

// AMQPIngest consumes the ingest queue as one of the competing consumers
// of the cluster: each message is published through the Publisher and
// acked only once it is sequenced and handed to fan-out. A malformed
// message is rejected without requeue, so RabbitMQ dead-letters it to
// Topology.DeadQueue; one that could not be published for want of the
// store or bus is requeued after RequeueDelay.
//
// A message is routed by its routing key "<app>.<key>"; its body is the
// payload. It is JSON when its content type is application/json (or
// another +json type), and then must be valid JSON; with no content type,
// when the body happens to be valid JSON; otherwise (say
// application/octet-stream) it is binary. Its AMQP timestamp, when set,
// is its ts (the property has a resolution of one second); without one
// the node stamps it.
type AMQPIngest struct {
	cfg     AMQPIngestConfig
	conn    *AMQPConn
	log     *slog.Logger
	queue   string
	running atomic.Bool
	failing bool // the last Publish failed; owned by the Run goroutine

	ingested     prometheus.Counter
	deadLettered *prometheus.CounterVec
	requeued     prometheus.Counter
}

// NewAMQPIngest validates cfg and returns an ingest; call Run to consume.
func NewAMQPIngest(cfg AMQPIngestConfig) (*AMQPIngest, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp ingest config: %w", err)
	}
	cfg = cfg.withDefaults()
	in := &AMQPIngest{
		cfg:   cfg,
		conn:  cfg.Conn,
		log:   cfg.Logger,
		queue: cfg.Conn.topo.IngestQueue,
		ingested: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_ingested_total", Help: "AMQP ingest messages sequenced, handed to fan-out and acked.",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_amqp_dead_lettered_total", Help: "AMQP ingest messages rejected to the dead-letter queue, by reason.",
		}, []string{"reason"}),
		requeued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_requeued_total", Help: "AMQP ingest messages requeued because the store or bus was unavailable.",
		}),
	}
	for _, r := range []string{DeadReasonRoutingKey, DeadReasonInvalidJSON, DeadReasonOversized, DeadReasonRejected} {
		in.deadLettered.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(in.ingested, in.deadLettered, in.requeued)
	}
	return in, nil
}

// Run consumes the ingest queue until ctx ends. A batch being published
// when ctx ends is finished (within PublishTimeout) and acked, so a
// shutdown does not sequence it twice.
func (in *AMQPIngest) Run(ctx context.Context) error {
	if !in.running.CompareAndSwap(false, true) {
		return errors.New("amqp ingest: Run called twice")
	}
	in.conn.serve(ctx, "ingest", in.runSession)
	return nil
}

func (in *AMQPIngest) runSession(ctx context.Context, s *amqpSession) error {
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	closed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Qos(in.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("qos %d: %w", in.cfg.Prefetch, err)
	}
	deliveries, err := ch.Consume(in.queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", in.queue, err)
	}
	batch := make([]amqp.Delivery, 0, in.cfg.MaxBatch)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-closed:
			return fmt.Errorf("channel of queue %s closed: %w", in.queue, amqpCloseReason(e, ok))
		case <-s.done:
			return amqp.ErrClosed
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("consumer of queue %s cancelled by the broker (queue deleted?)", in.queue)
			}
			batch = append(batch[:0], d)
			// Take what the client library holds already. Its buffer hands
			// deliveries over one by one, so a miss yields once to let it
			// offer the next before the batch is closed.
			yielded := false
		fill:
			for len(batch) < in.cfg.MaxBatch {
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
			if err := in.process(ctx, batch); err != nil {
				return err
			}
		}
	}
}

// ingestItem is a delivery and the publication decoded from it.
type ingestItem struct {
	d   *amqp.Delivery
	pub proto.Publication
}

// ingestDeadItem is a delivery to dead-letter, and why.
type ingestDeadItem struct {
	d      *amqp.Delivery
	reason string
	err    error
}

// ingestOutcome is what became of the items of a batch.
type ingestOutcome struct {
	published []ingestItem     // sequenced and handed to fan-out: ack
	rejected  []ingestDeadItem // refused by the Publisher
	retry     []ingestItem     // not published for want of store or bus
	err       error            // why retry is not empty
}

// process publishes a batch and settles every delivery of it: ack,
// dead-letter or requeue. An error means the channel failed.
//
// The valid messages of a batch go to the Publisher in one call, in
// delivery order, which keeps each key's order: with a bus, that call
// costs one store round trip and one wait for the broker's confirms for
// the whole batch, whatever its keys.
func (in *AMQPIngest) process(ctx context.Context, batch []amqp.Delivery) error {
	var (
		dead  []ingestDeadItem
		items = make([]ingestItem, 0, len(batch))
	)
	for i := range batch {
		d := &batch[i]
		p, reason, err := in.decode(d)
		if err != nil {
			dead = append(dead, ingestDeadItem{d, reason, err})
			continue
		}
		items = append(items, ingestItem{d: d, pub: p})
	}
	o := in.publish(ctx, items)
	dead = append(dead, o.rejected...)
	for _, x := range dead {
		if err := in.deadLetter(x); err != nil {
			return err
		}
	}
	if err := in.ack(o.published, len(o.published) == len(batch)); err != nil {
		return err
	}
	if len(o.retry) > 0 {
		return in.requeue(ctx, o.retry, o.err)
	}
	return nil
}

// publish publishes items in order.
func (in *AMQPIngest) publish(ctx context.Context, items []ingestItem) ingestOutcome {
	var out ingestOutcome
	pubs := make([]proto.Publication, 0, len(items))
	for len(items) > 0 {
		pubs = pubs[:0]
		for i := range items {
			pubs = append(pubs, items[i].pub)
		}
		// Not cancelled with ctx: a batch half sequenced at shutdown would
		// be redelivered and sequenced again.
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), in.cfg.PublishTimeout)
		seqs, err := in.cfg.Publisher.Publish(pctx, pubs)
		cancel()
		if err == nil {
			out.published = append(out.published, items...)
			return out
		}
		var perr *PublishError
		if errors.As(err, &perr) && perr.Index >= 0 && perr.Index < len(items) {
			// Nothing was published: drop the culprit, retry the rest.
			out.rejected = append(out.rejected, ingestDeadItem{items[perr.Index].d, DeadReasonRejected, perr.Err})
			items = append(items[:perr.Index:perr.Index], items[perr.Index+1:]...)
			continue
		}
		// The first len(seqs) went through; the rest, the one that failed
		// included, go back to the queue. Some of them may be sequenced
		// already (the store sequences a chunk before the bus sends it):
		// redelivered, they get a second seq, the at-least-once of a
		// requeue.
		done := min(len(seqs), len(items))
		out.published = append(out.published, items[:done]...)
		out.retry, out.err = items[done:], err
		return out
	}
	return out
}

// decode turns a delivery into a publication; on failure it returns the
// dead-letter reason.
func (in *AMQPIngest) decode(d *amqp.Delivery) (proto.Publication, string, error) {
	app, key, err := proto.ParseRoutingKey(d.RoutingKey)
	if err != nil {
		return proto.Publication{}, DeadReasonRoutingKey, err
	}
	if len(d.Body) > in.cfg.MaxPayload {
		return proto.Publication{}, DeadReasonOversized, fmt.Errorf("body of %d bytes is over the limit of %d", len(d.Body), in.cfg.MaxPayload)
	}
	p := proto.Publication{App: app, Key: key, Data: d.Body}
	switch mt := ingestMediaType(d.ContentType); {
	case mt == amqpContentJSON || strings.HasSuffix(mt, "+json"):
		if !json.Valid(d.Body) {
			return proto.Publication{}, DeadReasonInvalidJSON, fmt.Errorf("content type %q but the body is not valid JSON", d.ContentType)
		}
		p.JSON = true
	case mt == "":
		p.JSON = json.Valid(d.Body)
	}
	if !d.Timestamp.IsZero() {
		p.TS = d.Timestamp.UnixMilli()
	}
	return p, "", nil
}

// ingestMediaType is the lower-cased media type of a content type, parameters
// (charset) dropped.
func ingestMediaType(ct string) string {
	if ct == "" {
		return ""
	}
	if mt, _, err := mime.ParseMediaType(ct); err == nil {
		return mt
	}
	mt, _, _ := strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(mt))
}

func (in *AMQPIngest) deadLetter(x ingestDeadItem) error {
	in.deadLettered.WithLabelValues(x.reason).Inc()
	in.log.Warn("AMQP ingest: message dead-lettered", "routing_key", x.d.RoutingKey, "reason", x.reason,
		"error", x.err, "bytes", len(x.d.Body), "content_type", x.d.ContentType, "dead_queue", in.conn.topo.DeadQueue)
	if err := x.d.Nack(false, false); err != nil {
		return fmt.Errorf("reject %q: %w", x.d.RoutingKey, err)
	}
	return nil
}

// ack acks items; whole says they are the whole batch, so one multiple
// ack covers them (every earlier delivery of the channel is settled
// already: batches are handled one at a time).
func (in *AMQPIngest) ack(items []ingestItem, whole bool) error {
	if len(items) == 0 {
		return nil
	}
	if whole {
		last := items[len(items)-1].d
		if err := last.Ack(true); err != nil {
			return fmt.Errorf("ack %d messages up to %q: %w", len(items), last.RoutingKey, err)
		}
	} else {
		for _, it := range items {
			if err := it.d.Ack(false); err != nil {
				return fmt.Errorf("ack %q: %w", it.d.RoutingKey, err)
			}
		}
	}
	in.ingested.Add(float64(len(items)))
	if in.failing {
		in.failing = false
		in.log.Info("AMQP ingest: publishing again")
	}
	return nil
}

// requeue gives items back to the queue after RequeueDelay. When ctx ends
// first they are left unacked: closing the channel requeues them.
func (in *AMQPIngest) requeue(ctx context.Context, items []ingestItem, cause error) error {
	if !in.failing {
		in.failing = true
		in.log.Warn("AMQP ingest: cannot publish; requeueing messages until the store and bus are back",
			"queue", in.queue, "messages", len(items), "retry_in", in.cfg.RequeueDelay, "error", cause)
	} else {
		in.log.Debug("AMQP ingest: cannot publish; requeueing", "messages", len(items), "error", cause)
	}
	if !sleepCtx(ctx, in.cfg.RequeueDelay) {
		return nil
	}
	for i := range items {
		if err := items[i].d.Nack(false, true); err != nil {
			return fmt.Errorf("requeue %q: %w", items[i].d.RoutingKey, err)
		}
	}
	in.requeued.Add(float64(len(items)))
	return nil
}
