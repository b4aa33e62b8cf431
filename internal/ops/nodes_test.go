package ops

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/middle/redis"
)

// counters is a Sample the test sets.
type counters struct {
	mu sync.Mutex
	c  Counters
}

func (c *counters) set(f func(*Counters)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(&c.c)
}

func (c *counters) sample() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.c
	if c.c.Poller != nil {
		p := *c.c.Poller
		out.Poller = &p
	}
	return out
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestNodes(t *testing.T, cfg Config, src *counters, clk *clock) *Nodes {
	t.Helper()
	cfg.Sample = src.sample
	if cfg.NodeID == "" {
		cfg.NodeID = "node-a"
	}
	cfg.Started = clk.now()
	n, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	n.now = clk.now
	return n
}

func TestNodesRatesOverTheWindow(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)}
	src := &counters{}
	n := newTestNodes(t, Config{}, src, clk)
	ctx := context.Background()

	n.tick(ctx)
	self := n.Response().Nodes[0]
	if self.PublicationsPerS != 0 || self.Poller.Enabled || self.Poller.LastSuccess != nil {
		t.Fatalf("first sample: %+v, want no rates, poller disabled", self)
	}
	// 10 publications and 40 deliveries every 2s for 12s: the window holds
	// 6 samples, 10s, and the rates are exact.
	last := time.Date(2026, 12, 2, 3, 0, 1, 500e6, time.UTC)
	for range 6 {
		clk.advance(2 * time.Second)
		src.set(func(c *Counters) {
			c.Connections, c.Subscriptions, c.Keys = 3, 7, 5
			c.Publications += 10
			c.Deliveries += 40
			c.Poller = &PollerCounters{Healthy: true, IDs: 5, LastSuccess: last}
		})
		n.tick(ctx)
	}
	r := n.Response()
	if r.Self != "node-a" || len(r.Nodes) != 1 || r.Error != "" {
		t.Fatalf("response %+v, want node-a alone", r)
	}
	self = r.Nodes[0]
	if self.Connections != 3 || self.Subscriptions != 7 || self.Keys != 5 ||
		self.PublicationsPerS != 5 || self.DeliveriesPerS != 20 || self.DroppedPerS != 0 {
		t.Fatalf("self %+v, want 3 connections, 7 subscriptions, 5 keys, 5 publications/s, 20 deliveries/s", self)
	}
	if p := self.Poller; !p.Enabled || !p.Healthy || p.IDs != 5 || p.LastSuccess == nil || !p.LastSuccess.Equal(last) || p.ErrorsPerS != 0 {
		t.Fatalf("poller %+v", p)
	}
	if want := clk.now(); !self.Updated.Equal(want) || !self.Started.Equal(want.Add(-12*time.Second)) {
		t.Fatalf("updated %s, started %s", self.Updated, self.Started)
	}

	// Quiet for a whole window: the rates fall to 0; a slow consumer and
	// poller errors show.
	for range 5 {
		clk.advance(2 * time.Second)
		n.tick(ctx)
	}
	src.set(func(c *Counters) { c.SlowClosed += 4; c.Poller.Errors += 2; c.Poller.Healthy = false })
	clk.advance(2 * time.Second)
	n.tick(ctx)
	self = n.Response().Nodes[0]
	if self.PublicationsPerS != 0 || self.DeliveriesPerS != 0 || self.DroppedPerS != 0.4 ||
		self.Poller.ErrorsPerS != 0.2 || self.Poller.Healthy {
		t.Fatalf("after a quiet window: %+v", self)
	}
}

func TestNodesHandler(t *testing.T) {
	clk := &clock{t: time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC)}
	n := newTestNodes(t, Config{}, &counters{}, clk)
	n.tick(context.Background())
	rec := httptest.NewRecorder()
	n.ServeHTTP(rec, httptest.NewRequest("GET", "/api/nodes", nil))
	if rec.Code != 200 || rec.Header().Get("Cache-Control") != "no-store" || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%d %v", rec.Code, rec.Header())
	}
	var body map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	node := body["nodes"].([]any)[0].(map[string]any)
	for _, k := range []string{"id", "started", "updated", "connections", "subscriptions", "keys",
		"publications_per_s", "deliveries_per_s", "dropped_connections_per_s", "poller"} {
		if _, ok := node[k]; !ok {
			t.Errorf("field %q missing: %s", k, rec.Body)
		}
	}
	poller := node["poller"].(map[string]any)
	for _, k := range []string{"enabled", "healthy", "ids", "last_success", "errors_per_s"} {
		if _, ok := poller[k]; !ok {
			t.Errorf("poller field %q missing: %s", k, rec.Body)
		}
	}
	if node["updated"] != "2026-12-02T03:00:00Z" {
		t.Errorf("updated %v, want UTC RFC 3339", node["updated"])
	}
}

// TestNodesStoreDown runs against a Redis that does not answer: the
// endpoint still shows this node, says the others could not be read,
// counts each failure and logs the first only.
func TestNodesStoreDown(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer c.Close()
	store, err := redis.NewNodeStats(redis.NodeStatsConfig{Client: c, NodeID: "node-a", Prefix: "t-ops-down"})
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	var log testutil.SyncBuffer
	reg := prometheus.NewRegistry()
	n := newTestNodes(t, Config{Store: store, Registerer: reg, Logger: slog.New(slog.NewTextHandler(&log, nil))}, &counters{}, clk)
	for range 3 {
		n.tick(context.Background())
		clk.advance(2 * time.Second)
	}
	r := n.Response()
	if len(r.Nodes) != 1 || r.Nodes[0].ID != "node-a" || r.Error == "" || strings.Contains(r.Error, "127.0.0.1") {
		t.Fatalf("response %+v, want this node and an error without the address", r)
	}
	if v, _ := testutil.Metric(t, reg, "wspush_node_snapshot_errors_total"); v != 3 {
		t.Errorf("wspush_node_snapshot_errors_total = %v, want 3", v)
	}
	if got := strings.Count(log.String(), "Redis exchange"); got != 1 {
		t.Errorf("%d log lines, want 1 (the first failure):\n%s", got, log.String())
	}
	clk.advance(time.Minute)
	n.tick(context.Background())
	if got := strings.Count(log.String(), "still failing"); got != 1 {
		t.Errorf("after a minute: %d 'still failing' lines, want 1:\n%s", got, log.String())
	}
}

func TestNodesConfig(t *testing.T) {
	sample := func() Counters { return Counters{} }
	for _, cfg := range []Config{
		{Sample: sample},
		{NodeID: "a"},
		{NodeID: "a", Sample: sample, Window: time.Second},
		{NodeID: "a", Sample: sample, MaxAge: 5 * time.Second},
		{NodeID: "a", Sample: sample, Interval: -1},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}
