package middle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/wspush/wspush/proto"
)

// sameShardKeys returns n keys of app that s puts in one shard, where the
// eviction order is exactly least recently published first.
func sameShardKeys(s *MemoryStore, app string, n int) []string {
	var out []string
	want := s.shard(app, "k0")
	for i := 0; len(out) < n; i++ {
		k := fmt.Sprintf("k%d", i)
		if s.shard(app, k) == want {
			out = append(out, k)
		}
	}
	return out
}

// held lists which of keys s holds, without touching them.
func held(s *MemoryStore, app string, keys []string) []string {
	var out []string
	for _, k := range keys {
		sh := s.shard(app, k)
		sh.mu.Lock()
		if sh.streams[StreamKey{app, k}] != nil {
			out = append(out, k)
		}
		sh.mu.Unlock()
	}
	return out
}

func appendOne(s *MemoryStore, app, key string) (proto.Publication, error) {
	p := []proto.Publication{{App: app, Key: key, Data: []byte(`1`), JSON: true}}
	_, err := s.AppendBatch(context.Background(), p, 0)
	return p[0], err
}

func mustAppend(t *testing.T, s *MemoryStore, app, key string) proto.Publication {
	t.Helper()
	p, err := appendOne(s, app, key)
	if err != nil {
		t.Fatalf("append %s.%s: %v", app, key, err)
	}
	return p
}

func TestMemoryStoreEvictsLeastRecentlyPublished(t *testing.T) {
	s := NewMemoryStore(4, 0, 0).LimitKeys(3, nil)
	k := sameShardKeys(s, "a", 5)
	for _, key := range k[:3] {
		mustAppend(t, s, "a", key)
	}
	mustAppend(t, s, "a", k[0]) // k0 is now the most recent: k1 goes first
	mustAppend(t, s, "a", k[3])
	if got, want := held(s, "a", k), []string{k[0], k[2], k[3]}; !slices.Equal(got, want) {
		t.Fatalf("after one eviction: hold %v, want %v", got, want)
	}
	mustAppend(t, s, "a", k[4])
	if got, want := held(s, "a", k), []string{k[0], k[3], k[4]}; !slices.Equal(got, want) {
		t.Fatalf("after two evictions: hold %v, want %v", got, want)
	}
	if s.Keys() != 3 || s.Evictions() != 2 {
		t.Fatalf("keys %d, evictions %d; want 3 and 2", s.Keys(), s.Evictions())
	}
}

func TestMemoryStoreKeepsKeysInUse(t *testing.T) {
	s := NewMemoryStore(4, 0, 0)
	k := sameShardKeys(s, "a", 6)
	s.LimitKeys(3, func(app, key string) bool { return app == "a" && key == k[0] })
	for _, key := range k {
		mustAppend(t, s, "a", key) // k0, the least recent, is in use
	}
	if got, want := held(s, "a", k), []string{k[0], k[4], k[5]}; !slices.Equal(got, want) {
		t.Fatalf("hold %v, want %v (the subscribed key, then the most recent)", got, want)
	}
}

// TestMemoryStoreEvictsFromAnotherShard: a new key whose shard holds only
// keys in use evicts from another shard.
func TestMemoryStoreEvictsFromAnotherShard(t *testing.T) {
	s := NewMemoryStore(4, 0, 0)
	k := sameShardKeys(s, "a", 3)
	var other string
	for i := 0; other == ""; i++ {
		if key := fmt.Sprintf("o%d", i); s.shard("a", key) != s.shard("a", k[0]) {
			other = key
		}
	}
	s.LimitKeys(3, func(app, key string) bool { return key != other })
	mustAppend(t, s, "a", other)
	mustAppend(t, s, "a", k[0])
	mustAppend(t, s, "a", k[1])
	mustAppend(t, s, "a", k[2])
	if got := held(s, "a", append([]string{other}, k...)); !slices.Equal(got, k) {
		t.Fatalf("hold %v, want %v", got, k)
	}
}

func TestMemoryStoreRefusesWhenEveryKeyIsInUse(t *testing.T) {
	s := NewMemoryStore(4, 0, 0).LimitKeys(2, func(string, string) bool { return true })
	mustAppend(t, s, "a", "x")
	mustAppend(t, s, "a", "y")
	if _, err := appendOne(s, "a", "z"); !errors.Is(err, ErrKeyLimit) {
		t.Fatalf("append of a third key: %v, want ErrKeyLimit", err)
	}
	if _, err := s.Latest(context.Background(), "a", "z"); !errors.Is(err, ErrKeyLimit) {
		t.Fatalf("read of a third key: %v, want ErrKeyLimit", err)
	}
	// Keys held are still served.
	if p := mustAppend(t, s, "a", "x"); p.Seq != 2 {
		t.Fatalf("x: seq %d, want 2", p.Seq)
	}
	if s.Keys() != 2 || s.Evictions() != 0 {
		t.Fatalf("keys %d, evictions %d; want 2 and 0", s.Keys(), s.Evictions())
	}
}

// TestMemoryStoreEpochAfterEviction: an evicted key starts over in a new
// epoch, so that no position of its old stream names a publication of the
// new one.
func TestMemoryStoreEpochAfterEviction(t *testing.T) {
	s := NewMemoryStore(4, 0, 0).LimitKeys(1, nil)
	mustAppend(t, s, "a", "x")
	old := mustAppend(t, s, "a", "x")
	mustAppend(t, s, "a", "y") // evicts x
	p := mustAppend(t, s, "a", "x")
	if p.Epoch == old.Epoch || p.Seq != 1 {
		t.Fatalf("x after eviction: seq %d epoch %q; want seq 1 in an epoch other than %q", p.Seq, p.Epoch, old.Epoch)
	}
}

// TestMemoryStoreKeyLimitConcurrent: many publishers of distinct keys never
// make the store hold more than the limit, and its count is exact.
func TestMemoryStoreKeyLimitConcurrent(t *testing.T) {
	const limit = 100
	s := NewMemoryStore(4, 0, 0).LimitKeys(limit, func(app, key string) bool { return key == "w0-0" })
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				if _, err := appendOne(s, "a", fmt.Sprintf("w%d-%d", w, i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for i := range s.shards {
		total += len(s.shards[i].streams)
	}
	if total != limit || s.Keys() != limit || s.Evictions() != 8*2000-limit {
		t.Fatalf("hold %d keys, count %d, evictions %d; want %d, %d, %d", total, s.Keys(), s.Evictions(), limit, limit, 8*2000-limit)
	}
	if got := held(s, "a", []string{"w0-0"}); len(got) != 1 {
		t.Fatal("the key in use was evicted")
	}
}

// TestNodeKeyLimit: through a node, a subscribed key is never evicted, a
// key beyond the limit while every key is subscribed is refused (until a
// subscriber leaves), and a resume from before an eviction gets a reset.
func TestNodeKeyLimit(t *testing.T) {
	ctx := context.Background()
	n := newTestNode(t, Config{MaxKeys: 2})
	publishValues(t, n, "a", "gone", 1, 3)
	h, err := n.store.Latest(ctx, "a", "gone")
	if err != nil {
		t.Fatal(err)
	}
	before := h.Top

	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{ID: 1, App: "a", Keys: []string{"x", "y"}})
	// x and y took the room: "gone" was evicted.
	_, err = n.Publish(ctx, "test", []proto.Publication{jsonPub("a", "z", 1)})
	if !errors.Is(err, ErrKeyLimit) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("publish to a third key while both are subscribed: %v, want ErrKeyLimit and ErrUnavailable", err)
	}
	publishValues(t, n, "a", "x", 1, 2)
	n.Unsubscribe(ctx, s, "a", []string{"y"})
	publishValues(t, n, "a", "z", 1, 1) // evicts y, not x
	publishValues(t, n, "a", "x", 3, 3)
	wantSeqs(t, "x", s.seqs(t, "x"), seqRange(1, 3))

	// "gone" comes back in a new epoch: a resume from its old position
	// gets a reset (epoch), then the latest value.
	publishValues(t, n, "a", "gone", 4, 4) // evicts z
	r := newRecorder()
	subscribe(t, n, r, SubscribeRequest{ID: 2, App: "a", Keys: []string{"gone"}, Since: map[string]proto.Position{"gone": before}})
	ms := r.messages(t)
	wantAck(t, ms[0], 2, proto.NotRecovered)
	now := ms[0].msg.Positions["gone"]
	if now.Epoch == before.Epoch || now.Seq != 1 {
		t.Fatalf("gone after eviction at %+v; want seq 1 in an epoch other than %q", now, before.Epoch)
	}
	if len(ms) != 3 {
		t.Fatalf("got %v, want ack, reset and latest", ms)
	}
	wantReset(t, ms[1], "gone", proto.Position{Seq: 0, Epoch: now.Epoch}, proto.ResetEpoch)
	wantSeqs(t, "latest", dataSeqs(ms, "gone"), []uint64{1})
	if got := n.store.(*MemoryStore).Keys(); got != 2 {
		t.Fatalf("store holds %d keys, want 2", got)
	}
}

// BenchmarkMemoryStoreNewKeys publishes each time to a key never seen:
// "unbounded" grows the store, "evicting" holds it at 10,000 keys, so that
// every publication beyond them evicts one.
func BenchmarkMemoryStoreNewKeys(b *testing.B) {
	for _, bc := range []struct {
		name    string
		maxKeys int
	}{{"unbounded", 0}, {"evicting", 10_000}} {
		b.Run(bc.name, func(b *testing.B) {
			s := NewMemoryStore(DefaultHistorySize, DefaultHistoryTTL, 0).
				LimitKeys(bc.maxKeys, func(string, string) bool { return false })
			keys := make([]string, b.N)
			for i := range keys {
				keys[i] = fmt.Sprintf("k%d", i)
			}
			p := make([]proto.Publication, 1)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				p[0] = proto.Publication{App: "a", Key: keys[i], Data: []byte(`1`), JSON: true}
				if _, err := s.AppendBatch(context.Background(), p, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
