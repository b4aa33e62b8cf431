package userservice

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server. Zero fields take the defaults below.
type Config struct {
	MaxConnections      int           // open connections per server (default 100000)
	MaxConnectionsPerIP int           // open connections of one client address (TCP peer; IPv6 by /64), more get 429 (default 0: no limit)
	MaxMessageSize      int64         // largest client message (fragments together); larger closes with 1009 (default 64 KiB)
	MessageTimeout      time.Duration // a client message (or frame) must complete this long after its first byte, else close with 1008 (default 10s)
	MaxKeysPerSubscribe int           // keys in one subscribe (default 100)
	MaxSubscriptions    int           // keys subscribed per connection (default 1000)
	CommandRate         float64       // sustained client commands per second (default 20)
	CommandBurst        int           // commands allowed in a burst (default 50)
	MaxBadCommands      int           // consecutive bad commands before closing with 1008 (default 10)
	QueueMaxBytes       int           // outgoing queue per connection; overflow closes with 4008 (default 1 MiB)
	PingInterval        time.Duration // server pings this often (default 25s)
	PingTimeout         time.Duration // a connection silent this long is reaped (default 60s)
	WriteTimeout        time.Duration // one write to a client (default 10s)
	// WriteDelay is the least time between two writes to a connection,
	// and so the most a frame waits for the next one: what is queued to
	// a connection that wrote less than WriteDelay ago waits until
	// WriteDelay after that write, and goes out in one write with what is
	// queued meanwhile. A frame to a connection that did not write for
	// WriteDelay goes at once: the delay costs latency only to
	// connections that get many frames a second, for fewer write
	// syscalls (default 0: no delay; the writer pool still batches what
	// piles up while its writers are busy).
	WriteDelay time.Duration
	// Writers is how many goroutines of the writer pool write to plain
	// TCP connections, from NewServer to Shutdown (default 2 per
	// GOMAXPROCS at NewServer). A connection waits in the pool's ready
	// list while they are busy, and what is queued to it meanwhile shares
	// its write; TLS connections, and those whose socket would block, are
	// written by a goroutine of their own.
	Writers          int
	CommandTimeout   time.Duration // a subscribe's work in the middle tier (default 10s)
	HandshakeTimeout time.Duration // the WebSocket upgrade (default 10s)
	// CheckOrigin decides whether a browser (a request with an Origin
	// header) may connect (docs/PROTOCOL.md, "Origins"); requests without
	// one always may. Nil: every browser is refused.
	CheckOrigin func(*http.Request) bool
	// JWTSecret turns auth on: clients must present an HS256 JWT signed with
	// it (?token= or Authorization: Bearer). A token may carry an "apps"
	// claim listing the apps it may subscribe to.
	JWTSecret []byte
	// JWTPublicKeyFile turns auth on instead of JWTSecret: tokens are
	// verified with this PEM public key (RSA: RS256/384/512; ECDSA: the ES
	// algorithm of its curve; Ed25519: EdDSA), and no other algorithm.
	JWTPublicKeyFile string
	// JWTAudience and JWTIssuer, when set, must match the token's aud and
	// iss. JWTAllowNoExp accepts tokens without exp (which never expire);
	// otherwise exp is required, and a connection whose token expires is
	// closed with 4003 unless it refreshed it (docs/PROTOCOL.md).
	JWTAudience   string
	JWTIssuer     string
	JWTAllowNoExp bool

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Defaults of Config.
const (
	DefaultMaxConnections      = 100000
	DefaultMaxMessageSize      = 64 << 10
	DefaultMessageTimeout      = 10 * time.Second
	DefaultMaxKeysPerSubscribe = 100
	DefaultMaxSubscriptions    = 1000
	DefaultCommandRate         = 20
	DefaultCommandBurst        = 50
	DefaultMaxBadCommands      = 10
	DefaultQueueMaxBytes       = 1 << 20
	DefaultPingInterval        = 25 * time.Second
	DefaultPingTimeout         = 60 * time.Second
	DefaultWriteTimeout        = 10 * time.Second
	DefaultCommandTimeout      = 10 * time.Second
	DefaultHandshakeTimeout    = 10 * time.Second
	MaxWriteDelay              = time.Second
	MaxWriters                 = 4096
)

func (c Config) withDefaults() Config {
	setDefault(&c.MaxConnections, DefaultMaxConnections)
	setDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	setDefault(&c.MessageTimeout, DefaultMessageTimeout)
	setDefault(&c.MaxKeysPerSubscribe, DefaultMaxKeysPerSubscribe)
	setDefault(&c.MaxSubscriptions, DefaultMaxSubscriptions)
	setDefault(&c.CommandRate, DefaultCommandRate)
	setDefault(&c.CommandBurst, DefaultCommandBurst)
	setDefault(&c.MaxBadCommands, DefaultMaxBadCommands)
	setDefault(&c.QueueMaxBytes, DefaultQueueMaxBytes)
	setDefault(&c.PingInterval, DefaultPingInterval)
	setDefault(&c.PingTimeout, DefaultPingTimeout)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.CommandTimeout, DefaultCommandTimeout)
	setDefault(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	setDefault(&c.Writers, 2*runtime.GOMAXPROCS(0))
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func setDefault[T int | int64 | float64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// Validate reports the first invalid field (after defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	positive := func(name string, ok bool) {
		if !ok {
			errs = append(errs, fmt.Errorf("%s must be positive", name))
		}
	}
	positive("max connections", c.MaxConnections > 0)
	if c.MaxConnectionsPerIP < 0 {
		errs = append(errs, fmt.Errorf("max connections per IP %d must not be negative", c.MaxConnectionsPerIP))
	}
	positive("max message size", c.MaxMessageSize > 0)
	positive("message timeout", c.MessageTimeout > 0)
	positive("max keys per subscribe", c.MaxKeysPerSubscribe > 0)
	positive("max subscriptions", c.MaxSubscriptions > 0)
	positive("command rate", c.CommandRate > 0)
	positive("command burst", c.CommandBurst > 0)
	positive("max bad commands", c.MaxBadCommands > 0)
	positive("queue max bytes", c.QueueMaxBytes > 0)
	positive("ping interval", c.PingInterval > 0)
	positive("write timeout", c.WriteTimeout > 0)
	if c.Writers < 0 || c.Writers > MaxWriters {
		errs = append(errs, fmt.Errorf("writers %d: want 1 to %d (0: the default)", c.Writers, MaxWriters))
	}
	if c.WriteDelay < 0 || c.WriteDelay > MaxWriteDelay {
		errs = append(errs, fmt.Errorf("write delay %s: want 0 to %s", c.WriteDelay, MaxWriteDelay))
	}
	if c.PingTimeout <= c.PingInterval {
		errs = append(errs, fmt.Errorf("ping timeout %s must be longer than the ping interval %s", c.PingTimeout, c.PingInterval))
	}
	if _, err := newTokenVerifier(c); err != nil {
		errs = append(errs, err)
	}
	if c.MaxKeysPerSubscribe > c.MaxSubscriptions {
		errs = append(errs, fmt.Errorf("max keys per subscribe %d is above max subscriptions %d", c.MaxKeysPerSubscribe, c.MaxSubscriptions))
	}
	return errors.Join(errs...)
}
