package redis

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// busHarness runs a Bus and records what it delivers.
type busHarness struct {
	t      *testing.T
	bus    *Bus
	pub    goredis.UniversalClient // the test's own client, to SPUBLISH with
	keys   keys
	prefix string
	reg    *prometheus.Registry
	epoch  string

	got        chan proto.Publication
	resyncs    atomic.Int32
	concurrent atomic.Bool // deliver was called while another call ran
	inDeliver  atomic.Int32

	cancel context.CancelFunc
	done   chan error
}

// newBusHarness returns a Bus on client (Run not started yet) with a
// prefix of its own; pub publishes raw fan-out messages.
func newBusHarness(t *testing.T, client, pub goredis.UniversalClient) *busHarness {
	t.Helper()
	h := &busHarness{
		t: t, pub: pub, prefix: testPrefix(t, pub), reg: prometheus.NewRegistry(),
		epoch: proto.NewEpoch(), got: make(chan proto.Publication, 10000),
	}
	h.keys = newKeys(h.prefix)
	var err error
	h.bus, err = NewBus(BusConfig{Client: client, Prefix: h.prefix, PingInterval: 200 * time.Millisecond, Registerer: h.reg})
	if err != nil {
		t.Fatalf("NewBus: %v", err)
	}
	return h
}

// startBusHarness is newBusHarness on one client with Run started.
func startBusHarness(t *testing.T, client goredis.UniversalClient) *busHarness {
	t.Helper()
	h := newBusHarness(t, client, client)
	h.run()
	return h
}

// run starts Run; it is stopped when the test ends.
func (h *busHarness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() {
		h.done <- h.bus.Run(ctx, func(p *proto.Publication) {
			if h.inDeliver.Add(1) > 1 {
				h.concurrent.Store(true)
			}
			h.got <- *p
			h.inDeliver.Add(-1)
		}, func() { h.resyncs.Add(1) })
	}()
	h.t.Cleanup(func() {
		if err := h.stop(); err != nil {
			h.t.Errorf("Run: %v", err)
		}
		if h.concurrent.Load() {
			h.t.Error("deliver was called concurrently")
		}
	})
}

// stop ends Run and returns its error; it fails the test when Run does not
// return promptly.
func (h *busHarness) stop() error {
	h.cancel()
	select {
	case err := <-h.done:
		h.done <- err // for a second stop
		return err
	case <-time.After(5 * time.Second):
		h.t.Fatal("Run did not return after its context ended")
		return nil
	}
}

func (h *busHarness) watch(app, key string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.bus.Watch(ctx, app, key); err != nil {
		h.t.Fatalf("Watch %s.%s: %v", app, key, err)
	}
}

// message is the fan-out message of seq of (app, key) in h's epoch.
func (h *busHarness) message(seq uint64) string {
	return fmt.Sprintf("%d:%s:%d:1:{\"seq\":%d}", seq, h.epoch, 1000+seq, seq)
}

// publish SPUBLISHes raw messages on (app, key)'s channel, in order.
func (h *busHarness) publish(app, key string, msgs ...string) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ch := h.keys.pub(app, key)
	for _, m := range msgs {
		if err := h.pub.SPublish(ctx, ch, m).Err(); err != nil {
			h.t.Fatalf("SPUBLISH %s: %v", ch, err)
		}
	}
}

// publishSeqs publishes seqs of (app, key) in h's epoch.
func (h *busHarness) publishSeqs(app, key string, seqs ...uint64) {
	h.t.Helper()
	msgs := make([]string, len(seqs))
	for i, s := range seqs {
		msgs[i] = h.message(s)
	}
	h.publish(app, key, msgs...)
}

// next returns the next delivered publication.
func (h *busHarness) next() proto.Publication {
	h.t.Helper()
	select {
	case p := <-h.got:
		return p
	case <-time.After(5 * time.Second):
		h.t.Fatal("no publication delivered within 5s")
		return proto.Publication{}
	}
}

// expect checks that the next deliveries are exactly want, as "key/seq".
func (h *busHarness) expect(want ...string) {
	h.t.Helper()
	for i, w := range want {
		p := h.next()
		if got := p.Key + "/" + strconv.FormatUint(p.Seq, 10); got != w {
			h.t.Fatalf("delivery %d: %s, want %s", i, got, w)
		}
		if p.Epoch != h.epoch || p.TS != int64(1000+p.Seq) || !p.JSON || string(p.Data) != fmt.Sprintf(`{"seq":%d}`, p.Seq) {
			h.t.Fatalf("delivery %d: %+v does not match what was published", i, p)
		}
	}
}

// expectNothing checks that nothing is delivered for a while.
func (h *busHarness) expectNothing(d time.Duration) {
	h.t.Helper()
	select {
	case p := <-h.got:
		h.t.Fatalf("unexpected delivery %s/%d", p.Key, p.Seq)
	case <-time.After(d):
	}
}

func (h *busHarness) metric(name string) float64 {
	h.t.Helper()
	return metricValue(h.t, h.reg, name)
}

func (h *busHarness) wantMetric(name string, want float64) {
	h.t.Helper()
	if got := h.metric(name); got != want {
		h.t.Fatalf("%s = %v, want %v", name, got, want)
	}
}

// killPubSub kills this test's pub/sub connections (CLIENT KILL by ID of
// the connections named testClientName(t) that have shard channels), on
// every primary of a Redis Cluster, and returns how many it killed.
func killPubSub(t *testing.T, c goredis.UniversalClient) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var mu sync.Mutex
	killed := 0
	kill := func(ctx context.Context, n *goredis.Client) error {
		list, err := n.ClientList(ctx).Result()
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(strings.NewReader(list))
		for sc.Scan() {
			f := map[string]string{}
			for _, kv := range strings.Fields(sc.Text()) {
				if k, v, ok := strings.Cut(kv, "="); ok {
					f[k] = v
				}
			}
			if f["name"] != testClientName(t) || f["ssub"] == "0" || f["ssub"] == "" {
				continue
			}
			id, _ := strconv.ParseInt(f["id"], 10, 64)
			if err := n.ClientKillByFilter(ctx, "ID", strconv.FormatInt(id, 10)).Err(); err != nil {
				return err
			}
			mu.Lock()
			killed++
			mu.Unlock()
		}
		return nil
	}
	var err error
	switch c := c.(type) {
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, kill)
	case *goredis.Client:
		err = kill(ctx, c)
	}
	if err != nil {
		t.Fatalf("kill pub/sub connections: %v", err)
	}
	return killed
}

// pubSubConns counts this test's connections with shard channels.
func pubSubConns(t *testing.T, c *goredis.Client) int {
	t.Helper()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, " name="+testClientName(t)+" ") && !strings.Contains(line, " ssub=0 ") {
			n++
		}
	}
	return n
}

func TestBusConfigValidate(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, tc := range []struct {
		cfg BusConfig
		ok  bool
	}{
		{BusConfig{Client: c}, true},
		{BusConfig{Client: c, Prefix: "p", PingInterval: time.Second}, true},
		{BusConfig{}, false},
		{BusConfig{Client: goredis.NewRing(&goredis.RingOptions{})}, false},
		{BusConfig{Client: c, Prefix: "a{b}"}, false},
		{BusConfig{Client: c, PingInterval: -1}, false},
	} {
		if err := tc.cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok %v", tc.cfg, err, tc.ok)
		}
	}
}

// TestBusWatchConfirmed: a publication sent right after Watch returns is
// delivered: Watch waited for Redis to confirm the SSUBSCRIBE.
func TestBusWatchConfirmed(t *testing.T) {
	h := startBusHarness(t, newTestClient(t))
	const n = 40
	for i := range n {
		k := "k" + strconv.Itoa(i)
		h.watch("a", k)
		h.publishSeqs("a", k, 1)
		h.expect(k + "/1")
	}
	h.wantMetric("wspush_bus_watched_keys", n)
	h.wantMetric("wspush_bus_received_total", n)
	h.wantMetric("wspush_bus_malformed_total", 0)
	h.wantMetric("wspush_bus_reconnects_total", 0)
	if h.resyncs.Load() != 0 {
		t.Fatalf("resync called %d times without a connection loss", h.resyncs.Load())
	}
	// Watching a watched key again returns at once.
	h.watch("a", "k0")
	h.wantMetric("wspush_bus_watched_keys", n)
}

// TestBusOrder: each key's publications are delivered in the order
// published, keys interleaved, from one goroutine.
func TestBusOrder(t *testing.T) {
	c := newTestClient(t)
	h := startBusHarness(t, c)
	h.watch("a", "x")
	h.watch("a", "y")
	const n = 300
	ctx := context.Background()
	_, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i := uint64(1); i <= n; i++ {
			p.SPublish(ctx, h.keys.pub("a", "x"), h.message(i))
			if i%3 == 0 {
				p.SPublish(ctx, h.keys.pub("a", "y"), h.message(i/3))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	next := map[string]uint64{}
	for range n + n/3 {
		p := h.next()
		if next[p.Key]++; p.Seq != next[p.Key] {
			t.Fatalf("%s: seq %d delivered, want %d", p.Key, p.Seq, next[p.Key])
		}
	}
	if next["x"] != n || next["y"] != n/3 {
		t.Fatalf("delivered %v", next)
	}
	h.stop()
	if h.concurrent.Load() {
		t.Fatal("deliver was called concurrently")
	}
}

// TestBusUnwatch: after Unwatch nothing more of the key is delivered; a
// key watched again is delivered again.
func TestBusUnwatch(t *testing.T) {
	h := startBusHarness(t, newTestClient(t))
	h.watch("a", "gone")
	h.watch("a", "kept")
	if err := h.bus.Unwatch(context.Background(), "a", "gone"); err != nil {
		t.Fatalf("Unwatch: %v", err)
	}
	h.wantMetric("wspush_bus_watched_keys", 1)
	h.publishSeqs("a", "gone", 1)
	h.publishSeqs("a", "kept", 1) // one connection: after gone's
	h.expect("kept/1")
	h.expectNothing(100 * time.Millisecond)
	if err := h.bus.Unwatch(context.Background(), "a", "never"); err != nil {
		t.Fatalf("Unwatch of a key never watched: %v", err)
	}

	h.watch("a", "gone")
	h.publishSeqs("a", "gone", 2)
	h.expect("gone/2")
}

// TestBusMalformed: a message that cannot be decoded is counted and
// dropped; the messages after it are delivered.
func TestBusMalformed(t *testing.T) {
	h := startBusHarness(t, newTestClient(t))
	h.watch("a", "k")
	h.publish("a", "k",
		"garbage",
		"0:"+h.epoch+":1:1:{}", // seq 0
		"1:no epoch!:1:1:{}",   // bad epoch
		"1:"+h.epoch+":x:1:{}", // bad ts
		"1:"+h.epoch+":1:2:{}", // bad JSON flag
		h.message(1),
	)
	h.expect("k/1")
	h.wantMetric("wspush_bus_malformed_total", 5)
	h.wantMetric("wspush_bus_received_total", 6)
}

// TestBusBinaryPayload: a payload with ':' and non-UTF-8 bytes arrives
// whole.
func TestBusBinaryPayload(t *testing.T) {
	h := startBusHarness(t, newTestClient(t))
	h.watch("a", "k")
	payload := "a:b:\x00\xff:c"
	h.publish("a", "k", "7:"+h.epoch+":99:0:"+payload)
	p := h.next()
	if p.Seq != 7 || p.TS != 99 || p.JSON || string(p.Data) != payload || p.App != "a" || p.Key != "k" {
		t.Fatalf("delivered %+v", p)
	}
}

// TestBusReconnect: when the bus's connection is killed, it reconnects,
// re-subscribes every watched key, calls resync once, and delivers again.
func TestBusReconnect(t *testing.T) {
	c := newTestClient(t)
	h := startBusHarness(t, c)
	keys := []string{"k1", "k2", "k3"}
	for _, k := range keys {
		h.watch("a", k)
		h.publishSeqs("a", k, 1)
		h.expect(k + "/1")
	}
	if n := killPubSub(t, c); n != 1 {
		t.Fatalf("killed %d pub/sub connections, want 1", n)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if h.resyncs.Load() == 0 {
			return errNotYet
		}
		return nil
	})
	// After resync, every key flows again: the re-subscription was
	// confirmed before resync was called.
	for _, k := range keys {
		h.publishSeqs("a", k, 2)
		h.expect(k + "/2")
	}
	h.wantMetric("wspush_bus_reconnects_total", 1)
	h.wantMetric("wspush_bus_watched_keys", 3)
	time.Sleep(300 * time.Millisecond)
	if n := h.resyncs.Load(); n != 1 {
		t.Fatalf("resync called %d times, want 1", n)
	}
	// A new key on the new connection.
	h.watch("a", "k4")
	h.publishSeqs("a", "k4", 1)
	h.expect("k4/1")
}

// TestBusOutage: while Redis is unreachable Watch fails with
// ErrUnavailable; when it is back the watched keys are re-subscribed,
// resync is called, and publications flow.
func TestBusOutage(t *testing.T) {
	proxy := newRedisProxy(t)
	direct := newTestClient(t)
	h := newBusHarness(t, proxy.client(), direct)
	h.run()
	h.watch("a", "k")
	h.publishSeqs("a", "k", 1)
	h.expect("k/1")

	proxy.setDown(true)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := h.bus.Watch(ctx, "a", "new")
	cancel()
	if !errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("Watch during the outage: %v, want ErrUnavailable", err)
	}
	h.publishSeqs("a", "k", 2) // passes the node by
	if h.resyncs.Load() != 0 {
		t.Fatal("resync called during the outage")
	}

	proxy.setDown(false)
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if h.resyncs.Load() == 0 {
			return errNotYet
		}
		return nil
	})
	h.publishSeqs("a", "k", 3)
	h.expect("k/3")
	h.watch("a", "new")
	h.publishSeqs("a", "new", 1)
	h.expect("new/1")
	if h.metric("wspush_bus_reconnects_total") < 1 {
		t.Fatal("no reconnect counted")
	}
	if n := h.resyncs.Load(); n != 1 {
		t.Fatalf("resync called %d times, want 1", n)
	}
}

// TestBusWatchWaitsForRun: Watch needs Run to read the confirmation: it
// fails with its context without Run, and returns once Run runs.
func TestBusWatchWaitsForRun(t *testing.T) {
	c := newTestClient(t)
	h := newBusHarness(t, c, c)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	err := h.bus.Watch(ctx, "a", "k")
	cancel()
	if !errors.Is(err, middle.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Watch without Run: %v, want ErrUnavailable and DeadlineExceeded", err)
	}
	h.wantMetric("wspush_bus_watched_keys", 0)

	watched := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		watched <- h.bus.Watch(ctx, "a", "k")
	}()
	time.Sleep(50 * time.Millisecond)
	h.run()
	if err := <-watched; err != nil {
		t.Fatalf("Watch before Run: %v", err)
	}
	h.publishSeqs("a", "k", 1)
	h.expect("k/1")
}

// TestBusRunStops: Run returns when its context ends and closes its
// connections; a second Run works again.
func TestBusRunStops(t *testing.T) {
	c := newTestClient(t)
	h := startBusHarness(t, c)
	h.watch("a", "k")
	if n := pubSubConns(t, c.(*goredis.Client)); n != 1 {
		t.Fatalf("%d pub/sub connections, want 1", n)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if pubSubConns(t, c.(*goredis.Client)) != 0 {
			return errNotYet
		}
		return nil
	})

	h.run()
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		if pubSubConns(t, c.(*goredis.Client)) != 1 {
			return errNotYet
		}
		return nil
	})
	h.watch("a", "k") // still watched: returns at once
	h.publishSeqs("a", "k", 2)
	h.expect("k/2")
}

// TestBusStore: what the Store sequences reaches the Bus, with the seq,
// epoch, time and payload AppendBatch set.
func TestBusStore(t *testing.T) {
	c := newTestClient(t)
	h := startBusHarness(t, c)
	store, err := NewStore(StoreConfig{Client: c, Prefix: h.prefix})
	if err != nil {
		t.Fatal(err)
	}
	h.watch("a", "x")
	h.watch("a", "y")
	pubs := []proto.Publication{
		{App: "a", Key: "x", TS: 1, JSON: true, Data: []byte(`{"v":1}`)},
		{App: "a", Key: "y", TS: 2, Data: []byte("bin:\x00\xff")},
		{App: "a", Key: "x", TS: 3, JSON: true, Data: []byte(`"v:2"`)},
		{App: "a", Key: "unwatched", TS: 4, JSON: true, Data: []byte(`3`)},
		{App: "a", Key: "x", TS: 5, JSON: true, Data: []byte(`[4]`)},
	}
	if n, err := store.AppendBatch(context.Background(), pubs, 0); err != nil || n != len(pubs) {
		t.Fatalf("AppendBatch: %d, %v", n, err)
	}
	var got []proto.Publication
	for range 4 {
		got = append(got, h.next())
	}
	// Each key in seq order; the keys' relative order is free.
	want := slices.DeleteFunc(slices.Clone(pubs), func(p proto.Publication) bool { return p.Key == "unwatched" })
	byKey := func(ps []proto.Publication) map[string][]string {
		m := map[string][]string{}
		for _, p := range ps {
			m[p.Key] = append(m[p.Key], fmt.Sprintf("%d/%s/%d/%v/%q", p.Seq, p.Epoch, p.TS, p.JSON, p.Data))
		}
		return m
	}
	g, w := byKey(got), byKey(want)
	for k := range w {
		if !slices.Equal(g[k], w[k]) {
			t.Fatalf("%s: delivered %v, want %v", k, g[k], w[k])
		}
	}
	h.expectNothing(100 * time.Millisecond)
}

// TestBusCluster runs the bus on Redis Cluster (WSPUSH_REDIS_CLUSTER_URL):
// one connection per primary, every key delivered, and a killed
// connection re-subscribed and followed by one resync.
func TestBusCluster(t *testing.T) {
	c := newTestClusterClient(t)
	h := startBusHarness(t, c)
	var keys []string
	for i := range 30 {
		k := "k" + strconv.Itoa(i)
		keys = append(keys, k)
		h.watch("a", k)
		h.publishSeqs("a", k, 1)
		h.expect(k + "/1")
	}
	var masters atomic.Int32 // ForEachMaster runs concurrently
	if err := c.(*goredis.ClusterClient).ForEachMaster(context.Background(), func(context.Context, *goredis.Client) error {
		masters.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	primaries := int(masters.Load())
	h.bus.mu.Lock()
	shards := len(h.bus.shards)
	h.bus.mu.Unlock()
	if shards != primaries {
		t.Fatalf("%d pub/sub connections for %d primaries", shards, primaries)
	}
	if n := killPubSub(t, c); n != primaries {
		t.Fatalf("killed %d pub/sub connections, want %d", n, primaries)
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if h.resyncs.Load() == 0 {
			return errNotYet
		}
		return nil
	})
	for _, k := range keys {
		h.publishSeqs("a", k, 2)
		h.expect(k + "/2")
	}
	// One resync per loss; losses that overlap share one.
	if n := h.resyncs.Load(); n < 1 || int(n) > primaries {
		t.Fatalf("resync called %d times, want 1 to %d", n, primaries)
	}
}

// TestBusClusterSlotMove moves a watched key's slot to another primary of
// the Redis Cluster (and back when the test ends): Redis unsubscribes the
// node from the channel, and the bus routes it to the new primary,
// re-subscribes and resyncs.
func TestBusClusterSlotMove(t *testing.T) {
	c := newTestClusterClient(t)
	cc := c.(*goredis.ClusterClient)
	h := startBusHarness(t, c)
	h.watch("a", "k")
	h.watch("a", "other")
	h.publishSeqs("a", "k", 1)
	h.expect("k/1")

	ctx := context.Background()
	ch := h.keys.pub("a", "k")
	slot, err := cc.ClusterKeySlot(ctx, ch).Result()
	if err != nil {
		t.Fatal(err)
	}
	src, err := cc.MasterForKey(ctx, ch)
	if err != nil {
		t.Fatal(err)
	}
	srcID, err := src.ClusterMyID(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := src.ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	type primary struct {
		id string
		c  *goredis.Client
	}
	var all []primary
	var dst primary
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || !strings.Contains(f[2], "master") || strings.Contains(f[2], "fail") {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := goredis.NewClient(&goredis.Options{Addr: addr, Username: src.Options().Username, Password: src.Options().Password})
		t.Cleanup(func() { _ = n.Close() })
		all = append(all, primary{f[0], n})
		if f[0] != srcID && dst.c == nil {
			dst = all[len(all)-1]
		}
	}
	if dst.c == nil {
		t.Skip("a Redis Cluster of one primary: no slot to move")
	}
	move := func(from, to primary) {
		t.Helper()
		for _, cmd := range [][]any{
			{to.c, "importing", from.id}, {from.c, "migrating", to.id},
		} {
			if err := cmd[0].(*goredis.Client).Do(ctx, "cluster", "setslot", slot, cmd[1], cmd[2]).Err(); err != nil {
				t.Fatalf("CLUSTER SETSLOT %d %s: %v", slot, cmd[1], err)
			}
		}
		for _, n := range all {
			if err := n.c.Do(ctx, "cluster", "setslot", slot, "node", to.id).Err(); err != nil {
				t.Fatalf("CLUSTER SETSLOT %d NODE: %v", slot, err)
			}
		}
	}
	from := primary{srcID, src}
	move(from, dst)
	t.Cleanup(func() { move(dst, from) })

	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		if h.resyncs.Load() == 0 {
			return errNotYet
		}
		return nil
	})
	h.publishSeqs("a", "k", 2)
	h.expect("k/2")
	h.publishSeqs("a", "other", 1)
	h.expect("other/1")
	h.bus.mu.Lock()
	w := h.bus.watches[ch]
	addr := w.shard.addr
	h.bus.mu.Unlock()
	if addr != dst.c.Options().Addr {
		t.Fatalf("channel on the connection to %s, want %s", addr, dst.c.Options().Addr)
	}
}

// busSubscriber is a middle.Subscriber that keeps the data messages it is
// sent.
type busSubscriber struct {
	mu   sync.Mutex
	msgs []proto.ServerMessage
	bad  error
}

func (s *busSubscriber) ConnID() uint64 { return 1 }

func (s *busSubscriber) Enqueue(f *proto.Frame) bool {
	b := f.Bytes
	switch n := b[1] & 0x7f; n { // strip the WebSocket header
	case 126:
		b = b[4:]
	case 127:
		b = b[10:]
	default:
		b = b[2:]
	}
	m, err := proto.DecodeServerMessage(b)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil && s.bad == nil {
		s.bad = err
	}
	if m.Op == proto.OpData {
		s.msgs = append(s.msgs, m)
	}
	return true
}

// payloads returns the payloads of key's data messages, and whether their
// seqs run 1, 2, 3...
func (s *busSubscriber) payloads(key string) ([]string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, m := range s.msgs {
		if m.Key == key {
			if m.Seq != uint64(len(out)+1) {
				return out, false
			}
			out = append(out, string(m.Data))
		}
	}
	return out, true
}

// TestBusTwoNodes: two nodes sharing the Redis store, each with its bus;
// a batch published on b, over several chunks with keys interleaved,
// reaches a subscriber on a whole and in order.
func TestBusTwoNodes(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	newNode := func() *middle.Node {
		store, err := NewStore(StoreConfig{Client: c, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		bus, err := NewBus(BusConfig{Client: c, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		n, err := middle.NewNode(middle.Config{Store: store, Bus: bus})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := n.Run(ctx); err != nil {
				t.Errorf("Node.Run: %v", err)
			}
		}()
		t.Cleanup(func() {
			cancel()
			<-done
		})
		return n
	}
	a, b := newNode(), newNode()
	sub := &busSubscriber{}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Subscribe(ctx, sub, middle.SubscribeRequest{ID: 1, App: "app", Keys: []string{"k1", "k2"}}); err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	const total = 600
	pubs := make([]proto.Publication, total)
	want := map[string][]string{}
	for i := range pubs {
		k := "k1"
		if i%4 == 0 {
			k = "k2"
		}
		pubs[i] = proto.Publication{App: "app", Key: k, JSON: true, Data: []byte(fmt.Sprintf(`{"v":%d}`, i))}
		want[k] = append(want[k], string(pubs[i].Data))
	}
	if seqs, err := b.Publish(ctx, "test", pubs); err != nil || len(seqs) != total {
		t.Fatalf("Publish: %d seqs, %v", len(seqs), err)
	}
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		for k, w := range want {
			got, inOrder := sub.payloads(k)
			if !inOrder {
				return fmt.Errorf("%s: seqs out of order after %d", k, len(got))
			}
			if len(got) < len(w) {
				return fmt.Errorf("%s: %d of %d delivered: %w", k, len(got), len(w), errNotYet)
			}
			if !slices.Equal(got, w) {
				t.Fatalf("%s: payloads differ from what was published", k)
			}
		}
		return nil
	})
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.bad != nil {
		t.Fatalf("undecodable frame: %v", sub.bad)
	}
}
