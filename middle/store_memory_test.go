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
	s := NewMemoryStore(size, ttl)
	s.now = c.now
	return s, c
}

func appendN(t *testing.T, s *MemoryStore, app, key string, n int) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := 0; i < n; i++ {
		p := proto.Publication{App: app, Key: key, TS: int64(i + 1), Data: []byte(strconv.Itoa(len(seqs) + 1)), JSON: true}
		if err := s.Append(context.Background(), &p); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, p.Seq)
	}
	return seqs
}

func historySeqs(t *testing.T, s *MemoryStore, app, key string, since uint64) ([]uint64, bool) {
	t.Helper()
	pubs, complete, err := s.History(context.Background(), app, key, since)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for _, p := range pubs {
		if p.App != app || p.Key != key {
			t.Fatalf("history of %s.%s returned %s.%s", app, key, p.App, p.Key)
		}
		seqs = append(seqs, p.Seq)
	}
	return seqs, complete
}

func TestMemoryStoreSeq(t *testing.T) {
	s := NewMemoryStore(4, 0)
	wantSeqs(t, "a.k", appendN(t, s, "a", "k", 10), seqRange(1, 10))
	// Each key has its own sequence, also across apps.
	wantSeqs(t, "a.k2", appendN(t, s, "a", "k2", 3), seqRange(1, 3))
	wantSeqs(t, "b.k", appendN(t, s, "b", "k", 2), seqRange(1, 2))
	wantSeqs(t, "a.k again", appendN(t, s, "a", "k", 2), seqRange(11, 12))

	p, ok, err := s.Latest(context.Background(), "a", "k")
	if err != nil || !ok || p.Seq != 12 || string(p.Data) != "2" {
		t.Fatalf("Latest(a,k) = %+v, %v, %v; want seq 12 data 2", p, ok, err)
	}
	if _, ok, err := s.Latest(context.Background(), "a", "never"); ok || err != nil {
		t.Fatalf("Latest of an unknown key: ok=%v err=%v", ok, err)
	}
}

func TestMemoryStoreAppendBatch(t *testing.T) {
	testStoreAppendBatch(t, NewMemoryStore(8, 0))
}

func TestMemoryStoreHistory(t *testing.T) {
	s := NewMemoryStore(8, 0)
	appendN(t, s, "a", "k", 5)
	tests := []struct {
		since        uint64
		want         []uint64
		wantComplete bool
	}{
		{0, seqRange(1, 5), true},
		{1, seqRange(2, 5), true},
		{4, []uint64{5}, true},
		{5, nil, true},  // since == top: nothing missed
		{6, nil, false}, // a seq the key never had
		{100, nil, false},
	}
	for _, tt := range tests {
		got, complete := historySeqs(t, s, "a", "k", tt.since)
		if !equalSeqs(got, tt.want) || complete != tt.wantComplete {
			t.Errorf("History(since=%d) = %s, complete=%v; want %s, %v",
				tt.since, shortSeqs(got), complete, shortSeqs(tt.want), tt.wantComplete)
		}
	}

	// A key never published: complete only from the very beginning.
	if got, complete := historySeqs(t, s, "a", "never", 0); got != nil || !complete {
		t.Errorf("History(never, 0) = %v, %v; want nothing, complete", got, complete)
	}
	if got, complete := historySeqs(t, s, "a", "never", 3); got != nil || complete {
		t.Errorf("History(never, 3) = %v, %v; want nothing, incomplete", got, complete)
	}
}

func TestMemoryStoreHistoryWrapAround(t *testing.T) {
	const size = 4
	s := NewMemoryStore(size, 0)
	appendN(t, s, "a", "k", 11) // the ring holds 8..11
	tests := []struct {
		since        uint64
		want         []uint64
		wantComplete bool
	}{
		{0, seqRange(8, 11), false},
		{6, seqRange(8, 11), false}, // 7 is gone
		{7, seqRange(8, 11), true},  // oldest retained is exactly since+1
		{9, seqRange(10, 11), true},
		{10, []uint64{11}, true},
		{11, nil, true},
		{12, nil, false},
	}
	for _, tt := range tests {
		got, complete := historySeqs(t, s, "a", "k", tt.since)
		if !equalSeqs(got, tt.want) || complete != tt.wantComplete {
			t.Errorf("History(since=%d) = %s, complete=%v; want %s, %v",
				tt.since, shortSeqs(got), complete, shortSeqs(tt.want), tt.wantComplete)
		}
	}
	// Every retained entry is the publication of that seq, not a stale slot.
	pubs, _, _ := s.History(context.Background(), "a", "k", 7)
	for _, p := range pubs {
		if string(p.Data) != strconv.FormatUint(p.Seq, 10) {
			t.Errorf("seq %d holds data %q", p.Seq, p.Data)
		}
	}

	// A history of one is the latest value only.
	one := NewMemoryStore(0, 0) // below 1 means 1
	appendN(t, one, "a", "k", 3)
	if got, complete := historySeqs(t, one, "a", "k", 2); !equalSeqs(got, []uint64{3}) || !complete {
		t.Errorf("size 1: History(2) = %s, %v; want [3], complete", shortSeqs(got), complete)
	}
	if got, complete := historySeqs(t, one, "a", "k", 1); !equalSeqs(got, []uint64{3}) || complete {
		t.Errorf("size 1: History(1) = %s, %v; want [3], incomplete", shortSeqs(got), complete)
	}
}

func TestMemoryStoreTTL(t *testing.T) {
	s, clock := newClockedStore(16, time.Minute)
	appendN(t, s, "a", "k", 3) // 1..3 at t0
	clock.advance(40 * time.Second)
	appendN(t, s, "a", "k", 2) // 4..5 at t0+40s

	if got, complete := historySeqs(t, s, "a", "k", 0); !equalSeqs(got, seqRange(1, 5)) || !complete {
		t.Fatalf("before expiry: History(0) = %s, %v", shortSeqs(got), complete)
	}

	clock.advance(30 * time.Second) // 1..3 are 70s old, 4..5 are 30s old
	tests := []struct {
		since        uint64
		want         []uint64
		wantComplete bool
	}{
		{0, seqRange(4, 5), false},
		{2, seqRange(4, 5), false},
		{3, seqRange(4, 5), true},
		{4, []uint64{5}, true},
		{5, nil, true},
	}
	for _, tt := range tests {
		got, complete := historySeqs(t, s, "a", "k", tt.since)
		if !equalSeqs(got, tt.want) || complete != tt.wantComplete {
			t.Errorf("after expiry: History(since=%d) = %s, complete=%v; want %s, %v",
				tt.since, shortSeqs(got), complete, shortSeqs(tt.want), tt.wantComplete)
		}
	}

	// Exactly TTL old is still retained; one nanosecond more is not.
	s2, clock2 := newClockedStore(4, time.Minute)
	appendN(t, s2, "a", "k", 2)
	clock2.advance(time.Minute)
	if got, complete := historySeqs(t, s2, "a", "k", 0); !equalSeqs(got, seqRange(1, 2)) || !complete {
		t.Errorf("at exactly TTL: History(0) = %s, %v; want [1-2], complete", shortSeqs(got), complete)
	}
	clock2.advance(time.Nanosecond)
	if got, complete := historySeqs(t, s2, "a", "k", 0); got != nil || complete {
		t.Errorf("past TTL: History(0) = %s, %v; want nothing, incomplete", shortSeqs(got), complete)
	}
	if got, complete := historySeqs(t, s2, "a", "k", 2); got != nil || !complete {
		t.Errorf("past TTL: History(top) = %s, %v; want nothing, complete (nothing missed)", shortSeqs(got), complete)
	}

	// The latest value outlives the TTL, and the sequence goes on.
	clock.advance(time.Hour)
	if got, complete := historySeqs(t, s, "a", "k", 0); got != nil || complete {
		t.Errorf("all expired: History(0) = %s, %v; want nothing, incomplete", shortSeqs(got), complete)
	}
	p, ok, err := s.Latest(context.Background(), "a", "k")
	if err != nil || !ok || p.Seq != 5 {
		t.Fatalf("Latest after TTL = %+v, %v, %v; want seq 5", p, ok, err)
	}
	wantSeqs(t, "append after expiry", appendN(t, s, "a", "k", 1), []uint64{6})
	if got, complete := historySeqs(t, s, "a", "k", 5); !equalSeqs(got, []uint64{6}) || !complete {
		t.Errorf("after new append: History(5) = %s, %v; want [6], complete", shortSeqs(got), complete)
	}
}

// BenchmarkMemoryStoreKeyMemory reports the heap one key costs the memory
// store after a single publication: what a publisher to many keys nobody
// watches costs the embedded mode.
func BenchmarkMemoryStoreKeyMemory(b *testing.B) {
	const keys = 10000
	for range b.N {
		before := heapInUse()
		s := NewMemoryStore(DefaultHistorySize, DefaultHistoryTTL)
		for k := range keys {
			p := proto.Publication{App: "a", Key: "k" + strconv.Itoa(k), Data: []byte(`{"v":1}`), JSON: true}
			if err := s.Append(context.Background(), &p); err != nil {
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
