package middle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/proto"
)

// AMQPBusConfig configures an AMQPBus. The zero value of every field but
// Conn and NodeID means its default.
type AMQPBusConfig struct {
	// Conn is the node's AMQP connection (required; its Run must run).
	Conn *AMQPConn
	// NodeID names the node's fan-out queue, Topology.NodeQueuePrefix +
	// NodeID (required; unique in the cluster: a second node with the same
	// ID cannot declare the queue and keeps reconnecting).
	NodeID string
	// OnReconnect is called, in its own goroutine, each time the bus is
	// back after an outage, once its bindings are restored: wire it to
	// Node.Resync, so subscribers get what passed by meanwhile. Its ctx
	// ends when the connection is lost again.
	OnReconnect func(ctx context.Context)
	// Prefetch bounds the fan-out deliveries in flight to this node (default
	// 512).
	Prefetch int
	// QueueMaxLength bounds the node queue (default 100000). A node that
	// falls that far behind loses the oldest fan-out messages, which it
	// recovers from the history when the next seq of their key arrives.
	QueueMaxLength int
	// SendTimeout bounds a SendBatch call, the wait for a connection and
	// for every confirm included, when the caller's ctx has no earlier
	// deadline (default 5s).
	SendTimeout time.Duration
	// WatchWait is how long Watch waits for a lost connection to come back
	// before it fails with ErrUnavailable (default 2s).
	WatchWait time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of AMQPBusConfig.
const (
	DefaultAMQPBusPrefetch       = 512
	DefaultAMQPBusQueueMaxLength = 100_000
	DefaultAMQPBusSendTimeout    = 5 * time.Second
	DefaultAMQPBusWatchWait      = 2 * time.Second
)

func (c AMQPBusConfig) withDefaults() AMQPBusConfig {
	if c.Prefetch == 0 {
		c.Prefetch = DefaultAMQPBusPrefetch
	}
	if c.QueueMaxLength == 0 {
		c.QueueMaxLength = DefaultAMQPBusQueueMaxLength
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultAMQPBusSendTimeout
	}
	if c.WatchWait == 0 {
		c.WatchWait = DefaultAMQPBusWatchWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c AMQPBusConfig) Validate() error {
	switch {
	case c.Conn == nil:
		return errors.New("amqp connection: required")
	case c.NodeID == "":
		return errors.New("node ID: required")
	case len(c.Conn.topo.NodeQueuePrefix)+len(c.NodeID) > maxAMQPName:
		return fmt.Errorf("node ID %q: queue name %q over %d bytes", c.NodeID, c.Conn.topo.NodeQueuePrefix+c.NodeID, maxAMQPName)
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return fmt.Errorf("prefetch %d: must be 1 to 65535", c.Prefetch)
	case c.QueueMaxLength < 0:
		return fmt.Errorf("queue max length %d: must be positive", c.QueueMaxLength)
	case c.SendTimeout < 0:
		return fmt.Errorf("send timeout %s: must be positive", c.SendTimeout)
	case c.WatchWait < 0:
		return fmt.Errorf("watch wait %s: must be positive", c.WatchWait)
	}
	for i := 0; i < len(c.NodeID); i++ {
		if b := c.NodeID[i]; b <= ' ' || b >= 0x7f {
			return fmt.Errorf("node ID %q: byte %#x at %d: want printable ASCII without spaces", c.NodeID, b, i)
		}
	}
	return nil
}

// AMQPBus is the cluster Bus: sequenced publications go to the topic
// exchange Topology.FanoutExchange with routing key "<app>.<key>", and each
// node's queue is bound to exactly the keys it has local subscribers for.
//
// The node queue is exclusive: it belongs to the connection, so a dead
// node's queue and bindings vanish with it, and after a reconnect the bus
// declares it again and restores every binding from the watched set it
// keeps in memory.
type AMQPBus struct {
	cfg     AMQPBusConfig
	conn    *AMQPConn
	log     *slog.Logger
	queue   string
	exch    string
	running atomic.Bool

	// bindMu guards watched and serializes the calls on the control
	// channel (an AMQP channel answers one synchronous call at a time):
	// Watch, Unwatch and the restore after a reconnect.
	bindMu  sync.Mutex
	watched map[string]struct{} // routing keys bound, or to bind after a reconnect

	linkMu    sync.Mutex
	link      *busLink      // nil while disconnected or restoring
	linkReady chan struct{} // closed when link is set

	sent, received, malformed prometheus.Counter
}

// busLink is the bus's channels on one connection.
type busLink struct {
	sess *amqpSession
	ctl  *amqp.Channel // queue, bindings, consumer
	pub  *amqp.Channel // publisher confirms
}

// NewAMQPBus validates cfg and returns a bus; Node.Run runs it.
func NewAMQPBus(cfg AMQPBusConfig) (*AMQPBus, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp bus config: %w", err)
	}
	cfg = cfg.withDefaults()
	b := &AMQPBus{
		cfg:       cfg,
		conn:      cfg.Conn,
		log:       cfg.Logger,
		queue:     cfg.Conn.topo.NodeQueuePrefix + cfg.NodeID,
		exch:      cfg.Conn.topo.FanoutExchange,
		watched:   make(map[string]struct{}),
		linkReady: make(chan struct{}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_bus_sent_total", Help: "Publications sent to the AMQP fan-out exchange and confirmed by the broker.",
		}),
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_bus_received_total", Help: "Publications received from this node's AMQP fan-out queue.",
		}),
		malformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_bus_malformed_total", Help: "Fan-out messages dropped because they could not be decoded (sent by something other than wspush?).",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(b.sent, b.received, b.malformed)
	}
	return b, nil
}

// Queue is the name of this node's fan-out queue.
func (b *AMQPBus) Queue() string { return b.queue }

// Run consumes the node queue and passes each publication to deliver until
// ctx ends. It needs the connection's Run to be running.
func (b *AMQPBus) Run(ctx context.Context, deliver func(*proto.Publication)) error {
	if !b.running.CompareAndSwap(false, true) {
		return errors.New("amqp bus: Run called twice")
	}
	sessions := 0
	b.conn.serve(ctx, "fan-out bus", func(ctx context.Context, s *amqpSession) error {
		sessions++
		return b.runSession(ctx, s, deliver, sessions > 1)
	})
	return nil
}

func (b *AMQPBus) runSession(ctx context.Context, s *amqpSession, deliver func(*proto.Publication), reconnected bool) error {
	ctl, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ctl.Close()
	ctlClosed := ctl.NotifyClose(make(chan *amqp.Error, 1))
	pub, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("open publish channel: %w", err)
	}
	defer pub.Close()
	pubClosed := pub.NotifyClose(make(chan *amqp.Error, 1))
	if err := pub.Confirm(false); err != nil {
		return fmt.Errorf("publisher confirms: %w", err)
	}

	args := amqp.Table{"x-max-length": int64(b.cfg.QueueMaxLength), "x-overflow": "drop-head"}
	if _, err := ctl.QueueDeclare(b.queue, false, false, true, false, args); err != nil {
		var e *amqp.Error
		if errors.As(err, &e) && e.Code == amqp.ResourceLocked {
			return fmt.Errorf("declare queue %s: %w (another connection owns it: is a second node running with node ID %q?)", b.queue, err, b.cfg.NodeID)
		}
		return fmt.Errorf("declare queue %s: %w%s", b.queue, err, amqpDeclareHint(err))
	}
	if err := ctl.Qos(b.cfg.Prefetch, 0, false); err != nil {
		return fmt.Errorf("qos %d: %w", b.cfg.Prefetch, err)
	}
	deliveries, err := ctl.Consume(b.queue, "", false, true, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", b.queue, err)
	}
	if err := b.attach(&busLink{sess: s, ctl: ctl, pub: pub}); err != nil {
		return err
	}
	defer b.detach()

	// Restored bindings first, then Resync: a publication sequenced after
	// Resync read the store arrives through the queue.
	var wg sync.WaitGroup
	defer wg.Wait()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if reconnected && b.cfg.OnReconnect != nil {
		wg.Go(func() { b.cfg.OnReconnect(sctx) })
	}

	// Manual acks, one per burst of deliveries, only bound the deliveries
	// in flight (auto-ack would let the client buffer grow without limit).
	// A fan-out message lost anyway (connection cut, queue overflow) is
	// recovered from the Store: the next seq of its key fills the gap, and
	// OnReconnect resyncs after an outage.
	maxBurst := max(1, b.cfg.Prefetch/2)
	for {
		select {
		case <-ctx.Done():
			if !ctl.IsClosed() {
				// Stopped while the connection stays: leave no queue
				// collecting messages nobody reads.
				_, _ = ctl.QueueDelete(b.queue, false, false, false)
			}
			return nil
		case e, ok := <-ctlClosed:
			return fmt.Errorf("channel of queue %s closed: %w", b.queue, amqpCloseReason(e, ok))
		case e, ok := <-pubClosed:
			return fmt.Errorf("publish channel closed: %w", amqpCloseReason(e, ok))
		case <-s.done:
			return amqp.ErrClosed
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("consumer of queue %s cancelled by the broker (queue deleted?)", b.queue)
			}
			last := b.handle(&d, deliver)
			// The client library hands deliveries over one by one: a miss
			// yields once to let it offer the next before acking.
			yielded := false
		burst:
			for n := 1; n < maxBurst; {
				select {
				case d, ok := <-deliveries:
					if !ok {
						break burst // the outer receive reports it
					}
					last = b.handle(&d, deliver)
					n++
					yielded = false
				default:
					if yielded {
						break burst
					}
					runtime.Gosched()
					yielded = true
				}
			}
			if err := ctl.Ack(last, true); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
		}
	}
}

// attach binds every watched key on ctl and then makes the link available
// to Watch and SendBatch.
func (b *AMQPBus) attach(l *busLink) error {
	b.bindMu.Lock()
	defer b.bindMu.Unlock()
	for rk := range b.watched {
		if err := l.ctl.QueueBind(b.queue, rk, b.exch, false, nil); err != nil {
			return fmt.Errorf("restore binding %s of queue %s: %w", rk, b.queue, err)
		}
	}
	if n := len(b.watched); n > 0 {
		b.log.Info("AMQP bus: bindings restored", "queue", b.queue, "keys", n)
	}
	b.linkMu.Lock()
	b.link = l
	close(b.linkReady)
	b.linkMu.Unlock()
	return nil
}

func (b *AMQPBus) detach() {
	b.linkMu.Lock()
	defer b.linkMu.Unlock()
	b.link = nil
	b.linkReady = make(chan struct{})
}

// waitLink returns the live link, waiting for one until ctx ends.
func (b *AMQPBus) waitLink(ctx context.Context) (*busLink, error) {
	for {
		b.linkMu.Lock()
		l, ready := b.link, b.linkReady
		b.linkMu.Unlock()
		if l != nil {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: AMQP bus not connected: %w", ErrUnavailable, ctx.Err())
		case <-ready:
		}
	}
}

// handle decodes one fan-out message and delivers it; it returns the
// delivery tag.
func (b *AMQPBus) handle(d *amqp.Delivery, deliver func(*proto.Publication)) uint64 {
	p, err := decodeFanout(d)
	if err != nil {
		// The format is our own: something else publishes to the exchange.
		b.malformed.Inc()
		b.log.Warn("AMQP bus: malformed fan-out message dropped", "queue", b.queue,
			"routing_key", d.RoutingKey, "app_id", d.AppId, "error", err)
		return d.DeliveryTag
	}
	b.received.Inc()
	deliver(&p)
	return d.DeliveryTag
}

// SendBatch publishes pubs to the fan-out exchange, in order on the one
// publishing channel (so in order for every queue), then waits for the
// broker's confirms of them all: one wait per batch, not per publication.
// It returns how many leading publications were confirmed; on error, a
// later one may or may not have been routed. While disconnected it waits
// for the connection; the whole call is bounded by ctx and SendTimeout.
// Failures wrap ErrUnavailable. Safe for concurrent use: the batches of
// concurrent calls interleave, each in its own order.
func (b *AMQPBus) SendBatch(ctx context.Context, pubs []proto.Publication) (int, error) {
	if len(pubs) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.SendTimeout)
	defer cancel()
	l, err := b.waitLink(ctx)
	if err != nil {
		return 0, fmt.Errorf("send %s seq %d: %w", proto.RoutingKey(pubs[0].App, pubs[0].Key), pubs[0].Seq, err)
	}
	confirms, pubErr := b.publish(ctx, l, pubs)
	n, err := b.waitConfirms(ctx, pubs, confirms)
	b.sent.Add(float64(n))
	if err == nil {
		err = pubErr
	}
	return n, err
}

// publish publishes pubs on l until one fails. It returns the confirms to
// wait for, one per publication published, and why it stopped early.
func (b *AMQPBus) publish(ctx context.Context, l *busLink, pubs []proto.Publication) ([]*amqp.DeferredConfirmation, error) {
	confirms := make([]*amqp.DeferredConfirmation, 0, len(pubs))
	for i := range pubs {
		p := &pubs[i]
		rk := proto.RoutingKey(p.App, p.Key)
		// The channel numbers publications and matches confirms under its
		// own lock, so concurrent calls need none.
		dc, err := l.pub.PublishWithDeferredConfirmWithContext(ctx, b.exch, rk, false, false, encodeFanout(p, b.cfg.NodeID))
		if err != nil {
			return confirms, fmt.Errorf("send %s seq %d: publish: %w: %w", rk, p.Seq, ErrUnavailable, err)
		}
		confirms = append(confirms, dc)
	}
	return confirms, nil
}

// waitConfirms waits for the confirms of the leading publications of pubs
// and returns how many of them, in order, the broker acked.
func (b *AMQPBus) waitConfirms(ctx context.Context, pubs []proto.Publication, confirms []*amqp.DeferredConfirmation) (int, error) {
	for i, dc := range confirms {
		acked, err := dc.WaitContext(ctx)
		if err == nil && !acked {
			err = errors.New("broker nacked the publication or the channel closed")
		}
		if err != nil {
			p := &pubs[i]
			return i, fmt.Errorf("send %s seq %d: confirm: %w: %w", proto.RoutingKey(p.App, p.Key), p.Seq, ErrUnavailable, err)
		}
	}
	return len(confirms), nil
}

// Watch binds the node queue to (app, key) and returns once the broker
// confirmed the binding. While disconnected it waits up to WatchWait for
// the connection, then fails with ErrUnavailable; a failed Watch leaves
// nothing behind (the hub calls Unwatch only after a Watch that succeeded).
func (b *AMQPBus) Watch(ctx context.Context, app, key string) error {
	rk := proto.RoutingKey(app, key)
	wctx, cancel := context.WithTimeout(ctx, b.cfg.WatchWait)
	_, err := b.waitLink(wctx)
	cancel()
	if err != nil {
		return fmt.Errorf("watch %s: %w", rk, err)
	}
	b.bindMu.Lock()
	defer b.bindMu.Unlock()
	l := b.currentLink()
	if l == nil {
		return fmt.Errorf("watch %s: %w: AMQP connection lost", rk, ErrUnavailable)
	}
	if err := l.ctl.QueueBind(b.queue, rk, b.exch, false, nil); err != nil {
		// A refused call closes the channel (an exchange deleted under
		// us, say): start over on a new connection, which declares the
		// topology again.
		l.sess.fail(fmt.Errorf("bind %s: %w", rk, err))
		return fmt.Errorf("watch %s: bind queue %s: %w: %w", rk, b.queue, ErrUnavailable, err)
	}
	b.watched[rk] = struct{}{}
	return nil
}

// Unwatch unbinds (app, key). While disconnected it only forgets the key:
// the queue and its bindings went with the connection, and the next one
// does not restore it.
func (b *AMQPBus) Unwatch(ctx context.Context, app, key string) error {
	rk := proto.RoutingKey(app, key)
	b.bindMu.Lock()
	defer b.bindMu.Unlock()
	delete(b.watched, rk)
	l := b.currentLink()
	if l == nil {
		return nil
	}
	if err := l.ctl.QueueUnbind(b.queue, rk, b.exch, nil); err != nil {
		// Reconnecting drops the binding with the queue.
		l.sess.fail(fmt.Errorf("unbind %s: %w", rk, err))
		return fmt.Errorf("unwatch %s: unbind queue %s: %w: %w", rk, b.queue, ErrUnavailable, err)
	}
	return nil
}

func (b *AMQPBus) currentLink() *busLink {
	b.linkMu.Lock()
	defer b.linkMu.Unlock()
	return b.link
}

// Fan-out message format: routing key "<app>.<key>", body the payload,
// content type JSON or octet-stream, headers x-seq and x-ts (int64; the
// AMQP timestamp property has only seconds), and x-node (the sender).
const (
	amqpContentJSON   = "application/json"
	amqpContentBinary = "application/octet-stream"
	fanoutHeaderSeq   = "x-seq"
	fanoutHeaderTS    = "x-ts"
	fanoutHeaderNode  = "x-node"
)

func encodeFanout(p *proto.Publication, nodeID string) amqp.Publishing {
	ct := amqpContentBinary
	if p.JSON {
		ct = amqpContentJSON
	}
	return amqp.Publishing{
		Headers:      amqp.Table{fanoutHeaderSeq: int64(p.Seq), fanoutHeaderTS: p.TS, fanoutHeaderNode: nodeID},
		ContentType:  ct,
		DeliveryMode: amqp.Transient,
		Timestamp:    time.UnixMilli(p.TS),
		AppId:        "wspush",
		Body:         p.Data,
	}
}

func decodeFanout(d *amqp.Delivery) (proto.Publication, error) {
	app, key, err := proto.ParseRoutingKey(d.RoutingKey)
	if err != nil {
		return proto.Publication{}, err
	}
	seq, ok := d.Headers[fanoutHeaderSeq].(int64)
	if !ok || seq <= 0 {
		return proto.Publication{}, fmt.Errorf("header %s: %v (%T): want a positive int64", fanoutHeaderSeq, d.Headers[fanoutHeaderSeq], d.Headers[fanoutHeaderSeq])
	}
	ts, ok := d.Headers[fanoutHeaderTS].(int64)
	if !ok {
		return proto.Publication{}, fmt.Errorf("header %s: %v (%T): want an int64", fanoutHeaderTS, d.Headers[fanoutHeaderTS], d.Headers[fanoutHeaderTS])
	}
	var isJSON bool
	switch d.ContentType {
	case amqpContentJSON:
		// Checked again because an invalid payload would corrupt the text
		// frames of every subscriber of the key.
		if !json.Valid(d.Body) {
			return proto.Publication{}, errors.New("content type application/json but the body is not valid JSON")
		}
		isJSON = true
	case amqpContentBinary:
	default:
		return proto.Publication{}, fmt.Errorf("content type %q: want %s or %s", d.ContentType, amqpContentJSON, amqpContentBinary)
	}
	return proto.Publication{App: app, Key: key, Seq: uint64(seq), TS: ts, Data: d.Body, JSON: isJSON}, nil
}
