package middle

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/proto"
)

// newTestRedisStore returns a store under prefix on client c.
func newTestRedisStore(t testing.TB, c *redis.Client, prefix string, size int, ttl time.Duration) *RedisStore {
	t.Helper()
	s, err := NewRedisStore(RedisStoreConfig{Client: c, Prefix: prefix, HistorySize: size, HistoryTTL: ttl})
	if err != nil {
		t.Fatalf("NewRedisStore: %v", err)
	}
	return s
}

func redisAppend(t testing.TB, s *RedisStore, app, key string, v int) uint64 {
	t.Helper()
	p := jsonPub(app, key, v)
	p.TS = int64(1000 + v)
	if err := s.Append(context.Background(), &p); err != nil {
		t.Fatalf("append %s.%s %d: %v", app, key, v, err)
	}
	return p.Seq
}

func redisHistorySeqs(t testing.TB, s *RedisStore, app, key string, since uint64) ([]uint64, bool) {
	t.Helper()
	pubs, complete, err := s.History(context.Background(), app, key, since)
	if err != nil {
		t.Fatalf("history since %d: %v", since, err)
	}
	var seqs []uint64
	for _, p := range pubs {
		seqs = append(seqs, p.Seq)
	}
	return seqs, complete
}

// TestRedisStoreSeqSharedByTwoClients races two stores, each with its own
// connection (two nodes), on one key: every seq is assigned exactly once
// and the history holds them all, in order.
func TestRedisStoreSeqSharedByTwoClients(t *testing.T) {
	c1, c2 := redisForTest(t), redisForTest(t)
	prefix := redisTestPrefix(t, c1)
	stores := []*RedisStore{
		newTestRedisStore(t, c1, prefix, 1000, 0),
		newTestRedisStore(t, c2, prefix, 1000, 0),
	}
	const perStore = 500
	got := make([][]uint64, len(stores))
	var wg sync.WaitGroup
	for i, s := range stores {
		wg.Go(func() {
			for v := range perStore {
				p := jsonPub("app", "k", v)
				if err := s.Append(context.Background(), &p); err != nil {
					t.Errorf("store %d append: %v", i, err)
					return
				}
				got[i] = append(got[i], p.Seq)
			}
		})
	}
	wg.Wait()
	for i := range got {
		if !slices.IsSorted(got[i]) {
			t.Errorf("store %d got seqs out of order: %s", i, shortSeqs(got[i]))
		}
	}
	all := slices.Concat(got...)
	slices.Sort(all)
	wantSeqs(t, "both stores", all, seqRange(1, 2*perStore))

	seqs, complete := redisHistorySeqs(t, stores[0], "app", "k", 0)
	if !complete {
		t.Error("history since 0: complete = false, want true")
	}
	wantSeqs(t, "history", seqs, seqRange(1, 2*perStore))
}

func TestRedisStoreAppendBatch(t *testing.T) {
	c := redisForTest(t)
	testStoreAppendBatch(t, newTestRedisStore(t, c, redisTestPrefix(t, c), 8, 0))
}

// TestRedisStoreAppendBatchFailure: AppendBatch reports the prefix that
// was sequenced; a failed call does not stop the later ones of its
// pipeline; a batch that never reached Redis sequenced nothing.
func TestRedisStoreAppendBatchFailure(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	s := newTestRedisStore(t, c, prefix, 8, 0)
	ctx := context.Background()
	// A history that is not a stream makes the script fail for key "bad".
	if err := c.Set(ctx, newRedisKeys(prefix).hist("app", "bad"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pubs := []proto.Publication{jsonPub("app", "k", 1), jsonPub("app", "k", 2), jsonPub("app", "bad", 3), jsonPub("app", "k", 4)}
	n, err := s.AppendBatch(ctx, pubs)
	if n != 2 || err == nil || !strings.Contains(err.Error(), "app.bad") {
		t.Fatalf("AppendBatch with item 2 failing: %d, %v; want 2 and an error naming app.bad", n, err)
	}
	wantSeqs(t, "sequenced prefix", []uint64{pubs[0].Seq, pubs[1].Seq}, seqRange(1, 2))
	// The item after the failure ran too: one that "may or may not" be
	// sequenced.
	seqs, _ := redisHistorySeqs(t, s, "app", "k", 0)
	wantSeqs(t, "history of k", seqs, seqRange(1, 3))

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	n, err = s.AppendBatch(cctx, []proto.Publication{jsonPub("app", "k", 5), jsonPub("app", "k", 6)})
	if n != 0 || !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendBatch with a canceled ctx: %d, %v; want 0, context.Canceled", n, err)
	}
	pubs = []proto.Publication{jsonPub("app", "k", 7)}
	if n, err := s.AppendBatch(ctx, pubs); n != 1 || err != nil || pubs[0].Seq != 4 {
		t.Fatalf("AppendBatch after the canceled one: %d, %v, seq %d; want 1, nil, seq 4", n, err, pubs[0].Seq)
	}
}

// TestRedisStoreAppendBatchNoScript: after Redis lost its scripts (SCRIPT
// FLUSH, as a restart does), AppendBatch loads the script and sequences
// the whole batch once.
func TestRedisStoreAppendBatchNoScript(t *testing.T) {
	c := redisForTest(t)
	s := newTestRedisStore(t, c, redisTestPrefix(t, c), 8, 0)
	ctx := context.Background()
	redisAppend(t, s, "app", "k", 1)
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	pubs := []proto.Publication{jsonPub("app", "k", 2), jsonPub("app", "k2", 1), jsonPub("app", "k", 3)}
	if n, err := s.AppendBatch(ctx, pubs); n != len(pubs) || err != nil {
		t.Fatalf("AppendBatch after SCRIPT FLUSH: %d, %v; want %d, nil", n, err, len(pubs))
	}
	wantSeqs(t, "batch seqs", []uint64{pubs[0].Seq, pubs[1].Seq, pubs[2].Seq}, []uint64{2, 1, 3})
	seqs, _ := redisHistorySeqs(t, s, "app", "k", 0)
	wantSeqs(t, "history of k", seqs, seqRange(1, 3))
}

func TestRedisStoreHistoryAndLatest(t *testing.T) {
	c := redisForTest(t)
	s := newTestRedisStore(t, c, redisTestPrefix(t, c), 10, 0)
	ctx := context.Background()

	// A key never published to.
	for _, tc := range []struct {
		since        uint64
		wantComplete bool
	}{{0, true}, {1, false}, {math.MaxUint64, false}} {
		seqs, complete := redisHistorySeqs(t, s, "app", "none", tc.since)
		if len(seqs) != 0 || complete != tc.wantComplete {
			t.Errorf("empty key, since %d: got %v complete=%v, want none complete=%v", tc.since, seqs, complete, tc.wantComplete)
		}
	}
	if _, ok, err := s.Latest(ctx, "app", "none"); err != nil || ok {
		t.Errorf("Latest of an empty key: ok=%v err=%v, want none", ok, err)
	}

	for v := 1; v <= 5; v++ {
		if seq := redisAppend(t, s, "app", "k", v); seq != uint64(v) {
			t.Fatalf("append %d: seq %d", v, seq)
		}
	}
	for _, tc := range []struct {
		since        uint64
		want         []uint64
		wantComplete bool
	}{
		{0, seqRange(1, 5), true},
		{3, seqRange(4, 5), true},
		{4, seqRange(5, 5), true},
		{5, nil, true},               // up to date
		{6, nil, false},              // a seq the key never had
		{math.MaxUint64, nil, false}, // the same, at the edge
		{math.MaxUint64 - 1, nil, false},
	} {
		seqs, complete := redisHistorySeqs(t, s, "app", "k", tc.since)
		if !equalSeqs(seqs, tc.want) || complete != tc.wantComplete {
			t.Errorf("since %d: got %s complete=%v, want %s complete=%v",
				tc.since, shortSeqs(seqs), complete, shortSeqs(tc.want), tc.wantComplete)
		}
	}

	p, ok, err := s.Latest(ctx, "app", "k")
	if err != nil || !ok {
		t.Fatalf("Latest: ok=%v err=%v", ok, err)
	}
	want := proto.Publication{App: "app", Key: "k", Seq: 5, TS: 1005, Data: []byte(`{"v":5}`), JSON: true}
	if p.App != want.App || p.Key != want.Key || p.Seq != want.Seq || p.TS != want.TS || !bytes.Equal(p.Data, want.Data) || p.JSON != want.JSON {
		t.Errorf("Latest = %+v (data %s), want %+v (data %s)", p, p.Data, want, want.Data)
	}
}

// TestRedisStoreBinaryPayload keeps arbitrary bytes (NUL, invalid UTF-8)
// and the JSON flag intact.
func TestRedisStoreBinaryPayload(t *testing.T) {
	c := redisForTest(t)
	s := newTestRedisStore(t, c, redisTestPrefix(t, c), 4, 0)
	ctx := context.Background()
	data := []byte{0, 1, 0xff, 0xfe, '"', '\n', 0}
	p := proto.Publication{App: "app", Key: "bin", TS: 7, Data: data}
	if err := s.Append(ctx, &p); err != nil {
		t.Fatal(err)
	}
	pubs, complete, err := s.History(ctx, "app", "bin", 0)
	if err != nil || !complete || len(pubs) != 1 {
		t.Fatalf("History: %d pubs, complete=%v, err=%v", len(pubs), complete, err)
	}
	if got := pubs[0]; !bytes.Equal(got.Data, data) || got.JSON || got.TS != 7 || got.Seq != 1 {
		t.Errorf("got %+v, want data %v, not JSON, ts 7, seq 1", got, data)
	}
	empty := proto.Publication{App: "app", Key: "bin", TS: 8, Data: nil}
	if err := s.Append(ctx, &empty); err != nil {
		t.Fatal(err)
	}
	latest, ok, err := s.Latest(ctx, "app", "bin")
	if err != nil || !ok || len(latest.Data) != 0 || latest.Seq != 2 {
		t.Errorf("Latest after an empty payload: %+v ok=%v err=%v", latest, ok, err)
	}
}

// TestRedisStoreTrimming: MAXLEN keeps HistorySize entries; a since that
// fell off the history is reported incomplete.
func TestRedisStoreTrimming(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	s := newTestRedisStore(t, c, prefix, 3, 0)
	for v := 1; v <= 10; v++ {
		redisAppend(t, s, "app", "k", v)
	}
	if n := c.XLen(context.Background(), newRedisKeys(prefix).hist("app", "k")).Val(); n != 3 {
		t.Errorf("stream length %d, want 3", n)
	}
	for _, tc := range []struct {
		since        uint64
		want         []uint64
		wantComplete bool
	}{
		{0, seqRange(8, 10), false},
		{6, seqRange(8, 10), false},
		{7, seqRange(8, 10), true},
		{9, seqRange(10, 10), true},
		{10, nil, true},
	} {
		seqs, complete := redisHistorySeqs(t, s, "app", "k", tc.since)
		if !equalSeqs(seqs, tc.want) || complete != tc.wantComplete {
			t.Errorf("since %d: got %s complete=%v, want %s complete=%v",
				tc.since, shortSeqs(seqs), complete, shortSeqs(tc.want), tc.wantComplete)
		}
	}
}

// TestRedisStoreHistoryTTL: the history of a quiet key expires, its seq
// does not.
func TestRedisStoreHistoryTTL(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	s := newTestRedisStore(t, c, prefix, 8, 100*time.Millisecond)
	keys := newRedisKeys(prefix)
	ctx := context.Background()
	for v := 1; v <= 3; v++ {
		redisAppend(t, s, "app", "k", v)
	}
	if ttl := c.PTTL(ctx, keys.seq("app", "k")).Val(); ttl != -1 {
		t.Errorf("seq key TTL = %s, want none", ttl)
	}
	testutil.Eventually(t, 5*time.Second, 20*time.Millisecond, func() error {
		if n := c.Exists(ctx, keys.hist("app", "k")).Val(); n != 0 {
			return fmt.Errorf("history still exists")
		}
		return nil
	})
	if seqs, complete := redisHistorySeqs(t, s, "app", "k", 1); len(seqs) != 0 || complete {
		t.Errorf("since 1 after expiry: %v complete=%v, want none, incomplete", seqs, complete)
	}
	if seqs, complete := redisHistorySeqs(t, s, "app", "k", 3); len(seqs) != 0 || !complete {
		t.Errorf("since 3 (the top) after expiry: %v complete=%v, want none, complete", seqs, complete)
	}
	if _, ok, _ := s.Latest(ctx, "app", "k"); ok {
		t.Error("Latest after expiry: found one")
	}
	if seq := redisAppend(t, s, "app", "k", 4); seq != 4 {
		t.Errorf("append after expiry: seq %d, want 4 (seqs never restart)", seq)
	}
	if seqs, complete := redisHistorySeqs(t, s, "app", "k", 3); !equalSeqs(seqs, []uint64{4}) || !complete {
		t.Errorf("since 3: %v complete=%v, want [4] complete", seqs, complete)
	}
}

// TestRedisStoreLostCounter: a counter deleted while the history survives
// resumes after the history instead of assigning seqs again.
func TestRedisStoreLostCounter(t *testing.T) {
	c := redisForTest(t)
	prefix := redisTestPrefix(t, c)
	s := newTestRedisStore(t, c, prefix, 8, 0)
	for v := 1; v <= 3; v++ {
		redisAppend(t, s, "app", "k", v)
	}
	if err := c.Del(context.Background(), newRedisKeys(prefix).seq("app", "k")).Err(); err != nil {
		t.Fatal(err)
	}
	if seq := redisAppend(t, s, "app", "k", 4); seq != 4 {
		t.Errorf("append after the counter was lost: seq %d, want 4", seq)
	}
}

// TestRedisStoreAcrossNodes: a publication sequenced through one node is
// replayed by another from the shared history (resume on any node).
func TestRedisStoreAcrossNodes(t *testing.T) {
	c1, c2 := redisForTest(t), redisForTest(t)
	prefix := redisTestPrefix(t, c1)
	a := newTestNode(t, Config{Store: newTestRedisStore(t, c1, prefix, 16, 0)})
	b := newTestNode(t, Config{Store: newTestRedisStore(t, c2, prefix, 16, 0)})
	if got := publishValues(t, b, "app", "k", 1, 5); !equalSeqs(got, seqRange(1, 5)) {
		t.Fatalf("node b assigned %s", shortSeqs(got))
	}
	if got := publishValues(t, a, "app", "k", 6, 6); !equalSeqs(got, []uint64{6}) {
		t.Fatalf("node a assigned %s, want [6]", shortSeqs(got))
	}
	r := newRecorder()
	subscribe(t, a, r, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}, Since: map[string]uint64{"k": 2}})
	ms := r.messages(t)
	if len(ms) == 0 {
		t.Fatal("no messages")
	}
	wantAck(t, ms[0], 1, proto.Recovered)
	wantSeqs(t, "replay on node a", dataSeqs(ms, "k"), seqRange(3, 6))
}

func TestRedisStoreConfigValidate(t *testing.T) {
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, tc := range []struct {
		name string
		cfg  RedisStoreConfig
	}{
		{"no client", RedisStoreConfig{}},
		{"negative size", RedisStoreConfig{Client: c, HistorySize: -1}},
		{"negative ttl", RedisStoreConfig{Client: c, HistoryTTL: -time.Second}},
		{"sub-ms ttl", RedisStoreConfig{Client: c, HistoryTTL: time.Microsecond}},
		{"prefix with space", RedisStoreConfig{Client: c, Prefix: "a b"}},
	} {
		if _, err := NewRedisStore(tc.cfg); err == nil {
			t.Errorf("%s: NewRedisStore accepted %+v", tc.name, tc.cfg)
		}
	}
	if _, err := NewRedisStore(RedisStoreConfig{Client: c}); err != nil {
		t.Errorf("defaults rejected: %v", err)
	}
}

// BenchmarkRedisStoreAppend: one publication per op, one round trip each.
func BenchmarkRedisStoreAppend(b *testing.B) {
	c := redisForTest(b)
	s := newTestRedisStore(b, c, redisTestPrefix(b, c), DefaultHistorySize, 0)
	ctx := context.Background()
	p := proto.Publication{App: "bench", Key: "k", TS: 1, Data: redisBenchPayload, JSON: true}
	b.ReportAllocs()
	for b.Loop() {
		if err := s.Append(ctx, &p); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedisStoreAppendBatch: 100 publications over 10 keys per op,
// one round trip; compare pubs/s with BenchmarkRedisStoreAppend's ops/s.
func BenchmarkRedisStoreAppendBatch(b *testing.B) {
	c := redisForTest(b)
	s := newTestRedisStore(b, c, redisTestPrefix(b, c), DefaultHistorySize, 0)
	ctx := context.Background()
	pubs := make([]proto.Publication, 100)
	ops := 0
	b.ReportAllocs()
	for b.Loop() {
		for i := range pubs {
			pubs[i] = proto.Publication{App: "bench", Key: "k" + strconv.Itoa(i%10), TS: 1, Data: redisBenchPayload, JSON: true}
		}
		if _, err := s.AppendBatch(ctx, pubs); err != nil {
			b.Fatal(err)
		}
		ops++
	}
	b.ReportMetric(float64(ops*len(pubs))/b.Elapsed().Seconds(), "pubs/s")
}

// BenchmarkRedisStoreAppendParallel: publications to 64 keys from
// GOMAXPROCS goroutines, as several publishers of one node.
func BenchmarkRedisStoreAppendParallel(b *testing.B) {
	c := redisForTest(b)
	s := newTestRedisStore(b, c, redisTestPrefix(b, c), DefaultHistorySize, 0)
	ctx := context.Background()
	var next sync.Mutex
	n := 0
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		next.Lock()
		key := fmt.Sprintf("k%d", n%64)
		n++
		next.Unlock()
		p := proto.Publication{App: "bench", Key: key, TS: 1, Data: redisBenchPayload, JSON: true}
		for pb.Next() {
			if err := s.Append(ctx, &p); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

var redisBenchPayload = []byte(`{"temp":21.53,"humidity":40.1}`)
