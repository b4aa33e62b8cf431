package middle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
)

// AMQPTopology names the RabbitMQ objects of the cluster mode (see
// DESIGN.md, "AMQP topology"). The zero value of a field means its default;
// only tests and brokers shared by several deployments set other names.
type AMQPTopology struct {
	// FanoutExchange carries sequenced publications between nodes (topic,
	// durable; default "wspush.fanout").
	FanoutExchange string
	// NodeQueuePrefix followed by the node ID names each node's fan-out
	// queue (default "wspush.node.").
	NodeQueuePrefix string
	// IngestExchange is where integrators publish (topic, durable; default
	// "wspush.ingest").
	IngestExchange string
	// IngestQueue is bound to IngestExchange with "#" and consumed by every
	// node (durable; default "wspush.ingest").
	IngestQueue string
	// DeadLetterExchange receives the messages the ingest rejects (fanout,
	// durable; default "wspush.dlx").
	DeadLetterExchange string
	// DeadQueue keeps them for an operator to inspect (durable; default
	// "wspush.dead").
	DeadQueue string
}

// Defaults of AMQPTopology, as in DESIGN.md.
const (
	DefaultAMQPFanoutExchange     = "wspush.fanout"
	DefaultAMQPNodeQueuePrefix    = "wspush.node."
	DefaultAMQPIngestExchange     = "wspush.ingest"
	DefaultAMQPIngestQueue        = "wspush.ingest"
	DefaultAMQPDeadLetterExchange = "wspush.dlx"
	DefaultAMQPDeadQueue          = "wspush.dead"
)

func (t AMQPTopology) withDefaults() AMQPTopology {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&t.FanoutExchange, DefaultAMQPFanoutExchange)
	def(&t.NodeQueuePrefix, DefaultAMQPNodeQueuePrefix)
	def(&t.IngestExchange, DefaultAMQPIngestExchange)
	def(&t.IngestQueue, DefaultAMQPIngestQueue)
	def(&t.DeadLetterExchange, DefaultAMQPDeadLetterExchange)
	def(&t.DeadQueue, DefaultAMQPDeadQueue)
	return t
}

// maxAMQPName is the longest exchange or queue name (an AMQP short string).
const maxAMQPName = 255

func (t AMQPTopology) validate() error {
	for _, n := range []struct{ field, name string }{
		{"fanout exchange", t.FanoutExchange},
		{"node queue prefix", t.NodeQueuePrefix},
		{"ingest exchange", t.IngestExchange},
		{"ingest queue", t.IngestQueue},
		{"dead-letter exchange", t.DeadLetterExchange},
		{"dead queue", t.DeadQueue},
	} {
		if len(n.name) > maxAMQPName {
			return fmt.Errorf("%s %q: longer than %d bytes", n.field, n.name, maxAMQPName)
		}
	}
	return nil
}

// AMQPConfig configures the connection shared by the AMQP bus and ingest.
// The zero value of every field but URL means its default.
type AMQPConfig struct {
	// URL of the broker, amqp://user:pass@host:port/vhost (required).
	URL string
	// Name is the connection name RabbitMQ shows its operators (default
	// "wspush"; the node ID is a good choice).
	Name string
	// Topology names the exchanges and queues (defaults: DESIGN.md names).
	Topology AMQPTopology
	// DialTimeout bounds the TCP dial and the AMQP handshake (default 10s).
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval: a dead peer is noticed after
	// about two of them (default 10s).
	Heartbeat time.Duration
	// MinBackoff and MaxBackoff bound the delay between reconnection
	// attempts, doubled after each failure, with jitter (defaults 100ms and
	// 10s).
	MinBackoff time.Duration
	MaxBackoff time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of AMQPConfig.
const (
	DefaultAMQPName        = "wspush"
	DefaultAMQPDialTimeout = 10 * time.Second
	DefaultAMQPHeartbeat   = 10 * time.Second
	DefaultAMQPMinBackoff  = 100 * time.Millisecond
	DefaultAMQPMaxBackoff  = 10 * time.Second
)

func (c AMQPConfig) withDefaults() AMQPConfig {
	if c.Name == "" {
		c.Name = DefaultAMQPName
	}
	c.Topology = c.Topology.withDefaults()
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultAMQPDialTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultAMQPHeartbeat
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultAMQPMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultAMQPMaxBackoff, c.MinBackoff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c AMQPConfig) Validate() error {
	if c.URL == "" {
		return errors.New("amqp URL: required")
	}
	if _, err := amqp.ParseURI(c.URL); err != nil {
		return fmt.Errorf("amqp URL %s: %w", redactURL(c.URL), err)
	}
	switch {
	case c.DialTimeout < 0:
		return fmt.Errorf("dial timeout %s: must be positive", c.DialTimeout)
	case c.Heartbeat < 0:
		return fmt.Errorf("heartbeat %s: must be positive", c.Heartbeat)
	case c.MinBackoff < 0:
		return fmt.Errorf("min backoff %s: must be positive", c.MinBackoff)
	case c.MaxBackoff < 0:
		return fmt.Errorf("max backoff %s: must be positive", c.MaxBackoff)
	case c.MaxBackoff > 0 && c.MaxBackoff < c.MinBackoff:
		return fmt.Errorf("max backoff %s: below min backoff %s", c.MaxBackoff, c.MinBackoff)
	}
	if err := c.Topology.validate(); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	return nil
}

// amqpStillDownEvery spaces the reminders that the broker is still
// unreachable.
const amqpStillDownEvery = time.Minute

// AMQPConn is the one connection of a node to RabbitMQ, shared by the bus
// and the ingest. Run dials it, declares the topology, and whenever the
// connection (or a channel of one of its users) closes, dials again with
// exponential backoff and declares the topology again; each user then
// opens its own channels on the new connection (see serve).
type AMQPConn struct {
	cfg      AMQPConfig
	log      *slog.Logger
	topo     AMQPTopology
	redacted string // the URL without its password, for logs
	running  atomic.Bool
	// dial opens the TCP connection; tests wrap it to cut the connection
	// the hard way.
	dial func(network, addr string) (net.Conn, error)

	mu      sync.Mutex
	sess    *amqpSession  // nil while disconnected
	changed chan struct{} // closed and replaced whenever sess changes
	lastErr error         // why the last attempt or session failed

	reconnects prometheus.Counter
	connected  prometheus.Gauge
}

// NewAMQPConn validates cfg and returns a connection manager; call Run to
// connect.
func NewAMQPConn(cfg AMQPConfig) (*AMQPConn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp config: %w", err)
	}
	cfg = cfg.withDefaults()
	c := &AMQPConn{
		cfg:      cfg,
		log:      cfg.Logger,
		topo:     cfg.Topology,
		redacted: redactURL(cfg.URL),
		dial:     amqp.DefaultDial(cfg.DialTimeout),
		changed:  make(chan struct{}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_amqp_reconnects_total", Help: "Times the AMQP connection was re-established after it was lost.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wspush_amqp_connected", Help: "1 while the AMQP connection is up and the topology declared, else 0.",
		}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.reconnects, c.connected)
	}
	return c, nil
}

// Topology returns the names in use, defaults filled in.
func (c *AMQPConn) Topology() AMQPTopology { return c.topo }

// Ready reports whether the connection is up, for /readyz; the error wraps
// ErrUnavailable and says why it is not.
func (c *AMQPConn) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.sess != nil:
		return nil
	case c.lastErr != nil:
		return fmt.Errorf("amqp %s: %w: %w", c.redacted, ErrUnavailable, c.lastErr)
	default:
		return fmt.Errorf("amqp %s: %w: not connected yet", c.redacted, ErrUnavailable)
	}
}

// Run keeps the connection up until ctx ends, then closes it. It logs one
// line when the connection is lost and one when it is back, not one per
// attempt.
func (c *AMQPConn) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("amqp connection: Run called twice")
	}
	bo := backoff{min: c.cfg.MinBackoff, max: c.cfg.MaxBackoff}
	var (
		everUp   bool
		failures int          // failed attempts since the last session
		downAt   = time.Now() // when the connection was lost, or Run started
		warnedAt time.Time    // the last Warn about the outage
	)
	for ctx.Err() == nil {
		conn, err := c.connect()
		if err != nil {
			c.setDown(nil, err)
			failures++
			switch now := time.Now(); {
			case failures == 1 && !everUp:
				warnedAt = now
				c.log.Warn("AMQP broker unreachable; retrying with backoff until it answers",
					"url", c.redacted, "error", err)
			case now.Sub(warnedAt) >= amqpStillDownEvery:
				warnedAt = now
				c.log.Warn("AMQP broker still unreachable; retrying", "url", c.redacted,
					"down_for", now.Sub(downAt).Round(time.Second), "attempts", failures, "error", err)
			default:
				c.log.Debug("AMQP connection attempt failed", "url", c.redacted, "attempt", failures, "error", err)
			}
			if !sleepCtx(ctx, bo.next()) {
				break
			}
			continue
		}
		s := &amqpSession{conn: conn, failed: make(chan struct{}), done: make(chan struct{})}
		closed := conn.NotifyClose(make(chan *amqp.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 1))
		upAt := time.Now()
		if everUp {
			c.reconnects.Inc()
			c.log.Info("AMQP connection restored", "url", c.redacted,
				"down_for", upAt.Sub(downAt).Round(time.Millisecond), "attempts", failures+1)
		} else {
			c.log.Info("AMQP connected", "url", c.redacted, "name", c.cfg.Name, "attempts", failures+1)
		}
		everUp, failures = true, 0
		c.setUp(s)

		var cause error
	session:
		for {
			select {
			case <-ctx.Done():
				break session
			case e, ok := <-closed:
				cause = errors.New("connection closed")
				if ok && e != nil {
					cause = e
				}
				break session
			case <-s.failed:
				cause = s.failErr
				break session
			case b, ok := <-blocked:
				switch {
				case !ok:
					blocked = nil // closed with the connection
				case b.Active:
					c.log.Warn("AMQP broker blocks publishing (resource alarm); bus sends and ingestion stall until it lifts",
						"url", c.redacted, "reason", b.Reason)
				default:
					c.log.Info("AMQP broker accepts publishing again", "url", c.redacted)
				}
			}
		}
		if cause == nil {
			cause = ctx.Err()
		}
		c.setDown(s, cause)
		// Without a deadline, closing a connection whose peer vanished
		// waits for an answer that never comes.
		_ = conn.CloseDeadline(time.Now().Add(c.cfg.DialTimeout))
		close(s.done)
		if ctx.Err() != nil {
			break
		}
		downAt, warnedAt = time.Now(), time.Now()
		c.log.Warn("AMQP connection lost; reconnecting (publishing and fan-out pause meanwhile)",
			"url", c.redacted, "error", cause)
		if downAt.Sub(upAt) >= c.cfg.MaxBackoff {
			bo.reset() // a connection that lived a while earns a quick retry
		}
		if !sleepCtx(ctx, bo.next()) {
			break
		}
	}
	return nil
}

// connect dials and declares the topology.
func (c *AMQPConn) connect() (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(c.cfg.Name)
	conn, err := amqp.DialConfig(c.cfg.URL, amqp.Config{
		Heartbeat:  c.cfg.Heartbeat,
		Locale:     "en_US",
		Properties: props,
		Dial:       c.dial,
	})
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if err := c.declare(conn); err != nil {
		_ = conn.CloseDeadline(time.Now().Add(c.cfg.DialTimeout))
		return nil, err
	}
	return conn, nil
}

// declare declares the exchanges and the shared queues. The node queues are
// the bus's: only it knows the node ID.
func (c *AMQPConn) declare(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	t := c.topo
	for _, x := range []struct{ name, kind string }{
		{t.FanoutExchange, amqp.ExchangeTopic},
		{t.IngestExchange, amqp.ExchangeTopic},
		{t.DeadLetterExchange, amqp.ExchangeFanout},
	} {
		if err := ch.ExchangeDeclare(x.name, x.kind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s (%s, durable): %w%s", x.name, x.kind, err, amqpDeclareHint(err))
		}
	}
	if _, err := ch.QueueDeclare(t.DeadQueue, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s (durable): %w%s", t.DeadQueue, err, amqpDeclareHint(err))
	}
	if err := ch.QueueBind(t.DeadQueue, "", t.DeadLetterExchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", t.DeadQueue, t.DeadLetterExchange, err)
	}
	args := amqp.Table{"x-dead-letter-exchange": t.DeadLetterExchange}
	if _, err := ch.QueueDeclare(t.IngestQueue, true, false, false, false, args); err != nil {
		return fmt.Errorf("declare queue %s (durable, x-dead-letter-exchange %s): %w%s", t.IngestQueue, t.DeadLetterExchange, err, amqpDeclareHint(err))
	}
	if err := ch.QueueBind(t.IngestQueue, "#", t.IngestExchange, false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", t.IngestQueue, t.IngestExchange, err)
	}
	return nil
}

// amqpDeclareHint explains the usual cause of a declaration refused by the
// broker.
func amqpDeclareHint(err error) string {
	var e *amqp.Error
	if errors.As(err, &e) && e.Code == amqp.PreconditionFailed {
		return " (it exists with other properties or arguments: delete it, or configure other topology names)"
	}
	return ""
}

func (c *AMQPConn) setUp(s *amqpSession) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess, c.lastErr = s, nil
	close(c.changed)
	c.changed = make(chan struct{})
	c.connected.Set(1)
}

// setDown records err; when s is the current session, it is over.
func (c *AMQPConn) setDown(s *amqpSession, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lastErr = err
	if s != nil && c.sess == s {
		c.sess = nil
		close(c.changed)
		c.changed = make(chan struct{})
	}
	c.connected.Set(0)
}

// session waits for the connection to be up and returns it.
func (c *AMQPConn) session(ctx context.Context) (*amqpSession, error) {
	for {
		c.mu.Lock()
		s, changed := c.sess, c.changed
		c.mu.Unlock()
		if s != nil {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// serve runs fn on every connection until ctx ends: fn opens its channels
// on s and returns when one of them closes (nil error only when ctx ended).
// An fn that fails makes the whole connection start over, so that every
// user re-establishes its state on one fresh connection.
func (c *AMQPConn) serve(ctx context.Context, who string, fn func(ctx context.Context, s *amqpSession) error) {
	for {
		s, err := c.session(ctx)
		if err != nil {
			return
		}
		err = fn(ctx, s)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("stopped")
		}
		s.fail(fmt.Errorf("%s: %w", who, err))
		select {
		case <-ctx.Done():
			return
		case <-s.done:
		}
	}
}

// amqpSession is one live connection.
type amqpSession struct {
	conn *amqp.Connection

	failOnce sync.Once
	failErr  error         // written before failed is closed
	failed   chan struct{} // closed by fail: the manager reconnects
	done     chan struct{} // closed by the manager once conn is closed
}

// fail asks the manager to drop this connection and dial a new one.
func (s *amqpSession) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failed)
	})
}

// amqpCloseReason turns what a channel's NotifyClose delivered into an error.
func amqpCloseReason(e *amqp.Error, ok bool) error {
	if ok && e != nil {
		return e
	}
	return amqp.ErrClosed
}
