package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/wspush/wspush/proto"
)

// Defaults of Config.
const (
	DefaultMinBackoff          = 250 * time.Millisecond
	DefaultMaxBackoff          = 10 * time.Second
	DefaultDialTimeout         = 10 * time.Second
	DefaultReadTimeout         = 75 * time.Second
	DefaultCommandTimeout      = 10 * time.Second
	DefaultQueueSize           = 4096
	DefaultStallTimeout        = 10 * time.Second
	DefaultCommandRate         = 16
	DefaultCommandBurst        = 32
	DefaultMaxKeysPerSubscribe = 100
	DefaultMaxSubscriptions    = 1000
	DefaultMaxMessageSize      = 1 << 20
)

// The bounds of Config.MaxBandwidth (bytes/s) and of SubscribeOptions.MaxRate
// (values/s) that the server accepts (docs/PROTOCOL.md, Delivery modes).
const (
	bandwidthMin = 1024
	bandwidthMax = 1_000_000_000
	rateMax      = proto.MaxRateLimit
)

// Client is a connection to a wspush node that reconnects and resumes on
// its own. Its methods are safe for concurrent use.
type Client struct {
	cfg Config
	log *slog.Logger

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	runWG  sync.WaitGroup // the connection loop (it waits for its connections)

	q        chan event    // to the dispatcher; see the package doc, Slow handlers
	room     chan struct{} // the dispatcher brought q down to half
	kick     chan struct{} // Subscribe added keys to send
	dispDone chan struct{}

	mu       sync.Mutex
	keys     map[appKey]*keyState
	state    State
	conn     *conn // the open connection, nil between connections
	gen      uint64
	err      error // why the Client ended; set before done is closed
	done     chan struct{}
	opened   chan struct{} // closed at the first open connection
	everOpen bool
	lastErr  error // of the last failed attempt, for Dial
	closed   sync.Once
}

type appKey struct{ app, key string }

// New checks cfg and starts the client's connection loop; it does not wait
// for a connection. Subscriptions made before the connection opens are
// sent when it does.
func New(cfg Config) (*Client, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:      cfg,
		log:      cfg.Logger.With("url", cfg.URL),
		ctx:      ctx,
		cancel:   cancel,
		q:        make(chan event, cfg.QueueSize),
		room:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		dispDone: make(chan struct{}),
		keys:     make(map[appKey]*keyState),
		done:     make(chan struct{}),
		opened:   make(chan struct{}),
	}
	c.q <- event{kind: evState, state: StateEvent{State: StateConnecting}}
	go c.dispatch()
	c.runWG.Add(1)
	go c.run()
	return c, nil
}

// Dial is New followed by a wait for the first connection: it returns
// when the connection is open, or the terminal error of the first attempts
// (e.g. a *CloseError 4001), or ctx's error, having closed the Client.
// ctx bounds the wait only; the Client runs until Close.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	c, err := New(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-c.opened:
		return c, nil
	case <-c.done:
		err := c.Err()
		c.Close()
		return nil, err
	case <-ctx.Done():
		c.mu.Lock()
		last := c.lastErr
		c.mu.Unlock()
		c.Close()
		if last != nil {
			return nil, fmt.Errorf("wspush: no connection to %s: %w (last attempt: %v)", cfg.URL, ctx.Err(), last)
		}
		return nil, fmt.Errorf("wspush: no connection to %s: %w", cfg.URL, ctx.Err())
	}
}

func (cfg *Config) fill() error {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return fmt.Errorf("wspush client: URL %q: %w", cfg.URL, err)
	}
	switch u.Scheme {
	case "ws", "wss":
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return fmt.Errorf("wspush client: URL %q: want ws://, wss://, http:// or https://", cfg.URL)
	}
	if u.Host == "" {
		return fmt.Errorf("wspush client: URL %q: no host", cfg.URL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/ws"
	}
	if cfg.MaxBandwidth != 0 {
		// docs/PROTOCOL.md, Delivery modes: max_bandwidth.
		if cfg.MaxBandwidth < bandwidthMin || cfg.MaxBandwidth > bandwidthMax {
			return fmt.Errorf("wspush client: MaxBandwidth %d: want 0 (none) or %d..%d bytes/s", cfg.MaxBandwidth, bandwidthMin, bandwidthMax)
		}
		q := u.Query()
		q.Set("max_bandwidth", strconv.Itoa(cfg.MaxBandwidth))
		u.RawQuery = q.Encode()
	}
	cfg.URL = u.String()
	dur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	dur(&cfg.MinBackoff, DefaultMinBackoff)
	dur(&cfg.MaxBackoff, DefaultMaxBackoff)
	dur(&cfg.DialTimeout, DefaultDialTimeout)
	dur(&cfg.ReadTimeout, DefaultReadTimeout)
	dur(&cfg.CommandTimeout, DefaultCommandTimeout)
	dur(&cfg.StallTimeout, DefaultStallTimeout)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	num := func(n *int, def int) {
		if *n <= 0 {
			*n = def
		}
	}
	num(&cfg.QueueSize, DefaultQueueSize)
	num(&cfg.CommandBurst, DefaultCommandBurst)
	num(&cfg.MaxKeysPerSubscribe, DefaultMaxKeysPerSubscribe)
	num(&cfg.MaxSubscriptions, DefaultMaxSubscriptions)
	if cfg.CommandRate <= 0 {
		cfg.CommandRate = DefaultCommandRate
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// State returns the current connection state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Done is closed when the Client ends: Close, or a terminal error.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the Client ended: nil while it runs, ErrClosed after
// Close, else the terminal error (*CloseError, *HandshakeError).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection (1000) and stops every goroutine of the
// Client, waiting for them; no Handler is called after it returns. It must
// not be called from a Handler or OnState (it waits for them to return).
func (c *Client) Close() error {
	c.closed.Do(func() {
		c.cancel()
		c.runWG.Wait()
		<-c.dispDone
		c.mu.Lock()
		ended := c.err != nil
		if !ended {
			c.err = ErrClosed
			c.state = StateClosed
			close(c.done)
		}
		c.mu.Unlock()
		if !ended && c.cfg.OnState != nil {
			c.cfg.OnState(StateEvent{State: StateClosed})
		}
	})
	return nil
}

// end makes err the reason the Client ended (a terminal error of the
// connection loop) and queues StateClosed for OnState.
func (c *Client) end(ev StateEvent) {
	c.mu.Lock()
	c.err = ev.Err
	c.state = StateClosed
	close(c.done)
	c.mu.Unlock()
	c.log.Error("wspush client stopped", "code", ev.Code, "reason", ev.Reason, "error", ev.Err)
	c.pushState(ev)
}

// connected is called by cn's reader at the pong of its first ping: the
// server accepted the connection.
func (c *Client) connected(cn *conn) error {
	c.mu.Lock()
	c.state = StateOpen
	first := !c.everOpen
	c.everOpen = true
	c.mu.Unlock()
	if first {
		close(c.opened)
	}
	cn.log.Info("connected")
	if !c.push(event{kind: evState, state: StateEvent{State: StateOpen}}, c.cfg.StallTimeout, cn.ctx.Done()) {
		return errStall
	}
	return nil
}

func (c *Client) setState(ev StateEvent) {
	c.mu.Lock()
	c.state = ev.State
	c.mu.Unlock()
	c.pushState(ev)
}

// Positions returns the position of every subscribed key of app whose
// Handler has been called at least once (ack, data or reset): what to pass
// as SubscribeOptions.Since to resume later, e.g. after a restart. It
// still answers after Close, with the final positions.
func (c *Client) Positions(app string) map[string]Position {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]Position)
	for ak, e := range c.keys {
		if ak.app == app && e.hasHandled {
			out[ak.key] = e.handled
		}
	}
	return out
}

// errors that end one connection (the client reconnects).
var (
	errStall      = errors.New("the Handler fell behind: the queue stayed full")
	errSeqGap     = errors.New("the server skipped a seq")
	errRetryReply = errors.New("a resubscribe was refused for now")
)
