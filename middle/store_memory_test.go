package middle

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

// testClock is a settable clock for MemoryStore.now.
type testClock struct{ t time.Time }

func (c *testClock) now() time.Time          { return c.t }
func (c *testClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newClockedStore(size int, ttl time.Duration) (*MemoryStore, *testClock) {
	c := &testClock{t: time.Unix(1763812345, 0)}
	s := NewMemoryStore(size, ttl, 0)
	s.now = c.now
	return s, c
}

func appendN(t *testing.T, s *MemoryStore, app, key string, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := 0; i < n; i++ {
		p := []proto.Publication{{App: app, Key: key, TS: int64(i + 1), JSON: true}}
		top, _ := s.Tops(context.Background(), []StreamKey{{app, key}})
		p[0].Data = []byte(strconv.FormatUint(top[0].Seq+1, 10))
		if _, err := s.AppendBatch(context.Background(), p, 0); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, p[0].Seq)
	}
	return seqs
}

// historySeqs is what History(since) returns: the retained seqs, checked to
// be of the key and its top epoch.
func historySeqs(t *testing.T, s *MemoryStore, app, key string, since uint64) []uint64 {
	t.Helper()
	h, err := s.History(context.Background(), app, key, since)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, p := range h.Pubs {
		if p.App != app || p.Key != key || p.Epoch != h.Top.Epoch {
			t.Fatalf("history of %s.%s returned %s.%s of epoch %q (top %+v)", app, key, p.App, p.Key, p.Epoch, h.Top)
		}
		seqs = append(seqs, p.Seq)
	}
	return seqs
}

func TestMemoryStoreHistoryWrapAround(t *testing.T) {
	const size = 4
	s := NewMemoryStore(size, 0, 0)
	appendN(t, s, "a", "k", 11) // the ring holds 8..11
	for _, tt := range []struct {
		since uint64
		want  []uint64
	}{
		{0, seqRange(8, 11)},
		{6, seqRange(8, 11)},
		{7, seqRange(8, 11)},
		{9, seqRange(10, 11)},
		{10, []uint64{11}},
		{11, nil},
		{12, nil},
	} {
		if got := historySeqs(t, s, "a", "k", tt.since); !equalSeqs(got, tt.want) {
			t.Errorf("History(since=%d) = %s; want %s", tt.since, shortSeqs(got), shortSeqs(tt.want))
		}
	}
	// Every retained entry is the publication of that seq, not a stale slot.
	h, _ := s.History(context.Background(), "a", "k", 7)
	for _, p := range h.Pubs {
		if string(p.Data) != strconv.FormatUint(p.Seq, 10) {
			t.Errorf("seq %d holds data %q", p.Seq, p.Data)
		}
	}

	// A history of one is the latest value only.
	one := NewMemoryStore(0, 0, 0) // below 1 means 1
	appendN(t, one, "a", "k", 3)
	if got := historySeqs(t, one, "a", "k", 0); !equalSeqs(got, []uint64{3}) {
		t.Errorf("size 1: History(0) = %s; want [3]", shortSeqs(got))
	}
}

func TestMemoryStoreTTL(t *testing.T) {
	s, clock := newClockedStore(16, time.Minute)
	appendN(t, s, "a", "k", 3) // 1..3 at t0
	clock.advance(40 * time.Second)
	appendN(t, s, "a", "k", 2) // 4..5 at t0+40s
	if got := historySeqs(t, s, "a", "k", 0); !equalSeqs(got, seqRange(1, 5)) {
		t.Fatalf("before expiry: History(0) = %s", shortSeqs(got))
	}

	clock.advance(30 * time.Second) // 1..3 are 70s old, 4..5 are 30s old
	for _, tt := range []struct {
		since uint64
		want  []uint64
	}{
		{0, seqRange(4, 5)},
		{3, seqRange(4, 5)},
		{4, []uint64{5}},
		{5, nil},
	} {
		if got := historySeqs(t, s, "a", "k", tt.since); !equalSeqs(got, tt.want) {
			t.Errorf("after expiry: History(since=%d) = %s; want %s", tt.since, shortSeqs(got), shortSeqs(tt.want))
		}
	}

	// Exactly TTL old is still retained; one nanosecond more is not, except
	// the latest value.
	s2, clock2 := newClockedStore(4, time.Minute)
	appendN(t, s2, "a", "k", 2)
	clock2.advance(time.Minute)
	if got := historySeqs(t, s2, "a", "k", 0); !equalSeqs(got, seqRange(1, 2)) {
		t.Errorf("at exactly TTL: History(0) = %s; want [1-2]", shortSeqs(got))
	}
	clock2.advance(time.Nanosecond)
	if got := historySeqs(t, s2, "a", "k", 0); !equalSeqs(got, []uint64{2}) {
		t.Errorf("past TTL: History(0) = %s; want the latest only", shortSeqs(got))
	}

	// The latest value outlives the TTL, and the sequence goes on.
	clock.advance(time.Hour)
	if got := historySeqs(t, s, "a", "k", 0); !equalSeqs(got, []uint64{5}) {
		t.Errorf("all expired: History(0) = %s; want the latest only", shortSeqs(got))
	}
	h, err := s.Latest(context.Background(), "a", "k")
	if err != nil || h.Top.Seq != 5 || len(h.Pubs) != 1 || h.Pubs[0].Seq != 5 {
		t.Fatalf("Latest after TTL = %+v, %v; want seq 5", h, err)
	}
	wantSeqs(t, "append after expiry", appendN(t, s, "a", "k", 1), []uint64{6})
	if got := historySeqs(t, s, "a", "k", 4); !equalSeqs(got, []uint64{6}) {
		t.Errorf("after new append: History(4) = %s; want [6]", shortSeqs(got))
	}
}

// TestMemoryStoreIdempotencyExpiry: ids expire with the window, measured
// from their first publication.
func TestMemoryStoreIdempotencyExpiry(t *testing.T) {
	s, clock := newClockedStore(4, 0)
	s.idemWindow = time.Minute
	pub := func(id string) uint64 {
		p := []proto.Publication{{App: "a", Key: "k", ID: id, Data: []byte("1"), JSON: true}}
		if _, err := s.AppendBatch(context.Background(), p, 0); err != nil {
			t.Fatal(err)
		}
		return p[0].Seq
	}
	if pub("x") != 1 || pub("y") != 2 {
		t.Fatal("first ids")
	}
	clock.advance(59 * time.Second)
	if pub("x") != 1 {
		t.Fatal("x within the window")
	}
	clock.advance(2 * time.Second)
	if pub("y") != 3 || pub("x") != 4 || pub("x") != 4 {
		t.Fatal("after the window: ids forgotten, then remembered anew")
	}
}

func TestMemoryStoreEpochs(t *testing.T) {
	a, b := NewMemoryStore(4, 0, 0), NewMemoryStore(4, 0, 0)
	ta, _ := a.Tops(context.Background(), []StreamKey{{"a", "k"}})
	tb, _ := b.Tops(context.Background(), []StreamKey{{"a", "k"}})
	if ta[0].Epoch == tb[0].Epoch {
		t.Fatalf("two memory stores (an embedded restart) share epoch %q", ta[0].Epoch)
	}
}

// BenchmarkMemoryStoreKeyMemory reports the heap one key costs the memory
// store after a single publication: what a publisher to many keys nobody
// watches costs the embedded mode.
func BenchmarkMemoryStoreKeyMemory(b *testing.B) {
	const keys = 10000
	for range b.N {
		before := heapInUse()
		s := NewMemoryStore(DefaultHistorySize, DefaultHistoryTTL, 0)
		for k := range keys {
			p := []proto.Publication{{App: "a", Key: "k" + strconv.Itoa(k), Data: []byte(`{"v":1}`), JSON: true}}
			if _, err := s.AppendBatch(context.Background(), p, 0); err != nil {
				b.Fatal(err)
			}
		}
		after := heapInUse()
		b.ReportMetric(float64(after-before)/keys, "B/key")
		runtime.KeepAlive(s)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
