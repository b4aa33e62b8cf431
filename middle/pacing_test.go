package middle

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/wspush/wspush/proto"
)

// max_rate is paced by the node, once per (key, format, rate) for all the
// subscribers of that rate (docs/PROTOCOL.md, "Delivery modes"): the
// channel's rate groups (channel.go, deliver.go).

// timedRecorder is a recorder that notes when each data frame came.
type timedRecorder struct {
	recorder
	tmu sync.Mutex
	at  []time.Time
}

func newTimedRecorder() *timedRecorder {
	return &timedRecorder{recorder: recorder{id: recorderIDs.Add(1)}}
}

func (r *timedRecorder) Enqueue(f *proto.Frame) bool {
	if f.Seq != 0 {
		r.tmu.Lock()
		r.at = append(r.at, time.Now())
		r.tmu.Unlock()
	}
	return r.recorder.Enqueue(f)
}

func (r *timedRecorder) times() []time.Time {
	r.tmu.Lock()
	defer r.tmu.Unlock()
	return append([]time.Time(nil), r.at...)
}

// group returns the rate group of (app, key) for (f, rate), or nil.
func group(n *Node, app, key string, f proto.Format, rate float64) *rateGroup {
	ch := n.hub.get(app, key)
	if ch == nil {
		return nil
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.groups[groupKey{f, rate}]
}

func groupState(n *Node, app, key string, g *rateGroup) (held, armed bool, members int) {
	ch := n.hub.get(app, key)
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return g.held, g.armed, len(g.subs.list)
}

func counterOf(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func latestSub(id uint64, key string, rate float64) SubscribeRequest {
	return SubscribeRequest{ID: id, App: "a", Keys: []string{key}, Mode: proto.ModeLatest, MaxRate: rate}
}

// A group gets at most one value per 1/max_rate, the newest, and the
// final one; stream subscribers of the key get every value meanwhile.
func TestRateGroupPacesOncePerInterval(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	const rate = 10 // 100 ms
	rs := []*timedRecorder{newTimedRecorder(), newTimedRecorder(), newTimedRecorder()}
	for i, r := range rs {
		subscribe(t, n, r, latestSub(uint64(i+1), "k", rate))
	}
	stream := newRecorder()
	subscribe(t, n, stream, SubscribeRequest{ID: 9, App: "a", Keys: []string{"k"}})
	if g := group(n, "a", "k", proto.FormatJSON, rate); g == nil || len(g.subs.list) != 3 {
		t.Fatalf("group %+v: want one group of 3", g)
	}
	if ch := n.hub.get("a", "k"); ch.size.Load() != 4 {
		t.Fatalf("size %d, want 4", ch.size.Load())
	}
	for v := 2; v <= 60; v++ {
		publishValues(t, n, "a", "k", v, v)
		time.Sleep(5 * time.Millisecond)
	}
	for _, r := range rs {
		waitFor(t, "the final value", func() bool {
			s := r.seqs(t, "k")
			return len(s) > 0 && s[len(s)-1] == 60
		})
	}
	waitSeqs(t, stream, "k", seqRange(1, 60))
	interval := rateInterval(rate)
	for i, r := range rs {
		seqs := r.seqs(t, "k")
		if seqs[0] != 1 || len(seqs) > 12 || len(seqs) < 3 {
			t.Fatalf("subscriber %d got %v: want the initial value, then about one value per 100 ms", i, seqs)
		}
		for j := 1; j < len(seqs); j++ {
			if seqs[j] <= seqs[j-1] {
				t.Fatalf("subscriber %d: seqs %v do not rise", i, seqs)
			}
		}
		at := r.times()
		// at[0] is the initial value, outside the pacing.
		for j := 2; j < len(at); j++ {
			if d := at[j].Sub(at[j-1]); d < interval*9/10 {
				t.Fatalf("subscriber %d: values %d and %d %s apart, want >= %s", i, seqs[j-1], seqs[j], d, interval)
			}
		}
	}
	if v := counterOf(t, n.metrics.skippedRate); v < 3*40 {
		t.Fatalf("skipped for rate: %v, want >= 120 (3 members, 40 values or more replaced)", v)
	}
}

// The value a lone member gets with its subscribe starts the group's
// interval. A value within the interval is held; a newer one replaces it,
// and the timer sends the newest when the interval ends. A value after the
// interval goes at once.
func TestRateGroupHoldsTheNewest(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	r := newRecorder()
	subscribe(t, n, r, latestSub(1, "k", 5)) // 200 ms
	publishValues(t, n, "a", "k", 2, 4)
	g := group(n, "a", "k", proto.FormatJSON, 5)
	if held, armed, _ := groupState(n, "a", "k", g); !held || !armed {
		t.Fatalf("held %v, armed %v: want the value 4 held back", held, armed)
	}
	if got := r.seqs(t, "k"); !equalSeqs(got, []uint64{1}) {
		t.Fatalf("before the interval ends: %v, want [1]", got)
	}
	if v := counterOf(t, n.metrics.skippedRate); v != 2 {
		t.Fatalf("skipped for rate: %v, want 2 (the values 2 and 3, replaced)", v)
	}
	waitSeqs(t, r, "k", []uint64{1, 4})
	if held, armed, _ := groupState(n, "a", "k", g); held || armed {
		t.Fatalf("after the timer: held %v, armed %v", held, armed)
	}
	time.Sleep(rateInterval(5))
	publishValues(t, n, "a", "k", 5, 5)
	if got := r.seqs(t, "k"); !equalSeqs(got, []uint64{1, 4, 5}) {
		t.Fatalf("after the interval: %v, want 5 at once", got)
	}
}

// A reset voids the held value: the reset goes to the group's members in
// order, and the timer sends nothing.
func TestRateGroupResetVoidsTheHeldValue(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	r := newRecorder()
	subscribe(t, n, r, latestSub(1, "k", 10)) // 100 ms
	publishValues(t, n, "a", "k", 2, 3)
	ch := n.hub.get("a", "k")
	ch.mu.Lock()
	n.resetLocked(ch, proto.Position{Seq: 7, Epoch: ch.pos.Epoch}, proto.ResetGap)
	ch.mu.Unlock()
	g := group(n, "a", "k", proto.FormatJSON, 10)
	waitFor(t, "the timer", func() bool { _, armed, _ := groupState(n, "a", "k", g); return !armed })
	time.Sleep(50 * time.Millisecond)
	if got := events(t, r, "k"); len(got) != 2 || got[0] != "d1" || got[1] != "r7/gap" {
		t.Fatalf("got %v, want [d1 r7/gap]", got)
	}
}

// A member that subscribes while a value is held got that value with its
// subscribe: the timer does not send it again (to it), but does to the
// others.
func TestRateGroupJoinerIsNotSentTheHeldValueTwice(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	a, b := newRecorder(), newRecorder()
	subscribe(t, n, a, latestSub(1, "k", 5))
	publishValues(t, n, "a", "k", 2, 3) // within a's first interval: 3 is held
	subscribe(t, n, b, latestSub(2, "k", 5))
	waitSeqs(t, a, "k", []uint64{1, 3})
	g := group(n, "a", "k", proto.FormatJSON, 5)
	waitFor(t, "the timer", func() bool { held, _, _ := groupState(n, "a", "k", g); return !held })
	if got := b.seqs(t, "k"); !equalSeqs(got, []uint64{3}) {
		t.Fatalf("the joiner got %v, want [3] once", got)
	}
	// A newer value while held replaces what the joiner had: it gets it.
	publishValues(t, n, "a", "k", 4, 5) // 4 held (within the interval), 5 replaces it
	waitSeqs(t, a, "k", []uint64{1, 3, 5})
	waitSeqs(t, b, "k", []uint64{3, 5})
}

// A re-subscribe in another rate, or mode, moves the subscriber; a group
// left empty stops its timer (and drops the value it held) and goes.
func TestRateGroupMembersMove(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	r, other := newRecorder(), newRecorder()
	subscribe(t, n, r, latestSub(1, "k", 5))
	subscribe(t, n, other, latestSub(2, "k", 2))
	publishValues(t, n, "a", "k", 2, 3) // 3 is held by both groups
	g5 := group(n, "a", "k", proto.FormatJSON, 5)

	subscribe(t, n, r, latestSub(3, "k", 20))
	ch := n.hub.get("a", "k")
	ch.mu.Lock()
	_, still := ch.groups[groupKey{proto.FormatJSON, 5}]
	g20 := ch.groups[groupKey{proto.FormatJSON, 20}]
	size, groups := ch.size.Load(), len(ch.groups)
	ch.mu.Unlock()
	if still || g20 == nil || !g20.subs.has(r) || size != 2 || groups != 2 {
		t.Fatalf("after a re-subscribe at 20/s: rate 5 group left %v, rate 20 group %v, size %d, %d groups", still, g20, size, groups)
	}
	if held, armed, members := groupState(n, "a", "k", g5); held || armed || members != 0 || g5.timer.Stop() {
		t.Fatalf("the emptied group: held %v, armed %v, %d members, its timer running", held, armed, members)
	}
	r.take()

	// Stream mode moves it out of the groups.
	subscribe(t, n, r, SubscribeRequest{ID: 4, App: "a", Keys: []string{"k"}})
	ch.mu.Lock()
	inStream, size, groups := ch.subs[proto.FormatJSON].has(r), ch.size.Load(), len(ch.groups)
	ch.mu.Unlock()
	if !inStream || size != 2 || groups != 1 {
		t.Fatalf("after a stream subscribe: in subs %v, size %d, %d groups", inStream, size, groups)
	}
	var ids []uint64
	n.LocalSubscriptions(func(_, key string, connIDs []uint64) { ids = connIDs })
	if len(ids) != 2 {
		t.Fatalf("local subscriptions %v: want both", ids)
	}

	// The last member of a group unsubscribes: its timer stops with the
	// held value, which never comes.
	g2 := group(n, "a", "k", proto.FormatJSON, 2)
	other.take()
	n.Unsubscribe(context.Background(), other, "a", []string{"k"})
	if held, armed, members := groupState(n, "a", "k", g2); held || armed || members != 0 || g2.timer.Stop() {
		t.Fatalf("the emptied group: held %v, armed %v, %d members, its timer running", held, armed, members)
	}
	time.Sleep(600 * time.Millisecond)
	if got := other.take(); len(got) != 0 {
		t.Fatalf("an unsubscribed member got %d frames", len(got))
	}
	ch.mu.Lock()
	groups = len(ch.groups)
	ch.mu.Unlock()
	if groups != 0 || ch.size.Load() != 1 {
		t.Fatalf("%d groups, size %d", groups, ch.size.Load())
	}
}

// The formats of one rate are two groups, each sent its own encoding.
func TestRateGroupPerFormat(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 1)
	j, b := newRecorder(), newRecorder()
	subscribe(t, n, j, latestSub(1, "k", 5))
	req := latestSub(2, "k", 5)
	req.Format = proto.FormatBinary
	subscribe(t, n, b, req)
	publishValues(t, n, "a", "k", 2, 2)
	waitSeqs(t, j, "k", []uint64{1, 2})
	waitSeqs(t, b, "k", []uint64{1, 2})
	fj, fb := j.snapshot(), b.snapshot()
	if fj[len(fj)-1].Bytes[0] == fb[len(fb)-1].Bytes[0] {
		t.Fatal("both groups got the same encoding")
	}
}

func TestRateIntervalTinyRateDoesNotOverflow(t *testing.T) {
	if d := rateInterval(1e-300); d <= 24*time.Hour {
		t.Fatalf("interval %s", d)
	}
	if d := rateInterval(4); d != 250*time.Millisecond {
		t.Fatalf("interval %s", d)
	}
}

// Run's end stops the rate groups' timers: a stopped node holds nothing
// back and leaves no timer behind.
func TestRateGroupTimersStopWithTheNode(t *testing.T) {
	n := newTestNode(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	publishValues(t, n, "a", "k", 1, 1)
	const rate = 0.5 // 2 s
	r := newTimedRecorder()
	subscribe(t, n, r, latestSub(1, "k", rate))
	publishValues(t, n, "a", "k", 2, 3) // within the interval of the subscribe's value: held
	g := group(n, "a", "k", proto.FormatJSON, rate)
	if g == nil {
		t.Fatal("no rate group")
	}
	if held, armed, _ := groupState(n, "a", "k", g); !held || !armed {
		t.Fatalf("held %v armed %v: want a value held and the timer armed", held, armed)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if held, armed, _ := groupState(n, "a", "k", g); held || armed {
		t.Fatalf("after Run: held %v armed %v, want neither", held, armed)
	}
}
