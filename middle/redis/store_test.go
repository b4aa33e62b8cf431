package redis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/middle/storetest"
	"github.com/wspush/wspush/proto"
)

// newTestStore returns a store on c under prefix; mod adjusts its config.
func newTestStore(t testing.TB, c goredis.UniversalClient, prefix string, mod func(*StoreConfig)) *Store {
	t.Helper()
	cfg := StoreConfig{Client: c, Prefix: prefix}
	if mod != nil {
		mod(&cfg)
	}
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatalf("NewStore: %v", err)
	}
	return s
}

func pub(app, key string, v int) proto.Publication {
	return proto.Publication{App: app, Key: key, TS: int64(1000 + v), JSON: true, Data: []byte(strconv.Itoa(v))}
}

func mustAppend(t testing.TB, s *Store, fence uint64, pubs ...proto.Publication) []proto.Publication {
	t.Helper()
	n, err := s.AppendBatch(context.Background(), pubs, fence)
	if err != nil || n != len(pubs) {
		t.Fatalf("AppendBatch: n=%d of %d, %v", n, len(pubs), err)
	}
	return pubs
}

func mustHistory(t testing.TB, s *Store, app, key string, since uint64) middle.History {
	t.Helper()
	h, err := s.History(context.Background(), app, key, since)
	if err != nil {
		t.Fatalf("History(%s.%s, %d): %v", app, key, since, err)
	}
	return h
}

func seqsOf(pubs []proto.Publication) []uint64 {
	var out []uint64
	for _, p := range pubs {
		out = append(out, p.Seq)
	}
	return out
}

func seqRange(lo, hi uint64) []uint64 {
	var out []uint64
	for s := lo; s <= hi; s++ {
		out = append(out, s)
	}
	return out
}

// TestStoreConformance runs the middle.Store conformance suite on Redis.
func TestStoreConformance(t *testing.T) {
	c := newTestClient(t)
	storetest.Run(t, func(t *testing.T, idemWindow time.Duration) middle.Store {
		return newTestStore(t, c, testPrefix(t, c), func(cfg *StoreConfig) { cfg.IdempotencyWindow = idemWindow })
	})
}

// TestStoreConformanceCluster runs it on the Redis Cluster of
// WSPUSH_REDIS_CLUSTER_URL.
func TestStoreConformanceCluster(t *testing.T) {
	c := newTestClusterClient(t)
	storetest.Run(t, func(t *testing.T, idemWindow time.Duration) middle.Store {
		return newTestStore(t, c, testPrefix(t, c), func(cfg *StoreConfig) { cfg.IdempotencyWindow = idemWindow })
	})
}

func TestStoreConfigValidate(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, tc := range []struct {
		name string
		cfg  StoreConfig
		ok   bool
	}{
		{"defaults", StoreConfig{Client: c}, true},
		{"no client", StoreConfig{}, false},
		{"bad prefix", StoreConfig{Client: c, Prefix: "a{b}"}, false},
		{"negative size", StoreConfig{Client: c, HistorySize: -1}, false},
		{"negative min age", StoreConfig{Client: c, HistoryMinAge: -time.Second}, false},
		{"max len below size", StoreConfig{Client: c, HistorySize: 10, HistoryMaxLen: 5}, false},
		{"max len equal size", StoreConfig{Client: c, HistorySize: 10, HistoryMaxLen: 10}, true},
		{"negative TTL", StoreConfig{Client: c, HistoryTTL: -time.Second}, false},
		{"sub-ms TTL", StoreConfig{Client: c, HistoryTTL: time.Microsecond}, false},
		{"negative window", StoreConfig{Client: c, IdempotencyWindow: -time.Second}, false},
	} {
		_, err := NewStore(tc.cfg)
		if (err == nil) != tc.ok {
			t.Errorf("%s: NewStore error %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	d := StoreConfig{HistorySize: 20000}.withDefaults()
	if d.HistoryMaxLen != 20000 || d.HistoryMinAge != DefaultHistoryMinAge || d.IdempotencyWindow != middle.DefaultIdempotencyWindow {
		t.Errorf("defaults: %+v", d)
	}
}

// TestStoreSequencing: interleaved keys in one batch get increasing seqs
// per key in slice order, one stable epoch per key, and History and Latest
// return what was appended.
func TestStoreSequencing(t *testing.T) {
	c := newTestClient(t)
	s := newTestStore(t, c, testPrefix(t, c), nil)
	ctx := context.Background()

	var pubs []proto.Publication
	for i := range 10 {
		pubs = append(pubs, pub("app", "k"+strconv.Itoa(i%3), i))
	}
	pubs[4].JSON, pubs[4].Data = false, []byte{0, ':', 0xff}
	pubs[5].Data = nil
	mustAppend(t, s, 0, pubs...)
	want := map[string]uint64{}
	epochs := map[string]string{}
	for _, p := range pubs {
		want[p.Key]++
		if p.Seq != want[p.Key] {
			t.Fatalf("%s got seq %d, want %d", p.Key, p.Seq, want[p.Key])
		}
		if e, ok := epochs[p.Key]; ok && e != p.Epoch {
			t.Fatalf("%s epoch changed %s → %s", p.Key, e, p.Epoch)
		}
		epochs[p.Key] = p.Epoch
		if proto.ValidateEpoch(p.Epoch) != nil {
			t.Fatalf("bad epoch %q", p.Epoch)
		}
	}
	h := mustHistory(t, s, "app", "k1", 0)
	if h.Top != (proto.Position{Seq: 3, Epoch: epochs["k1"]}) {
		t.Fatalf("top %+v", h.Top)
	}
	var wantK1 []proto.Publication
	for _, p := range pubs {
		if p.Key == "k1" {
			wantK1 = append(wantK1, p)
		}
	}
	if len(h.Pubs) != len(wantK1) {
		t.Fatalf("history %v, want %v", h.Pubs, wantK1)
	}
	for i := range h.Pubs {
		g, w := h.Pubs[i], wantK1[i]
		if g.App != w.App || g.Key != w.Key || g.Seq != w.Seq || g.Epoch != w.Epoch || g.TS != w.TS || g.JSON != w.JSON || !bytes.Equal(g.Data, w.Data) {
			t.Fatalf("history[%d] = %+v, want %+v", i, g, w)
		}
	}
	if h := mustHistory(t, s, "app", "k1", 2); !slices.Equal(seqsOf(h.Pubs), []uint64{3}) {
		t.Fatalf("since 2: %v", seqsOf(h.Pubs))
	}
	for _, since := range []uint64{3, 4, 1 << 62, ^uint64(0)} {
		if h := mustHistory(t, s, "app", "k1", since); len(h.Pubs) != 0 || h.Top.Seq != 3 {
			t.Fatalf("since %d: %+v", since, h)
		}
	}
	l, err := s.Latest(ctx, "app", "k0")
	if err != nil || l.Top.Seq != 4 || len(l.Pubs) != 1 || l.Pubs[0].Seq != 4 || string(l.Pubs[0].Data) != "9" {
		t.Fatalf("Latest k0: %+v, %v", l, err)
	}

	// A key never published: seq 0 of an epoch made on first touch, the
	// same one every later call and the first publication see.
	h0 := mustHistory(t, s, "app", "fresh", 0)
	if h0.Top.Seq != 0 || h0.Top.Epoch == "" || len(h0.Pubs) != 0 {
		t.Fatalf("fresh history %+v", h0)
	}
	l0, err := s.Latest(ctx, "app", "fresh")
	if err != nil || l0.Top != h0.Top || len(l0.Pubs) != 0 {
		t.Fatalf("fresh latest %+v, %v", l0, err)
	}
	tops, err := s.Tops(ctx, []middle.StreamKey{{App: "app", Key: "k0"}, {App: "app", Key: "fresh"}, {App: "app", Key: "fresh2"}})
	if err != nil {
		t.Fatalf("Tops: %v", err)
	}
	if tops[0] != (proto.Position{Seq: 4, Epoch: epochs["k0"]}) || tops[1] != h0.Top || tops[2].Seq != 0 || tops[2].Epoch == "" {
		t.Fatalf("tops %+v", tops)
	}
	p := mustAppend(t, s, 0, pub("app", "fresh", 1))[0]
	if p.Seq != 1 || p.Epoch != h0.Top.Epoch {
		t.Fatalf("first publication of fresh: %d %s, want 1 %s", p.Seq, p.Epoch, h0.Top.Epoch)
	}
	if n, err := s.AppendBatch(ctx, nil, 0); n != 0 || err != nil {
		t.Fatalf("empty batch: %d %v", n, err)
	}
	if tops, err := s.Tops(ctx, nil); len(tops) != 0 || err != nil {
		t.Fatalf("no tops: %v %v", tops, err)
	}
}

// TestStoreFanOut: every sequenced publication is SPUBLISHed on its key's
// channel, in seq order, in the format decodePub reads; a repeat of an
// idempotency id is not.
func TestStoreFanOut(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	s := newTestStore(t, c, prefix, nil)
	testFanOut(t, c, s, prefix)
}

func testFanOut(t *testing.T, c goredis.UniversalClient, s *Store, prefix string) {
	ctx := context.Background()
	k := newKeys(prefix)
	ps := c.SSubscribe(ctx, k.pub("app", "k"))
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil { // the confirmation
		t.Fatalf("SSUBSCRIBE: %v", err)
	}
	pubs := []proto.Publication{pub("app", "k", 1), pub("app", "other", 2), pub("app", "k", 3), pub("app", "k", 4)}
	pubs[2].ID = "id-3"
	pubs[3].JSON, pubs[3].Data = false, []byte("a:b\x00")
	mustAppend(t, s, 0, pubs...)
	repeat := pub("app", "k", 99)
	repeat.ID = "id-3"
	mustAppend(t, s, 0, repeat, pub("app", "k", 5))

	want := []proto.Publication{pubs[0], pubs[2], pubs[3]}
	for i := range 4 {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		m, err := ps.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Channel != k.pub("app", "k") {
			t.Fatalf("channel %q", m.Channel)
		}
		app, key, ok := k.parsePub(m.Channel)
		if !ok || app != "app" || key != "k" {
			t.Fatalf("parsePub %q: %s %s %v", m.Channel, app, key, ok)
		}
		var got proto.Publication
		if err := decodePub(app, key, m.Payload, &got); err != nil {
			t.Fatalf("decode %q: %v", m.Payload, err)
		}
		if i == 3 {
			if got.Seq != 4 || string(got.Data) != "5" {
				t.Fatalf("after the repeat got %+v, want seq 4 (the repeat is not fanned out)", got)
			}
			continue
		}
		w := want[i]
		if got.Seq != w.Seq || got.Epoch != w.Epoch || got.TS != w.TS || got.JSON != w.JSON || !bytes.Equal(got.Data, w.Data) {
			t.Fatalf("message %d: %+v, want %+v", i, got, w)
		}
	}
}

// TestStoreIdempotency: a repeat within the window gets the first seq and
// the current epoch back, is not retained; after the window, or in a new
// epoch, the same id is a new publication.
func TestStoreIdempotency(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	const window = 300 * time.Millisecond
	s := newTestStore(t, c, prefix, func(cfg *StoreConfig) { cfg.IdempotencyWindow = window })
	ctx := context.Background()

	a := pub("app", "k", 1)
	a.ID = "dev-1"
	b := pub("app", "k", 2)
	a2 := pub("app", "k", 3)
	a2.ID = "dev-1"
	other := pub("app", "k2", 4)
	other.ID = "dev-1" // scoped to its key
	got := mustAppend(t, s, 0, a, b, a2, other)
	if got[0].Seq != 1 || got[1].Seq != 2 || got[2].Seq != 1 || got[2].Epoch != got[0].Epoch || got[3].Seq != 1 {
		t.Fatalf("seqs %v", seqsOf(got))
	}
	if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), []uint64{1, 2}) || string(h.Pubs[0].Data) != "1" {
		t.Fatalf("history %v", h.Pubs)
	}
	v, err := c.Get(ctx, newKeys(prefix).idemPrefix("app", "k")+"dev-1").Result()
	if err != nil || v != "1:"+got[0].Epoch {
		t.Fatalf("idempotency key %q, %v", v, err)
	}
	pttl, err := c.PTTL(ctx, newKeys(prefix).idemPrefix("app", "k")+"dev-1").Result()
	if err != nil || pttl <= 0 || pttl > window {
		t.Fatalf("idempotency key PTTL %s, %v", pttl, err)
	}

	time.Sleep(window + 50*time.Millisecond)
	a3 := pub("app", "k", 5)
	a3.ID = "dev-1"
	if p := mustAppend(t, s, 0, a3)[0]; p.Seq != 3 {
		t.Fatalf("after the window: seq %d, want 3", p.Seq)
	}

	// A new epoch: the stored "<seq>:<epoch>" names the old one.
	a4 := pub("app", "k", 6)
	a4.ID = "dev-2"
	old := mustAppend(t, s, 0, a4)[0]
	if err := c.Del(ctx, newKeys(prefix).seq("app", "k")).Err(); err != nil {
		t.Fatal(err)
	}
	a5 := pub("app", "k", 7)
	a5.ID = "dev-2"
	p := mustAppend(t, s, 0, a5)[0]
	if p.Seq != 1 || p.Epoch == old.Epoch {
		t.Fatalf("repeat in a new epoch: %d %s (old %d %s), want a new publication", p.Seq, p.Epoch, old.Seq, old.Epoch)
	}
}

// TestStoreFencing: a key sequenced with token T refuses lower tokens with
// ErrFenced and accepts T, higher ones and 0; tokens compare as integers
// beyond 2^53.
func TestStoreFencing(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	s := newTestStore(t, c, prefix, nil)
	ctx := context.Background()
	k := newKeys(prefix)

	const t1 = 1_700_000_000_000_000 // Redis TIME in µs, as claims start
	mustAppend(t, s, t1, pub("app", "k", 1))
	if f, _ := c.HGet(ctx, k.seq("app", "k"), "f").Result(); f != strconv.FormatUint(t1, 10) {
		t.Fatalf("f = %q", f)
	}
	mustAppend(t, s, t1, pub("app", "k", 2))
	mustAppend(t, s, 0, pub("app", "k", 3))
	if f, _ := c.HGet(ctx, k.seq("app", "k"), "f").Result(); f != strconv.FormatUint(t1, 10) {
		t.Fatalf("fence 0 changed f to %q", f)
	}
	batch := []proto.Publication{pub("app", "other", 1), pub("app", "k", 4), pub("app", "k", 5)}
	n, err := s.AppendBatch(ctx, batch, t1-1)
	if n != 1 || !errors.Is(err, middle.ErrFenced) || errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("lower token: n=%d err=%v, want 1 and ErrFenced", n, err)
	}
	if h := mustHistory(t, s, "app", "k", 0); h.Top.Seq != 3 {
		t.Fatalf("a fenced publication was sequenced: top %+v", h.Top)
	}
	// A higher token, then the old one is refused; beyond 2^53, and with
	// more digits.
	for _, tok := range []uint64{t1 + 1, 1<<53 + 1, 1<<53 + 2, 1<<63 + 5, ^uint64(0)} {
		mustAppend(t, s, tok, pub("app", "k", 6))
		if _, err := s.AppendBatch(ctx, []proto.Publication{pub("app", "k", 7)}, tok-1); !errors.Is(err, middle.ErrFenced) {
			t.Fatalf("token %d after %d: %v, want ErrFenced", tok-1, tok, err)
		}
	}
	mustAppend(t, s, 0, pub("app", "k", 8)) // 0 is never refused
}

// TestStoreEpochRecreated: when the seq HASH vanishes (an eviction, a
// flush), the next touch makes a new epoch and drops the old history.
func TestStoreEpochRecreated(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	s := newTestStore(t, c, prefix, nil)
	ctx := context.Background()
	k := newKeys(prefix)

	first := mustAppend(t, s, 0, pub("app", "k", 1), pub("app", "k", 2))
	e1 := first[0].Epoch
	for name, touch := range map[string]func() proto.Position{
		"History": func() proto.Position { return mustHistory(t, s, "app", "k", 0).Top },
		"Latest": func() proto.Position {
			h, err := s.Latest(ctx, "app", "k")
			if err != nil || len(h.Pubs) != 0 {
				t.Fatalf("Latest %+v, %v", h, err)
			}
			return h.Top
		},
		"Tops": func() proto.Position {
			tops, err := s.Tops(ctx, []middle.StreamKey{{App: "app", Key: "k"}})
			if err != nil {
				t.Fatal(err)
			}
			return tops[0]
		},
		"AppendBatch": func() proto.Position {
			p := mustAppend(t, s, 0, pub("app", "k", 3))[0]
			if p.Seq != 1 {
				t.Fatalf("first seq of the new epoch %d", p.Seq)
			}
			return proto.Position{Seq: 0, Epoch: p.Epoch}
		},
	} {
		mustAppend(t, s, 0, pub("app", "k", 1))
		if err := c.Del(ctx, k.seq("app", "k")).Err(); err != nil {
			t.Fatal(err)
		}
		top := touch()
		if top.Seq != 0 || top.Epoch == e1 || top.Epoch == "" {
			t.Fatalf("%s after DEL: top %+v (old epoch %s)", name, top, e1)
		}
		e1 = top.Epoch
		h := mustHistory(t, s, "app", "k", 0)
		if h.Top.Epoch != top.Epoch {
			t.Fatalf("%s: epoch %s then %s", name, top.Epoch, h.Top.Epoch)
		}
		if name == "AppendBatch" {
			if !slices.Equal(seqsOf(h.Pubs), []uint64{1}) || string(h.Pubs[0].Data) != "3" {
				t.Fatalf("%s: history %v", name, h.Pubs)
			}
		} else if len(h.Pubs) != 0 {
			t.Fatalf("%s: the old epoch's history survived: %v", name, h.Pubs)
		}
	}

	// A flush of everything under the prefix.
	before := mustAppend(t, s, 0, pub("app", "k", 9))[0]
	if err := deleteUnder(ctx, c, prefix); err != nil {
		t.Fatal(err)
	}
	if h := mustHistory(t, s, "app", "k", 0); h.Top.Seq != 0 || h.Top.Epoch == before.Epoch || len(h.Pubs) != 0 {
		t.Fatalf("after flush: %+v", h)
	}
}

// TestStoreTrimming checks the retention rules: count trimming spares
// entries younger than the min age, the max length caps them anyway, the
// TTL drops old entries but the latest.
func TestStoreTrimming(t *testing.T) {
	c := newTestClient(t)
	ctx := context.Background()

	t.Run("size and min age", func(t *testing.T) {
		t.Parallel()
		prefix := testPrefix(t, c)
		const minAge = 300 * time.Millisecond
		s := newTestStore(t, c, prefix, func(cfg *StoreConfig) {
			cfg.HistorySize, cfg.HistoryMinAge = 3, minAge
		})
		var burst []proto.Publication
		for i := range 10 {
			burst = append(burst, pub("app", "k", i))
		}
		start := time.Now()
		mustAppend(t, s, 0, burst...)
		h := mustHistory(t, s, "app", "k", 0)
		if time.Since(start) < minAge && !slices.Equal(seqsOf(h.Pubs), seqRange(1, 10)) {
			t.Fatalf("young burst trimmed: %v", seqsOf(h.Pubs))
		}
		time.Sleep(minAge + 50*time.Millisecond)
		mustAppend(t, s, 0, pub("app", "k", 11))
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), seqRange(9, 11)) {
			t.Fatalf("after min age: %v, want 9..11", seqsOf(h.Pubs))
		}
		// Old and young entries mixed: only the old ones beyond size go.
		time.Sleep(minAge + 50*time.Millisecond)
		var more []proto.Publication
		for i := range 5 {
			more = append(more, pub("app", "k", 12+i))
		}
		mustAppend(t, s, 0, more...)
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), seqRange(12, 16)) {
			t.Fatalf("mixed: %v, want 12..16", seqsOf(h.Pubs))
		}
	})

	t.Run("old bursts behind young ones", func(t *testing.T) {
		t.Parallel()
		prefix := testPrefix(t, c)
		const minAge = 300 * time.Millisecond
		s := newTestStore(t, c, prefix, func(cfg *StoreConfig) {
			cfg.HistorySize, cfg.HistoryMinAge = 5, minAge
		})
		burst := func(from int) {
			var pubs []proto.Publication
			for i := range 50 {
				pubs = append(pubs, pub("app", "k", from+i))
			}
			mustAppend(t, s, 0, pubs...)
		}
		burst(1)
		time.Sleep(minAge / 2)
		start := time.Now()
		burst(51)
		time.Sleep(minAge/2 + 50*time.Millisecond)
		mustAppend(t, s, 0, pub("app", "k", 101))
		if time.Since(start) >= minAge {
			t.Skip("too slow a machine for this timing")
		}
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), seqRange(51, 101)) {
			t.Fatalf("got %v, want 51..101", seqsOf(h.Pubs))
		}
		for i := range 3 { // one old entry per append: the steady state
			time.Sleep(10 * time.Millisecond)
			mustAppend(t, s, 0, pub("app", "k", 102+i))
		}
		time.Sleep(minAge)
		mustAppend(t, s, 0, pub("app", "k", 105))
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), seqRange(101, 105)) {
			t.Fatalf("got %v, want 101..105", seqsOf(h.Pubs))
		}
	})

	t.Run("max len", func(t *testing.T) {
		t.Parallel()
		prefix := testPrefix(t, c)
		s := newTestStore(t, c, prefix, func(cfg *StoreConfig) {
			cfg.HistorySize, cfg.HistoryMinAge, cfg.HistoryMaxLen = 3, time.Hour, 5
		})
		for i := range 12 {
			mustAppend(t, s, 0, pub("app", "k", i))
		}
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), seqRange(8, 12)) {
			t.Fatalf("max len: %v, want 8..12", seqsOf(h.Pubs))
		}
		if n, _ := c.XLen(ctx, newKeys(prefix).hist("app", "k")).Result(); n != 5 {
			t.Fatalf("XLEN %d", n)
		}
	})

	t.Run("TTL keeps the latest", func(t *testing.T) {
		t.Parallel()
		prefix := testPrefix(t, c)
		const ttl = 300 * time.Millisecond
		s := newTestStore(t, c, prefix, func(cfg *StoreConfig) {
			cfg.HistorySize, cfg.HistoryMinAge, cfg.HistoryTTL = 10, time.Millisecond, ttl
		})
		mustAppend(t, s, 0, pub("app", "k", 1), pub("app", "k", 2), pub("app", "k", 3))
		if h := mustHistory(t, s, "app", "k", 0); len(h.Pubs) != 3 {
			t.Fatalf("young: %v", seqsOf(h.Pubs))
		}
		time.Sleep(ttl + 50*time.Millisecond)
		// A quiet key: History trims, Latest still has the newest.
		if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), []uint64{3}) || h.Top.Seq != 3 {
			t.Fatalf("after TTL: %+v", h)
		}
		if l, err := s.Latest(ctx, "app", "k"); err != nil || len(l.Pubs) != 1 || l.Pubs[0].Seq != 3 {
			t.Fatalf("latest after TTL: %+v, %v", l, err)
		}
		mustAppend(t, s, 0, pub("app", "k", 4), pub("app", "k", 5))
		time.Sleep(ttl + 50*time.Millisecond)
		mustAppend(t, s, 0, pub("app", "k", 6))
		if n, _ := c.XLen(ctx, newKeys(prefix).hist("app", "k")).Result(); n != 1 {
			t.Fatalf("XLEN after append %d, want 1", n)
		}
		// The seq HASH never expires.
		if d, _ := c.PTTL(ctx, newKeys(prefix).seq("app", "k")).Result(); d != -1 {
			t.Fatalf("seq HASH PTTL %s", d)
		}
	})
}

// TestStoreNoScript: after SCRIPT FLUSH (a Redis restart), every call
// loads its script again and succeeds.
func TestStoreNoScript(t *testing.T) {
	c := newTestClient(t)
	s := newTestStore(t, c, testPrefix(t, c), nil)
	ctx := context.Background()
	flush := func() {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
	}
	mustAppend(t, s, 0, pub("app", "k", 1))
	flush()
	got := mustAppend(t, s, 0, pub("app", "k", 2), pub("app", "k2", 1), pub("app", "k", 3))
	if !slices.Equal(seqsOf(got), []uint64{2, 1, 3}) {
		t.Fatalf("seqs after flush %v", seqsOf(got))
	}
	flush()
	if h := mustHistory(t, s, "app", "k", 0); !slices.Equal(seqsOf(h.Pubs), []uint64{1, 2, 3}) {
		t.Fatalf("history after flush %v", seqsOf(h.Pubs))
	}
	flush()
	if tops, err := s.Tops(ctx, []middle.StreamKey{{App: "app", Key: "k"}, {App: "app", Key: "k2"}}); err != nil || tops[0].Seq != 3 || tops[1].Seq != 1 {
		t.Fatalf("tops after flush %v, %v", tops, err)
	}
}

// TestNoScriptRetry: which calls of a batch are sent again after NOSCRIPT.
func TestNoScriptRetry(t *testing.T) {
	ok := func() *goredis.Cmd { return goredis.NewCmd(context.Background()) }
	fail := func(msg string) *goredis.Cmd {
		c := goredis.NewCmd(context.Background())
		c.SetErr(fakeRedisError(msg))
		return c
	}
	noScript := func() *goredis.Cmd {
		c := goredis.NewCmd(context.Background())
		c.SetErr(goredis.ErrNoScript)
		return c
	}
	a, b := pub("app", "a", 1), pub("app", "b", 1)
	for _, tc := range []struct {
		name string
		pubs []proto.Publication
		cmds []*goredis.Cmd
		want []int
	}{
		{"all ok", []proto.Publication{a, b}, []*goredis.Cmd{ok(), ok()}, nil},
		{"all missing", []proto.Publication{a, b, a}, []*goredis.Cmd{noScript(), noScript(), noScript()}, []int{0, 1, 2}},
		{"one node missing", []proto.Publication{a, b, a, b}, []*goredis.Cmd{noScript(), ok(), noScript(), ok()}, []int{0, 2}},
		{"loaded meanwhile", []proto.Publication{a, b, a}, []*goredis.Cmd{noScript(), ok(), ok()}, nil},
		{"another error first", []proto.Publication{a, b, a}, []*goredis.Cmd{fail("ERR x"), noScript(), noScript()}, nil},
		{"another error later", []proto.Publication{a, b, a}, []*goredis.Cmd{noScript(), fail("ERR x"), noScript()}, []int{0}},
	} {
		if got := noScriptRetry(tc.pubs, tc.cmds); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// fakeRedisError is an error reply of Redis.
type fakeRedisError string

func (e fakeRedisError) Error() string { return string(e) }
func (fakeRedisError) RedisError()     {}

// TestStoreUnavailable: with Redis out of reach every method fails with
// middle.ErrUnavailable, and works again once Redis is back.
func TestStoreUnavailable(t *testing.T) {
	direct := newTestClient(t)
	prefix := testPrefix(t, direct)
	px := newRedisProxy(t)
	s := newTestStore(t, px.client(), prefix, nil)
	ctx := context.Background()
	mustAppend(t, s, 0, pub("app", "k", 1))

	px.setDown(true)
	if n, err := s.AppendBatch(ctx, []proto.Publication{pub("app", "k", 2)}, 0); n != 0 || !errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("AppendBatch while down: %d %v", n, err)
	}
	if _, err := s.History(ctx, "app", "k", 0); !errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("History while down: %v", err)
	}
	if _, err := s.Latest(ctx, "app", "k"); !errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("Latest while down: %v", err)
	}
	if _, err := s.Tops(ctx, []middle.StreamKey{{App: "app", Key: "k"}}); !errors.Is(err, middle.ErrUnavailable) {
		t.Fatalf("Tops while down: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.AppendBatch(cctx, []proto.Publication{pub("app", "k", 2)}, 0); !errors.Is(err, middle.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("AppendBatch with a cancelled context: %v", err)
	}

	px.setDown(false)
	if p := mustAppend(t, s, 0, pub("app", "k", 3))[0]; p.Seq != 2 {
		t.Fatalf("after the outage seq %d, want 2", p.Seq)
	}
}

// TestStoreConcurrentAppends: two stores, each with its own connections
// (two nodes), race on one key: every seq is assigned once, and each
// writer's publications get increasing seqs in its order.
func TestStoreConcurrentAppends(t *testing.T) {
	c1 := newTestClient(t)
	c2 := newTestClient(t)
	prefix := testPrefix(t, c1)
	stores := []*Store{
		newTestStore(t, c1, prefix, func(cfg *StoreConfig) { cfg.HistorySize = 1000 }),
		newTestStore(t, c2, prefix, func(cfg *StoreConfig) { cfg.HistorySize = 1000 }),
	}
	const perWriter, batch = 200, 10
	seqs := make([][]uint64, 4)
	var wg sync.WaitGroup
	for w := range seqs {
		wg.Go(func() {
			s := stores[w%2]
			for i := 0; i < perWriter; i += batch {
				var pubs []proto.Publication
				for j := range batch {
					pubs = append(pubs, pub("app", "k", w*perWriter+i+j))
				}
				if n, err := s.AppendBatch(context.Background(), pubs, 0); err != nil || n != batch {
					t.Errorf("writer %d: %d %v", w, n, err)
					return
				}
				seqs[w] = append(seqs[w], seqsOf(pubs)...)
			}
		})
	}
	wg.Wait()
	var all []uint64
	for w, ss := range seqs {
		if !slices.IsSorted(ss) {
			t.Fatalf("writer %d seqs not increasing: %v", w, ss)
		}
		all = append(all, ss...)
	}
	slices.Sort(all)
	if !slices.Equal(all, seqRange(1, uint64(len(seqs)*perWriter))) {
		t.Fatalf("seqs not each assigned once: %d of them", len(all))
	}
	h := mustHistory(t, stores[0], "app", "k", 0)
	if !slices.Equal(seqsOf(h.Pubs), all) {
		t.Fatalf("history has %d entries", len(h.Pubs))
	}
}

// TestStoreCluster runs the store on the Redis Cluster of
// WSPUSH_REDIS_CLUSTER_URL: keys in many slots, fan-out, reads.
func TestStoreCluster(t *testing.T) {
	c := newTestClusterClient(t)
	prefix := testPrefix(t, c)
	s := newTestStore(t, c, prefix, nil)
	ctx := context.Background()

	var pubs []proto.Publication
	for i := range 200 {
		pubs = append(pubs, pub("app", "k"+strconv.Itoa(i%40), i))
	}
	pubs[7].ID = "x"
	mustAppend(t, s, 7, pubs...)
	var sks []middle.StreamKey
	for i := range 40 {
		key := "k" + strconv.Itoa(i)
		sks = append(sks, middle.StreamKey{App: "app", Key: key})
		var want []uint64
		for _, p := range pubs {
			if p.Key == key {
				want = append(want, p.Seq)
			}
		}
		if !slices.Equal(want, seqRange(1, 5)) {
			t.Fatalf("%s seqs %v", key, want)
		}
		if h := mustHistory(t, s, "app", key, 0); !slices.Equal(seqsOf(h.Pubs), want) {
			t.Fatalf("%s history %v", key, seqsOf(h.Pubs))
		}
	}
	tops, err := s.Tops(ctx, append(sks, middle.StreamKey{App: "app", Key: "fresh"}))
	if err != nil {
		t.Fatalf("Tops: %v", err)
	}
	for i, top := range tops[:40] {
		if top.Seq != 5 || top.Epoch != pubs[i].Epoch {
			t.Fatalf("top of %v: %+v", sks[i], top)
		}
	}
	if tops[40].Seq != 0 || tops[40].Epoch == "" {
		t.Fatalf("fresh top %+v", tops[40])
	}
	if _, err := s.AppendBatch(ctx, []proto.Publication{pub("app", "k0", 1)}, 6); !errors.Is(err, middle.ErrFenced) {
		t.Fatalf("fencing on the cluster: %v", err)
	}
	if err := c.(*goredis.ClusterClient).ForEachShard(ctx, func(ctx context.Context, n *goredis.Client) error {
		return n.ScriptFlush(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	mustAppend(t, s, 0, pub("app", "k1", 1), pub("app", "k2", 1), pub("app", "k3", 1))
	testFanOut(t, c, s, prefix)
}

// BenchmarkStoreAppendBatch measures batches of 100 publications of 64
// bytes over 10 keys.
func BenchmarkStoreAppendBatch(b *testing.B) {
	c := newTestClient(b)
	s := newTestStore(b, c, testPrefix(b, c), nil)
	ctx := context.Background()
	data := bytes.Repeat([]byte("x"), 64)
	pubs := make([]proto.Publication, 100)
	b.ResetTimer()
	for b.Loop() {
		for i := range pubs {
			pubs[i] = proto.Publication{App: "app", Key: fmt.Sprintf("k%d", i%10), Data: data}
		}
		if n, err := s.AppendBatch(ctx, pubs, 0); err != nil || n != len(pubs) {
			b.Fatalf("%d %v", n, err)
		}
	}
	b.ReportMetric(float64(b.N*len(pubs))/b.Elapsed().Seconds(), "pubs/s")
}
