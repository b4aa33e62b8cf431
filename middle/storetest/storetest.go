// Package storetest is the conformance suite of middle.Store: what every
// store (the memory store, the Redis store) must do for the ordering core
// to keep the guarantees of docs/PROTOCOL.md ("Positions", "Delivery
// guarantees", "Idempotent publishing", "Ingest").
package storetest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// MinRetained is how many of the most recent publications of a key the
// suite expects a fresh store to retain (the history size and age limits
// of the store under test must allow it).
const MinRetained = 20

// IdempotencyWindow is the window the suite asks newStore for, except in
// the test of the window's expiry.
const IdempotencyWindow = time.Minute

// shortWindow is the window of the expiry test; the test waits twice as
// long. A store may round it to whole milliseconds.
const shortWindow = 300 * time.Millisecond

// Run runs the conformance suite, each test on a fresh store from
// newStore, whose idempotency ids must be remembered for idemWindow.
// newStore registers any cleanup with t.Cleanup. The stores must retain at
// least MinRetained publications per key, and may share their backing
// storage: every test uses app names of its own.
func Run(t *testing.T, newStore func(t *testing.T, idemWindow time.Duration) middle.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s middle.Store)
	}{
		{"EmptyBatch", testEmptyBatch},
		{"SequenceOrder", testSequenceOrder},
		{"BatchInterleavingKeys", testBatchInterleavingKeys},
		{"KeysIndependent", testKeysIndependent},
		{"EpochStable", testEpochStable},
		{"HistorySince", testHistorySince},
		{"Latest", testLatest},
		{"TopsCreateEpochs", testTopsCreateEpochs},
		{"IdempotentRepeat", testIdempotentRepeat},
		{"IdempotentRepeatInBatch", testIdempotentRepeatInBatch},
		{"IdempotencyScopedToKey", testIdempotencyScopedToKey},
		{"Fence", testFence},
		{"FenceInBatch", testFenceInBatch},
		{"FencePerKey", testFencePerKey},
		{"ConcurrentAppends", testConcurrentAppends},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t, IdempotencyWindow))
		})
	}
	t.Run("IdempotencyWindowExpiry", func(t *testing.T) {
		testWindowExpiry(t, newStore(t, shortWindow))
	})
}

// app is an app name of the test's own.
func app(t *testing.T) string {
	t.Helper()
	return "st-" + rand.Text()[:10]
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// pub is a JSON publication of (a, k) with value v and a ts set from v.
func pub(a, k string, v int) proto.Publication {
	return proto.Publication{App: a, Key: k, TS: 1_700_000_000_000 + int64(v), Data: fmt.Appendf(nil, "%d", v), JSON: true}
}

func appendAll(t *testing.T, s middle.Store, pubs []proto.Publication, fence uint64) {
	t.Helper()
	n, err := s.AppendBatch(ctx(t), pubs, fence)
	if err != nil || n != len(pubs) {
		t.Fatalf("AppendBatch of %d: n=%d, %v", len(pubs), n, err)
	}
}

// append1 appends p alone and returns it sequenced.
func append1(t *testing.T, s middle.Store, p proto.Publication, fence uint64) proto.Publication {
	t.Helper()
	one := []proto.Publication{p}
	appendAll(t, s, one, fence)
	return one[0]
}

func appendN(t *testing.T, s middle.Store, a, k string, from, to int) []proto.Publication {
	t.Helper()
	var pubs []proto.Publication
	for v := from; v <= to; v++ {
		pubs = append(pubs, pub(a, k, v))
	}
	appendAll(t, s, pubs, 0)
	return pubs
}

func history(t *testing.T, s middle.Store, a, k string, since uint64) middle.History {
	t.Helper()
	h, err := s.History(ctx(t), a, k, since)
	if err != nil {
		t.Fatalf("History(%s, %s, %d): %v", a, k, since, err)
	}
	checkHistory(t, "History", a, k, h)
	return h
}

func latest(t *testing.T, s middle.Store, a, k string) middle.History {
	t.Helper()
	h, err := s.Latest(ctx(t), a, k)
	if err != nil {
		t.Fatalf("Latest(%s, %s): %v", a, k, err)
	}
	checkHistory(t, "Latest", a, k, h)
	if len(h.Pubs) > 1 {
		t.Fatalf("Latest(%s, %s): %d publications", a, k, len(h.Pubs))
	}
	return h
}

// checkHistory checks what holds for any History: a valid epoch, the
// publications of the key, in the top epoch, ascending, none above the top.
func checkHistory(t *testing.T, op, a, k string, h middle.History) {
	t.Helper()
	if err := proto.ValidateEpoch(h.Top.Epoch); err != nil {
		t.Fatalf("%s(%s, %s): top %+v: %v", op, a, k, h.Top, err)
	}
	for i, p := range h.Pubs {
		if p.App != a || p.Key != k || p.Epoch != h.Top.Epoch || p.Seq == 0 || p.Seq > h.Top.Seq ||
			i > 0 && p.Seq <= h.Pubs[i-1].Seq {
			t.Fatalf("%s(%s, %s): publication %d is %s.%s seq %d epoch %q; top %+v",
				op, a, k, i, p.App, p.Key, p.Seq, p.Epoch, h.Top)
		}
	}
}

func seqsOf(pubs []proto.Publication) []uint64 {
	out := make([]uint64, len(pubs))
	for i := range pubs {
		out[i] = pubs[i].Seq
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func wantSeqs(t *testing.T, what string, got, want []uint64) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("%s: seqs %v, want %v", what, got, want)
	}
}

// samePub compares what a store must keep of a publication.
func samePub(t *testing.T, what string, got, want proto.Publication) {
	t.Helper()
	if got.App != want.App || got.Key != want.Key || got.Seq != want.Seq || got.Epoch != want.Epoch ||
		got.TS != want.TS || got.JSON != want.JSON || string(got.Data) != string(want.Data) {
		t.Fatalf("%s: got %s.%s seq %d epoch %q ts %d json %v data %q; want %s.%s seq %d epoch %q ts %d json %v data %q",
			what, got.App, got.Key, got.Seq, got.Epoch, got.TS, got.JSON, got.Data,
			want.App, want.Key, want.Seq, want.Epoch, want.TS, want.JSON, want.Data)
	}
}

func testEmptyBatch(t *testing.T, s middle.Store) {
	for _, fence := range []uint64{0, 7} {
		if n, err := s.AppendBatch(ctx(t), nil, fence); n != 0 || err != nil {
			t.Fatalf("empty batch, fence %d: %d, %v; want 0, nil", fence, n, err)
		}
	}
}

// testSequenceOrder: seqs start at 1 and grow by one per publication, in
// the order appended, across batches; the history holds each one as sent.
func testSequenceOrder(t *testing.T, s middle.Store) {
	a := app(t)
	first := appendN(t, s, a, "k", 1, 1)
	wantSeqs(t, "first", seqsOf(first), []uint64{1})
	epoch := first[0].Epoch
	if err := proto.ValidateEpoch(epoch); err != nil {
		t.Fatal(err)
	}
	rest := appendN(t, s, a, "k", 2, 10)
	wantSeqs(t, "next batch", seqsOf(rest), seqRange(2, 10))
	bin := proto.Publication{App: a, Key: "k", TS: 42, Data: []byte{0, 1, 0xff, ':', '\n'}}
	bin = append1(t, s, bin, 0)
	if bin.Position() != (proto.Position{Seq: 11, Epoch: epoch}) {
		t.Fatalf("binary publication: %+v", bin.Position())
	}

	all := append(append(first, rest...), bin)
	for i := range all {
		if all[i].Epoch != epoch {
			t.Fatalf("publication %d: epoch %q, want %q", i, all[i].Epoch, epoch)
		}
	}
	h := history(t, s, a, "k", 0)
	if h.Top != (proto.Position{Seq: 11, Epoch: epoch}) {
		t.Fatalf("top %+v, want 11 of %q", h.Top, epoch)
	}
	wantSeqs(t, "history", seqsOf(h.Pubs), seqRange(1, 11))
	for i := range all {
		samePub(t, fmt.Sprintf("history entry %d", i), h.Pubs[i], all[i])
	}
}

// testBatchInterleavingKeys: a batch may mix keys; each key's seqs follow
// slice order.
func testBatchInterleavingKeys(t *testing.T, s middle.Store) {
	a := app(t)
	appendN(t, s, a, "a", 1, 1)
	keys := []string{"a", "b", "b", "a", "c", "b", "a", "a"}
	pubs := make([]proto.Publication, len(keys))
	for i, k := range keys {
		pubs[i] = pub(a, k, 100+i)
	}
	appendAll(t, s, pubs, 0)
	wantSeqs(t, "batch", seqsOf(pubs), []uint64{2, 1, 2, 3, 1, 3, 4, 5})
	for _, k := range []string{"a", "b", "c"} {
		h := history(t, s, a, k, 0)
		var want []proto.Publication
		for i := range pubs {
			if pubs[i].Key == k {
				want = append(want, pubs[i])
			}
		}
		got := h.Pubs
		if k == "a" {
			got = got[1:]
		}
		if len(got) != len(want) {
			t.Fatalf("history of %s: %d publications, want %d", k, len(got), len(want))
		}
		for i := range want {
			samePub(t, "history of "+k, got[i], want[i])
		}
	}
}

// testKeysIndependent: every (app, key) has its own sequence.
func testKeysIndependent(t *testing.T, s middle.Store) {
	a, b := app(t), app(t)
	wantSeqs(t, "a.k", seqsOf(appendN(t, s, a, "k", 1, 5)), seqRange(1, 5))
	wantSeqs(t, "a.k2", seqsOf(appendN(t, s, a, "k2", 1, 2)), seqRange(1, 2))
	wantSeqs(t, "b.k", seqsOf(appendN(t, s, b, "k", 1, 3)), seqRange(1, 3))
	// Names that concatenate alike are still different keys.
	wantSeqs(t, "a.k-x", seqsOf(appendN(t, s, a, "k-x", 1, 1)), []uint64{1})
	wantSeqs(t, "a-k.x", seqsOf(appendN(t, s, a+"-k", "x", 1, 1)), []uint64{1})
	wantSeqs(t, "a.k again", seqsOf(appendN(t, s, a, "k", 6, 7)), seqRange(6, 7))
	if h := history(t, s, b, "k", 0); h.Top.Seq != 3 || len(h.Pubs) != 3 {
		t.Fatalf("b.k: top %+v, %d publications", h.Top, len(h.Pubs))
	}
}

// testEpochStable: a key's epoch is made once and reported the same by
// every operation while the store keeps the key.
func testEpochStable(t *testing.T, s middle.Store) {
	a := app(t)
	h := history(t, s, a, "k", 0)
	if h.Top.Seq != 0 || len(h.Pubs) != 0 {
		t.Fatalf("untouched key: %+v", h)
	}
	e := h.Top.Epoch
	for i := range 3 {
		if got := history(t, s, a, "k", 0).Top; got != (proto.Position{Epoch: e}) {
			t.Fatalf("history %d of an unpublished key: %+v, want 0 of %q", i, got, e)
		}
	}
	pubs := appendN(t, s, a, "k", 1, 3)
	for i := range pubs {
		if pubs[i].Epoch != e {
			t.Fatalf("append: epoch %q, want the one History made, %q", pubs[i].Epoch, e)
		}
	}
	if got := latest(t, s, a, "k").Top; got != (proto.Position{Seq: 3, Epoch: e}) {
		t.Fatalf("latest: %+v", got)
	}
	tops, err := s.Tops(ctx(t), []middle.StreamKey{{App: a, Key: "k"}})
	if err != nil || len(tops) != 1 || tops[0] != (proto.Position{Seq: 3, Epoch: e}) {
		t.Fatalf("tops: %v, %v", tops, err)
	}
	// Two keys get two epochs: an epoch names one key's stream.
	if other := history(t, s, a, "k2", 0).Top.Epoch; other == e {
		t.Fatalf("keys k and k2 share epoch %q", e)
	}
}

// testHistorySince: History returns the retained publications after since.
func testHistorySince(t *testing.T, s middle.Store) {
	a := app(t)
	pubs := appendN(t, s, a, "k", 1, 12)
	top := pubs[len(pubs)-1].Position()
	for _, since := range []uint64{0, 1, 5, 11, 12, 13, 1000} {
		h := history(t, s, a, "k", since)
		if h.Top != top {
			t.Fatalf("since %d: top %+v, want %+v", since, h.Top, top)
		}
		var want []uint64
		if since < 12 {
			want = seqRange(since+1, 12)
		}
		wantSeqs(t, fmt.Sprintf("since %d", since), seqsOf(h.Pubs), want)
		for _, p := range h.Pubs {
			samePub(t, fmt.Sprintf("since %d", since), p, pubs[p.Seq-1])
		}
	}
	// A key never published: its new epoch, and nothing.
	h := history(t, s, a, "never", 0)
	if h.Top.Seq != 0 || len(h.Pubs) != 0 || h.Top.Epoch == top.Epoch {
		t.Fatalf("untouched key: %+v", h)
	}
	// Retention: at least MinRetained, the newest ones.
	more := appendN(t, s, a, "k", 13, 12+MinRetained)
	h = history(t, s, a, "k", 0)
	if h.Top.Seq != uint64(12+MinRetained) || len(h.Pubs) < MinRetained {
		t.Fatalf("after %d publications: top %+v, %d retained", 12+MinRetained, h.Top, len(h.Pubs))
	}
	last := h.Pubs[len(h.Pubs)-1]
	samePub(t, "newest", last, more[len(more)-1])
	// Retained publications are contiguous up to the top.
	wantSeqs(t, "retained", seqsOf(h.Pubs), seqRange(h.Top.Seq-uint64(len(h.Pubs))+1, h.Top.Seq))
}

// testLatest: Latest is the top position with the newest publication.
func testLatest(t *testing.T, s middle.Store) {
	a := app(t)
	h := latest(t, s, a, "k")
	if h.Top.Seq != 0 || len(h.Pubs) != 0 {
		t.Fatalf("untouched key: %+v", h)
	}
	e := h.Top.Epoch
	pubs := appendN(t, s, a, "k", 1, 4)
	if pubs[0].Epoch != e {
		t.Fatalf("append after Latest: epoch %q, want %q", pubs[0].Epoch, e)
	}
	h = latest(t, s, a, "k")
	if h.Top != (proto.Position{Seq: 4, Epoch: e}) || len(h.Pubs) != 1 {
		t.Fatalf("latest: %+v", h)
	}
	samePub(t, "latest", h.Pubs[0], pubs[3])
	// Latest of one key is untouched by another.
	appendN(t, s, a, "k2", 1, 9)
	if h := latest(t, s, a, "k"); h.Top.Seq != 4 {
		t.Fatalf("latest after another key's appends: %+v", h.Top)
	}
}

// testTopsCreateEpochs: Tops answers for every key in order, creating the
// epochs of keys never touched, which later operations keep.
func testTopsCreateEpochs(t *testing.T, s middle.Store) {
	if tops, err := s.Tops(ctx(t), nil); err != nil || len(tops) != 0 {
		t.Fatalf("Tops(nil): %v, %v", tops, err)
	}
	a := app(t)
	appendN(t, s, a, "b", 1, 2)
	keys := []middle.StreamKey{{App: a, Key: "a"}, {App: a, Key: "b"}, {App: a, Key: "c"}}
	tops, err := s.Tops(ctx(t), keys)
	if err != nil || len(tops) != len(keys) {
		t.Fatalf("Tops: %v, %v", tops, err)
	}
	for i, p := range tops {
		if err := proto.ValidateEpoch(p.Epoch); err != nil {
			t.Fatalf("key %s: %v", keys[i].Key, err)
		}
	}
	if tops[0].Seq != 0 || tops[1].Seq != 2 || tops[2].Seq != 0 {
		t.Fatalf("tops %+v, want seqs 0, 2, 0", tops)
	}
	if h := history(t, s, a, "b", 0); h.Top != tops[1] {
		t.Fatalf("b: history top %+v, tops %+v", h.Top, tops[1])
	}
	again, err := s.Tops(ctx(t), keys)
	if err != nil || !slices.Equal(again, tops) {
		t.Fatalf("Tops again: %v, %v; want %v", again, err, tops)
	}
	p := appendN(t, s, a, "c", 1, 1)[0]
	if p.Position() != (proto.Position{Seq: 1, Epoch: tops[2].Epoch}) {
		t.Fatalf("append after Tops: %+v, want seq 1 of %q", p.Position(), tops[2].Epoch)
	}
	if h := latest(t, s, a, "a"); h.Top != tops[0] {
		t.Fatalf("a: latest top %+v, tops %+v", h.Top, tops[0])
	}
	// Many keys in one call, some repeated.
	var many []middle.StreamKey
	for i := range 300 {
		many = append(many, middle.StreamKey{App: a, Key: fmt.Sprintf("m%d", i%200)})
	}
	tops, err = s.Tops(ctx(t), many)
	if err != nil || len(tops) != len(many) {
		t.Fatalf("Tops of %d: %d, %v", len(many), len(tops), err)
	}
	for i := 200; i < 300; i++ {
		if tops[i] != tops[i-200] {
			t.Fatalf("key %s: %+v then %+v in one call", many[i].Key, tops[i-200], tops[i])
		}
	}
}

// testIdempotentRepeat: a repeated id gets the original seq back and is
// neither retained nor counted (docs/PROTOCOL.md, "Idempotent publishing").
func testIdempotentRepeat(t *testing.T, s middle.Store) {
	a := app(t)
	appendN(t, s, a, "k", 1, 2)
	first := pub(a, "k", 3)
	first.ID = "dev-1:3"
	first = append1(t, s, first, 0)
	if first.Seq != 3 {
		t.Fatalf("first: seq %d, want 3", first.Seq)
	}
	appendN(t, s, a, "k", 4, 4)

	repeat := pub(a, "k", 99) // the payload of a repeat is ignored
	repeat.ID = first.ID
	repeat = append1(t, s, repeat, 0)
	if repeat.Position() != first.Position() {
		t.Fatalf("repeat: %+v, want the original %+v", repeat.Position(), first.Position())
	}
	h := history(t, s, a, "k", 0)
	wantSeqs(t, "history after the repeat", seqsOf(h.Pubs), seqRange(1, 4))
	samePub(t, "original", h.Pubs[2], first)
	next := appendN(t, s, a, "k", 5, 5)[0]
	if next.Seq != 5 {
		t.Fatalf("next after the repeat: seq %d, want 5", next.Seq)
	}
	// Another id is another publication.
	other := pub(a, "k", 6)
	other.ID = "dev-1:4"
	other = append1(t, s, other, 0)
	if other.Seq != 6 {
		t.Fatalf("another id: seq %d, want 6", other.Seq)
	}
}

// testIdempotentRepeatInBatch: a repeat in the same batch as its original.
func testIdempotentRepeatInBatch(t *testing.T, s middle.Store) {
	a := app(t)
	pubs := []proto.Publication{pub(a, "k", 1), pub(a, "k", 2), pub(a, "j", 1), pub(a, "k", 3), pub(a, "k", 4)}
	pubs[1].ID, pubs[3].ID = "x", "x"
	pubs[2].ID = "x" // same id, another key
	appendAll(t, s, pubs, 0)
	wantSeqs(t, "batch", seqsOf(pubs), []uint64{1, 2, 1, 2, 3})
	h := history(t, s, a, "k", 0)
	wantSeqs(t, "history", seqsOf(h.Pubs), seqRange(1, 3))
	samePub(t, "original", h.Pubs[1], pubs[1])
	samePub(t, "after the repeat", h.Pubs[2], pubs[4])
}

// testIdempotencyScopedToKey: an id names a publication of one key.
func testIdempotencyScopedToKey(t *testing.T, s middle.Store) {
	a, b := app(t), app(t)
	appendN(t, s, a, "k2", 1, 4)
	pubs := []proto.Publication{pub(a, "k", 1), pub(a, "k2", 5), pub(b, "k", 1)}
	for i := range pubs {
		pubs[i].ID = "same"
	}
	appendAll(t, s, pubs, 0)
	wantSeqs(t, "same id on three keys", seqsOf(pubs), []uint64{1, 5, 1})
}

// testWindowExpiry: after the window, an id is forgotten.
func testWindowExpiry(t *testing.T, s middle.Store) {
	a := app(t)
	p := pub(a, "k", 1)
	p.ID = "once"
	p = append1(t, s, p, 0)
	time.Sleep(shortWindow / 3)
	r := pub(a, "k", 2)
	r.ID = "once"
	r = append1(t, s, r, 0)
	if r.Seq != 1 {
		t.Fatalf("repeat within the window: seq %d, want 1", r.Seq)
	}
	time.Sleep(shortWindow * 2)
	r = pub(a, "k", 3)
	r.ID = "once"
	r = append1(t, s, r, 0)
	if r.Seq != 2 {
		t.Fatalf("same id after the window: seq %d, want 2 (a new publication)", r.Seq)
	}
	h := history(t, s, a, "k", 0)
	wantSeqs(t, "history", seqsOf(h.Pubs), []uint64{1, 2})
	samePub(t, "new publication", h.Pubs[1], r)
}

func wantFenced(t *testing.T, s middle.Store, p proto.Publication, fence uint64) {
	t.Helper()
	n, err := s.AppendBatch(ctx(t), []proto.Publication{p}, fence)
	if n != 0 || !errors.Is(err, middle.ErrFenced) {
		t.Fatalf("append of %s.%s with fence %d: n=%d, %v; want 0 and ErrFenced", p.App, p.Key, fence, n, err)
	}
}

// testFence: a key refuses a fence lower than the highest it recorded;
// fence 0 is never refused and records nothing (docs/PROTOCOL.md,
// "Partitions and fencing").
func testFence(t *testing.T, s middle.Store) {
	a := app(t)
	appendAll(t, s, []proto.Publication{pub(a, "k", 1)}, 5)
	appendAll(t, s, []proto.Publication{pub(a, "k", 2)}, 5)
	wantFenced(t, s, pub(a, "k", -1), 4)
	wantFenced(t, s, pub(a, "k", -1), 1)
	appendAll(t, s, []proto.Publication{pub(a, "k", 3)}, 0)
	appendAll(t, s, []proto.Publication{pub(a, "k", 4)}, 9)
	wantFenced(t, s, pub(a, "k", -1), 5)
	wantFenced(t, s, pub(a, "k", -1), 8)
	appendAll(t, s, []proto.Publication{pub(a, "k", 5)}, 0) // records nothing
	wantFenced(t, s, pub(a, "k", -1), 8)
	appendAll(t, s, []proto.Publication{pub(a, "k", 6)}, 9)
	// A refused publication was not sequenced, and not retained.
	h := history(t, s, a, "k", 0)
	wantSeqs(t, "history", seqsOf(h.Pubs), seqRange(1, 6))
	for i, p := range h.Pubs {
		if string(p.Data) != fmt.Sprint(i+1) {
			t.Fatalf("seq %d holds %q", p.Seq, p.Data)
		}
	}
	// A fenced idempotent repeat is refused too, not answered.
	id := pub(a, "k", 7)
	id.ID = "i"
	id = append1(t, s, id, 9)
	id.Seq, id.Epoch = 0, ""
	wantFenced(t, s, id, 3)
}

// testFenceInBatch: the refused publication's index is returned; the ones
// before it were sequenced.
func testFenceInBatch(t *testing.T, s middle.Store) {
	a := app(t)
	appendAll(t, s, []proto.Publication{pub(a, "hi", 1)}, 10)
	pubs := []proto.Publication{pub(a, "lo", 1), pub(a, "lo", 2), pub(a, "hi", 2), pub(a, "lo", 3)}
	n, err := s.AppendBatch(ctx(t), pubs, 7)
	if n != 2 || !errors.Is(err, middle.ErrFenced) {
		t.Fatalf("batch: n=%d, %v; want 2 and ErrFenced", n, err)
	}
	wantSeqs(t, "sequenced", seqsOf(pubs[:2]), []uint64{1, 2})
	if h := history(t, s, a, "hi", 0); h.Top.Seq != 1 {
		t.Fatalf("fenced key: top %+v, want seq 1", h.Top)
	}
}

// testFencePerKey: fences are recorded per key.
func testFencePerKey(t *testing.T, s middle.Store) {
	a := app(t)
	appendAll(t, s, []proto.Publication{pub(a, "k1", 1)}, 100)
	appendAll(t, s, []proto.Publication{pub(a, "k2", 1)}, 3)
	appendAll(t, s, []proto.Publication{pub(a, "k3", 1)}, 0)
	appendAll(t, s, []proto.Publication{pub(a, "k3", 2)}, 1)
	wantFenced(t, s, pub(a, "k1", 2), 99)
	appendAll(t, s, []proto.Publication{pub(a, "k2", 2)}, 4)
}

// testConcurrentAppends: concurrent appenders get unique, gap-free seqs,
// and each one's seqs grow in the order it appended (docs/PROTOCOL.md,
// "Delivery guarantees", 1).
func testConcurrentAppends(t *testing.T, s middle.Store) {
	a := app(t)
	const writers, batches, perBatch = 8, 10, 5
	seqs := make([][]uint64, writers)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			for b := range batches {
				pubs := make([]proto.Publication, perBatch)
				for i := range pubs {
					pubs[i] = pub(a, "k", w*1000+b*perBatch+i)
					if i%2 == 1 {
						pubs[i].Key = fmt.Sprintf("w%d", w)
					}
				}
				n, err := s.AppendBatch(context.Background(), pubs, 0)
				if err != nil || n != len(pubs) {
					errs <- fmt.Errorf("writer %d batch %d: n=%d, %v", w, b, n, err)
					return
				}
				for i := range pubs {
					if pubs[i].Key == "k" {
						seqs[w] = append(seqs[w], pubs[i].Seq)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var all []uint64
	for w := range seqs {
		if !slices.IsSorted(seqs[w]) {
			t.Fatalf("writer %d: seqs out of order: %v", w, seqs[w])
		}
		all = append(all, seqs[w]...)
	}
	slices.Sort(all)
	perKey := uint64(writers * batches * ((perBatch + 1) / 2))
	wantSeqs(t, "all seqs of k", all, seqRange(1, perKey))
	if h := latest(t, s, a, "k"); h.Top.Seq != perKey {
		t.Fatalf("top %+v, want %d", h.Top, perKey)
	}
	for w := range writers {
		if h := latest(t, s, a, fmt.Sprintf("w%d", w)); h.Top.Seq != batches*(perBatch/2) {
			t.Fatalf("w%d: top %+v", w, h.Top)
		}
	}
}
