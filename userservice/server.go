package userservice

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// Router is what the connection tier needs of the middle tier.
type Router interface {
	Subscribe(ctx context.Context, s middle.Subscriber, req middle.SubscribeRequest) error
	Unsubscribe(ctx context.Context, s middle.Subscriber, app string, keys []string)
}

// Server accepts WebSocket connections at the handler it serves (GET /ws)
// and owns them until they close.
type Server struct {
	cfg      Config
	log      *slog.Logger
	router   Router
	upgrader websocket.Upgrader
	metrics  *metrics
	tokens   *tokenVerifier // nil: auth off
	// pingFrame is shared by every heartbeat.
	pingFrame *proto.Frame

	nextID   atomic.Uint64
	conns    atomic.Int64
	draining atomic.Bool
	perIP    *perIP
	sessions [sessionShards]sessionShard
	streams  sseRegistry // GET /sse streams (sse.go)
	pool     *writerPool // writes plain TCP connections (writer.go)
}

// sessionShards is how many locks share the session registry; the
// heartbeat also visits one shard at a time.
const sessionShards = 64

type sessionShard struct {
	mu sync.Mutex
	m  map[uint64]*session
}

// NewServer validates cfg and returns a server routing subscriptions to r.
func NewServer(cfg Config, r Router) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("userservice config: %w", err)
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, router: r, pingFrame: proto.NewFrame(proto.OpcodePing, nil), perIP: newPerIP(cfg.MaxConnectionsPerIP)}
	s.upgrader = websocket.Upgrader{
		HandshakeTimeout: cfg.HandshakeTimeout,
		// Commands are small: a small read buffer keeps idle connections
		// cheap (larger frames are still read, in pieces). Writes never use
		// gorilla's buffer (see doc.go), so none is kept per connection.
		ReadBufferSize:  512,
		WriteBufferSize: 512,
		WriteBufferPool: &sync.Pool{},
		CheckOrigin:     s.checkOrigin,
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			s.metrics.rejected.WithLabelValues("handshake").Inc()
			http.Error(w, reason.Error(), status)
		},
	}
	var err error
	if s.tokens, err = newTokenVerifier(cfg); err != nil {
		return nil, fmt.Errorf("userservice config: %w", err)
	}
	for i := range s.sessions {
		s.sessions[i].m = make(map[uint64]*session)
	}
	s.pool = newWriterPool(cfg.Writers, cfg.WriteDelay) // its workers end with Shutdown
	s.metrics = newMetrics(cfg.Registerer, s)
	return s, nil
}

func (s *Server) checkOrigin(r *http.Request) bool {
	if r.Header.Get("Origin") == "" {
		return true
	}
	if s.cfg.CheckOrigin != nil && s.cfg.CheckOrigin(r) {
		return true
	}
	s.cfg.Logger.Debug("browser origin refused", "origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
	return false
}

// ServeHTTP upgrades GET /ws requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.metrics.rejected.WithLabelValues("shutdown").Inc()
		http.Error(w, "server shutting down", http.StatusServiceUnavailable)
		return
	}
	// docs/PROTOCOL.md, "Delivery modes": max_bandwidth.
	bandwidth, err := parseBandwidth(r.URL.Query())
	if err != nil {
		s.metrics.rejected.WithLabelValues("bad_request").Inc()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if status, reason, msg := s.admit(r.RemoteAddr); status != 0 {
		s.metrics.rejected.WithLabelValues(reason).Inc()
		http.Error(w, msg, status)
		return
	}
	tok, authErr := s.authenticate(r)
	ws, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		s.releaseAddr(r.RemoteAddr)
		s.log.Debug("upgrade failed", "remote", r.RemoteAddr, "error", err)
		return
	}
	s.metrics.accepted.Inc()
	// From here on the connection is read and written without gorilla
	// (see readStep and writeLoop); its Conn, with its buffers, is dropped.
	sess := newSession(s, s.nextID.Add(1), ws.NetConn(), tok.apps)
	sess.out.setBandwidth(bandwidth, s.metrics)
	sess.setToken(tok)
	if authErr != nil {
		s.log.Info("connection unauthorized", "conn", sess.id, "remote", r.RemoteAddr, "error", authErr)
		sess.closeWith(proto.CloseUnauthorized, "unauthorized: "+authErr.Error())
	}
	s.add(sess)
	if s.draining.Load() { // Shutdown began between the check above and add
		sess.closeWith(proto.CloseGoingAway, "server shutting down")
	}
	// The handler returns so that net/http's goroutine, with its large
	// stack, ends: the reader starts small, and a writer runs only while
	// there is something to write.
	go sess.readStep()
}

// admit counts a new connection (WebSocket or SSE) from remote against
// --max-connections and --max-connections-per-ip. It returns 0 when the
// connection is admitted (releaseAddr undoes it), else the HTTP status,
// the reason counted in wspush_connections_rejected_total and a message.
func (s *Server) admit(remote string) (status int, reason, msg string) {
	if s.conns.Add(1) > int64(s.cfg.MaxConnections) {
		s.conns.Add(-1)
		s.log.Warn("connection refused: server at its connection limit", "limit", s.cfg.MaxConnections, "remote", remote)
		return http.StatusServiceUnavailable, "max_connections", "too many connections"
	}
	if !s.perIP.acquire(remote) {
		s.conns.Add(-1)
		s.log.Info("connection refused: client address at its connection limit", "limit", s.cfg.MaxConnectionsPerIP, "remote", remote)
		return http.StatusTooManyRequests, "per_ip", "too many connections from this address"
	}
	return 0, "", ""
}

// releaseAddr forgets a connection from remote that admit counted.
func (s *Server) releaseAddr(remote string) {
	s.perIP.release(remote)
	s.conns.Add(-1)
}

// release forgets a session whose connection is over.
func (s *Server) release(sess *session) {
	s.remove(sess)
	s.releaseAddr(sess.conn.RemoteAddr().String())
}

// authenticate checks the client's token (docs/PROTOCOL.md, "Auth").
func (s *Server) authenticate(r *http.Request) (tokenInfo, error) {
	if s.tokens == nil {
		return tokenInfo{}, nil
	}
	token := r.URL.Query().Get("token")
	if token == "" {
		token, _ = strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	}
	if token == "" {
		return tokenInfo{}, errors.New("no token (?token= or Authorization: Bearer)")
	}
	return s.tokens.verify(token)
}

func (s *Server) shard(id uint64) *sessionShard { return &s.sessions[id%uint64(len(s.sessions))] }

func (s *Server) add(sess *session) {
	sh := s.shard(sess.id)
	sh.mu.Lock()
	sh.m[sess.id] = sess
	sh.mu.Unlock()
}

func (s *Server) remove(sess *session) {
	sh := s.shard(sess.id)
	sh.mu.Lock()
	delete(sh.m, sess.id)
	sh.mu.Unlock()
}

// each calls fn for every session, outside the shard locks.
func (s *Server) each(fn func(*session)) {
	for i := range s.sessions {
		for _, sess := range s.sessions[i].list() {
			fn(sess)
		}
	}
}

// list returns the sessions of sh.
func (sh *sessionShard) list() []*session {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	list := make([]*session, 0, len(sh.m))
	for _, sess := range sh.m {
		list = append(list, sess)
	}
	return list
}

func (s *Server) queuedBytes() int64 {
	var n int64
	s.each(func(sess *session) { n += int64(sess.queuedBytes()) })
	s.streams.each(func(st *sseStream) { n += int64(st.queuedBytes()) })
	return n
}

// Connections is the number of open connections (WebSocket and SSE).
func (s *Server) Connections() int { return int(s.conns.Load()) }

// Run sends heartbeats and reaps dead connections until ctx ends. The
// connections are visited one shard per tick, spread over PingInterval, so
// that a node with many connections never pings them all at once: that
// would queue a write to every connection in one burst (a latency spike
// for the data behind it; for TLS connections, a writer goroutine each).
func (s *Server) Run(ctx context.Context) error {
	t := time.NewTicker(max(s.cfg.PingInterval/sessionShards, 1))
	defer t.Stop()
	for next := 0; ; next = (next + 1) % sessionShards {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			s.heartbeat(&s.sessions[next], now)
		}
	}
}

// heartbeat pings every connection of sh and reaps those silent for longer
// than PingTimeout (a pong or any frame counts as a sign of life). It also
// closes with 4003 those whose token expired: as every shard is visited
// once per PingInterval, that close comes at most PingInterval after the
// token's exp (docs/PROTOCOL.md, "Token expiry and refresh"), with no timer
// per connection.
func (s *Server) heartbeat(sh *sessionShard, now time.Time) {
	deadline := now.Add(-s.cfg.PingTimeout).UnixNano()
	for _, sess := range sh.list() {
		if sess.lastRead.Load() < deadline {
			s.log.Info("reaping dead connection", "conn", sess.id, "silent_for", now.Sub(time.Unix(0, sess.lastRead.Load())).Round(time.Second))
			sess.abort(proto.CloseGoingAway)
			continue
		}
		if sess.tokenExpired(now) {
			sess.expire()
			continue
		}
		sess.Enqueue(s.pingFrame)
	}
}

// Drain refuses new connections from now on (503), keeping those open;
// Shutdown closes them.
func (s *Server) Drain() { s.draining.Store(true) }

// Draining reports whether Drain or Shutdown was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// Shutdown stops accepting connections, closes every open one with 1001
// (after what is already queued to it; an SSE stream ends with a close
// event) and waits for them to end, until ctx ends; those still open then
// are dropped. The writer pool's goroutines then end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	defer s.pool.stop() // a connection still coming gets a writer of its own
	s.each(func(sess *session) { sess.closeWith(proto.CloseGoingAway, "server shutting down") })
	s.streams.each(func(st *sseStream) { st.end(proto.CloseGoingAway, "server shutting down") })
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for s.conns.Load() > 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			n := s.conns.Load()
			s.each(func(sess *session) { sess.abort(proto.CloseGoingAway) })
			s.streams.each(func(st *sseStream) { st.abort() })
			for s.conns.Load() > 0 {
				<-t.C
			}
			return fmt.Errorf("shutdown: %d connections dropped: %w", n, ctx.Err())
		}
	}
	return nil
}
