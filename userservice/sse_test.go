package userservice

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

func TestSSEParsePositions(t *testing.T) {
	epoch64 := strings.Repeat("E", 64)
	good := []struct {
		in   string
		n    int
		want []proto.Position
	}{
		{"41:k3J9", 1, []proto.Position{{Seq: 41, Epoch: "k3J9"}}},
		{"0:a,18446744073709551615:b-_9", 2, []proto.Position{{Seq: 0, Epoch: "a"}, {Seq: 18446744073709551615, Epoch: "b-_9"}}},
		{",7:Zq81", 2, []proto.Position{{}, {Seq: 7, Epoch: "Zq81"}}},
		{",,", 3, []proto.Position{{}, {}, {}}},
		{"", 1, []proto.Position{{}}},
		{"12345678901234567890:" + epoch64, 1, []proto.Position{{Seq: 12345678901234567890, Epoch: epoch64}}},
	}
	for _, c := range good {
		got, err := parsePositions(c.in, c.n)
		if err != nil {
			t.Fatalf("%q (%d keys): %v", c.in, c.n, err)
		}
		if len(got) != len(c.want) {
			t.Fatalf("%q: %v", c.in, got)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("%q: entry %d = %+v, want %+v", c.in, i, got[i], c.want[i])
			}
		}
		if back := string(appendPositions(nil, got)); back != c.in {
			t.Fatalf("%q formats back as %q", c.in, back)
		}
	}
	bad := []struct {
		in string
		n  int
	}{
		{"41:k3J9", 2},                 // too few entries
		{"41:k3J9,1:a", 1},             // too many
		{"41", 1},                      // the bare form is not accepted
		{"41:", 1},                     // no epoch
		{":k3J9", 1},                   // no seq
		{"041:k3J9", 1},                // leading zero
		{"+41:k3J9", 1},                // sign
		{"-1:k3J9", 1},                 // negative
		{"4 1:k3J9", 1},                // space
		{"18446744073709551616:a", 1},  // over uint64
		{"123456789012345678901:a", 1}, // 21 digits
		{"41:k3.J9", 1},                // epoch alphabet
		{"41:k3J9:x", 1},               // second colon
		{"41:" + epoch64 + "E", 1},     // epoch of 65
		{"41:k3J9\n", 1},               // line break
		{"1:a", 0},                     // no keys
	}
	for _, c := range bad {
		if got, err := parsePositions(c.in, c.n); err == nil || !errors.Is(err, errBadPositions) {
			t.Fatalf("%q (%d keys): %v, %v; want errBadPositions", c.in, c.n, got, err)
		}
	}
	// The length limit: n entries of the longest kind are fine, a byte more
	// is refused before any entry is read.
	long := strings.TrimSuffix(strings.Repeat("18446744073709551615:"+epoch64+",", 3), ",")
	if _, err := parsePositions(long, 3); err != nil {
		t.Fatalf("three longest entries: %v", err)
	}
	if _, err := parsePositions(long+"x", 3); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Fatalf("one byte over: %v", err)
	}
}

// FuzzSSEParsePositions: whatever parsePositions accepts is canonical (it
// formats back to the same bytes) and made of valid positions; nothing
// panics. Seeds in testdata/fuzz/FuzzSSEParsePositions.
func FuzzSSEParsePositions(f *testing.F) {
	f.Add("41:k3J9,7:Zq81", 2)
	f.Add(",0:a", 2)
	f.Fuzz(func(t *testing.T, s string, n int) {
		if n > 1000 || n < -1000 {
			n %= 1000
		}
		pos, err := parsePositions(s, n)
		if err != nil {
			if !errors.Is(err, errBadPositions) {
				t.Fatalf("error %v does not wrap errBadPositions", err)
			}
			return
		}
		if len(pos) != n {
			t.Fatalf("%q: %d positions for %d keys", s, len(pos), n)
		}
		for i, p := range pos {
			if p.Epoch != "" && proto.ValidateEpoch(p.Epoch) != nil {
				t.Fatalf("%q: entry %d has epoch %q", s, i, p.Epoch)
			}
		}
		if back := string(appendPositions(nil, pos)); back != s {
			t.Fatalf("%q formats back as %q", s, back)
		}
		if strings.ContainsAny(s, "\x00\r\n") {
			t.Fatalf("%q accepted: an event id cannot hold it", s)
		}
	})
}

func TestSSEParseRequest(t *testing.T) {
	good, rerr := parseSSERequest("app=plant-7&keys=001,002&since=41:k3J9,&token=x", "", 100)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if good.app != "plant-7" || strings.Join(good.keys, " ") != "001 002" || good.since[0] != (proto.Position{Seq: 41, Epoch: "k3J9"}) || good.since[1].Epoch != "" {
		t.Fatalf("got %+v", good)
	}
	// Last-Event-ID replaces since.
	if r, rerr := parseSSERequest("app=a&keys=k&since=1:x", "9:y", 100); rerr != nil || r.since[0] != (proto.Position{Seq: 9, Epoch: "y"}) {
		t.Fatalf("Last-Event-ID: %+v, %v", r, rerr)
	}
	if r, rerr := parseSSERequest("app=a&keys=k", "", 100); rerr != nil || r.since != nil {
		t.Fatalf("no since: %+v, %v", r, rerr)
	}
	for _, c := range []struct {
		query, lastID string
		code, msg     string
	}{
		{"keys=k", "", proto.CodeBadRequest, "app"},
		{"app=a", "", proto.CodeBadRequest, "keys: missing"},
		{"app=a b&keys=k", "", proto.CodeBadRequest, "app"},
		{"app=a&keys=k,", "", proto.CodeBadRequest, "key"},
		{"app=a&keys=k.1", "", proto.CodeBadRequest, "key"},
		{"app=a&keys=k,k", "", proto.CodeBadRequest, "twice"},
		{"app=a&keys=k&keys=j", "", proto.CodeBadRequest, "given 2 times"},
		{"app=a&keys=k&format=binary", "", proto.CodeBadRequest, "unknown parameter"},
		{"app=a&keys=k&since=5", "", proto.CodeBadRequest, "since"},
		{"app=a&keys=k", "5:e,6:f", proto.CodeBadRequest, "Last-Event-ID"},
		{"app=a&keys=%zz", "", proto.CodeBadRequest, "query"},
		{"app=a&keys=" + strings.Repeat("k,", 100) + "k", "", proto.CodeLimit, "101 keys: the limit is 100"},
	} {
		_, rerr := parseSSERequest(c.query, c.lastID, 100)
		if rerr == nil || rerr.code != c.code || rerr.status != http.StatusBadRequest || !strings.Contains(rerr.msg, c.msg) {
			t.Fatalf("%q (Last-Event-ID %q): %+v; want %s with %q", c.query, c.lastID, rerr, c.code, c.msg)
		}
	}
}

func TestSSEDataLines(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":1}`:          "data: {\"a\":1}\n",
		"{\n  \"a\": 1\n}": "data: {\ndata:   \"a\": 1\ndata: }\n",
		"{\r\n\"a\":1\r}":  "data: {\ndata: \"a\":1\ndata: }\n",
		"{\"a\":1}\n":      "data: {\"a\":1}\ndata: \n",
		"":                 "data: \n",
	} {
		if got := string(appendDataLines(nil, []byte(in))); got != want {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

func TestSSEFramePayload(t *testing.T) {
	for _, n := range []int{0, 125, 126, 0xFFFF, 0x10000} {
		payload := []byte(strings.Repeat("x", n))
		op, got, ok := framePayload(proto.NewFrame(proto.OpcodeText, payload).Bytes)
		if !ok || op != proto.OpcodeText || string(got) != string(payload) {
			t.Fatalf("%d bytes: op %d, %d bytes, %v", n, op, len(got), ok)
		}
	}
	if _, _, ok := framePayload([]byte{0x81, 126, 0}); ok {
		t.Fatal("a truncated header accepted")
	}
}

func testStream(t *testing.T, cfg Config, req sseRequest) *sseStream {
	t.Helper()
	node, err := middle.NewNode(middle.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, node)
	if err != nil {
		t.Fatal(err)
	}
	return srv.newSSEStream("127.0.0.1:1", req)
}

func textFrame(s string) *proto.Frame { return proto.NewFrame(proto.OpcodeText, []byte(s)) }

func dataFrame(app, key string, seq uint64) *proto.Frame {
	return proto.EncodeDataFrame(&proto.Publication{App: app, Key: key, Seq: seq, TS: 1, Data: []byte(`1`), JSON: true}, proto.FormatJSON)
}

// The stream applies the client rule for its client: the id of each event
// is the list of positions a reconnect resumes from.
func TestSSEStreamIDsFollowTheClientRule(t *testing.T) {
	st := testStream(t, Config{}, sseRequest{app: "a", keys: []string{"fresh", "resumed", "never"},
		since: []proto.Position{{}, {Seq: 4, Epoch: "old"}, {}}})
	ids := func() string {
		t.Helper()
		var last string
		for line := range strings.Lines(string(st.buf)) {
			if id, ok := strings.CutPrefix(line, "id: "); ok {
				last = strings.TrimSuffix(id, "\n")
			}
		}
		st.buf = st.buf[:0]
		return last
	}
	steps := []struct {
		frame *proto.Frame
		id    string
	}{
		// fresh: the ack announces seq 7, which may follow: a reconnect
		// must get it, so the id says 6. resumed keeps its own since
		// (epoch "old") until the reset. never: nothing published.
		{textFrame(`{"op":"ack","id":0,"recovered":false,"positions":{"fresh":{"seq":7,"epoch":"F"},"resumed":{"seq":9,"epoch":"R"},"never":{"seq":0,"epoch":"N"}}}`), "6:F,4:old,0:N"},
		{textFrame(`{"op":"reset","app":"a","key":"resumed","seq":8,"epoch":"R","reason":"epoch"}`), "6:F,8:R,0:N"},
		{dataFrame("a", "resumed", 9), "6:F,9:R,0:N"},
		{dataFrame("a", "fresh", 7), "7:F,9:R,0:N"},
		{dataFrame("a", "fresh", 8), "8:F,9:R,0:N"},
		{dataFrame("a", "never", 1), "8:F,9:R,1:N"},
	}
	for i, s := range steps {
		if !st.appendEvent(s.frame) {
			t.Fatalf("step %d refused", i)
		}
		if got := ids(); got != s.id {
			t.Fatalf("step %d: id %q, want %q", i, got, s.id)
		}
	}
	// A gap, a repeat, and a fresh key's repeat after its first value
	// break the rule: the stream ends instead of writing them.
	for _, f := range []*proto.Frame{dataFrame("a", "fresh", 10), dataFrame("a", "resumed", 9), dataFrame("a", "other", 1), dataFrame("b", "fresh", 9)} {
		if st.appendEvent(f) {
			t.Fatalf("frame %s accepted", f.Bytes[2:])
		}
	}
}

func TestSSEStreamQueueOverflowEndsIt(t *testing.T) {
	st := testStream(t, Config{QueueMaxBytes: 1000}, sseRequest{app: "a", keys: []string{"k"}})
	f := textFrame(strings.Repeat("x", 400))
	if !st.Enqueue(f) || !st.Enqueue(f) {
		t.Fatal("refused under the limit")
	}
	if st.Enqueue(f) {
		t.Fatal("the overflowing frame accepted")
	}
	batch, _, code, _, aborted := st.take(nil)
	if len(batch) != 0 || code != proto.CloseTooSlow || aborted {
		t.Fatalf("after the overflow: %d queued, code %d, aborted %v", len(batch), code, aborted)
	}
	if !st.Enqueue(f) { // ending: dropped, no second overflow
		t.Fatal("a frame after the end counts as an overflow")
	}
	if batch, _, _, _, _ := st.take(nil); len(batch) != 0 {
		t.Fatal("a frame queued after the end")
	}
	if got := string(appendCloseEvent(nil, code, "too slow")); got != "event: close\ndata: {\"op\":\"close\",\"code\":4008,\"reason\":\"too slow\"}\n\n" {
		t.Fatalf("close event %q", got)
	}
}

// What the Router queues while the subscribe runs (the ack and a resume's
// replay) is not held to QueueMaxBytes: it is bounded by the history, and
// a resume longer than the queue would otherwise overflow at every
// reconnect. Once the writer has taken it, the limit is the usual one.
func TestSSEStreamSubscribeBurstIsNotAnOverflow(t *testing.T) {
	st := testStream(t, Config{QueueMaxBytes: 1000}, sseRequest{app: "a", keys: []string{"k"}})
	f := textFrame(strings.Repeat("x", 400))
	st.setSubscribing(true)
	for i := range 5 {
		if !st.Enqueue(f) {
			t.Fatalf("replay frame %d refused", i)
		}
	}
	st.setSubscribing(false)
	if !st.Enqueue(f) || !st.Enqueue(f) { // within the limit beyond the burst
		t.Fatal("live frames refused after the burst")
	}
	if st.Enqueue(f) {
		t.Fatal("overflow beyond the burst accepted")
	}

	st = testStream(t, Config{QueueMaxBytes: 1000}, sseRequest{app: "a", keys: []string{"k"}})
	st.setSubscribing(true)
	st.Enqueue(f)
	st.Enqueue(f)
	st.Enqueue(f)
	st.setSubscribing(false)
	if batch, _, code, _, _ := st.take(nil); len(batch) != 3 || code != 0 {
		t.Fatalf("took %d, code %d", len(batch), code)
	}
	st.Enqueue(f)
	st.Enqueue(f)
	if st.Enqueue(f) {
		t.Fatal("the burst's allowance outlived the write")
	}
}
