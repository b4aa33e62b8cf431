package middle

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

func TestNewNodeRejectsInvalidConfig(t *testing.T) {
	for _, cfg := range []Config{
		{HistorySize: -1},
		{HistoryTTL: -time.Second},
		{MaxPayload: -1},
	} {
		if _, err := NewNode(cfg); err == nil {
			t.Errorf("NewNode(%+v): no error", cfg)
		}
	}
}

func TestSubscribeAckThenLatest(t *testing.T) {
	n := newTestNode(t, Config{})

	// A key never published: the ack and nothing else.
	quiet := newRecorder()
	subscribe(t, n, quiet, SubscribeRequest{ID: 7, App: "a", Keys: []string{"k"}})
	ms := quiet.messages(t)
	if len(ms) != 1 {
		t.Fatalf("subscribe to an unpublished key: got %v, want the ack only", ms)
	}
	wantAck(t, ms[0], 7, proto.RecoveryNone)

	publishValues(t, n, "a", "k", 1, 3)
	wantSeqs(t, "first subscriber", quiet.seqs(t, "k"), seqRange(1, 3))

	// A key with values: the ack first, then the latest value only.
	late := newRecorder()
	subscribe(t, n, late, SubscribeRequest{ID: 9, App: "a", Keys: []string{"k"}})
	ms = late.messages(t)
	if len(ms) != 2 {
		t.Fatalf("subscribe to a published key: got %v, want ack and latest", ms)
	}
	wantAck(t, ms[0], 9, proto.RecoveryNone)
	if p := ms[1].pub; !ms[1].data || p.App != "a" || p.Key != "k" || p.Seq != 3 || string(p.Data) != `{"v":3}` || !p.JSON {
		t.Fatalf("latest: got %v %+v, want seq 3 {\"v\":3}", ms[1], p)
	}

	// Then live values, to both.
	publishValues(t, n, "a", "k", 4, 4)
	wantSeqs(t, "first subscriber", quiet.seqs(t, "k"), seqRange(1, 4))
	wantSeqs(t, "late subscriber", late.seqs(t, "k"), []uint64{3, 4})

	// Several keys in one request: one ack, then the latest of every key
	// that has one, in the format asked for.
	publishValues(t, n, "a", "k2", 1, 2)
	multi := newRecorder()
	subscribe(t, n, multi, SubscribeRequest{ID: 11, App: "a", Keys: []string{"k2", "none", "k", "k2"}, Format: proto.FormatBinary})
	ms = multi.messages(t)
	if len(ms) != 3 {
		t.Fatalf("multi-key subscribe: got %v, want ack and two latest values", ms)
	}
	wantAck(t, ms[0], 11, proto.RecoveryNone)
	latest := map[string]uint64{}
	for _, m := range ms[1:] {
		if m.opcode != proto.OpcodeBinary {
			t.Fatalf("binary subscriber got %v in a text frame", m)
		}
		latest[m.pub.Key] = m.pub.Seq
	}
	if latest["k"] != 4 || latest["k2"] != 2 || len(latest) != 2 {
		t.Fatalf("multi-key latest values: %v, want k:4 k2:2", latest)
	}
}

func TestPublishOrder(t *testing.T) {
	n := newTestNode(t, Config{})
	s1, s2 := newRecorder(), newRecorder()
	subscribe(t, n, s1, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k"}})
	subscribe(t, n, s2, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k", "other"}})

	const N = 200
	got := publishValues(t, n, "a", "k", 1, N)
	wantSeqs(t, "Publish", got, seqRange(1, N))

	// A batch is sequenced in order too.
	batch := []proto.Publication{jsonPub("a", "k", N+1), jsonPub("a", "other", 1), jsonPub("a", "k", N+2)}
	got, err := n.Publish(context.Background(), "test", batch)
	if err != nil {
		t.Fatal(err)
	}
	wantSeqs(t, "batch", got, []uint64{N + 1, 1, N + 2})

	for name, s := range map[string]*recorder{"s1": s1, "s2": s2} {
		ms := s.messages(t)
		wantSeqs(t, name, dataSeqs(ms, "k"), seqRange(1, N+2))
		for _, m := range ms {
			if m.data && m.pub.Key == "k" && string(m.pub.Data) != `{"v":`+strconv.FormatUint(m.pub.Seq, 10)+`}` {
				t.Fatalf("%s: seq %d carries %s", name, m.pub.Seq, m.pub.Data)
			}
		}
	}
	wantSeqs(t, "s1 other", s1.seqs(t, "other"), nil)
	wantSeqs(t, "s2 other", s2.seqs(t, "other"), []uint64{1})
}

func TestPublishTimestamp(t *testing.T) {
	n := newTestNode(t, Config{})
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})

	before := time.Now().UnixMilli()
	given := jsonPub("a", "k", 1)
	given.TS = 1763812345123
	if _, err := n.Publish(context.Background(), "test", []proto.Publication{jsonPub("a", "k", 0), given}); err != nil {
		t.Fatal(err)
	}
	after := time.Now().UnixMilli()
	ms := s.messages(t)[1:]
	if ts := ms[0].pub.TS; ts < before || ts > after {
		t.Errorf("ts of a publication without one: %d, want the time of acceptance in [%d, %d]", ts, before, after)
	}
	if ts := ms[1].pub.TS; ts != given.TS {
		t.Errorf("ts: got %d, want the source's %d", ts, given.TS)
	}
}

func TestFormats(t *testing.T) {
	n := newTestNode(t, Config{})
	j1, j2, bin := newRecorder(), newRecorder(), newRecorder()
	subscribe(t, n, j1, SubscribeRequest{App: "a", Keys: []string{"k"}})
	subscribe(t, n, j2, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.FormatJSON})
	subscribe(t, n, bin, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.FormatBinary})

	pubs := []proto.Publication{
		{App: "a", Key: "k", TS: 10, Data: []byte(`{"temp":21.5,"s":"x\"y"}`), JSON: true},
		{App: "a", Key: "k", TS: 11, Data: []byte{0, 1, 2, 0xff, '"'}}, // not JSON: b64 / flags bit0 clear
		{App: "a", Key: "k", TS: 12, Data: []byte(`[1,2,3]`), JSON: true},
		{App: "a", Key: "k", TS: 13, Data: []byte{}}, // empty binary payload
	}
	want := append([]proto.Publication(nil), pubs...)
	if _, err := n.Publish(context.Background(), "test", pubs); err != nil {
		t.Fatal(err)
	}

	f1, f2, fb := j1.snapshot()[1:], j2.snapshot()[1:], bin.snapshot()[1:] // past the acks
	if len(f1) != len(want) || len(f2) != len(want) || len(fb) != len(want) {
		t.Fatalf("got %d, %d, %d frames, want %d each", len(f1), len(f2), len(fb), len(want))
	}
	for i := range want {
		want[i].Seq = uint64(i + 1)
		if f1[i] != f2[i] {
			t.Errorf("seq %d: the two JSON subscribers got different *Frame (encoded twice)", i+1)
		}
		if f1[i] == fb[i] {
			t.Errorf("seq %d: JSON and binary subscribers got the same frame", i+1)
		}
		for _, c := range []struct {
			name   string
			f      *proto.Frame
			opcode byte
		}{{"json", f1[i], proto.OpcodeText}, {"binary", fb[i], proto.OpcodeBinary}} {
			m := decode(t, c.f)
			if m.opcode != c.opcode || !m.data {
				t.Fatalf("%s seq %d: got %v with opcode %d, want a data message with opcode %d", c.name, i+1, m, m.opcode, c.opcode)
			}
			p := m.pub
			if p.App != want[i].App || p.Key != want[i].Key || p.Seq != want[i].Seq || p.TS != want[i].TS ||
				p.JSON != want[i].JSON || !bytes.Equal(p.Data, want[i].Data) {
				t.Errorf("%s: got %+v, want %+v", c.name, p, want[i])
			}
		}
	}
	// JSON subscribers see a non-JSON payload as "b64", never as "data".
	m := decode(t, f1[1])
	if m.msg.Data != nil || m.msg.B64 == nil {
		t.Errorf("non-JSON payload in JSON format: data=%s b64=%v, want b64 only", m.msg.Data, m.msg.B64)
	}
}

func TestSinceRecovered(t *testing.T) {
	for _, keepAlive := range []bool{false, true} {
		// keepAlive: another subscriber keeps the channel, so the resuming
		// subscribe finds it initialized rather than reading the store.
		t.Run("channel alive="+strconv.FormatBool(keepAlive), func(t *testing.T) {
			n := newTestNode(t, Config{})
			if keepAlive {
				subscribe(t, n, newRecorder(), SubscribeRequest{App: "a", Keys: []string{"k"}})
			}
			publishValues(t, n, "a", "k", 1, 10)

			s := newRecorder()
			subscribe(t, n, s, SubscribeRequest{ID: 3, App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 4})})
			ms := s.messages(t)
			wantAck(t, ms[0], 3, proto.Recovered)
			wantSeqs(t, "replay", dataSeqs(ms[1:], "k"), seqRange(5, 10))
			for _, m := range ms[1:] {
				if string(m.pub.Data) != `{"v":`+strconv.FormatUint(m.pub.Seq, 10)+`}` {
					t.Fatalf("replayed seq %d carries %s", m.pub.Seq, m.pub.Data)
				}
			}
			publishValues(t, n, "a", "k", 11, 11)
			wantSeqs(t, "replay then live", s.seqs(t, "k"), seqRange(5, 11))

			// Resuming from the top: recovered, nothing to send.
			top := newRecorder()
			subscribe(t, n, top, SubscribeRequest{ID: 4, App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 11})})
			ms = top.messages(t)
			if len(ms) != 1 {
				t.Fatalf("since=top: got %v, want the ack only", ms)
			}
			wantAck(t, ms[0], 4, proto.Recovered)

			// Resuming from 0: everything retained.
			all := newRecorder()
			subscribe(t, n, all, SubscribeRequest{ID: 5, App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 0})})
			ms = all.messages(t)
			wantAck(t, ms[0], 5, proto.Recovered)
			wantSeqs(t, "since=0", dataSeqs(ms, "k"), seqRange(1, 11))
		})
	}
}

func TestSinceNotRecovered(t *testing.T) {
	n := newTestNode(t, Config{HistorySize: 4})
	publishValues(t, n, "a", "k", 1, 10) // history holds 7..10

	for _, tt := range []struct {
		name  string
		since uint64
	}{
		{"beyond history", 2},
		{"just beyond history", 5},
		{"after the top", 50},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newRecorder()
			subscribe(t, n, s, SubscribeRequest{ID: 8, App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": tt.since})})
			ms := s.messages(t)
			wantAck(t, ms[0], 8, proto.NotRecovered)
			if len(ms) != 3 {
				t.Fatalf("got %v, want ack, reset and latest", ms)
			}
			wantReset(t, ms[1], "k", proto.Position{Seq: 9, Epoch: ms[0].msg.Positions["k"].Epoch}, proto.ResetGap)
			wantSeqs(t, "latest only", dataSeqs(ms, "k"), []uint64{10})
			n.Unsubscribe(context.Background(), s, "a", []string{"k"})
		})
	}

	// Oldest retained is since+1: recovered.
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{ID: 9, App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 6})})
	ms := s.messages(t)
	wantAck(t, ms[0], 9, proto.Recovered)
	wantSeqs(t, "edge of history", dataSeqs(ms, "k"), seqRange(7, 10))
	publishValues(t, n, "a", "k", 11, 11)
	wantSeqs(t, "then live", s.seqs(t, "k"), seqRange(7, 11))
}

func TestSinceMixedKeys(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "x", 1, 5)
	publishValues(t, n, "a", "y", 1, 3)

	// Keys without since get their latest value; a never-published key
	// resumed from 0 has missed nothing.
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{ID: 1, App: "a", Keys: []string{"x", "y", "z"}, Since: bare(map[string]uint64{"x": 2, "z": 0})})
	ms := s.messages(t)
	wantAck(t, ms[0], 1, proto.Recovered)
	wantSeqs(t, "x", dataSeqs(ms, "x"), seqRange(3, 5))
	wantSeqs(t, "y", dataSeqs(ms, "y"), []uint64{3})
	wantSeqs(t, "z", dataSeqs(ms, "z"), nil)

	// One key not recoverable makes the whole ack say so.
	s2 := newRecorder()
	subscribe(t, n, s2, SubscribeRequest{ID: 2, App: "a", Keys: []string{"x", "z"}, Since: bare(map[string]uint64{"x": 2, "z": 7})})
	ms = s2.messages(t)
	wantAck(t, ms[0], 2, proto.NotRecovered)
	wantSeqs(t, "x", dataSeqs(ms, "x"), seqRange(3, 5))
	wantSeqs(t, "z", dataSeqs(ms, "z"), nil)
	// z has no value: a reset to its position, and nothing after it.
	if got := events(t, s2, "z"); len(got) != 1 || got[0] != "r0/gap" {
		t.Fatalf("z: %v, want a reset to 0", got)
	}
	wantReset(t, ms[len(ms)-1], "z", ms[0].msg.Positions["z"], proto.ResetGap)
}

func TestUnsubscribe(t *testing.T) {
	ctx := context.Background()
	n := newTestNode(t, Config{})
	keys := func(app string) string {
		ks, err := n.Keys(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(ks, ",")
	}
	apps := func() string {
		as, err := n.Apps(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Join(as, ",")
	}
	if apps() != "" || keys("a") != "" {
		t.Fatalf("fresh node: apps %q, keys %q", apps(), keys("a"))
	}

	s1, s2 := newRecorder(), newRecorder()
	subscribe(t, n, s1, SubscribeRequest{App: "a", Keys: []string{"k1", "k2"}})
	subscribe(t, n, s2, SubscribeRequest{App: "a", Keys: []string{"k2"}})
	subscribe(t, n, s2, SubscribeRequest{App: "b", Keys: []string{"k9"}})
	if apps() != "a,b" || keys("a") != "k1,k2" || keys("b") != "k9" || keys("c") != "" {
		t.Fatalf("apps %q, keys a %q, b %q", apps(), keys("a"), keys("b"))
	}

	publishValues(t, n, "a", "k1", 1, 2)
	publishValues(t, n, "a", "k2", 1, 2)
	n.Unsubscribe(ctx, s1, "a", []string{"k2", "not-held"})
	n.Unsubscribe(ctx, s1, "zz", []string{"k2"}) // an app it never had
	publishValues(t, n, "a", "k1", 3, 3)
	publishValues(t, n, "a", "k2", 3, 3)
	wantSeqs(t, "s1 k1", s1.seqs(t, "k1"), seqRange(1, 3))
	wantSeqs(t, "s1 k2 after unsubscribe", s1.seqs(t, "k2"), seqRange(1, 2))
	wantSeqs(t, "s2 k2", s2.seqs(t, "k2"), seqRange(1, 3))
	if keys("a") != "k1,k2" {
		t.Fatalf("k2 still has s2: keys %q", keys("a"))
	}

	n.Unsubscribe(ctx, s2, "a", []string{"k2"})
	if keys("a") != "k1" {
		t.Fatalf("after the last subscriber of k2 left: keys %q, want k1", keys("a"))
	}
	n.Unsubscribe(ctx, s1, "a", []string{"k1"})
	n.Unsubscribe(ctx, s1, "a", []string{"k1"}) // twice is harmless
	if apps() != "b" || keys("a") != "" {
		t.Fatalf("after the last subscriber of a left: apps %q, keys %q", apps(), keys("a"))
	}
	n.Unsubscribe(ctx, s2, "b", []string{"k9"})
	if apps() != "" {
		t.Fatalf("everyone left: apps %q", apps())
	}
	if c, subs := n.hub.counts(); c != 0 || subs != 0 {
		t.Fatalf("everyone left: %d channels, %d subscriptions", c, subs)
	}

	// Nothing more arrives, and a key that lost its channel starts again from
	// the store: the next subscriber still gets the latest value.
	before := len(s1.snapshot()) + len(s2.snapshot())
	publishValues(t, n, "a", "k1", 4, 4)
	if after := len(s1.snapshot()) + len(s2.snapshot()); after != before {
		t.Fatalf("%d frames delivered after unsubscribing", after-before)
	}
	s3 := newRecorder()
	subscribe(t, n, s3, SubscribeRequest{App: "a", Keys: []string{"k1"}})
	publishValues(t, n, "a", "k1", 5, 5)
	wantSeqs(t, "resubscribed", s3.seqs(t, "k1"), []uint64{4, 5})
}

func TestResubscribeSwitchesFormat(t *testing.T) {
	n := newTestNode(t, Config{})
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k"}})
	publishValues(t, n, "a", "k", 1, 1)
	subscribe(t, n, s, SubscribeRequest{ID: 2, App: "a", Keys: []string{"k"}, Format: proto.FormatBinary})
	publishValues(t, n, "a", "k", 2, 2)
	subscribe(t, n, s, SubscribeRequest{ID: 3, App: "a", Keys: []string{"k"}, Format: proto.FormatJSON})
	publishValues(t, n, "a", "k", 3, 3)

	type got struct {
		what   string
		opcode byte
	}
	var seen []got
	for _, m := range s.messages(t) {
		seen = append(seen, got{m.String(), m.opcode})
	}
	want := []got{
		{"ack id=1", proto.OpcodeText},
		{"data a.k seq=1", proto.OpcodeText},
		{"ack id=2", proto.OpcodeText},
		{"data a.k seq=1", proto.OpcodeBinary}, // latest, in the new format
		{"data a.k seq=2", proto.OpcodeBinary}, // once: no longer a JSON subscriber
		{"ack id=3", proto.OpcodeText},
		{"data a.k seq=2", proto.OpcodeText},
		{"data a.k seq=3", proto.OpcodeText},
	}
	if len(seen) != len(want) {
		t.Fatalf("got %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("message %d: got %v, want %v (all: %v)", i, seen[i], want[i], seen)
		}
	}
	if c, subs := n.hub.counts(); c != 1 || subs != 1 {
		t.Fatalf("after resubscribing: %d channels, %d subscriptions; want 1, 1", c, subs)
	}
	n.Unsubscribe(context.Background(), s, "a", []string{"k"})
	if c, subs := n.hub.counts(); c != 0 || subs != 0 {
		t.Fatalf("after unsubscribing: %d channels, %d subscriptions; want 0, 0", c, subs)
	}
}

func TestPublishValidation(t *testing.T) {
	const maxPayload = 32
	n := newTestNode(t, Config{MaxPayload: maxPayload})
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	publishValues(t, n, "a", "k", 1, 1)

	ok := jsonPub("a", "k", 1)
	tests := []struct {
		name  string
		bad   proto.Publication
		index int
	}{
		{"empty app", proto.Publication{App: "", Key: "k", Data: []byte("1"), JSON: true}, 0},
		{"app with a dot", proto.Publication{App: "a.b", Key: "k", Data: []byte("1"), JSON: true}, 1},
		{"key with a space", proto.Publication{App: "a", Key: "a b", Data: []byte("1"), JSON: true}, 2},
		{"empty key", proto.Publication{App: "a", Key: "", Data: []byte("1"), JSON: true}, 0},
		{"key too long", proto.Publication{App: "a", Key: strings.Repeat("k", proto.MaxNameLen+1), Data: []byte("1"), JSON: true}, 1},
		{"payload too large", proto.Publication{App: "a", Key: "k", Data: make([]byte, maxPayload+1)}, 2},
		{"invalid JSON", proto.Publication{App: "a", Key: "k", Data: []byte(`{"v":`), JSON: true}, 1},
		{"JSON with trailing garbage", proto.Publication{App: "a", Key: "k", Data: []byte(`1 2`), JSON: true}, 0},
		{"empty JSON", proto.Publication{App: "a", Key: "k", Data: nil, JSON: true}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batch := []proto.Publication{ok, ok, ok}
			batch[tt.index] = tt.bad
			frames := len(s.snapshot())
			seqs, err := n.Publish(context.Background(), "test", batch)
			var perr *PublishError
			if !errors.As(err, &perr) {
				t.Fatalf("Publish: err = %v, want *PublishError", err)
			}
			if perr.Index != tt.index {
				t.Errorf("PublishError.Index = %d, want %d (%v)", perr.Index, tt.index, err)
			}
			if errors.Is(err, ErrUnavailable) {
				t.Errorf("a rejected publication is not ErrUnavailable: %v", err)
			}
			if seqs != nil {
				t.Errorf("seqs = %v, want none", seqs)
			}
			if top := topSeq(t, n, "a", "k"); top != 1 {
				t.Errorf("seq moved to %d: part of a rejected batch was published", top)
			}
			if got := len(s.snapshot()); got != frames {
				t.Errorf("%d frames delivered from a rejected batch", got-frames)
			}
		})
	}

	// At the limits: accepted.
	good := []proto.Publication{
		{App: strings.Repeat("A", proto.MaxNameLen), Key: "k_-9", Data: make([]byte, maxPayload)},
		{App: "a", Key: "k", Data: []byte("not json, not flagged")},
		{App: "a", Key: "k", Data: []byte(` "padded" `), JSON: true},
	}
	if _, err := n.Publish(context.Background(), "test", good); err != nil {
		t.Fatalf("publications at the limits: %v", err)
	}
	wantSeqs(t, "subscriber", s.seqs(t, "k"), seqRange(1, 3))
}

func TestOverflowingSubscriberDoesNotDisturbOthers(t *testing.T) {
	n := newTestNode(t, Config{})
	full := newRecorder()
	full.reject = true
	a, b := newRecorder(), newRecorder()
	subscribe(t, n, a, SubscribeRequest{App: "a", Keys: []string{"k"}})
	subscribe(t, n, full, SubscribeRequest{App: "a", Keys: []string{"k"}})
	subscribe(t, n, b, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.FormatBinary})

	publishValues(t, n, "a", "k", 1, 20)
	wantSeqs(t, "a", a.seqs(t, "k"), seqRange(1, 20))
	wantSeqs(t, "b", b.seqs(t, "k"), seqRange(1, 20))

	// The overflowing subscriber unsubscribes itself later; that is fine too.
	n.Unsubscribe(context.Background(), full, "a", []string{"k"})
	publishValues(t, n, "a", "k", 21, 21)
	wantSeqs(t, "a", a.seqs(t, "k"), seqRange(1, 21))
	wantSeqs(t, "b", b.seqs(t, "k"), seqRange(1, 21))
}

func TestStoreFailures(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore(16, nil)
	n := newTestNode(t, Config{Store: st})
	publishValues(t, n, "a", "k", 1, 3)

	// Subscribe: an error wrapping ErrUnavailable, nothing enqueued, no key
	// left behind.
	st.failRead.Store(true)
	s := newRecorder()
	err := n.Subscribe(ctx, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, errStoreDown) {
		t.Fatalf("subscribe with the store down: %v, want ErrUnavailable wrapping the cause", err)
	}
	err = n.Subscribe(ctx, s, SubscribeRequest{App: "a", Keys: []string{"k"}, Since: bare(map[string]uint64{"k": 1})})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("resume with the store down: %v, want ErrUnavailable", err)
	}
	st.failRead.Store(false)
	if fs := s.snapshot(); len(fs) != 0 {
		t.Fatalf("failed subscribes enqueued %d frames", len(fs))
	}
	if ks, _ := n.Keys(ctx, "a"); len(ks) != 0 {
		t.Fatalf("failed subscribes left keys %v", ks)
	}
	publishValues(t, n, "a", "k", 4, 4)
	if fs := s.snapshot(); len(fs) != 0 {
		t.Fatalf("a failed subscribe still receives: %d frames", len(fs))
	}

	// Publish: the seqs that went through, and ErrUnavailable.
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	st.failAppend.Store(true)
	seqs, err := n.Publish(ctx, "test", []proto.Publication{jsonPub("a", "k", 5)})
	if !errors.Is(err, ErrUnavailable) || len(seqs) != 0 {
		t.Fatalf("publish with the store down: %v, %v; want no seqs and ErrUnavailable", seqs, err)
	}
	st.failAppend.Store(false)
	publishValues(t, n, "a", "k", 5, 5)
	wantSeqs(t, "after the store came back", s.seqs(t, "k"), []uint64{4, 5})
}
