// Package ops owns the operator endpoint, GET /api/nodes (docs/PROTOCOL.md,
// "HTTP server"): a sampler that reads the counters of a node's components
// every few seconds, turns them into rates over a sliding window, and, on a
// cluster, shares the resulting snapshot with the other nodes through a
// Store (redis.NodeStats) and reads theirs. It reads components only through
// the Sample function the app gives it, never Prometheus, and serves only
// what the last sample holds, so that a request costs no Redis round trip.
package ops

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// Defaults of Config.
const (
	DefaultInterval = 2 * time.Second
	DefaultWindow   = 10 * time.Second
	DefaultMaxAge   = time.Minute
	DefaultTimeout  = 2 * time.Second
)

// MaxNodes bounds the nodes one response lists, this one included.
const MaxNodes = 1000

// Counters is one reading of a node's components: gauges now, counters
// since the component was created.
type Counters struct {
	Connections   int
	Subscriptions int
	Keys          int
	Publications  uint64
	Deliveries    uint64
	// SlowClosed counts the connections closed with 4008 (slow consumers).
	SlowClosed uint64
	// Poller is nil when the node polls no data center.
	Poller *PollerCounters
}

// PollerCounters is a reading of the poller (dataservice.Health).
type PollerCounters struct {
	Healthy     bool
	IDs         int
	LastSuccess time.Time // zero: none yet
	Errors      uint64
}

// Store shares the nodes' snapshots: redis.NodeStats on a cluster.
type Store interface {
	// Put writes this node's snapshot.
	Put(ctx context.Context, snapshot []byte) error
	// All returns every node's snapshot by node ID.
	All(ctx context.Context) (map[string]string, error)
	// Prune deletes the given entries (as All returned them) unless
	// rewritten since.
	Prune(ctx context.Context, stale map[string]string) (int, error)
	// Remove deletes this node's snapshot.
	Remove(ctx context.Context) error
}

// Config configures Nodes. The zero value of every field but NodeID and
// Sample means its default.
type Config struct {
	// NodeID names this node. Required.
	NodeID string
	// Started is when the node started (default: when New runs).
	Started time.Time
	// Sample reads the node's components; it is called once per Interval
	// from Run's goroutine only. Required.
	Sample func() Counters
	// Store, when set, shares the snapshots of a cluster's nodes. Nil: the
	// endpoint lists this node only.
	Store Store
	// Interval is how often Run samples and exchanges snapshots (default
	// 2s).
	Interval time.Duration
	// Window is the span rates are computed over, and how recent another
	// node's snapshot must be for it to be listed (default 10s).
	Window time.Duration
	// MaxAge is the age beyond which a snapshot is deleted from the Store
	// (default 1m).
	MaxAge time.Duration
	// Timeout bounds one Store call (default 2s).
	Timeout time.Duration
	// Logger receives a line when the Store starts failing, at most one a
	// minute while it fails, and one when it answers again. Nil discards.
	Logger *slog.Logger
	// Registerer receives wspush_node_snapshot_errors_total when Store is
	// set; nil does not register it.
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() Config {
	if c.Started.IsZero() {
		c.Started = time.Now()
	}
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if err := proto.ValidateName(c.NodeID); err != nil {
		return fmt.Errorf("ops: node ID %q: %w", c.NodeID, err)
	}
	if c.Sample == nil {
		return errors.New("ops: Sample is required")
	}
	if c.Interval < 0 || c.Window < 0 || c.MaxAge < 0 || c.Timeout < 0 {
		return errors.New("ops: durations must be positive")
	}
	d := c.withDefaults()
	if d.Window < d.Interval || d.MaxAge < d.Window {
		return fmt.Errorf("ops: want interval (%s) <= window (%s) <= max age (%s)", d.Interval, d.Window, d.MaxAge)
	}
	return nil
}

// Node is one node's entry of GET /api/nodes, and the snapshot a node
// writes to the Store.
type Node struct {
	ID            string    `json:"id"`
	Started       time.Time `json:"started"`
	Updated       time.Time `json:"updated"`
	Connections   int       `json:"connections"`
	Subscriptions int       `json:"subscriptions"`
	Keys          int       `json:"keys"`
	// Rates are per second over the last Window.
	PublicationsPerS float64 `json:"publications_per_s"`
	DeliveriesPerS   float64 `json:"deliveries_per_s"`
	DroppedPerS      float64 `json:"dropped_connections_per_s"`
	Poller           Poller  `json:"poller"`
}

// Poller is the poller's health in a Node.
type Poller struct {
	Enabled     bool       `json:"enabled"`
	Healthy     bool       `json:"healthy"`
	IDs         int        `json:"ids"`
	LastSuccess *time.Time `json:"last_success"` // null: no successful poll yet
	ErrorsPerS  float64    `json:"errors_per_s"`
}

// Response is the body of GET /api/nodes.
type Response struct {
	Self  string `json:"self"`
	Nodes []Node `json:"nodes"`
	// Error is set while the Store fails: the other nodes are those of the
	// last successful read still within the window.
	Error string `json:"error,omitempty"`
}

// errStoreFailed is what a response says while the Store fails; the cause
// (addresses, Redis replies) goes to the log only.
const errStoreFailed = "the other nodes' snapshots could not be read from Redis; showing those read last"

// sample is one reading of the Counters.
type sample struct {
	at time.Time
	c  Counters
}

// Nodes samples this node and serves GET /api/nodes.
type Nodes struct {
	cfg  Config
	log  *slog.Logger
	errs prometheus.Counter
	now  func() time.Time

	// Owned by Run's goroutine.
	ring         []sample // oldest first, at most Window/Interval+1
	failures     int      // consecutive failed Store exchanges
	failingSince time.Time
	lastWarn     time.Time

	mu       sync.Mutex
	self     Node
	others   []Node // the Store's other nodes of the last good read, by ID
	storeErr bool
}

// New validates cfg and returns the sampler; Run starts it.
func New(cfg Config) (*Nodes, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Nodes{
		cfg: cfg, log: cfg.Logger, now: time.Now,
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_node_snapshot_errors_total",
			Help: "Failed exchanges of this node's operator snapshot (GET /api/nodes) with Redis: the write or the read of the other nodes'.",
		}),
	}
	if cfg.Registerer != nil && cfg.Store != nil {
		if err := cfg.Registerer.Register(n.errs); err != nil {
			return nil, fmt.Errorf("ops: register metrics: %w", err)
		}
	}
	started := utcMillis(cfg.Started)
	n.self = Node{ID: cfg.NodeID, Started: started, Updated: started}
	return n, nil
}

// Run samples every Interval, the first time at once, until ctx ends; on a
// cluster it then removes this node's snapshot from the Store, so that the
// other nodes stop listing it at once (a node that dies is dropped after
// Window instead). It returns nil.
func (n *Nodes) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Interval)
	defer t.Stop()
	for {
		n.tick(ctx)
		select {
		case <-ctx.Done():
			n.remove()
			return nil
		case <-t.C:
		}
	}
}

func (n *Nodes) remove() {
	if n.cfg.Store == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.Timeout)
	defer cancel()
	if err := n.cfg.Store.Remove(ctx); err != nil {
		n.errs.Inc()
		n.log.Warn("operator snapshot: cannot remove this node's from Redis; the other nodes drop it after the window",
			"window", n.cfg.Window, "error", err)
	}
}

// tick takes a sample, updates this node's entry and exchanges snapshots.
func (n *Nodes) tick(ctx context.Context) {
	s := sample{at: n.now(), c: n.cfg.Sample()}
	n.ring = append(n.ring, s)
	if size := int(n.cfg.Window/n.cfg.Interval) + 1; len(n.ring) > size {
		n.ring = slices.Delete(n.ring, 0, len(n.ring)-size)
	}
	self := n.snapshot()
	n.mu.Lock()
	n.self = self
	n.mu.Unlock()
	if n.cfg.Store == nil || ctx.Err() != nil {
		return
	}
	others, err := n.exchange(ctx, self)
	switch {
	case err != nil && ctx.Err() != nil:
		return // stopping: not a Redis failure
	case err != nil:
		n.storeFailed(err)
	default:
		n.storeOK()
	}
	n.mu.Lock()
	n.storeErr = err != nil
	if err == nil {
		n.others = others
	}
	n.mu.Unlock()
}

// snapshot is this node's entry from the ring: counts of the newest sample,
// rates between the oldest and the newest.
func (n *Nodes) snapshot() Node {
	old, cur := n.ring[0], n.ring[len(n.ring)-1]
	dt := cur.at.Sub(old.at).Seconds()
	c := cur.c
	node := Node{
		ID:               n.cfg.NodeID,
		Started:          utcMillis(n.cfg.Started),
		Updated:          utcMillis(cur.at),
		Connections:      c.Connections,
		Subscriptions:    c.Subscriptions,
		Keys:             c.Keys,
		PublicationsPerS: rate(c.Publications, old.c.Publications, dt),
		DeliveriesPerS:   rate(c.Deliveries, old.c.Deliveries, dt),
		DroppedPerS:      rate(c.SlowClosed, old.c.SlowClosed, dt),
	}
	if p := c.Poller; p != nil {
		node.Poller = Poller{Enabled: true, Healthy: p.Healthy, IDs: p.IDs}
		if !p.LastSuccess.IsZero() {
			t := utcMillis(p.LastSuccess)
			node.Poller.LastSuccess = &t
		}
		if op := old.c.Poller; op != nil {
			node.Poller.ErrorsPerS = rate(p.Errors, op.Errors, dt)
		}
	}
	return node
}

// rate is the per-second increase from old to cur over dt seconds, to two
// decimals.
func rate(cur, old uint64, dt float64) float64 {
	if dt <= 0 || cur <= old {
		return 0
	}
	return math.Round(float64(cur-old)/dt*100) / 100
}

func utcMillis(t time.Time) time.Time { return t.UTC().Truncate(time.Millisecond) }

// exchange writes self to the Store, reads every node's snapshot, deletes
// those older than MaxAge, and returns the others updated within Window,
// sorted by ID.
func (n *Nodes) exchange(ctx context.Context, self Node) ([]Node, error) {
	b, err := json.Marshal(self)
	if err != nil {
		return nil, fmt.Errorf("encode snapshot: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout)
	defer cancel()
	if err := n.cfg.Store.Put(ctx, b); err != nil {
		return nil, err
	}
	all, err := n.cfg.Store.All(ctx)
	if err != nil {
		return nil, err
	}
	now := n.now()
	var others []Node
	stale := make(map[string]string)
	for id, v := range all {
		if id == n.cfg.NodeID {
			continue
		}
		var node Node
		// An entry that does not decode (another release's format) is
		// skipped, not deleted: its node keeps rewriting it.
		if json.Unmarshal([]byte(v), &node) != nil || node.ID != id {
			continue
		}
		switch age := now.Sub(node.Updated); {
		case age > n.cfg.MaxAge:
			stale[id] = v
		case age <= n.cfg.Window:
			others = append(others, node)
		}
	}
	if len(stale) > 0 {
		if _, err := n.cfg.Store.Prune(ctx, stale); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(others, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return others, nil
}

// storeFailed counts a failed exchange and logs the first of a series, then
// at most one a minute.
func (n *Nodes) storeFailed(err error) {
	n.errs.Inc()
	now := n.now()
	n.failures++
	switch {
	case n.failures == 1:
		n.failingSince, n.lastWarn = now, now
		n.log.Warn("operator snapshot: Redis exchange failed; GET /api/nodes shows the other nodes as last read", "error", err)
	case now.Sub(n.lastWarn) >= time.Minute:
		n.lastWarn = now
		n.log.Warn("operator snapshot: Redis exchange still failing", "failures", n.failures,
			"since", n.failingSince.Round(time.Second), "error", err)
	}
}

func (n *Nodes) storeOK() {
	if n.failures > 0 {
		n.log.Info("operator snapshot: Redis exchange works again", "failures", n.failures,
			"down_for", n.now().Sub(n.failingSince).Round(time.Millisecond))
		n.failures = 0
	}
}

// Response returns what GET /api/nodes answers now: this node and the other
// nodes of the last exchange still within Window, sorted by ID.
func (n *Nodes) Response() Response {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	r := Response{Self: n.cfg.NodeID, Nodes: make([]Node, 0, len(n.others)+1)}
	r.Nodes = append(r.Nodes, n.self)
	for _, o := range n.others {
		if len(r.Nodes) == MaxNodes {
			break
		}
		if now.Sub(o.Updated) <= n.cfg.Window {
			r.Nodes = append(r.Nodes, o)
		}
	}
	slices.SortFunc(r.Nodes, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	if n.storeErr {
		r.Error = errStoreFailed
	}
	return r
}

// ServeHTTP answers GET /api/nodes with Response as JSON, never cached.
func (n *Nodes) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	b, err := json.Marshal(n.Response())
	if err != nil {
		http.Error(w, "encoding the nodes failed", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(append(b, '\n'))
}
