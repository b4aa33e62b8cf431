package middle

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// The ordering core with a shared store (fakeStore) and a bus (fakeBus):
// each subscriber gets every seq once, in order, or a reset
// (docs/PROTOCOL.md, "Delivery guarantees", "Reset").

type busNode struct {
	*Node
	st  *fakeStore
	bus *fakeBus
	reg *prometheus.Registry
}

// newBusNode runs a node on a fake shared store keeping historySize
// publications per key. cfg.PositionCheck 0 means an hour (no check
// during the test).
func newBusNode(t *testing.T, historySize int, cfg Config) *busNode {
	t.Helper()
	bus := newFakeBus()
	st := newFakeStore(historySize, bus)
	reg := prometheus.NewRegistry()
	cfg.Store, cfg.Bus, cfg.Registerer = st, bus, reg
	if cfg.PositionCheck == 0 {
		cfg.PositionCheck = time.Hour
	}
	n := newTestNode(t, cfg)
	runNode(t, n)
	return &busNode{n, st, bus, reg}
}

func (b *busNode) publish(t *testing.T, key string, from, to int) {
	t.Helper()
	publishValues(t, b.Node, "a", key, from, to)
}

// top is the store's position of a.key.
func (b *busNode) top(t *testing.T, key string) proto.Position {
	t.Helper()
	h, err := b.st.mem.Latest(context.Background(), "a", key)
	if err != nil {
		t.Fatal(err)
	}
	return h.Top
}

func (b *busNode) counter(t *testing.T, name string) float64 {
	t.Helper()
	return counterValue(t, b.reg, name)
}

// waitEvents waits until r has len(want) events of key, then compares.
func waitEvents(t *testing.T, r *recorder, key string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(events(t, r, key)) < len(want) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if got := events(t, r, key); !slices.Equal(got, want) {
		t.Fatalf("%s: got %v, want %v", key, got, want)
	}
}

// dataRange is "d<from>" ... "d<to>".
func dataRange(from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("d%d", i))
	}
	return out
}

// settle gives stray deliveries a moment to show up (for checks that
// nothing more arrives).
func (b *busNode) settle() {
	b.bus.idle()
	time.Sleep(30 * time.Millisecond)
}

func TestBusDelivery(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	if !b.bus.isWatched("a", "k") {
		t.Fatal("subscribe did not watch the key")
	}
	b.publish(t, "k", 1, 5)
	waitEvents(t, s, "k", dataRange(1, 5)...)
	// Another subscriber does not watch again; it gets the latest value.
	s2 := newRecorder()
	subscribe(t, b.Node, s2, SubscribeRequest{App: "a", Keys: []string{"k"}})
	if w := b.bus.watches.Load(); w != 1 {
		t.Fatalf("%d watches for one key", w)
	}
	b.publish(t, "k", 6, 6)
	waitEvents(t, s2, "k", "d5", "d6")
	// The last one to leave unwatches.
	b.Unsubscribe(context.Background(), s, "a", []string{"k"})
	if !b.bus.isWatched("a", "k") || b.bus.unwatches.Load() != 0 {
		t.Fatal("unwatched while a subscriber is left")
	}
	b.Unsubscribe(context.Background(), s2, "a", []string{"k"})
	if b.bus.isWatched("a", "k") || b.bus.unwatches.Load() != 1 {
		t.Fatal("not unwatched after the last subscriber left")
	}
	b.publish(t, "k", 7, 7)
	s3 := newRecorder()
	subscribe(t, b.Node, s3, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 8, 8)
	waitEvents(t, s3, "k", "d7", "d8")
	if b.bus.watches.Load() != 2 {
		t.Fatalf("resubscribe: %d watches, want 2", b.bus.watches.Load())
	}
	b.settle()
	waitEvents(t, s, "k", dataRange(1, 6)...)
	if r := b.st.historyReads.Load(); r != 0 {
		t.Errorf("%d history reads for a bus that lost nothing", r)
	}
}

// TestBusGapFilledFromHistory: a publication arrives after a gap; the
// missing ones come from the store's history.
func TestBusGapFilledFromHistory(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 1)
	waitEvents(t, s, "k", "d1")
	b.st.noFanout.Store(true)
	b.publish(t, "k", 2, 4)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 5, 6)
	waitEvents(t, s, "k", dataRange(1, 6)...)
	for _, m := range s.messages(t)[1:] {
		if string(m.pub.Data) != fmt.Sprintf(`{"v":%d}`, m.pub.Seq) {
			t.Fatalf("seq %d carries %s", m.pub.Seq, m.pub.Data)
		}
	}
	if f := b.counter(t, "wspush_gap_fills_total"); f < 3 {
		t.Errorf("gap fills = %v, want at least 3", f)
	}
	if r := b.counter(t, "wspush_resets_total"); r != 0 {
		t.Errorf("%v resets", r)
	}
}

// TestBusDuplicatesDropped: copies of what was delivered are dropped.
func TestBusDuplicatesDropped(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s, bin := newRecorder(), newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	subscribe(t, b.Node, bin, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.FormatBinary})
	b.publish(t, "k", 1, 3)
	waitEvents(t, s, "k", dataRange(1, 3)...)
	h, _ := b.st.mem.History(context.Background(), "a", "k", 0)
	b.bus.inject(h.Pubs[1], h.Pubs[2], h.Pubs[0], h.Pubs[2])
	b.publish(t, "k", 4, 4)
	waitEvents(t, s, "k", dataRange(1, 4)...)
	waitEvents(t, bin, "k", dataRange(1, 4)...)
	b.settle()
	waitEvents(t, s, "k", dataRange(1, 4)...)
	if d := b.counter(t, "wspush_duplicates_dropped_total"); d != 4 {
		t.Errorf("duplicates dropped = %v, want 4", d)
	}
	if r := b.st.historyReads.Load(); r != 0 {
		t.Errorf("%d history reads for duplicates", r)
	}
}

// TestBusOutOfOrder: publications that overtake each other are delivered
// in seq order, once.
func TestBusOutOfOrder(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	pubs := b.st.sequence(jsonPub("a", "k", 1), jsonPub("a", "k", 2), jsonPub("a", "k", 3), jsonPub("a", "k", 4))
	b.bus.inject(pubs[2], pubs[0], pubs[3], pubs[1])
	waitEvents(t, s, "k", dataRange(1, 4)...)
	b.settle()
	waitEvents(t, s, "k", dataRange(1, 4)...)
	if r := b.counter(t, "wspush_resets_total"); r != 0 {
		t.Errorf("%v resets", r)
	}
}

// TestLostFanoutRepairedByPositionCheck: a quiet key whose last
// publication's fan-out was lost gets it by the position check
// (docs/PROTOCOL.md, "Delivery guarantees", 4); a key in step costs no
// history read.
func TestLostFanoutRepairedByPositionCheck(t *testing.T) {
	b := newBusNode(t, 32, Config{PositionCheck: 20 * time.Millisecond})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k", "quiet"}})
	b.publish(t, "k", 1, 2)
	waitEvents(t, s, "k", "d1", "d2")
	tops := b.st.topsCalls.Load()
	waitFor(t, "position checks", func() bool { return b.st.topsCalls.Load() >= tops+3 })
	if r := b.st.historyReads.Load(); r != 0 {
		t.Fatalf("%d history reads while every key is in step", r)
	}
	b.st.noFanout.Store(true)
	b.publish(t, "k", 3, 3)
	waitEvents(t, s, "k", "d1", "d2", "d3")
	if l := b.counter(t, "wspush_position_lags_total"); l < 1 {
		t.Errorf("position lags = %v", l)
	}
	waitEvents(t, s, "quiet")
}

// TestEpochChangeResets: the store lost the key; its new epoch reaches the
// subscribers as a reset (reason epoch), then the new epoch's values.
func TestEpochChangeResets(t *testing.T) {
	b := newBusNode(t, 4, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 3)
	waitEvents(t, s, "k", dataRange(1, 3)...)
	old := b.top(t, "k")

	b.st.lose("a", "k")
	b.publish(t, "k", 1, 2) // seqs 1, 2 of a new epoch
	e2 := b.top(t, "k").Epoch
	if e2 == old.Epoch {
		t.Fatal("the store kept its epoch")
	}
	waitEvents(t, s, "k", "d1", "d2", "d3", "r0/epoch", "d1", "d2")
	resets := resetsOf(t, s, "k")
	if resets[0].Epoch != e2 {
		t.Fatalf("reset to epoch %q, want %q", resets[0].Epoch, e2)
	}
	// A late copy of the old epoch is not delivered.
	b.bus.inject(proto.Publication{App: "a", Key: "k", Seq: 3, Epoch: old.Epoch, Data: []byte("1"), JSON: true})
	b.publish(t, "k", 3, 3)
	waitEvents(t, s, "k", "d1", "d2", "d3", "r0/epoch", "d1", "d2", "d3")

	// A lost key whose new epoch has more than the history holds: the reset
	// points before the oldest retained one.
	b.st.lose("a", "k")
	b.st.noFanout.Store(true)
	b.publish(t, "k", 1, 9)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 10, 10) // the history holds 7..10
	waitEvents(t, s, "k", "d1", "d2", "d3", "r0/epoch", "d1", "d2", "d3", "r6/epoch", "d7", "d8", "d9", "d10")
	if r := b.counter(t, "wspush_resets_total"); r != 2 {
		t.Errorf("resets = %v, want 2", r)
	}
}

// resetsOf returns the positions of r's resets of key.
func resetsOf(t *testing.T, r *recorder, key string) []proto.Position {
	t.Helper()
	var out []proto.Position
	for _, m := range r.messages(t) {
		if m.msg.Op == proto.OpReset && m.msg.Key == key {
			out = append(out, proto.Position{Seq: m.msg.Seq, Epoch: m.msg.Epoch})
		}
	}
	return out
}

// TestEpochChangeFoundByPositionCheck: a lost key nobody publishes to is
// found by the position check, which creates its new epoch.
func TestEpochChangeFoundByPositionCheck(t *testing.T) {
	b := newBusNode(t, 32, Config{PositionCheck: 20 * time.Millisecond})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 2)
	waitEvents(t, s, "k", "d1", "d2")
	b.st.lose("a", "k")
	waitEvents(t, s, "k", "d1", "d2", "r0/epoch")
	if got, want := resetsOf(t, s, "k")[0], b.top(t, "k"); got != want {
		t.Fatalf("reset to %+v, store at %+v", got, want)
	}
	b.publish(t, "k", 1, 1)
	waitEvents(t, s, "k", "d1", "d2", "r0/epoch", "d1")
}

// TestGapBeyondHistory: what the history no longer holds is reported by a
// reset (reason gap) before what it holds.
func TestGapBeyondHistory(t *testing.T) {
	b := newBusNode(t, 4, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 2)
	waitEvents(t, s, "k", "d1", "d2")
	b.st.noFanout.Store(true)
	b.publish(t, "k", 3, 9)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 10, 11) // the history holds 8..11 when 10 arrives, or 7..10
	want := []string{"d1", "d2", "r6/gap", "d7", "d8", "d9", "d10", "d11"}
	deadline := time.Now().Add(10 * time.Second)
	for len(events(t, s, "k")) < 7 && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if got := events(t, s, "k"); got[2] == "r7/gap" {
		want = append([]string{"d1", "d2", "r7/gap"}, dataRange(8, 11)...)
	}
	waitEvents(t, s, "k", want...)
	if r := b.counter(t, "wspush_resets_total"); r != 1 {
		t.Errorf("resets = %v, want 1", r)
	}
	// A late subscriber's latest value is the newest.
	late := newRecorder()
	subscribe(t, b.Node, late, SubscribeRequest{App: "a", Keys: []string{"k"}})
	waitEvents(t, late, "k", "d11")
}

// TestResync: after the bus reconnects, every served key is caught up,
// whatever the position check's period.
func TestResync(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k1", "k2", "k3"}})
	b.publish(t, "k1", 1, 1)
	waitEvents(t, s, "k1", "d1")
	b.st.noFanout.Store(true)
	b.publish(t, "k1", 2, 3)
	b.publish(t, "k2", 1, 1)
	b.st.noFanout.Store(false)
	b.settle()
	if got := events(t, s, "k1"); len(got) != 1 {
		t.Fatalf("k1 before the resync: %v", got)
	}
	b.bus.resync()
	waitEvents(t, s, "k1", "d1", "d2", "d3")
	waitEvents(t, s, "k2", "d1")
	b.settle()
	waitEvents(t, s, "k3")
	b.publish(t, "k1", 4, 4)
	waitEvents(t, s, "k1", dataRange(1, 4)...)
}

// TestSubscribeSince: resumes with full and bare positions (docs/PROTOCOL.md,
// "Subscribe and resume", "Recovered").
func TestSubscribeSince(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		t.Run(fmt.Sprintf("channel alive=%v", keepAlive), func(t *testing.T) {
			b := newBusNode(t, 4, Config{})
			if keepAlive {
				subscribe(t, b.Node, newRecorder(), SubscribeRequest{App: "a", Keys: []string{"k", "j"}})
			}
			b.publish(t, "k", 1, 10) // the history holds 7..10
			b.settle()
			top := b.top(t, "k")
			e := top.Epoch
			jTop := b.top(t, "j") // never published

			for _, tc := range []struct {
				name  string
				since map[string]proto.Position // epoch "E": k's, "J": j's
				rec   proto.Recovery
				k, j  []string // events of k and j
			}{
				{"full", map[string]proto.Position{"k": {Seq: 7, Epoch: "E"}}, proto.Recovered, dataRange(8, 10), nil},
				{"edge of history", map[string]proto.Position{"k": {Seq: 6, Epoch: "E"}}, proto.Recovered, dataRange(7, 10), nil},
				{"bare", map[string]proto.Position{"k": {Seq: 8}}, proto.Recovered, dataRange(9, 10), nil},
				{"at the top", map[string]proto.Position{"k": {Seq: 10, Epoch: "E"}}, proto.Recovered, nil, nil},
				{"beyond history", map[string]proto.Position{"k": {Seq: 5, Epoch: "E"}}, proto.NotRecovered, []string{"r9/gap", "d10"}, nil},
				{"above the top", map[string]proto.Position{"k": {Seq: 11, Epoch: "E"}}, proto.NotRecovered, []string{"r9/gap", "d10"}, nil},
				{"another epoch", map[string]proto.Position{"k": {Seq: 8, Epoch: "old"}}, proto.NotRecovered, []string{"r9/epoch", "d10"}, nil},
				{"unpublished key", map[string]proto.Position{"j": {Seq: 0, Epoch: "J"}}, proto.Recovered, []string{"d10"}, nil},
				{"unpublished key, other epoch", map[string]proto.Position{"j": {Seq: 3, Epoch: "old"}}, proto.NotRecovered, []string{"d10"}, []string{"r0/epoch"}},
				{"one of two not recovered", map[string]proto.Position{"k": {Seq: 9, Epoch: "E"}, "j": {Seq: 1, Epoch: "J"}}, proto.NotRecovered, []string{"d10"}, []string{"r0/gap"}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					since := map[string]proto.Position{}
					for k, p := range tc.since {
						switch p.Epoch {
						case "E":
							p.Epoch = e
						case "J":
							p.Epoch = jTop.Epoch
						}
						since[k] = p
					}
					s := newRecorder()
					defer b.Unsubscribe(context.Background(), s, "a", []string{"k", "j"})
					subscribe(t, b.Node, s, SubscribeRequest{ID: 5, App: "a", Keys: []string{"k", "j"}, Since: since})
					ms := s.messages(t)
					wantAck(t, ms[0], 5, tc.rec)
					wantAckPositions(t, ms[0], map[string]proto.Position{"k": top, "j": jTop})
					waitEvents(t, s, "k", tc.k...)
					waitEvents(t, s, "j", tc.j...)
					b.publish(t, "k", 11, 11)
					waitEvents(t, s, "k", append(slices.Clone(tc.k), "d11")...)
					b.Unsubscribe(context.Background(), s, "a", []string{"k", "j"})
					// Put the key back at 10 for the next case: a new
					// epoch would change every case.
					b.st.lose("a", "k")
					b.st.noFanout.Store(true)
					b.publish(t, "k", 1, 10)
					b.st.noFanout.Store(false)
					top = b.top(t, "k")
					e = top.Epoch
					if keepAlive {
						// The live channel needs to follow before the
						// next case resumes from the store's view.
						b.bus.resync()
						waitFor(t, "the live channel to follow", func() bool {
							ch := b.hub.get("a", "k")
							ch.mu.Lock()
							defer ch.mu.Unlock()
							return ch.pos == top && !ch.syncing
						})
					}
				})
			}
		})
	}
}

// TestSubscribeAfterStoreLoss: a resume in an epoch the store lost gets a
// reset, and so do the subscribers already there.
func TestSubscribeAfterStoreLoss(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	live := newRecorder()
	subscribe(t, b.Node, live, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 5)
	waitEvents(t, live, "k", dataRange(1, 5)...)
	old := b.top(t, "k")
	b.st.lose("a", "k")

	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{ID: 2, App: "a", Keys: []string{"k"}, Since: map[string]proto.Position{"k": old}})
	top := b.top(t, "k")
	ms := s.messages(t)
	wantAck(t, ms[0], 2, proto.NotRecovered)
	wantAckPositions(t, ms[0], map[string]proto.Position{"k": top})
	if top.Epoch == old.Epoch || top.Seq != 0 {
		t.Fatalf("store at %+v after the loss", top)
	}
	waitEvents(t, s, "k", "r0/epoch")
	waitEvents(t, live, "k", append(dataRange(1, 5), "r0/epoch")...)
	b.publish(t, "k", 1, 1)
	waitEvents(t, s, "k", "r0/epoch", "d1")
	waitEvents(t, live, "k", append(dataRange(1, 5), "r0/epoch", "d1")...)
}

// TestSubscribeStoreUnavailable: a subscribe the store cannot serve fails
// with ErrUnavailable and leaves nothing behind: no frame, no key, no watch.
func TestSubscribeStoreUnavailable(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	b.publish(t, "k", 1, 3)
	s := newRecorder()
	for _, fail := range []struct {
		name string
		set  func(bool)
	}{
		{"store", b.st.failRead.Store},
		{"bus", b.bus.failWatch.Store},
	} {
		fail.set(true)
		for _, since := range []map[string]proto.Position{nil, {"k": {Seq: 1}}} {
			err := b.Subscribe(context.Background(), s, SubscribeRequest{App: "a", Keys: []string{"j", "k"}, Since: since})
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errStoreDown) {
				t.Fatalf("%s down: %v, want ErrUnavailable wrapping the cause", fail.name, err)
			}
		}
		fail.set(false)
		if fs := s.snapshot(); len(fs) != 0 {
			t.Fatalf("%s down: %d frames enqueued", fail.name, len(fs))
		}
		if ks, _ := b.Keys(context.Background(), "a"); len(ks) != 0 {
			t.Fatalf("%s down: keys %v left", fail.name, ks)
		}
		if b.bus.isWatched("a", "j") || b.bus.isWatched("a", "k") {
			t.Fatalf("%s down: a key left watched", fail.name)
		}
	}
	b.publish(t, "k", 4, 4)
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 2})})
	waitEvents(t, s, "k", "d3", "d4")
}

// TestCatchUpWaitsForTheStore: while the store cannot be read, a gap is
// not declared lost: the publications wait, and are delivered in order
// when it answers again.
func TestCatchUpWaitsForTheStore(t *testing.T) {
	b := newBusNode(t, 32, Config{StoreTimeout: 50 * time.Millisecond})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 1)
	waitEvents(t, s, "k", "d1")
	b.st.failRead.Store(true)
	b.st.noFanout.Store(true)
	b.publish(t, "k", 2, 2)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 3, 5)
	b.settle()
	time.Sleep(250 * time.Millisecond) // a few failed reads
	if got := events(t, s, "k"); len(got) != 1 {
		t.Fatalf("while the store is down: %v", got)
	}
	b.st.failRead.Store(false)
	waitEvents(t, s, "k", dataRange(1, 5)...)
	if r := b.counter(t, "wspush_resets_total"); r != 0 {
		t.Errorf("%v resets", r)
	}
}

// TestParkedPublicationsBound: while a key's catch-up waits for the store,
// what the bus brings is parked up to maxParked; beyond, it is dropped and
// read back from the store, so nothing is lost.
func TestParkedPublicationsBound(t *testing.T) {
	const total = maxParked + 300
	b := newBusNode(t, total+10, Config{StoreTimeout: 30 * time.Second})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	// Block the store first: nothing (a position check, say) can then
	// learn seq 1 from it before seq 2 arrives over the bus.
	release := b.st.block()
	defer release()
	b.st.noFanout.Store(true)
	b.publish(t, "k", 1, 1) // a gap for the next one
	b.st.noFanout.Store(false)
	pubs := make([]proto.Publication, total-1)
	for i := range pubs {
		pubs[i] = jsonPub("a", "k", i+2)
	}
	if _, err := b.Publish(context.Background(), "test", pubs); err != nil {
		t.Fatal(err)
	}
	ch := b.hub.get("a", "k")
	waitFor(t, "the parking to overflow", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return ch.lostParked
	})
	b.bus.idle()
	ch.mu.Lock()
	parked, syncing := len(ch.parked), ch.syncing
	ch.mu.Unlock()
	if parked != maxParked || !syncing {
		t.Fatalf("%d parked (syncing %v), want %d", parked, syncing, maxParked)
	}
	if got := events(t, s, "k"); len(got) != 0 {
		t.Fatalf("delivered while the store is blocked: %d", len(got))
	}
	release()
	waitSeqs(t, s, "k", seqRange(1, total))
	// The catch-up that delivered the last seq may still be making its
	// closing read (the parking overflowed: it reads until nothing is new).
	waitFor(t, "the catch-up to settle", func() bool {
		ch.mu.Lock()
		defer ch.mu.Unlock()
		return len(ch.parked) == 0 && !ch.lostParked && !ch.syncing
	})
}

// TestSubscribeWhileCatchingUp: a subscribe to a key whose catch-up waits
// for the store waits too, and gets a consistent start.
func TestSubscribeWhileCatchingUp(t *testing.T) {
	b := newBusNode(t, 32, Config{})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.publish(t, "k", 1, 2)
	waitEvents(t, s, "k", "d1", "d2")
	release := b.st.block()
	b.st.noFanout.Store(true)
	b.publish(t, "k", 3, 3)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 4, 5)
	b.settle()

	done := make(chan error, 2)
	late, resumed := newRecorder(), newRecorder()
	go func() {
		done <- b.Subscribe(context.Background(), late, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k"}})
	}()
	go func() {
		done <- b.Subscribe(context.Background(), resumed, SubscribeRequest{ID: 2, App: "a", Keys: []string{"k"},
			Since: bare(map[string]uint64{"k": 1})})
	}()
	time.Sleep(30 * time.Millisecond)
	release()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	b.publish(t, "k", 6, 6)
	waitEvents(t, s, "k", dataRange(1, 6)...)
	waitEvents(t, resumed, "k", dataRange(2, 6)...)
	// The late subscriber starts at the latest value its ack announced.
	ms := late.messages(t)
	first := ms[0].msg.Positions["k"].Seq
	want := dataRange(int(first), 6)
	waitEvents(t, late, "k", want...)
	if first < 2 {
		t.Fatalf("late subscriber acked at %d", first)
	}
}

// TestBusConcurrentPublishers: publishers race on a few keys of a shared
// store; with the bus delivering, each subscriber gets every seq once.
func TestBusConcurrentPublishers(t *testing.T) {
	b := newBusNode(t, 32, Config{DeliveryWorkers: 2})
	keys := []string{"k0", "k1", "k2"}
	s, bin := newRecorder(), newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: keys})
	subscribe(t, b.Node, bin, SubscribeRequest{App: "a", Keys: keys, Format: proto.FormatBinary})
	const publishers, each = 6, 200
	errs := make(chan error, publishers)
	for g := range publishers {
		go func() {
			for i := range each {
				batch := []proto.Publication{jsonPub("a", keys[(g+i)%3], i), jsonPub("a", keys[i%3], i)}
				if _, err := b.Publish(context.Background(), "test", batch); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range publishers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range keys {
		top := b.top(t, k).Seq
		waitSeqs(t, s, k, seqRange(1, top))
		waitSeqs(t, bin, k, seqRange(1, top))
	}
	if r := b.counter(t, "wspush_resets_total"); r != 0 {
		t.Errorf("%v resets", r)
	}
	if strings.Contains(fmt.Sprint(events(t, s, "k0")), "r") {
		t.Fatal("reset")
	}
}

// TestOneCatchUpPerKey: during a store outage, subscribes to a key that is
// behind (each one fails) do not start a catch-up each: the key keeps one.
func TestOneCatchUpPerKey(t *testing.T) {
	b := newBusNode(t, 32, Config{StoreTimeout: 20 * time.Millisecond})
	s := newRecorder()
	subscribe(t, b.Node, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	b.st.failRead.Store(true)
	b.st.noFanout.Store(true)
	b.publish(t, "k", 1, 1)
	b.st.noFanout.Store(false)
	b.publish(t, "k", 2, 2) // a gap: the catch-up waits for the store
	b.settle()
	before := runtime.NumGoroutine()
	for range 200 {
		if err := b.Subscribe(context.Background(), newRecorder(), SubscribeRequest{App: "a", Keys: []string{"k"}}); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("subscribe with the store down: %v", err)
		}
	}
	if after := runtime.NumGoroutine(); after > before+20 {
		t.Fatalf("%d goroutines after 200 failed subscribes, %d before", after, before)
	}
	b.st.failRead.Store(false)
	waitEvents(t, s, "k", "d1", "d2")
}
