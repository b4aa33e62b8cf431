package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
)

// The tests of the index, the leases and the claims share helpers_test.go
// with the rest of the package; idx* names are theirs alone.

var errIdxNotYet = errors.New("not yet")

// idxLocal stands for a node's local subscriptions: it records them and
// tells the index, as middle.Node does, and is the index's snapshot
// (Node.LocalSubscriptions).
type idxLocal struct {
	ix *Index

	mu    sync.Mutex
	next  uint64
	conns map[uint64]map[[2]string]bool // conn → (app, key)
}

// sub subscribes a new connection to keys of app and returns its ID.
func (l *idxLocal) sub(app string, keys ...string) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.next++
	id := l.next
	l.conns[id] = map[[2]string]bool{}
	for _, k := range keys {
		l.conns[id][[2]string{app, k}] = true
		l.ix.Add(app, k, id)
	}
	return id
}

// unsub unsubscribes connection id from keys of app.
func (l *idxLocal) unsub(id uint64, app string, keys ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, k := range keys {
		if l.conns[id][[2]string{app, k}] {
			delete(l.conns[id], [2]string{app, k})
			l.ix.Remove(app, k, id)
		}
	}
}

// close unsubscribes connection id from everything.
func (l *idxLocal) close(id uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for ak := range l.conns[id] {
		l.ix.Remove(ak[0], ak[1], id)
	}
	delete(l.conns, id)
}

func (l *idxLocal) snapshot(fn func(app, key string, connIDs []uint64)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	byKey := map[[2]string][]uint64{}
	for id, aks := range l.conns {
		for ak := range aks {
			byKey[ak] = append(byKey[ak], id)
		}
	}
	for ak, ids := range byKey {
		fn(ak[0], ak[1], ids)
	}
}

// idxFixture is an Index running for a node whose local subscriptions it
// mirrors.
type idxFixture struct {
	id     string
	ix     *Index
	local  *idxLocal
	reg    *prometheus.Registry
	logs   *testutil.SyncBuffer
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
}

// startIndex starts an index for nodeID under prefix on client c, with
// short intervals; mod adjusts the config. The index stops with the test.
func startIndex(t *testing.T, c goredis.UniversalClient, prefix, nodeID string, mod func(*IndexConfig)) *idxFixture {
	t.Helper()
	f := &idxFixture{id: nodeID, reg: prometheus.NewRegistry(), logs: &testutil.SyncBuffer{}, done: make(chan error, 1)}
	cfg := IndexConfig{
		Client:        c,
		NodeID:        nodeID,
		Prefix:        prefix,
		FlushInterval: 5 * time.Millisecond,
		NodeTTL:       time.Second,
		Timeout:       time.Second,
		BackoffMin:    10 * time.Millisecond,
		BackoffMax:    100 * time.Millisecond,
		Logger:        slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:    f.reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	ix, err := NewIndex(cfg)
	if err != nil {
		t.Fatalf("NewIndex: %v", err)
	}
	f.ix = ix
	f.local = &idxLocal{ix: ix, conns: map[uint64]map[[2]string]bool{}}
	ix.SetSnapshot(f.local.snapshot)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { f.done <- ix.Run(ctx) }()
	t.Cleanup(func() { f.stop(t) })
	return f
}

// stop ends Run (its clean shutdown included) and waits for it; later
// calls do nothing.
func (f *idxFixture) stop(t *testing.T) {
	t.Helper()
	f.stopOnce.Do(func() {
		f.cancel()
		select {
		case err := <-f.done:
			if err != nil {
				t.Errorf("index %s: Run: %v", f.id, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("index %s: Run did not return", f.id)
		}
	})
}

func (f *idxFixture) sub(app string, keys ...string) uint64 { return f.local.sub(app, keys...) }

func (f *idxFixture) unsub(id uint64, app string, keys ...string) { f.local.unsub(id, app, keys...) }

func (f *idxFixture) waitReady(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, f.ix.Ready)
}

// indexState is the index as Redis holds it (or as it should).
type indexState struct {
	subs     map[string][]string // "app:key" → members, sorted
	keys     map[string][]string // app → keys, sorted
	apps     []string
	nodeSubs map[string][]string // node → entries, sorted
}

func (s indexState) String() string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(s.subs)) {
		fmt.Fprintf(&b, "sub:%s=%v ", k, s.subs[k])
	}
	for _, k := range slices.Sorted(maps.Keys(s.keys)) {
		fmt.Fprintf(&b, "keys:%s=%v ", k, s.keys[k])
	}
	fmt.Fprintf(&b, "apps=%v ", s.apps)
	for _, k := range slices.Sorted(maps.Keys(s.nodeSubs)) {
		fmt.Fprintf(&b, "nodesubs:%s=%v ", k, s.nodeSubs[k])
	}
	return b.String()
}

// readIndexState reads every index set under prefix.
func readIndexState(t testing.TB, c goredis.UniversalClient, prefix string) indexState {
	t.Helper()
	ctx := context.Background()
	s := indexState{subs: map[string][]string{}, keys: map[string][]string{}, nodeSubs: map[string][]string{}}
	members := func(key string) []string {
		m, err := c.SMembers(ctx, key).Result()
		if err != nil {
			t.Fatalf("smembers %s: %v", key, err)
		}
		slices.Sort(m)
		return m
	}
	idx := newKeys(prefix).idx()
	for _, k := range mustKeysUnder(t, c, prefix) {
		rest, ok := strings.CutPrefix(k, idx)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(rest, "sub:"):
			s.subs[strings.TrimPrefix(rest, "sub:")] = members(k)
		case strings.HasPrefix(rest, "keys:"):
			s.keys[strings.TrimPrefix(rest, "keys:")] = members(k)
		case rest == "apps":
			s.apps = members(k)
		case strings.HasPrefix(rest, "nodesubs:"):
			s.nodeSubs[strings.TrimPrefix(rest, "nodesubs:")] = members(k)
		}
	}
	return s
}

// wantIndexState is the index the fixtures' local subscriptions call for.
func wantIndexState(fs ...*idxFixture) indexState {
	s := indexState{subs: map[string][]string{}, keys: map[string][]string{}, nodeSubs: map[string][]string{}}
	keys := map[string]map[string]bool{}
	for _, f := range fs {
		f.local.snapshot(func(app, key string, ids []uint64) {
			for _, id := range ids {
				c := strconv.FormatUint(id, 10)
				s.subs[app+":"+key] = append(s.subs[app+":"+key], f.id+"/"+c)
				s.nodeSubs[f.id] = append(s.nodeSubs[f.id], app+":"+key+":"+c)
			}
			if keys[app] == nil {
				keys[app] = map[string]bool{}
			}
			keys[app][key] = true
		})
	}
	for app, ks := range keys {
		s.keys[app] = slices.Sorted(maps.Keys(ks))
		s.apps = append(s.apps, app)
	}
	slices.Sort(s.apps)
	for _, m := range []map[string][]string{s.subs, s.nodeSubs} {
		for k := range m {
			slices.Sort(m[k])
		}
	}
	return s
}

// waitIndexState waits until Redis holds exactly what the fixtures'
// subscriptions call for.
func waitIndexState(t *testing.T, c goredis.UniversalClient, prefix string, fs ...*idxFixture) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, want := readIndexState(t, c, prefix), wantIndexState(fs...)
		if got.String() != want.String() {
			return fmt.Errorf("index in Redis:\n  %s\nwant:\n  %s", got, want)
		}
		return nil
	})
}

func TestIndexAddRemove(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	f := startIndex(t, c, prefix, "n1", nil)
	ctx := context.Background()

	r1 := f.sub("plant-7", "001", "002")
	r2 := f.sub("plant-7", "001")
	r3 := f.sub("demo", "s001")
	waitIndexState(t, c, prefix, f)
	got := readIndexState(t, c, prefix)
	if want := []string{"n1/" + strconv.FormatUint(r1, 10), "n1/" + strconv.FormatUint(r2, 10)}; !slices.Equal(got.subs["plant-7:001"], want) {
		t.Errorf("sub:plant-7:001 = %v, want %v", got.subs["plant-7:001"], want)
	}
	apps, err := f.ix.Apps(ctx)
	if err != nil || !slices.Equal(apps, []string{"demo", "plant-7"}) {
		t.Errorf("Apps = %v, %v; want [demo plant-7]", apps, err)
	}
	keys, err := f.ix.Keys(ctx, "plant-7")
	slices.Sort(keys)
	if err != nil || !slices.Equal(keys, []string{"001", "002"}) {
		t.Errorf("Keys(plant-7) = %v, %v; want [001 002]", keys, err)
	}

	f.unsub(r1, "plant-7", "001", "002") // 002 loses its last subscriber
	waitIndexState(t, c, prefix, f)
	f.unsub(r2, "plant-7", "001") // and so does the app
	f.unsub(r3, "demo", "s001")
	waitIndexState(t, c, prefix, f)
	if apps, err := f.ix.Apps(ctx); err != nil || len(apps) != 0 {
		t.Errorf("Apps after every unsubscribe = %v, %v; want none", apps, err)
	}
	if keys, err := f.ix.Keys(ctx, "plant-7"); err != nil || len(keys) != 0 {
		t.Errorf("Keys(plant-7) after every unsubscribe = %v, %v; want none", keys, err)
	}
	if n := metricValue(t, f.reg, "wspush_index_flushes_total", "result", "ok"); n < 2 {
		t.Errorf("flushes_total{ok} = %v, want at least 2", n)
	}
	if n := metricValue(t, f.reg, "wspush_index_rewrites_total"); n != 1 {
		t.Errorf("rewrites_total = %v, want 1 (the start)", n)
	}
}

// TestIndexKeysShareOneSlot: every key the index writes carries the hash
// tag {index}, so that its scripts run on Redis Cluster
// (docs/PROTOCOL.md, "Redis schema").
func TestIndexKeysShareOneSlot(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	f := startIndex(t, c, prefix, "n1", nil)
	f.sub("app", "k1", "k2")
	waitIndexState(t, c, prefix, f)
	keys, err := keysUnder(context.Background(), c, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) < 6 { // sub ×2, keys, apps, nodes, node, nodesubs
		t.Fatalf("index keys %v, want at least 6", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+":{index}:") {
			t.Errorf("key %q lacks the {index} hash tag", k)
		}
	}
}

// TestIndexBatching: changes wait for FlushInterval or BatchSize, and the
// changes of one member coalesce.
func TestIndexBatching(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	f := startIndex(t, c, prefix, "n1", func(cfg *IndexConfig) {
		cfg.FlushInterval = time.Hour
		cfg.BatchSize = 4
	})
	f.waitReady(t)
	ix := f.ix
	ix.Add("app", "a", 1)
	ix.Remove("app", "a", 1)
	ix.Add("app", "a", 1)
	ix.Add("app", "b", 2)
	ix.Remove("app", "c", 3)
	if n := metricValue(t, f.reg, "wspush_index_pending"); n != 3 {
		t.Errorf("pending = %v after 5 changes of 3 members, want 3", n)
	}
	if s := readIndexState(t, c, prefix); len(s.subs) != 0 {
		t.Fatalf("flushed before the batch was full: %s", s)
	}
	ix.Remove("app", "b", 2) // still 3 members
	ix.Add("app", "d", 4)    // 4: the batch is full
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !ix.synced() {
			return errIdxNotYet
		}
		return nil
	})
	got := readIndexState(t, c, prefix)
	if want := "sub:app:a=[n1/1] sub:app:d=[n1/4] keys:app=[a d] apps=[app] nodesubs:n1=[app:a:1 app:d:4] "; got.String() != want {
		t.Errorf("index in Redis:\n  %s\nwant:\n  %s", got, want)
	}
}

// TestIndexTwoNodes: a key stays listed while any node has a subscriber.
func TestIndexTwoNodes(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", nil)
	b := startIndex(t, c, prefix, "node-b", nil)
	ra := a.sub("app", "k")
	rb := b.sub("app", "k")
	waitIndexState(t, c, prefix, a, b)
	a.unsub(ra, "app", "k")
	waitIndexState(t, c, prefix, a, b)
	if keys, _ := a.ix.Keys(context.Background(), "app"); !slices.Equal(keys, []string{"k"}) {
		t.Errorf("Keys after node a left = %v, want [k] (node b still subscribed)", keys)
	}
	b.unsub(rb, "app", "k")
	waitIndexState(t, c, prefix, a, b)
	if apps, _ := b.ix.Apps(context.Background()); len(apps) != 0 {
		t.Errorf("Apps after both left = %v, want none", apps)
	}
}

// TestIndexConcurrentChurn: two nodes subscribing and unsubscribing from
// many goroutines end with exactly their local subscriptions in Redis.
func TestIndexConcurrentChurn(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	fs := []*idxFixture{
		startIndex(t, c, prefix, "node-a", func(cfg *IndexConfig) { cfg.BatchSize = 16 }),
		startIndex(t, c, prefix, "node-b", func(cfg *IndexConfig) { cfg.BatchSize = 16 }),
	}
	keys := idxKeyNames(12)
	var wg sync.WaitGroup
	for _, f := range fs {
		for g := range 6 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				var held []uint64
				for range 300 {
					if len(held) > 0 && rng.IntN(2) == 0 {
						i := rng.IntN(len(held))
						f.local.close(held[i])
						held = slices.Delete(held, i, i+1)
						continue
					}
					app := []string{"x", "y"}[rng.IntN(2)]
					held = append(held, f.sub(app, keys[rng.IntN(len(keys))], keys[rng.IntN(len(keys))]))
				}
			})
		}
	}
	wg.Wait()
	waitIndexState(t, c, prefix, fs...)
}

func idxKeyNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("k%02d", i)
	}
	return out
}

// TestIndexDeadNodeAndComeback: a node cut off from Redis stops refreshing
// its liveness key; another node removes its entries once the key expires.
// When the cut-off node gets Redis back, it notices that its key had
// expired and writes its share again, including what changed meanwhile.
func TestIndexDeadNodeAndComeback(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	proxy := newRedisProxy(t)
	const ttl = 300 * time.Millisecond
	short := func(cfg *IndexConfig) { cfg.NodeTTL = ttl }
	a := startIndex(t, proxy.client(), prefix, "node-a", short)
	b := startIndex(t, c, prefix, "node-b", short)
	a.sub("app", "k1", "k2")
	gone := a.sub("app", "k3")
	b.sub("app", "k1")
	waitIndexState(t, c, prefix, a, b)

	proxy.setDown(true)
	a.unsub(gone, "app", "k3")
	a.sub("app", "k4")
	// Node b sees only itself once a's entries are removed.
	testutil.Eventually(t, 20*ttl, 10*time.Millisecond, func() error {
		got, want := readIndexState(t, c, prefix), wantIndexState(b)
		if got.String() != want.String() {
			return fmt.Errorf("index in Redis:\n  %s\nwant node b's alone:\n  %s", got, want)
		}
		return nil
	})
	if n := metricValue(t, b.reg, "wspush_index_dead_nodes_cleaned_total"); n != 1 {
		t.Errorf("node b dead_nodes_cleaned_total = %v, want 1", n)
	}
	if nodes := c.SMembers(context.Background(), newKeys(prefix).nodes()).Val(); !slices.Equal(nodes, []string{"node-b"}) {
		t.Errorf("nodes = %v, want [node-b]", nodes)
	}
	if a.ix.Ready() == nil {
		t.Error("node a Ready() = nil while cut off from Redis")
	}

	proxy.setDown(false)
	waitIndexState(t, c, prefix, a, b)
	a.waitReady(t)
	if n := metricValue(t, a.reg, "wspush_index_rewrites_total"); n < 2 {
		t.Errorf("node a rewrites_total = %v, want at least 2", n)
	}
	if n := strings.Count(a.logs.String(), "index: Redis write failed"); n != 1 {
		t.Errorf("node a logged %d write failures, want 1:\n%s", n, a.logs)
	}
	if n := strings.Count(a.logs.String(), "index: Redis is back"); n != 1 {
		t.Errorf("node a logged recovery %d times, want 1:\n%s", n, a.logs)
	}
}

// TestIndexReapManyAndMalformed: the entries of a dead node are removed in
// chunks of reapChunk, and entries wspush did not write are dropped
// without touching the other sets.
func TestIndexReapManyAndMalformed(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	ks := newKeys(prefix)
	ctx := context.Background()
	// What a node that crashed leaves: its entries, registered, without a
	// liveness key.
	n := reapChunk*2 + 17
	for i := range n {
		key := fmt.Sprintf("k%d", i%50)
		if err := indexApplyScript.Run(ctx, c, []string{ks.apps(), ks.nodeSubs("node-dead"), ks.sub("app", key), ks.appKeys("app")},
			"node-dead", "+", "app", key, strconv.Itoa(i+1)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SAdd(ctx, ks.nodeSubs("node-dead"), "junk", "a:b", "a:b:c", "a:b:007").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.SAdd(ctx, ks.nodes(), "node-dead").Err(); err != nil {
		t.Fatal(err)
	}

	b := startIndex(t, c, prefix, "node-b", func(cfg *IndexConfig) { cfg.NodeTTL = 100 * time.Millisecond })
	b.sub("app", "k1")
	testutil.Eventually(t, 5*time.Second, 10*time.Millisecond, func() error {
		got, want := readIndexState(t, c, prefix), wantIndexState(b)
		if got.String() != want.String() {
			return fmt.Errorf("index in Redis:\n  %s\nwant node b's alone:\n  %s", got, want)
		}
		return nil
	})
	if got := metricValue(t, b.reg, "wspush_index_dead_nodes_cleaned_total"); got != 1 {
		t.Errorf("dead_nodes_cleaned_total = %v, want 1", got)
	}
	if !strings.Contains(b.logs.String(), fmt.Sprintf("entries=%d", n)) {
		t.Errorf("node b did not log %d removed entries:\n%s", n, b.logs)
	}
}

// TestIndexRewriteAfterRedisLoss: Redis loses the whole index (a restart
// without persistence) while the node is cut off; once it is back, the
// node's share is written again from its local subscriptions.
func TestIndexRewriteAfterRedisLoss(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	proxy := newRedisProxy(t)
	a := startIndex(t, proxy.client(), prefix, "node-a", nil)
	r := a.sub("app", "k1", "k2")
	waitIndexState(t, c, prefix, a)

	proxy.setDown(true)
	a.unsub(r, "app", "k2")
	a.sub("app", "k3")
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if a.ix.Ready() == nil {
			return fmt.Errorf("Ready() = nil while Redis is cut off")
		}
		return nil
	})
	for _, k := range mustKeysUnder(t, c, prefix) {
		if err := c.Del(context.Background(), k).Err(); err != nil {
			t.Fatal(err)
		}
	}
	proxy.setDown(false)
	waitIndexState(t, c, prefix, a)
	a.waitReady(t)
}

// TestIndexRestartReplacesPreviousRun: a node that died without cleaning
// up and restarts with the same ID before the others noticed replaces what
// its previous run left.
func TestIndexRestartReplacesPreviousRun(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	proxy := newRedisProxy(t)
	old := startIndex(t, proxy.client(), prefix, "node-a", func(cfg *IndexConfig) {
		cfg.NodeTTL = time.Hour
		cfg.ShutdownTimeout = 50 * time.Millisecond
	})
	old.sub("app", "k1", "k2")
	waitIndexState(t, c, prefix, old)
	proxy.setDown(true)
	old.stop(t) // its clean-up cannot reach Redis
	if s := readIndexState(t, c, prefix); len(s.subs) != 2 {
		t.Fatalf("the crashed run should have left its entries: %s", s)
	}

	restarted := startIndex(t, c, prefix, "node-a", nil)
	restarted.sub("app", "k2", "k3")
	waitIndexState(t, c, prefix, restarted)
}

// TestIndexShutdownLeavesNothing: a node stopped cleanly removes its
// entries and liveness key, and only those.
func TestIndexShutdownLeavesNothing(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", nil)
	b := startIndex(t, c, prefix, "node-b", nil)
	a.sub("app", "k1", "k2")
	a.sub("other", "k1")
	b.sub("app", "k2")
	waitIndexState(t, c, prefix, a, b)

	a.stop(t)
	waitIndexState(t, c, prefix, b)
	if n := c.Exists(context.Background(), newKeys(prefix).node("node-a")).Val(); n != 0 {
		t.Error("node a's liveness key survived its shutdown")
	}
	a.ix.Add("app", "late", 99) // after Run: ignored
	if a.ix.pendingLen() != 0 {
		t.Error("Add after Run was queued")
	}

	b.stop(t)
	if left := mustKeysUnder(t, c, prefix); len(left) != 0 {
		t.Errorf("keys left after both nodes stopped: %v", left)
	}
}

func TestIndexRunNeedsSnapshotAndRunsOnce(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	ix, err := NewIndex(IndexConfig{Client: c, NodeID: "n1", Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := ix.Run(ctx); err == nil {
		t.Fatal("Run without SetSnapshot returned nil")
	}
	ix.SetSnapshot(func(func(string, string, []uint64)) {})
	done := make(chan error, 1)
	go func() { done <- ix.Run(ctx) }()
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, ix.Ready)
	if err := ix.Run(ctx); err == nil {
		t.Error("second Run returned nil")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

func TestIndexConfigValidate(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	ok := IndexConfig{Client: c, NodeID: "n1"}
	for _, tc := range []struct {
		name string
		mod  func(*IndexConfig)
	}{
		{"no client", func(c *IndexConfig) { c.Client = nil }},
		{"no node ID", func(c *IndexConfig) { c.NodeID = "" }},
		{"node ID with slash", func(c *IndexConfig) { c.NodeID = "a/b" }},
		{"negative flush interval", func(c *IndexConfig) { c.FlushInterval = -1 }},
		{"negative batch", func(c *IndexConfig) { c.BatchSize = -1 }},
		{"tiny node TTL", func(c *IndexConfig) { c.NodeTTL = time.Millisecond }},
		{"negative timeout", func(c *IndexConfig) { c.Timeout = -1 }},
		{"backoff min above max", func(c *IndexConfig) { c.BackoffMin = time.Minute }},
		{"prefix with space", func(c *IndexConfig) { c.Prefix = "a b" }},
		{"prefix with brace", func(c *IndexConfig) { c.Prefix = "a{b" }},
	} {
		cfg := ok
		tc.mod(&cfg)
		if _, err := NewIndex(cfg); err == nil {
			t.Errorf("%s: NewIndex accepted %+v", tc.name, cfg)
		}
	}
	if _, err := NewIndex(ok); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
	reg := prometheus.NewRegistry()
	ok.Registerer = reg
	if _, err := NewIndex(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := NewIndex(ok); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

// TestIndexLivenessLost: when a node's liveness key disappears under it
// (here deleted; in life, a pause longer than NodeTTL), the others remove
// its entries, and its next refresh notices and writes them again.
func TestIndexLivenessLost(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", func(cfg *IndexConfig) { cfg.NodeTTL = 3 * time.Second })
	b := startIndex(t, c, prefix, "node-b", func(cfg *IndexConfig) { cfg.NodeTTL = 100 * time.Millisecond })
	a.sub("app", "k1", "k2")
	b.sub("app", "k2")
	waitIndexState(t, c, prefix, a, b)

	if err := c.Del(context.Background(), newKeys(prefix).node("node-a")).Err(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if metricValue(t, b.reg, "wspush_index_dead_nodes_cleaned_total") != 1 {
			return fmt.Errorf("node b has not cleaned up node a")
		}
		return nil
	})
	waitIndexState(t, c, prefix, a, b)
	if n := strings.Count(a.logs.String(), "index: liveness key had expired"); n != 1 {
		t.Errorf("node a logged the lost liveness key %d times, want 1:\n%s", n, a.logs)
	}
}

// TestIndexCluster: the index on Redis Cluster (WSPUSH_REDIS_CLUSTER_URL):
// two nodes, a dead node's entries removed, a clean shutdown.
func TestIndexCluster(t *testing.T) {
	c := newTestClusterClient(t)
	prefix := testPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", func(cfg *IndexConfig) { cfg.NodeTTL = 3 * time.Second })
	b := startIndex(t, c, prefix, "node-b", func(cfg *IndexConfig) { cfg.NodeTTL = 100 * time.Millisecond })
	r := a.sub("app", "k1", "k2")
	a.sub("other", "k1")
	b.sub("app", "k2", "k3")
	waitIndexState(t, c, prefix, a, b)
	ctx := context.Background()
	if apps, err := b.ix.Apps(ctx); err != nil || !slices.Equal(apps, []string{"app", "other"}) {
		t.Errorf("Apps = %v, %v; want [app other]", apps, err)
	}
	a.unsub(r, "app", "k1")
	waitIndexState(t, c, prefix, a, b)

	// Node a's liveness key goes: node b removes its entries, node a
	// writes them again.
	if err := c.Del(ctx, newKeys(prefix).node("node-a")).Err(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if metricValue(t, b.reg, "wspush_index_dead_nodes_cleaned_total") != 1 {
			return fmt.Errorf("node b has not cleaned up node a")
		}
		return nil
	})
	waitIndexState(t, c, prefix, a, b)

	a.stop(t)
	b.stop(t)
	if left := mustKeysUnder(t, c, prefix); len(left) != 0 {
		t.Errorf("keys left after both nodes stopped: %v", left)
	}
}

// BenchmarkIndexAddRemove measures the batched path, per change, from the
// Add or Remove call until Redis holds its result: blocks of batch
// distinct changes (adds of new members, then removes of the same members,
// so that nothing coalesces and the index stays small), each written by
// one flush, which the benchmark waits for.
func BenchmarkIndexAddRemove(b *testing.B) {
	for _, batch := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			c := newTestClient(b)
			prefix := testPrefix(b, c)
			reg := prometheus.NewRegistry()
			ix, err := NewIndex(IndexConfig{
				Client: c, NodeID: "bench", Prefix: prefix, Registerer: reg,
				BatchSize: batch, FlushInterval: time.Hour, // flushed when a block is full
			})
			if err != nil {
				b.Fatal(err)
			}
			ix.SetSnapshot(func(func(string, string, []uint64)) {})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- ix.Run(ctx) }()
			defer func() {
				cancel()
				<-done
			}()
			testutil.Eventually(b, 5*time.Second, time.Millisecond, ix.Ready)
			keys := idxKeyNames(100)
			wait := func() {
				for !ix.synced() {
					time.Sleep(10 * time.Microsecond)
				}
			}
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				block := n / batch
				member := uint64(n%batch + batch*(block/2)) // block 2k adds, 2k+1 removes
				key := keys[member%uint64(len(keys))]
				if block%2 == 0 {
					ix.Add("bench", key, member)
				} else {
					ix.Remove("bench", key, member)
				}
				n++
				if n%batch == 0 {
					wait()
				}
			}
			ix.poke()
			wait()
			b.StopTimer()
			flushes := metricValue(b, reg, "wspush_index_flushes_total", "result", "ok")
			b.ReportMetric(float64(n)/max(flushes-1, 1), "changes/flush") // less the start's rewrite
		})
	}
}
