package app

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the HTTP server (docs/PROTOCOL.md, "HTTP connections").
const (
	DefaultHTTPHeaderTimeout  = 10 * time.Second
	DefaultHTTPIdleTimeout    = 60 * time.Second
	DefaultHTTPBodyTimeout    = 30 * time.Second
	DefaultMaxHTTPConnections = 10000
)

// httpConns bounds the plain HTTP connections of a listener: those
// accepted and not yet upgraded to WebSocket, idle keep-alive ones and
// slow requests included. Accept counts a connection; the server's
// ConnState hook (track) forgets it when it closes or is hijacked by the
// WebSocket upgrade (the connection tier counts it from then on). A
// connection beyond the limit is closed at once, before net/http spends a
// goroutine on it.
type httpConns struct {
	net.Listener
	limit    int64
	open     atomic.Int64
	rejected prometheus.Counter
	log      *slog.Logger
	lastWarn atomic.Int64 // unix nanos of the last refusal logged
	refused  atomic.Int64 // refusals since that log line
}

func newHTTPConns(ln net.Listener, limit int, reg prometheus.Registerer, log *slog.Logger) *httpConns {
	c := &httpConns{Listener: ln, limit: int64(limit), log: log}
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspush_http_connections_rejected_total",
		Help: "Plain HTTP connections closed as soon as accepted, by reason (max_http_connections: --max-http-connections not-yet-upgraded connections were open).",
	}, []string{"reason"})
	c.rejected = rejected.WithLabelValues("max_http_connections")
	reg.MustRegister(rejected, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "wspush_http_connections",
		Help: "Open plain HTTP connections: accepted and not (yet) upgraded to WebSocket, idle keep-alive ones included.",
	}, func() float64 { return float64(c.open.Load()) }))
	return c
}

// Accept returns the next connection within the limit; those beyond it are
// closed.
func (c *httpConns) Accept() (net.Conn, error) {
	for {
		conn, err := c.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c.open.Add(1) <= c.limit {
			return conn, nil
		}
		c.open.Add(-1)
		_ = conn.Close()
		c.rejected.Inc()
		c.warn()
	}
}

// warn logs refusals at most once every 10 seconds, with their count.
func (c *httpConns) warn() {
	n := c.refused.Add(1)
	now := time.Now().UnixNano()
	last := c.lastWarn.Load()
	if now-last < int64(10*time.Second) || !c.lastWarn.CompareAndSwap(last, now) {
		return
	}
	c.refused.Add(-n)
	c.log.Warn("plain HTTP connections refused: --max-http-connections connections not upgraded to WebSocket are open (idle keep-alive, slow requests or handshakes in flight)",
		"limit", c.limit, "refused", n)
}

// track is the server's ConnState hook.
func (c *httpConns) track(_ net.Conn, state http.ConnState) {
	if state == http.StateHijacked || state == http.StateClosed {
		c.open.Add(-1)
	}
}

// bodyDeadline gives a request's body timeout to read in full: a client
// that sends its body slowly (or stops) gets an error and its connection
// is closed, instead of holding it. The deadline is lifted once the body
// is read to its end, so that the handler's own work is not cut short
// (net/http cancels a request's context when a read of its connection
// fails). Only for handlers that never hijack the connection.
func bodyDeadline(timeout time.Duration, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		if err := rc.SetReadDeadline(time.Now().Add(timeout)); err == nil && r.Body != nil && r.Body != http.NoBody {
			r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
		}
		h.ServeHTTP(w, r)
	})
}

type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// httpDefaults fills the HTTP server's zero fields and checks them.
func (c *Config) httpDefaults() error {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&c.HTTPHeaderTimeout, DefaultHTTPHeaderTimeout},
		{&c.HTTPIdleTimeout, DefaultHTTPIdleTimeout},
		{&c.HTTPBodyTimeout, DefaultHTTPBodyTimeout},
		{&c.TLSReloadInterval, DefaultTLSReloadInterval},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.MaxHTTPConnections == 0 {
		c.MaxHTTPConnections = DefaultMaxHTTPConnections
	}
	var errs []error
	if c.HTTPHeaderTimeout < 0 || c.HTTPIdleTimeout < 0 || c.HTTPBodyTimeout < 0 || c.TLSReloadInterval < 0 || c.DrainDelay < 0 {
		errs = append(errs, errors.New("HTTP timeouts, the TLS reload interval and the drain delay must not be negative"))
	}
	if c.MaxHTTPConnections < 0 {
		errs = append(errs, fmt.Errorf("max HTTP connections %d must be positive", c.MaxHTTPConnections))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together"))
	}
	return errors.Join(errs...)
}
