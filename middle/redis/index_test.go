package middle

import (
	"bytes"
	"context"
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
	"github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
)

// redisLogBuffer collects log lines across goroutines.
type redisLogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *redisLogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// count is how many lines contain s.
func (b *redisLogBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *redisLogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// indexFixture is a RedisIndex running under a Node whose subscriptions
// it mirrors.
type indexFixture struct {
	id     string
	ix     *RedisIndex
	node   *Node
	reg    *prometheus.Registry
	logs   *redisLogBuffer
	cancel context.CancelFunc
	done   chan error

	stopOnce sync.Once
}

// startIndex starts an index for nodeID under prefix on client c, with
// short intervals; mod adjusts the config. The index stops with the test.
func startIndex(t *testing.T, c *redis.Client, prefix, nodeID string, mod func(*RedisIndexConfig)) *indexFixture {
	t.Helper()
	f := &indexFixture{id: nodeID, reg: prometheus.NewRegistry(), logs: &redisLogBuffer{}, done: make(chan error, 1)}
	cfg := RedisIndexConfig{
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
	ix, err := NewRedisIndex(cfg)
	if err != nil {
		t.Fatalf("NewRedisIndex: %v", err)
	}
	f.ix = ix
	f.node = newTestNode(t, Config{Index: ix})
	ix.SetSnapshot(f.node.LocalSubscriptions)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go func() { f.done <- ix.Run(ctx) }()
	t.Cleanup(func() { f.stop(t) })
	return f
}

// stop ends Run (its clean shutdown included) and waits for it; later
// calls do nothing.
func (f *indexFixture) stop(t *testing.T) {
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

// sub subscribes a new connection to keys of app and returns it.
func (f *indexFixture) sub(t *testing.T, app string, keys ...string) *recorder {
	t.Helper()
	r := newRecorder()
	subscribe(t, f.node, r, SubscribeRequest{App: app, Keys: keys})
	return r
}

func (f *indexFixture) unsub(r *recorder, app string, keys ...string) {
	f.node.Unsubscribe(context.Background(), r, app, keys)
}

func (f *indexFixture) waitReady(t *testing.T) {
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
func readIndexState(t testing.TB, c *redis.Client, prefix string) indexState {
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
	for _, k := range redisKeysUnder(t, c, prefix) {
		rest := strings.TrimPrefix(k, prefix+":")
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

// wantIndexState is the index the live fixtures' local subscriptions
// call for.
func wantIndexState(fs ...*indexFixture) indexState {
	s := indexState{subs: map[string][]string{}, keys: map[string][]string{}, nodeSubs: map[string][]string{}}
	keys := map[string]map[string]bool{}
	for _, f := range fs {
		f.node.LocalSubscriptions(func(app, key string, ids []uint64) {
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
func waitIndexState(t *testing.T, c *redis.Client, prefix string, fs ...*indexFixture) {
	t.Helper()
	testutil.Eventually(t, 10*time.Second, 10*time.Millisecond, func() error {
		got, want := readIndexState(t, c, prefix), wantIndexState(fs...)
		if got.String() != want.String() {
			return fmt.Errorf("index in Redis:\n  %s\nwant:\n  %s", got, want)
		}
		return nil
	})
}

func TestRedisIndexAddRemove(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	f := startIndex(t, c, prefix, "n1", nil)
	ctx := context.Background()

	r1 := f.sub(t, "plant-7", "001", "002")
	r2 := f.sub(t, "plant-7", "001")
	r3 := f.sub(t, "demo", "s001")
	waitIndexState(t, c, prefix, f)
	got := readIndexState(t, c, prefix)
	if want := []string{"n1/" + strconv.FormatUint(r1.ConnID(), 10), "n1/" + strconv.FormatUint(r2.ConnID(), 10)}; !slices.Equal(got.subs["plant-7:001"], slices.Sorted(slices.Values(want))) {
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
	if n := redisMetric(t, f.reg, "wspush_index_flushes_total", "result", "ok"); n < 2 {
		t.Errorf("flushes_total{ok} = %v, want at least 2", n)
	}
	if n := redisMetric(t, f.reg, "wspush_index_rewrites_total"); n != 1 {
		t.Errorf("rewrites_total = %v, want 1 (the start)", n)
	}
}

// TestRedisIndexBatching: changes wait for FlushInterval or BatchSize, and
// the changes of one member coalesce.
func TestRedisIndexBatching(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	f := startIndex(t, c, prefix, "n1", func(cfg *RedisIndexConfig) {
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
	if n := redisMetric(t, f.reg, "wspush_index_pending"); n != 3 {
		t.Errorf("pending = %v after 5 changes of 3 members, want 3", n)
	}
	if s := readIndexState(t, c, prefix); len(s.subs) != 0 {
		t.Fatalf("flushed before the batch was full: %s", s)
	}
	ix.Remove("app", "b", 2) // still 3 members
	ix.Add("app", "d", 4)    // 4: the batch is full
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if !ix.synced() {
			return errNotYet
		}
		return nil
	})
	got := readIndexState(t, c, prefix)
	if want := "sub:app:a=[n1/1] sub:app:d=[n1/4] keys:app=[a d] apps=[app] nodesubs:n1=[app:a:1 app:d:4] "; got.String() != want {
		t.Errorf("index in Redis:\n  %s\nwant:\n  %s", got, want)
	}
}

// TestRedisIndexTwoNodes: a key stays listed while any node has a
// subscriber.
func TestRedisIndexTwoNodes(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", nil)
	b := startIndex(t, c, prefix, "node-b", nil)
	ra := a.sub(t, "app", "k")
	rb := b.sub(t, "app", "k")
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

// TestRedisIndexConcurrentChurn: two nodes subscribing and unsubscribing
// from many goroutines end with exactly their local subscriptions in
// Redis.
func TestRedisIndexConcurrentChurn(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	fs := []*indexFixture{
		startIndex(t, c, prefix, "node-a", func(cfg *RedisIndexConfig) { cfg.BatchSize = 16 }),
		startIndex(t, c, prefix, "node-b", func(cfg *RedisIndexConfig) { cfg.BatchSize = 16 }),
	}
	keys := keyNames(12)
	var wg sync.WaitGroup
	for _, f := range fs {
		for g := range 6 {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				var held []*recorder
				for range 300 {
					app := []string{"x", "y"}[rng.IntN(2)]
					if len(held) > 0 && rng.IntN(2) == 0 {
						i := rng.IntN(len(held))
						f.unsub(held[i], "x", keys...)
						f.unsub(held[i], "y", keys...)
						held = slices.Delete(held, i, i+1)
						continue
					}
					r := newRecorder()
					if err := f.node.Subscribe(context.Background(), r, SubscribeRequest{App: app, Keys: []string{keys[rng.IntN(len(keys))], keys[rng.IntN(len(keys))]}}); err != nil {
						t.Error(err)
						return
					}
					held = append(held, r)
				}
			})
		}
	}
	wg.Wait()
	waitIndexState(t, c, prefix, fs...)
}

func keyNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("k%02d", i)
	}
	return out
}

// TestRedisIndexDeadNodeAndComeback: a node cut off from Redis stops
// refreshing its liveness key; another node removes its entries once the
// key expires. When the cut-off node gets Redis back, it notices that its
// key had expired and writes its share again, including what changed
// meanwhile.
func TestRedisIndexDeadNodeAndComeback(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	proxy := newRedisProxy(t)
	const ttl = 300 * time.Millisecond
	short := func(cfg *RedisIndexConfig) { cfg.NodeTTL = ttl }
	a := startIndex(t, proxy.client(0), prefix, "node-a", short)
	b := startIndex(t, c, prefix, "node-b", short)
	a.sub(t, "app", "k1", "k2")
	gone := a.sub(t, "app", "k3")
	b.sub(t, "app", "k1")
	waitIndexState(t, c, prefix, a, b)

	proxy.setDown(true)
	a.unsub(gone, "app", "k3")
	a.sub(t, "app", "k4")
	// Node b sees only itself once a's entries are removed.
	testutil.Eventually(t, 20*ttl, 10*time.Millisecond, func() error {
		got, want := readIndexState(t, c, prefix), wantIndexState(b)
		if got.String() != want.String() {
			return fmt.Errorf("index in Redis:\n  %s\nwant node b's alone:\n  %s", got, want)
		}
		return nil
	})
	if n := redisMetric(t, b.reg, "wspush_index_dead_nodes_cleaned_total"); n != 1 {
		t.Errorf("node b dead_nodes_cleaned_total = %v, want 1", n)
	}
	if nodes := c.SMembers(context.Background(), newRedisKeys(prefix).nodes()).Val(); !slices.Equal(nodes, []string{"node-b"}) {
		t.Errorf("nodes = %v, want [node-b]", nodes)
	}
	if a.ix.Ready() == nil {
		t.Error("node a Ready() = nil while cut off from Redis")
	}

	proxy.setDown(false)
	waitIndexState(t, c, prefix, a, b)
	a.waitReady(t)
	if n := redisMetric(t, a.reg, "wspush_index_rewrites_total"); n < 2 {
		t.Errorf("node a rewrites_total = %v, want at least 2", n)
	}
	if n := a.logs.count("index: Redis write failed"); n != 1 {
		t.Errorf("node a logged %d write failures, want 1:\n%s", n, a.logs)
	}
	if n := a.logs.count("index: Redis is back"); n != 1 {
		t.Errorf("node a logged recovery %d times, want 1:\n%s", n, a.logs)
	}
}

// TestRedisIndexRewriteAfterRedisLoss: Redis loses the whole index (a
// restart without persistence) while the node is cut off; once it is back,
// the node's share is written again from its local subscriptions.
func TestRedisIndexRewriteAfterRedisLoss(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	proxy := newRedisProxy(t)
	a := startIndex(t, proxy.client(0), prefix, "node-a", nil)
	r := a.sub(t, "app", "k1", "k2")
	waitIndexState(t, c, prefix, a)

	proxy.setDown(true)
	a.unsub(r, "app", "k2")
	a.sub(t, "app", "k3")
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if a.ix.Ready() == nil {
			return fmt.Errorf("Ready() = nil while Redis is cut off")
		}
		return nil
	})
	if keys := redisKeysUnder(t, c, prefix); len(keys) > 0 {
		if err := c.Del(context.Background(), keys...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	proxy.setDown(false)
	waitIndexState(t, c, prefix, a)
	a.waitReady(t)
}

// TestRedisIndexRestartReplacesPreviousRun: a node that died without
// cleaning up and restarts with the same ID before the others noticed
// replaces what its previous run left.
func TestRedisIndexRestartReplacesPreviousRun(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	proxy := newRedisProxy(t)
	old := startIndex(t, proxy.client(0), prefix, "node-a", func(cfg *RedisIndexConfig) {
		cfg.NodeTTL = time.Hour
		cfg.ShutdownTimeout = 50 * time.Millisecond
	})
	old.sub(t, "app", "k1", "k2")
	waitIndexState(t, c, prefix, old)
	proxy.setDown(true)
	old.stop(t) // its clean-up cannot reach Redis
	if s := readIndexState(t, c, prefix); len(s.subs) != 2 {
		t.Fatalf("the crashed run should have left its entries: %s", s)
	}

	restarted := startIndex(t, c, prefix, "node-a", nil)
	restarted.sub(t, "app", "k2", "k3")
	waitIndexState(t, c, prefix, restarted)
}

// TestRedisIndexShutdownLeavesNothing: a node stopped cleanly removes its
// entries and liveness key, and only those.
func TestRedisIndexShutdownLeavesNothing(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", nil)
	b := startIndex(t, c, prefix, "node-b", nil)
	a.sub(t, "app", "k1", "k2")
	a.sub(t, "other", "k1")
	b.sub(t, "app", "k2")
	waitIndexState(t, c, prefix, a, b)

	a.stop(t)
	waitIndexState(t, c, prefix, b)
	keys := newRedisKeys(prefix)
	if n := c.Exists(context.Background(), keys.node("node-a")).Val(); n != 0 {
		t.Error("node a's liveness key survived its shutdown")
	}
	a.ix.Add("app", "late", 99) // after Run: ignored
	if a.ix.pendingLen() != 0 {
		t.Error("Add after Run was queued")
	}

	b.stop(t)
	if left := redisKeysUnder(t, c, prefix); len(left) != 0 {
		t.Errorf("keys left after both nodes stopped: %v", left)
	}
}

func TestRedisIndexRunNeedsSnapshotAndRunsOnce(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	ix, err := NewRedisIndex(RedisIndexConfig{Client: c, NodeID: "n1", Prefix: prefix})
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

func TestRedisIndexConfigValidate(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	ok := RedisIndexConfig{Client: c, NodeID: "n1"}
	for _, tc := range []struct {
		name string
		mod  func(*RedisIndexConfig)
	}{
		{"no client", func(c *RedisIndexConfig) { c.Client = nil }},
		{"no node ID", func(c *RedisIndexConfig) { c.NodeID = "" }},
		{"node ID with slash", func(c *RedisIndexConfig) { c.NodeID = "a/b" }},
		{"negative flush interval", func(c *RedisIndexConfig) { c.FlushInterval = -1 }},
		{"negative batch", func(c *RedisIndexConfig) { c.BatchSize = -1 }},
		{"tiny node TTL", func(c *RedisIndexConfig) { c.NodeTTL = time.Millisecond }},
		{"negative timeout", func(c *RedisIndexConfig) { c.Timeout = -1 }},
		{"backoff min above max", func(c *RedisIndexConfig) { c.BackoffMin = time.Minute }},
		{"prefix with space", func(c *RedisIndexConfig) { c.Prefix = "a b" }},
	} {
		cfg := ok
		tc.mod(&cfg)
		if _, err := NewRedisIndex(cfg); err == nil {
			t.Errorf("%s: NewRedisIndex accepted %+v", tc.name, cfg)
		}
	}
	if _, err := NewRedisIndex(ok); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
	reg := prometheus.NewRegistry()
	ok.Registerer = reg
	if _, err := NewRedisIndex(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRedisIndex(ok); err == nil {
		t.Error("registering the metrics twice succeeded")
	}
}

// BenchmarkRedisIndexAddRemove measures the batched path, per change,
// from the Add or Remove call until Redis holds its result: blocks of
// batch distinct changes (adds of new members, then removes of the same
// members, so that nothing coalesces and the index stays small), each
// written by one flush, which the benchmark waits for.
func BenchmarkRedisIndexAddRemove(b *testing.B) {
	for _, batch := range []int{1, 64, 1024} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			c := redisForTest(b)
			prefix := redisTestPrefix(b, c)
			reg := prometheus.NewRegistry()
			ix, err := NewRedisIndex(RedisIndexConfig{
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
			keys := keyNames(100)
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
			flushes := redisMetric(b, reg, "wspush_index_flushes_total", "result", "ok")
			b.ReportMetric(float64(n)/max(flushes-1, 1), "changes/flush") // less the start's rewrite
		})
	}
}

// TestRedisIndexLivenessLost: when a node's liveness key disappears under
// it (here deleted; in life, a pause longer than NodeTTL), the others
// remove its entries, and its next refresh notices and writes them again.
func TestRedisIndexLivenessLost(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	a := startIndex(t, c, prefix, "node-a", func(cfg *RedisIndexConfig) { cfg.NodeTTL = 3 * time.Second })
	b := startIndex(t, c, prefix, "node-b", func(cfg *RedisIndexConfig) { cfg.NodeTTL = 100 * time.Millisecond })
	a.sub(t, "app", "k1", "k2")
	b.sub(t, "app", "k2")
	waitIndexState(t, c, prefix, a, b)

	if err := c.Del(context.Background(), newRedisKeys(prefix).node("node-a")).Err(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 5*time.Second, 5*time.Millisecond, func() error {
		if redisMetric(t, b.reg, "wspush_index_dead_nodes_cleaned_total") != 1 {
			return fmt.Errorf("node b has not cleaned up node a")
		}
		return nil
	})
	waitIndexState(t, c, prefix, a, b)
	if n := a.logs.count("index: liveness key had expired"); n != 1 {
		t.Errorf("node a logged the lost liveness key %d times, want 1:\n%s", n, a.logs)
	}
}
