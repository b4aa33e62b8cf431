package userservice

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

// The outbox of a connection (latest.go; docs/PROTOCOL.md, "Delivery
// modes"), driven with an explicit clock. max_rate is the node's (middle's
// tests of its rate groups).

func testOutbox(t *testing.T) (*outbox, *metrics) {
	t.Helper()
	return &outbox{}, newMetrics(nil, nil)
}

func refFrame(ref *proto.StreamRef, seq uint64, size int) *proto.Frame {
	f := proto.EncodeDataFrame(&proto.Publication{App: ref.App, Key: ref.Key, Seq: seq, TS: 1, Data: []byte(`"` + strings.Repeat("x", size) + `"`), JSON: true}, proto.FormatJSON)
	f.Stream = ref
	return f
}

func seqsOf(fs []*proto.Frame) []uint64 {
	out := make([]uint64, len(fs))
	for i, f := range fs {
		out[i] = f.Seq
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A latest key holds one queued value: newer ones replace it in place,
// behind what was queued before it and before what came after it.
func TestOutboxConflatesInPlace(t *testing.T) {
	o, m := testOutbox(t)
	l, s := &proto.StreamRef{App: "a", Key: "l"}, &proto.StreamRef{App: "a", Key: "s"}
	o.setMode(l, proto.ModeLatest, m)
	now := time.Unix(100, 0)

	o.push(refFrame(s, 1, 10))
	for seq := uint64(1); seq <= 5; seq++ {
		k := o.latestKeyOf(refFrame(l, seq, 10))
		if k == nil {
			t.Fatal("latest key not found")
		}
		grew := o.offer(k, refFrame(l, seq, 10+int(seq)))
		if grew != (seq == 1) {
			t.Fatalf("offer %d: grew %v", seq, grew)
		}
	}
	o.push(refFrame(s, 2, 10))
	if o.latestKeyOf(refFrame(s, 3, 1)) != nil {
		t.Fatal("a stream key found as latest")
	}
	batch, wait := o.take(nil, now, true)
	if got := seqsOf(batch); !equalSeqs(got, []uint64{1, 5, 2}) || wait != 0 {
		t.Fatalf("took %v (wait %s), want [1 5 2]", got, wait)
	}
	if o.bytes != 0 || o.latestBytes != 0 || o.len() != 0 {
		t.Fatalf("after take: %d + %d bytes, %d items", o.bytes, o.latestBytes, o.len())
	}
}

// A reset voids what the key had waiting and goes in order; values after
// it queue behind it.
func TestOutboxResetVoidsTheQueuedValue(t *testing.T) {
	o, m := testOutbox(t)
	l := &proto.StreamRef{App: "a", Key: "l"}
	o.setMode(l, proto.ModeLatest, m)
	now := time.Unix(100, 0)
	k := o.ext.keys[l]
	o.offer(k, refFrame(l, 7, 1))
	reset := proto.NewFrame(proto.OpcodeText, proto.AppendReset(nil, "a", "l", proto.Position{Seq: 0, Epoch: "E2"}, proto.ResetEpoch))
	reset.Stream = l
	o.offer(k, reset)
	o.offer(k, refFrame(l, 1, 1))
	o.offer(k, refFrame(l, 2, 1))
	batch, _ := o.take(nil, now, true)
	if len(batch) != 2 || batch[0] != reset || batch[1].Seq != 2 {
		t.Fatalf("took %v, want the reset then seq 2", seqsOf(batch))
	}
}

// A new subscribe of a latest key drops what it had queued: it belonged
// to the earlier subscription. Stream mode and an unsubscribe forget the
// key.
func TestOutboxSetMode(t *testing.T) {
	o, m := testOutbox(t)
	a, b := &proto.StreamRef{App: "a", Key: "a"}, &proto.StreamRef{App: "a", Key: "b"}
	o.setMode(a, proto.ModeLatest, m)
	o.setMode(b, proto.ModeLatest, m)
	now := time.Unix(100, 0)
	if !o.offer(o.ext.keys[a], refFrame(a, 1, 1)) || !o.offer(o.ext.keys[b], refFrame(b, 1, 1)) {
		t.Fatal("the first values did not queue")
	}
	o.setMode(b, proto.ModeLatest, m)
	if o.latestBytes != len(refFrame(a, 1, 1).Bytes) {
		t.Fatalf("latestBytes %d after b's new subscribe", o.latestBytes)
	}
	if batch, _ := o.take(nil, now, true); len(batch) != 1 || batch[0].Stream != a {
		t.Fatalf("took %v, want a's value only", seqsOf(batch))
	}
	o.setMode(a, proto.ModeStream, m)
	if o.latestKeyOf(refFrame(a, 9, 1)) != nil {
		t.Fatal("a still latest")
	}
	o.forgetNames("a", []string{"b"})
	if o.ext.keys != nil {
		t.Fatalf("keys left: %v", o.ext.keys)
	}
}

// max_bandwidth: take hands out what the budget allows, in order; the
// rest waits (a latest value conflating meanwhile).
func TestOutboxBandwidth(t *testing.T) {
	o, m := testOutbox(t)
	s, l := &proto.StreamRef{App: "a", Key: "s"}, &proto.StreamRef{App: "a", Key: "l"}
	o.setBandwidth(2048, m)
	o.setMode(l, proto.ModeLatest, m)
	t0 := o.ext.bw.at
	k := o.ext.keys[l]
	for seq := uint64(1); seq <= 3; seq++ {
		o.push(refFrame(s, seq, 900))
	}
	o.offer(k, refFrame(l, 1, 900))
	reply := textFrame(`{"op":"pong","id":1}`)
	o.push(reply)
	batch, wait := o.take(nil, t0, true)
	if len(batch) != 2 || wait <= 0 {
		t.Fatalf("took %v, wait %s: want 2 frames of the 2048-byte burst", seqsOf(batch), wait)
	}
	o.offer(k, refFrame(l, 2, 900)) // conflates while it waits
	batch, wait2 := o.take(batch[:0], t0.Add(wait/2), true)
	if len(batch) != 0 || wait2 <= 0 {
		t.Fatalf("took %v before the budget allowed", seqsOf(batch))
	}
	batch, _ = o.take(batch[:0], t0.Add(2*time.Second), true)
	if got := seqsOf(batch); !equalSeqs(got, []uint64{3, 2, 0}) || batch[2] != reply {
		t.Fatalf("took %v, want stream 3, latest 2, the reply", got)
	}
	// A closing connection takes everything at once.
	for seq := uint64(4); seq <= 9; seq++ {
		o.push(refFrame(s, seq, 900))
	}
	if batch, _ = o.take(batch[:0], t0.Add(2*time.Second), false); len(batch) != 6 {
		t.Fatalf("closing: took %d", len(batch))
	}
}

func TestParseBandwidth(t *testing.T) {
	for q, want := range map[string]int{"": 0, "max_bandwidth=1024": 1024, "max_bandwidth=65536": 65536, "max_bandwidth=1000000000": 1e9} {
		v, _ := url.ParseQuery(q)
		if got, err := parseBandwidth(v); err != nil || got != want {
			t.Errorf("%s: %d, %v; want %d", q, got, err, want)
		}
	}
	for _, q := range []string{"max_bandwidth=1023", "max_bandwidth=1000000001", "max_bandwidth=", "max_bandwidth=1e6", "max_bandwidth=-1", "max_bandwidth=1024&max_bandwidth=2048"} {
		v, _ := url.ParseQuery(q)
		if _, err := parseBandwidth(v); err == nil || !strings.Contains(err.Error(), "max_bandwidth") {
			t.Errorf("%s: %v", q, err)
		}
	}
}

// An SSE request's mode, max_rate and max_bandwidth.
func TestSSERequestModes(t *testing.T) {
	req, err := parseSSERequest("app=a&keys=k1,k2&mode=latest&max_rate=0.5&max_bandwidth=4096", "", 100)
	if err != nil || req.mode != proto.ModeLatest || req.maxRate != 0.5 || req.bandwidth != 4096 {
		t.Fatalf("%+v, %v", req, err)
	}
	for _, q := range []string{"mode=newest", "mode=latest&max_rate=0", "mode=latest&max_rate=1001", "max_rate=2", "mode=stream&max_rate=2", "mode=latest&max_rate=NaN", "max_bandwidth=1"} {
		if _, err := parseSSERequest("app=a&keys=k&"+q, "", 100); err == nil || err.code != proto.CodeBadRequest {
			t.Errorf("%s: %v", q, err)
		}
	}
}

// An SSE stream of latest keys accepts a data whose seq jumps (the
// client rule for latest keys) and moves the id with it.
func TestSSELatestIDsJump(t *testing.T) {
	st := testStream(t, Config{}, sseRequest{app: "a", keys: []string{"k"}, mode: proto.ModeLatest})
	ack := textFrame(string(proto.AppendAckMode(nil, 0, proto.RecoveryNone, proto.ModeLatest, 0, []proto.KeyPosition{{Key: "k", Position: proto.Position{Seq: 3, Epoch: "E"}}})))
	if !st.appendEvent(ack) || !st.appendEvent(dataFrame("a", "k", 3)) || !st.appendEvent(dataFrame("a", "k", 9)) {
		t.Fatal("refused")
	}
	if got := string(st.appendID(nil)); got != "9:E" {
		t.Fatalf("id %q", got)
	}
	if st.appendEvent(dataFrame("a", "k", 9)) {
		t.Fatal("a repeated seq accepted")
	}
}

// BenchmarkOutboxLatest is the cost of one delivery to a latest key on a
// connection whose writer is behind: the value replaces the one waiting
// (no allocation per delivery).
func BenchmarkOutboxLatest(b *testing.B) {
	o, m := &outbox{}, newMetrics(nil, nil)
	refs := make([]*proto.StreamRef, 100)
	frames := make([]*proto.Frame, len(refs))
	for i := range refs {
		refs[i] = &proto.StreamRef{App: "a", Key: "k" + strings.Repeat("x", i%5)}
		o.setMode(refs[i], proto.ModeLatest, m)
		frames[i] = proto.EncodeDataFrame(&proto.Publication{App: "a", Key: "k", Seq: 1, Data: []byte(`1`), JSON: true}, proto.FormatJSON)
		frames[i].Stream = refs[i]
	}
	now := time.Now()
	var batch []*proto.Frame
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f := frames[i%len(frames)]
		if k := o.latestKeyOf(f); k != nil {
			o.offer(k, f)
		}
		if i%1000 == 999 {
			now = now.Add(time.Second)
			batch, _ = o.take(batch[:0], now, true)
		}
	}
}
