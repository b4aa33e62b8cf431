package amqp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/middle"
)

// Config configures a node's connection to RabbitMQ. The zero value of
// every field but URL means its default.
type Config struct {
	// URL of the broker, amqp://user:pass@host:port/vhost (required).
	URL string
	// Name is the connection name RabbitMQ shows its operators, the
	// connection_name client property (default "wspush"; "wspush <node ID>"
	// is a good choice).
	Name string
	// Topology names the exchanges and queues and sets the partitions.
	Topology Topology
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

// Defaults of Config.
const (
	DefaultName        = "wspush"
	DefaultDialTimeout = 10 * time.Second
	DefaultHeartbeat   = 10 * time.Second
	DefaultMinBackoff  = 100 * time.Millisecond
	DefaultMaxBackoff  = 10 * time.Second
)

func (c Config) withDefaults() Config {
	if c.Name == "" {
		c.Name = DefaultName
	}
	c.Topology = c.Topology.WithDefaults()
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.MinBackoff == 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.MinBackoff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.URL == "" {
		return errors.New("amqp URL: required")
	}
	if _, err := amqp091.ParseURI(c.URL); err != nil {
		return fmt.Errorf("amqp URL %s: %w", retry.RedactURL(c.URL), err)
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
	if err := c.Topology.Validate(); err != nil {
		return fmt.Errorf("topology: %w", err)
	}
	return nil
}

// stillDownEvery spaces the reminders that the broker is still unreachable.
const stillDownEvery = time.Minute

// Conn is the one connection of a node to RabbitMQ. Run dials it, declares
// the topology (docs/PROTOCOL.md, "Topology"), and whenever the connection
// closes (or a user asks for a fresh one, see session.fail) dials again
// with exponential backoff and declares the topology again; the ingest
// then opens its channels on the new connection.
type Conn struct {
	cfg      Config
	log      *slog.Logger
	topo     Topology
	redacted string // the URL without its password, for logs
	running  atomic.Bool
	// dial opens the TCP connection; tests wrap it to cut the connection
	// the hard way.
	dial func(network, addr string) (net.Conn, error)
	// legacyChecked: the warning about the old ingest queue is given once
	// per Run; owned by its goroutine.
	legacyChecked bool

	mu      sync.Mutex
	sess    *session      // nil while disconnected
	changed chan struct{} // closed and replaced whenever sess changes
	lastErr error         // why the last attempt or session failed

	reconnects prometheus.Counter
	connected  prometheus.Gauge
}

// NewConn validates cfg and returns a connection manager; call Run to
// connect.
func NewConn(cfg Config) (*Conn, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("amqp config: %w", err)
	}
	cfg = cfg.withDefaults()
	c := &Conn{
		cfg:      cfg,
		log:      cfg.Logger,
		topo:     cfg.Topology,
		redacted: retry.RedactURL(cfg.URL),
		dial:     amqp091.DefaultDial(cfg.DialTimeout),
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
func (c *Conn) Topology() Topology { return c.topo }

// Ready reports whether the connection is up, for /readyz; the error wraps
// middle.ErrUnavailable and says why it is not.
func (c *Conn) Ready() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.sess != nil:
		return nil
	case c.lastErr != nil:
		return fmt.Errorf("amqp %s: %w: %w", c.redacted, middle.ErrUnavailable, c.lastErr)
	default:
		return fmt.Errorf("amqp %s: %w: not connected yet", c.redacted, middle.ErrUnavailable)
	}
}

// Run keeps the connection up until ctx ends, then closes it. It logs one
// line when the connection is lost and one when it is back, not one per
// attempt. It returns an error wrapping ErrNoHashPlugin when the broker
// lacks the consistent-hash plugin the partitions need: retrying would not
// help.
func (c *Conn) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("amqp connection: Run called twice")
	}
	bo := retry.Backoff{Min: c.cfg.MinBackoff, Max: c.cfg.MaxBackoff}
	var (
		everUp   bool
		failures int          // failed attempts since the last session
		downAt   = time.Now() // when the connection was lost, or Run started
		warnedAt time.Time    // the last Warn about the outage
	)
	for ctx.Err() == nil {
		conn, err := c.connect()
		if errors.Is(err, ErrNoHashPlugin) {
			c.setDown(nil, err)
			c.log.Error("AMQP ingest cannot start", "url", c.redacted, "error", err)
			return err
		}
		if err != nil {
			c.setDown(nil, err)
			failures++
			switch now := time.Now(); {
			case failures == 1 && !everUp:
				warnedAt = now
				c.log.Warn("AMQP broker unreachable; retrying with backoff until it answers",
					"url", c.redacted, "error", err)
			case now.Sub(warnedAt) >= stillDownEvery:
				warnedAt = now
				c.log.Warn("AMQP broker still unreachable; retrying", "url", c.redacted,
					"down_for", now.Sub(downAt).Round(time.Second), "attempts", failures, "error", err)
			default:
				c.log.Debug("AMQP connection attempt failed", "url", c.redacted, "attempt", failures, "error", err)
			}
			if !retry.Sleep(ctx, bo.Next()) {
				break
			}
			continue
		}
		s := &session{conn: conn, failed: make(chan struct{}), done: make(chan struct{})}
		closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
		blocked := conn.NotifyBlocked(make(chan amqp091.Blocking, 1))
		upAt := time.Now()
		if everUp {
			c.reconnects.Inc()
			c.log.Info("AMQP connection restored", "url", c.redacted,
				"down_for", upAt.Sub(downAt).Round(time.Millisecond), "attempts", failures+1)
		} else {
			c.log.Info("AMQP connected", "url", c.redacted, "name", c.cfg.Name, "attempts", failures+1,
				"prefix", c.topo.Prefix, "partitions", c.topo.Partitions)
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
				cause = closeReason(e, ok)
				break session
			case <-s.failed:
				cause = s.failErr
				break session
			case b, ok := <-blocked:
				switch {
				case !ok:
					blocked = nil // closed with the connection
				case b.Active:
					c.log.Warn("AMQP broker blocks publishing (resource alarm); integrators' publishing stalls until it lifts",
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
		c.log.Warn("AMQP connection lost; reconnecting (ingestion pauses meanwhile)",
			"url", c.redacted, "error", cause)
		if downAt.Sub(upAt) >= c.cfg.MaxBackoff {
			bo.Reset() // a connection that lived a while earns a quick retry
		}
		if !retry.Sleep(ctx, bo.Next()) {
			break
		}
	}
	return nil
}

// connect dials and declares the topology.
func (c *Conn) connect() (*amqp091.Connection, error) {
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(c.cfg.Name)
	conn, err := amqp091.DialConfig(c.cfg.URL, amqp091.Config{
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
	if !c.legacyChecked {
		c.legacyChecked = true
		c.checkLegacy(conn)
	}
	return conn, nil
}

// declare declares the topology of docs/PROTOCOL.md, "Topology".
func (c *Conn) declare(conn *amqp091.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	t := c.topo
	exchanges := []struct{ name, kind string }{
		{t.Exchange(), amqp091.ExchangeTopic},
		{t.DeadLetterExchange(), amqp091.ExchangeFanout},
	}
	if t.Partitions > 1 {
		exchanges = append(exchanges, struct{ name, kind string }{t.HashExchange(), "x-consistent-hash"})
	}
	for _, x := range exchanges {
		if err := ch.ExchangeDeclare(x.name, x.kind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("declare exchange %s (%s, durable): %w%s", x.name, x.kind, declareErr(err), declareHint(err))
		}
	}
	if _, err := ch.QueueDeclare(t.DeadQueue(), true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare queue %s (durable): %w%s", t.DeadQueue(), err, declareHint(err))
	}
	if err := ch.QueueBind(t.DeadQueue(), "", t.DeadLetterExchange(), false, nil); err != nil {
		return fmt.Errorf("bind queue %s to %s: %w", t.DeadQueue(), t.DeadLetterExchange(), err)
	}
	args := amqp091.Table{
		"x-single-active-consumer": true,
		"x-dead-letter-exchange":   t.DeadLetterExchange(),
	}
	for n := range t.Partitions {
		q := t.Queue(n)
		if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
			return fmt.Errorf("declare queue %s (durable, x-single-active-consumer, x-dead-letter-exchange %s): %w%s",
				q, t.DeadLetterExchange(), err, declareHint(err))
		}
	}
	if t.Partitions == 1 {
		if err := ch.QueueBind(t.Queue(0), "#", t.Exchange(), false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s: %w", t.Queue(0), t.Exchange(), err)
		}
		c.unbindHash(conn)
		return nil
	}
	if err := ch.ExchangeBind(t.HashExchange(), "#", t.Exchange(), false, nil); err != nil {
		return fmt.Errorf("bind exchange %s to %s: %w", t.HashExchange(), t.Exchange(), err)
	}
	for n := range t.Partitions {
		// The routing key of a consistent-hash binding is the weight.
		if err := ch.QueueBind(t.Queue(n), "1", t.HashExchange(), false, nil); err != nil {
			return fmt.Errorf("bind queue %s to %s: %w", t.Queue(n), t.HashExchange(), err)
		}
	}
	// Partition 0 of a deployment that ran with one partition is still
	// bound directly: it would get a second copy of every message.
	if err := ch.QueueUnbind(t.Queue(0), "#", t.Exchange(), nil); err != nil {
		return fmt.Errorf("unbind queue %s from %s: %w", t.Queue(0), t.Exchange(), err)
	}
	return nil
}

// unbindHash undoes, for one partition, the hash exchange's binding left by
// a deployment that ran with more: queue 0, bound to it too, would get a
// second copy of every message. The exchange may not exist, and a failed
// unbind closes its channel: a throwaway one.
func (c *Conn) unbindHash(conn *amqp091.Connection) {
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	t := c.topo
	if err := ch.ExchangeDeclarePassive(t.HashExchange(), "x-consistent-hash", true, false, false, false, nil); err != nil {
		return
	}
	if err := ch.ExchangeUnbind(t.HashExchange(), "#", t.Exchange(), false, nil); err == nil {
		c.log.Info("AMQP ingest: one partition: unbound the hash exchange of an earlier configuration",
			"exchange", t.HashExchange(), "from", t.Exchange())
	}
}

// checkLegacy warns about the queue of the competing-consumer ingest of
// earlier versions: it still receives a copy of every message (it is bound
// to the ingest exchange) and nothing consumes it.
func (c *Conn) checkLegacy(conn *amqp091.Connection) {
	ch, err := conn.Channel() // a failed passive declare closes its channel
	if err != nil {
		return
	}
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(c.topo.LegacyQueue(), true, false, false, false, nil)
	if err != nil {
		return // absent: the usual case
	}
	if q.Messages > 0 {
		c.log.Warn("AMQP: the queue of the old competing-consumer ingest still holds messages that no node consumes; "+
			"move them to the ingest exchange (a shovel, or a republish), then delete the queue (while it exists it receives a copy of every message)",
			"queue", q.Name, "messages", q.Messages, "exchange", c.topo.Exchange())
		return
	}
	c.log.Warn("AMQP: the queue of the old competing-consumer ingest is unused; delete it (while it exists it receives a copy of every message)",
		"queue", q.Name)
}

// declareErr maps a broker without the consistent-hash exchange type to
// ErrNoHashPlugin.
func declareErr(err error) error {
	var e *amqp091.Error
	if errors.As(err, &e) && e.Code == amqp091.CommandInvalid && strings.Contains(e.Reason, "x-consistent-hash") {
		return fmt.Errorf("%w (%w)", ErrNoHashPlugin, err)
	}
	return err
}

// declareHint explains the usual cause of a declaration refused by the
// broker.
func declareHint(err error) string {
	var e *amqp091.Error
	if errors.As(err, &e) && e.Code == amqp091.PreconditionFailed {
		return " (it exists with other properties or arguments: delete it, or use another --amqp-prefix)"
	}
	return ""
}

func (c *Conn) setUp(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sess, c.lastErr = s, nil
	close(c.changed)
	c.changed = make(chan struct{})
	c.connected.Set(1)
}

// setDown records err; when s is the current session, it is over.
func (c *Conn) setDown(s *session, err error) {
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
func (c *Conn) session(ctx context.Context) (*session, error) {
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

// session is one live connection.
type session struct {
	conn *amqp091.Connection

	failOnce sync.Once
	failErr  error         // written before failed is closed
	failed   chan struct{} // closed by fail: the manager reconnects
	done     chan struct{} // closed by the manager once conn is closed
}

// fail asks the manager to drop this connection and dial a new one, which
// declares the topology again (a queue deleted under a consumer, say).
func (s *session) fail(err error) {
	s.failOnce.Do(func() {
		s.failErr = err
		close(s.failed)
	})
}

// closeReason turns what a NotifyClose delivered into an error.
func closeReason(e *amqp091.Error, ok bool) error {
	if ok && e != nil {
		return e
	}
	return amqp091.ErrClosed
}
