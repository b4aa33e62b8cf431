// Package app wires the tiers of one wspush process: the middle node, the
// connection server, the poller and, in demo mode, the simulated data
// center, behind one HTTP server. It holds no logic of its own beyond
// assembly, routes and shutdown order; cmd/wspush and the end-to-end tests
// of other commands start servers through it.
package app

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	goredis "github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/wspush/wspush/dataservice"
	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/ops"
	"github.com/wspush/wspush/internal/origin"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/middle/amqp"
	"github.com/wspush/wspush/middle/redis"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
	jsclient "github.com/wspush/wspush/userservice/client/js"
)

// The simulated data center of Config.Demo answers for app DemoApp and its
// sensors simulator.SensorID(1)..SensorID(DemoSensors) (s001..s100) only.
const (
	DemoApp     = "demo"
	DemoSensors = 100
)

// Config is the whole configuration of a process.
type Config struct {
	// Demo starts the simulated data center in-process and polls it.
	Demo bool
	// DatacenterURL turns the poller on (ignored with Demo).
	DatacenterURL string
	// APIKey protects POST /api/publish when set; without one the API
	// answers loopback clients only.
	APIKey string
	// ShutdownTimeout bounds the graceful shutdown (default 10s).
	ShutdownTimeout time.Duration
	// DrainDelay is how long a stopping node answers /readyz with 503,
	// still serving its clients, before it closes them: time for a load
	// balancer to stop sending it new ones (default 0).
	DrainDelay time.Duration
	// AdminAddr, when set, serves /metrics and /debug/pprof/ on a listener
	// of their own (keep it private), and /metrics leaves the main one.
	// Empty: /metrics on the main listener, no pprof.
	AdminAddr string
	// HTTPHeaderTimeout bounds reading a request's headers (and the TLS
	// handshake); HTTPIdleTimeout closes a keep-alive connection idle that
	// long; HTTPBodyTimeout bounds reading the body of POST /api/publish.
	// Defaults: DefaultHTTPHeaderTimeout, DefaultHTTPIdleTimeout,
	// DefaultHTTPBodyTimeout.
	HTTPHeaderTimeout time.Duration
	HTTPIdleTimeout   time.Duration
	HTTPBodyTimeout   time.Duration
	// MaxHTTPConnections bounds the plain HTTP connections of the main
	// listener (accepted and not upgraded to WebSocket: idle keep-alive
	// ones, slow requests, handshakes in flight); more are closed as soon
	// as accepted (default DefaultMaxHTTPConnections).
	MaxHTTPConnections int
	// TLSCert and TLSKey (PEM files) serve HTTPS and wss:// on the main
	// listener; the pair is loaded again when either file changes, checked
	// every TLSReloadInterval (default 10s).
	TLSCert, TLSKey   string
	TLSReloadInterval time.Duration
	// AllowedOrigins lists the browser origins allowed to connect and to
	// publish, besides the server's own public URLs; "*" allows any
	// (docs/PROTOCOL.md, "Origins").
	AllowedOrigins []string
	// PublicURLs are the URLs browsers reach this server at
	// (https://push.example); their origins are allowed. Empty: the
	// listener's loopback names (http://localhost:<port>, ...).
	PublicURLs []string
	// Dashboard is served at / when set.
	Dashboard fs.FS

	// NodeID names this node in a cluster (default: host name and a random
	// suffix). It must be unique among the nodes sharing one Redis.
	NodeID string
	// RedisURL puts the sequencer, history, fan-out between nodes,
	// subscription index and leases in Redis, so that seqs are the same on
	// every node; several comma-separated seed URLs mean a Redis Cluster.
	RedisURL string
	// Redis configures the Redis store beyond RedisURL (prefix, history
	// retention, idempotency window).
	Redis redis.StoreConfig
	// AMQPURL consumes integrators' publications from RabbitMQ's
	// partitioned ingest. It needs RedisURL (partition claims).
	AMQPURL string
	// AMQP names the topology (prefix, partitions).
	AMQP amqp.Topology

	Middle middle.Config
	Users  userservice.Config
	Poller dataservice.Config // URL is filled from DatacenterURL or the demo

	Logger *slog.Logger
}

// App is one wspush process.
type App struct {
	cfg    Config
	log    *slog.Logger
	reg    *prometheus.Registry
	node   *middle.Node
	users  *userservice.Server
	poller *dataservice.Poller // nil: no data center
	sim    *simulator.Simulator
	mux    *http.ServeMux
	admin  *http.ServeMux // nil: no --admin-addr
	certs  *certReloader  // nil: no TLS
	ops    *ops.Nodes     // GET /api/nodes
	// adminAddr is the admin listener's address once it listens.
	adminAddr atomic.Value
	// origins is the browser-origin policy, set by Run once the listener's
	// port is known; nil before: browsers are refused.
	origins atomic.Pointer[origin.Policy]

	// Cluster mode; all nil when embedded.
	redis  goredis.UniversalClient
	lease  *redis.Lease
	index  *redis.Index
	amqp   *amqp.Conn
	ingest *amqp.Ingest
	claims *redis.Claims
}

// New validates cfg and builds the tiers; nothing runs until Run.
func New(cfg Config) (*App, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ShutdownTimeout == 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	if err := cfg.httpDefaults(); err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: cfg.Logger, reg: prometheus.NewRegistry()}
	a.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if cfg.TLSCert != "" {
		certs, err := newCertReloader(cfg.TLSCert, cfg.TLSKey, a.reg, a.log.With("tier", "tls"))
		if err != nil {
			return nil, err
		}
		a.certs = certs
	}

	if _, err := origin.New(cfg.AllowedOrigins, cfg.PublicURLs); err != nil {
		return nil, err
	}
	if cfg.AMQPURL != "" && cfg.RedisURL == "" {
		return nil, errors.New("--amqp-url needs --redis-url: the nodes must share one sequencer")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = defaultNodeID()
	} else if err := proto.ValidateName(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("node ID %q: %w", cfg.NodeID, err)
	}
	a.cfg.NodeID = cfg.NodeID

	cfg.Middle.Logger, cfg.Middle.Registerer = a.log.With("tier", "middle"), a.reg
	if err := a.cluster(&cfg); err != nil {
		a.close()
		return nil, err
	}
	node, err := middle.NewNode(cfg.Middle)
	if err != nil {
		a.close()
		return nil, err
	}
	a.node = node
	if a.index != nil {
		a.index.SetSnapshot(node.LocalSubscriptions)
	}
	if a.amqp != nil {
		claims, err := redis.NewClaims(redis.ClaimsConfig{Client: a.redis, NodeID: cfg.NodeID, Prefix: cfg.Redis.Prefix})
		if err != nil {
			a.close()
			return nil, err
		}
		a.claims = claims
		if a.ingest, err = amqp.NewIngest(amqp.IngestConfig{
			Conn: a.amqp, Publisher: node.Source("amqp"), Claims: claims, MaxPayload: cfg.Middle.MaxPayload,
			Logger: a.log.With("tier", "ingest"), Registerer: a.reg,
		}); err != nil {
			a.close()
			return nil, err
		}
	}

	cfg.Users.Logger, cfg.Users.Registerer = a.log.With("tier", "userservice"), a.reg
	cfg.Users.CheckOrigin = a.allowOrigin
	if a.users, err = userservice.NewServer(cfg.Users, node); err != nil {
		return nil, err
	}

	if cfg.Demo {
		// The demo's data center knows the dashboard's app and sensors
		// only, so that other apps carry only what is published to them.
		a.sim = simulator.New(simulator.Config{Apps: []string{DemoApp}, Sensors: DemoSensors})
	}
	if cfg.Demo || cfg.DatacenterURL != "" {
		pc := cfg.Poller
		pc.URL = cfg.DatacenterURL
		if cfg.Demo {
			pc.URL = "http://demo.invalid" // replaced by the listener address in Run
		}
		pc.Logger, pc.Registerer = a.log.With("tier", "dataservice"), a.reg
		if a.redis != nil {
			lease, err := redis.NewLease(redis.LeaseConfig{Client: a.redis, NodeID: cfg.NodeID, Prefix: cfg.Redis.Prefix})
			if err != nil {
				a.close()
				return nil, err
			}
			pc.Lease, a.lease = lease, lease
		}
		if err := pc.Validate(); err != nil {
			return nil, fmt.Errorf("poller config: %w", err)
		}
		a.cfg.Poller = pc
	}
	if err := a.newOps(); err != nil {
		a.close()
		return nil, err
	}
	a.routes()
	return a, nil
}

func (a *App) routes() {
	a.mux = http.NewServeMux()
	a.mux.Handle("GET /ws", a.users)
	a.mux.HandleFunc("GET /sse", a.users.ServeSSE) // docs/PROTOCOL.md, "Server-Sent Events"
	a.mux.Handle("/api/publish", bodyDeadline(a.cfg.HTTPBodyTimeout,
		a.node.PublishHandler(middle.PublishHandlerConfig{APIKey: a.cfg.APIKey, AllowOrigin: a.allowOrigin})))
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.Handle("GET /api/nodes", a.ops) // docs/PROTOCOL.md, "HTTP server"
	a.mux.Handle("GET /client.js", jsclient.ScriptHandler())
	a.mux.Handle("GET /client.d.ts", jsclient.TypesHandler())
	metrics := promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{})
	if a.cfg.AdminAddr == "" {
		a.mux.Handle("GET /metrics", metrics)
	} else {
		a.admin = debugMux()
		a.admin.Handle("GET /metrics", metrics)
		a.admin.HandleFunc("GET /healthz", a.healthz)
		a.admin.HandleFunc("GET /readyz", a.readyz)
		a.admin.Handle("GET /api/nodes", a.ops)
	}
	if a.cfg.Dashboard != nil {
		a.mux.Handle("/", http.FileServerFS(a.cfg.Dashboard))
	}
}

func (a *App) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	_, _ = w.Write([]byte("ok\n"))
}

// readyz answers 503 while the node drains or a service it needs is
// unreachable.
func (a *App) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	if err := a.Ready(); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// allowOrigin applies the origin policy to a browser request.
func (a *App) allowOrigin(r *http.Request) bool {
	p := a.origins.Load()
	return p != nil && p.AllowRequest(r)
}

// Handler is the process's HTTP handler (for tests that bring their own
// server).
func (a *App) Handler() http.Handler { return a.mux }

// AdminAddr is the address the admin listener listens on ("" before Run or
// without --admin-addr).
func (a *App) AdminAddr() string {
	s, _ := a.adminAddr.Load().(string)
	return s
}

// Node is the middle tier (for tests and tools).
func (a *App) Node() *middle.Node { return a.node }

// Users is the connection tier (for tests and tools).
func (a *App) Users() *userservice.Server { return a.users }

// Run serves on ln until ctx ends, then shuts down in order: stop accepting,
// close clients with 1001 after what is queued to them, stop the poller and
// the node.
func (a *App) Run(ctx context.Context, ln net.Listener) error {
	public := a.cfg.PublicURLs
	if len(public) == 0 {
		public = origin.LoopbackURLs(ln.Addr(), a.certs != nil)
	}
	policy, err := origin.New(a.cfg.AllowedOrigins, public)
	if err != nil {
		return err
	}
	a.origins.Store(policy)
	a.log.Info("browser origins allowed", "origins", policy.Origins())
	if a.cfg.APIKey == "" {
		a.log.Info("POST /api/publish answers loopback clients only; set --api-key to publish from elsewhere")
	}
	var adminLn net.Listener
	if a.admin != nil {
		if adminLn, err = net.Listen("tcp", a.cfg.AdminAddr); err != nil {
			return fmt.Errorf("admin listener: %w", err)
		}
	}

	runCtx, stop := context.WithCancel(context.Background())
	defer stop()
	g, gctx := errgroup.WithContext(runCtx)

	if a.sim != nil {
		simLn, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("demo data center: %w", err)
		}
		simSrv := &http.Server{Handler: a.sim, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error { return serve(simSrv, simLn) })
		g.Go(func() error { <-gctx.Done(); return simSrv.Close() })
		a.cfg.Poller.URL = "http://" + simLn.Addr().String()
		a.log.Info("demo data center started", "url", a.cfg.Poller.URL, "app", DemoApp,
			"keys", simulator.SensorID(1)+".."+simulator.SensorID(DemoSensors))
	}
	if a.cfg.Poller.URL != "" {
		p, err := dataservice.New(a.cfg.Poller, a.node, a.node.Source("poller"))
		if err != nil {
			return fmt.Errorf("poller: %w", err)
		}
		a.poller = p
		g.Go(func() error { return p.Run(gctx) })
	}
	if a.amqp != nil {
		g.Go(func() error { return a.amqp.Run(gctx) })
		g.Go(func() error { return a.ingest.Run(gctx) })
	}
	if a.index != nil {
		g.Go(func() error { return a.index.Run(gctx) })
	}
	g.Go(func() error { return a.node.Run(gctx) })
	g.Go(func() error { return a.ops.Run(gctx) }) // after a.poller is set: sampleOps reads it
	g.Go(func() error { return a.users.Run(gctx) })

	// The main listener: plain HTTP connections counted and bounded, then
	// TLS. No ReadTimeout or WriteTimeout: they would stay on the
	// connections the WebSocket upgrade hijacks; the API's body has its
	// own deadline (bodyDeadline), WebSocket connections theirs.
	conns := newHTTPConns(ln, a.cfg.MaxHTTPConnections, a.reg, a.log.With("tier", "http"))
	mainLn := net.Listener(conns)
	scheme := "http"
	if a.certs != nil {
		mainLn, scheme = tls.NewListener(mainLn, a.certs.config()), "https"
		g.Go(func() error { return a.certs.run(gctx, a.cfg.TLSReloadInterval) })
	}
	srv := &http.Server{
		Handler:           a.mux,
		ReadHeaderTimeout: a.cfg.HTTPHeaderTimeout,
		IdleTimeout:       a.cfg.HTTPIdleTimeout,
		ConnState:         conns.track,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	g.Go(func() error { return serve(srv, mainLn) })
	var admin *http.Server
	if adminLn != nil {
		admin = &http.Server{Handler: a.admin, ReadHeaderTimeout: a.cfg.HTTPHeaderTimeout, IdleTimeout: a.cfg.HTTPIdleTimeout,
			ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn)}
		g.Go(func() error { return serve(admin, adminLn) })
		a.adminAddr.Store(adminLn.Addr().String())
		a.log.Info("admin listener: /metrics, /debug/pprof/, /healthz, /readyz, /api/nodes", "addr", adminLn.Addr().String())
	}
	a.log.Info("wspush listening", "addr", ln.Addr().String(), "scheme", scheme,
		"max_http_connections", a.cfg.MaxHTTPConnections, "max_connections_per_ip", a.cfg.Users.MaxConnectionsPerIP)

	failed := false
	select {
	case <-ctx.Done():
	case <-gctx.Done(): // a component failed
		failed = true
	}
	// Draining first: /readyz answers 503 and upgrades are refused while
	// the connected clients are still served, for DrainDelay, so that a
	// load balancer stops sending clients here before they are closed.
	a.users.Drain()
	a.log.Info("draining", "connections", a.users.Connections(), "delay", a.cfg.DrainDelay)
	if !failed && a.cfg.DrainDelay > 0 {
		select {
		case <-time.After(a.cfg.DrainDelay):
		case <-gctx.Done():
		}
	}
	a.log.Info("shutting down", "connections", a.users.Connections())
	sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
	defer cancel()
	// Clients are closed with 1001 while the listener still answers
	// /readyz (503); then it stops, after the requests in flight.
	errs := []error{a.users.Shutdown(sctx), srv.Shutdown(sctx)}
	if admin != nil {
		errs = append(errs, admin.Shutdown(sctx))
	}
	stop()
	errs = append(errs, g.Wait())
	a.close()
	err = errors.Join(errs...)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

func serve(srv *http.Server, ln net.Listener) error {
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", ln.Addr(), err)
	}
	return nil
}

// debugMux serves pprof (and, on the admin listener, /metrics).
func debugMux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}

// cluster builds the Redis and AMQP engines into cfg.Middle when their URLs
// are set.
func (a *App) cluster(cfg *Config) error {
	if cfg.RedisURL == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var err error
	if a.redis, err = redis.NewClient(ctx, cfg.RedisURL, "wspush-"+cfg.NodeID); err != nil {
		return err
	}
	sc := cfg.Redis
	sc.Client = a.redis
	if sc.HistorySize == 0 {
		sc.HistorySize = cfg.Middle.HistorySize
	}
	if sc.HistoryTTL == 0 && cfg.Middle.HistoryTTL > 0 {
		sc.HistoryTTL = cfg.Middle.HistoryTTL
	}
	if sc.IdempotencyWindow == 0 {
		sc.IdempotencyWindow = cfg.Middle.IdempotencyWindow
	}
	if cfg.Middle.Store, err = redis.NewStore(sc); err != nil {
		return err
	}
	if cfg.Middle.Bus, err = redis.NewBus(redis.BusConfig{
		Client: a.redis, Prefix: sc.Prefix, Logger: a.log.With("tier", "bus"), Registerer: a.reg,
	}); err != nil {
		return err
	}
	if a.index, err = redis.NewIndex(redis.IndexConfig{
		Client: a.redis, NodeID: cfg.NodeID, Prefix: sc.Prefix, Logger: a.log.With("tier", "index"), Registerer: a.reg,
	}); err != nil {
		return err
	}
	cfg.Middle.Index = a.index
	if cfg.AMQPURL == "" {
		return nil
	}
	a.amqp, err = amqp.NewConn(amqp.Config{
		URL: cfg.AMQPURL, Name: "wspush " + cfg.NodeID, Topology: cfg.AMQP,
		Logger: a.log.With("tier", "amqp"), Registerer: a.reg,
	})
	return err
}

// Ready reports whether the node can serve: not draining, Redis and
// RabbitMQ reachable when configured.
func (a *App) Ready() error {
	var errs []error
	if a.users.Draining() {
		errs = append(errs, errors.New("draining: the node is shutting down"))
	}
	if a.index != nil {
		if err := a.index.Ready(); err != nil {
			errs = append(errs, fmt.Errorf("redis: %w", err))
		}
	}
	if a.amqp != nil {
		if err := a.amqp.Ready(); err != nil {
			errs = append(errs, fmt.Errorf("amqp: %w", err))
		}
	}
	return errors.Join(errs...)
}

// NodeID is the node's cluster name.
func (a *App) NodeID() string { return a.cfg.NodeID }

func (a *App) close() {
	if a.lease != nil { // let another node take the apps over at once
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := a.lease.ReleaseAll(ctx); err != nil {
			a.log.Warn("releasing poll leases failed; other nodes take over when they expire", "error", err)
		}
		cancel()
	}
	if a.claims != nil { // the other nodes re-balance the partitions at once
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := a.claims.Leave(ctx); err != nil {
			a.log.Warn("leaving the ingest members failed; the other nodes re-balance when this node's heartbeat expires", "error", err)
		}
		cancel()
	}
	if a.redis != nil {
		_ = a.redis.Close()
	}
}

func defaultNodeID() string {
	host, err := os.Hostname()
	if err != nil || proto.ValidateName(host) != nil {
		host = "node"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	id := fmt.Sprintf("%s-%x", host, b)
	if len(id) > proto.MaxNameLen {
		id = id[len(id)-proto.MaxNameLen:]
	}
	return id
}
