package redis

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/dataservice"
	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/proto"
)

func newIdxLease(t testing.TB, c goredis.UniversalClient, prefix, node string, ttl time.Duration) *Lease {
	t.Helper()
	l, err := NewLease(LeaseConfig{Client: c, NodeID: node, Prefix: prefix, TTL: ttl})
	if err != nil {
		t.Fatalf("NewLease: %v", err)
	}
	return l
}

func leaseAcquire(t testing.TB, l *Lease, app string) bool {
	t.Helper()
	held, err := l.Acquire(context.Background(), app)
	if err != nil {
		t.Fatalf("Acquire %s: %v", app, err)
	}
	return held
}

func TestLeaseOneHolder(t *testing.T) {
	c1, c2 := newTestClient(t), newTestClient(t)
	prefix := testPrefix(t, c1)
	a := newIdxLease(t, c1, prefix, "node-a", time.Minute)
	b := newIdxLease(t, c2, prefix, "node-b", time.Minute)
	if !leaseAcquire(t, a, "app") {
		t.Fatal("node a could not take a free lease")
	}
	if leaseAcquire(t, b, "app") {
		t.Fatal("node b took the lease node a holds")
	}
	if !leaseAcquire(t, a, "app") {
		t.Fatal("node a could not renew its lease")
	}
	if !leaseAcquire(t, b, "other") {
		t.Fatal("node b could not take the free lease of another app")
	}
	if v := c1.Get(context.Background(), newKeys(prefix).poll("app")).Val(); v != "node-a" {
		t.Errorf("lease value %q, want node-a", v)
	}
	if ttl := c1.PTTL(context.Background(), newKeys(prefix).poll("app")).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("lease TTL %s, want (0, 1m]", ttl)
	}
}

// TestLeaseRacers: of many nodes asking at once, exactly one wins.
func TestLeaseRacers(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	const n = 16
	wins := make(chan string, n)
	done := make(chan struct{})
	for i := range n {
		l := newIdxLease(t, c, prefix, fmt.Sprintf("node-%d", i), time.Minute)
		go func() {
			defer func() { done <- struct{}{} }()
			held, err := l.Acquire(context.Background(), "app")
			if err != nil {
				t.Error(err)
				return
			}
			if held {
				wins <- fmt.Sprintf("node-%d", i)
			}
		}()
	}
	for range n {
		<-done
	}
	close(wins)
	var winners []string
	for w := range wins {
		winners = append(winners, w)
	}
	if len(winners) != 1 {
		t.Errorf("winners %v, want exactly one", winners)
	}
}

// TestLeaseTakeover: a holder that stops renewing loses the app to
// another node within the TTL.
func TestLeaseTakeover(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	const ttl = 300 * time.Millisecond
	a := newIdxLease(t, c, prefix, "node-a", ttl)
	b := newIdxLease(t, c, prefix, "node-b", ttl)
	if !leaseAcquire(t, a, "app") {
		t.Fatal("node a could not take a free lease")
	}
	if leaseAcquire(t, b, "app") {
		t.Fatal("node b took a held lease")
	}
	// Node a stops renewing; node b keeps asking, as its poller would.
	testutil.Eventually(t, ttl+500*time.Millisecond, 10*time.Millisecond, func() error {
		if !leaseAcquire(t, b, "app") {
			return fmt.Errorf("node b still does not hold the lease")
		}
		return nil
	})
	if leaseAcquire(t, a, "app") {
		t.Error("node a still holds the lease node b took over")
	}
}

func TestLeaseRelease(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := newIdxLease(t, c, prefix, "node-a", time.Minute)
	b := newIdxLease(t, c, prefix, "node-b", time.Minute)
	for _, app := range []string{"x", "y"} {
		if !leaseAcquire(t, a, app) {
			t.Fatalf("node a could not take %s", app)
		}
	}
	if !leaseAcquire(t, b, "z") {
		t.Fatal("node b could not take z")
	}
	// Releasing what another node holds does nothing.
	if err := a.Release(context.Background(), "z"); err != nil {
		t.Fatal(err)
	}
	if leaseAcquire(t, a, "z") {
		t.Error("node a's Release of z freed node b's lease")
	}
	if err := a.ReleaseAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"x", "y"} {
		if !leaseAcquire(t, b, app) {
			t.Errorf("node b could not take %s after node a released everything", app)
		}
	}
}

func TestLeaseConfigValidate(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, cfg := range []LeaseConfig{
		{NodeID: "n"},
		{Client: c},
		{Client: c, NodeID: "a:b"},
		{Client: c, NodeID: "n", TTL: -time.Second},
		{Client: c, NodeID: "n", TTL: time.Microsecond},
	} {
		if _, err := NewLease(cfg); err == nil {
			t.Errorf("NewLease accepted %+v", cfg)
		}
	}
}

// idxCountingPublisher counts what a poller publishes.
type idxCountingPublisher struct{ n chan int }

func (p idxCountingPublisher) Publish(_ context.Context, pubs []proto.Publication) ([]uint64, error) {
	p.n <- len(pubs)
	return make([]uint64, len(pubs)), nil
}

// TestLeasePollers: two nodes' pollers share one data center; only
// the lease holder asks it.
func TestLeasePollers(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	sim := simulator.New(simulator.Config{})
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)

	subs := idxStaticSubs{"demo": {"s001", "s002"}}
	pub := idxCountingPublisher{n: make(chan int, 100)}
	var pollers []*dataservice.Poller
	for _, node := range []string{"node-a", "node-b"} {
		p, err := dataservice.New(dataservice.Config{URL: srv.URL, Lease: newIdxLease(t, c, prefix, node, time.Minute)}, subs, pub)
		if err != nil {
			t.Fatal(err)
		}
		pollers = append(pollers, p)
	}
	for range 3 {
		for _, p := range pollers {
			if err := p.PollOnce(context.Background()); err != nil {
				t.Fatalf("PollOnce: %v", err)
			}
		}
	}
	if n := sim.Requests(); n != 3 {
		t.Errorf("data center got %d requests in 3 rounds of 2 nodes, want 3", n)
	}
}

// idxStaticSubs is a fixed dataservice.Subscriptions.
type idxStaticSubs map[string][]string

func (s idxStaticSubs) Apps(context.Context) ([]string, error) {
	var apps []string
	for app := range s {
		apps = append(apps, app)
	}
	return apps, nil
}

func (s idxStaticSubs) Keys(_ context.Context, app string) ([]string, error) {
	return append([]string(nil), s[app]...), nil
}
