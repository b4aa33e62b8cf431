package middle

import (
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

// recorder is a Subscriber that keeps every frame enqueued to it. Enqueue is
// called from publishing goroutines, so it is safe for concurrent use.
type recorder struct {
	id     uint64
	reject bool // Enqueue reports an overflow (but still records)

	mu     sync.Mutex
	frames []*proto.Frame
}

var recorderIDs atomic.Uint64

func newRecorder() *recorder { return &recorder{id: recorderIDs.Add(1)} }

func (r *recorder) Enqueue(f *proto.Frame) bool {
	r.mu.Lock()
	r.frames = append(r.frames, f)
	r.mu.Unlock()
	return !r.reject
}

func (r *recorder) ConnID() uint64 { return r.id }

// snapshot returns the frames received so far.
func (r *recorder) snapshot() []*proto.Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*proto.Frame(nil), r.frames...)
}

// take returns the frames received so far and forgets them.
func (r *recorder) take() []*proto.Frame {
	r.mu.Lock()
	defer r.mu.Unlock()
	fs := r.frames
	r.frames = nil
	return fs
}

// message is one received frame, decoded.
type message struct {
	frame  *proto.Frame
	opcode byte
	msg    proto.ServerMessage // text frames
	pub    proto.Publication   // data messages, from either format
	data   bool                // a data message
}

func (m message) String() string {
	if m.data {
		return fmt.Sprintf("data %s.%s seq=%d", m.pub.App, m.pub.Key, m.pub.Seq)
	}
	return fmt.Sprintf("%s id=%d", m.msg.Op, m.msg.ID)
}

// parseFrame splits a server WebSocket frame (final, unmasked) into opcode
// and payload, checking that the header accounts for every byte.
func parseFrame(b []byte) (opcode byte, payload []byte, err error) {
	if len(b) < 2 {
		return 0, nil, fmt.Errorf("frame of %d bytes: no header", len(b))
	}
	if b[0]&0xF0 != 0x80 {
		return 0, nil, fmt.Errorf("byte0 %#x: want FIN set and RSV clear", b[0])
	}
	if b[1]&0x80 != 0 {
		return 0, nil, fmt.Errorf("server frame is masked")
	}
	opcode = b[0] & 0x0F
	n := uint64(b[1] & 0x7F)
	rest := b[2:]
	switch n {
	case 126:
		if len(rest) < 2 {
			return 0, nil, fmt.Errorf("short 16-bit length")
		}
		n, rest = uint64(binary.BigEndian.Uint16(rest)), rest[2:]
		if n <= 125 {
			return 0, nil, fmt.Errorf("16-bit length %d: not minimal", n)
		}
	case 127:
		if len(rest) < 8 {
			return 0, nil, fmt.Errorf("short 64-bit length")
		}
		n, rest = binary.BigEndian.Uint64(rest), rest[8:]
		if n <= 0xFFFF {
			return 0, nil, fmt.Errorf("64-bit length %d: not minimal", n)
		}
	}
	if uint64(len(rest)) != n {
		return 0, nil, fmt.Errorf("header says %d payload bytes, frame has %d", n, len(rest))
	}
	return opcode, rest, nil
}

// decode parses one frame as a client would.
func decode(t testing.TB, f *proto.Frame) message {
	t.Helper()
	m, err := decodeFrame(f)
	if err != nil {
		t.Fatalf("frame %q: %v", f.Bytes, err)
	}
	return m
}

// decodeFrame is decode for goroutines that cannot call t.Fatal.
func decodeFrame(f *proto.Frame) (message, error) {
	op, payload, err := parseFrame(f.Bytes)
	if err != nil {
		return message{}, err
	}
	m := message{frame: f, opcode: op}
	switch op {
	case proto.OpcodeText:
		if m.msg, err = proto.DecodeServerMessage(payload); err != nil {
			return m, err
		}
		if m.msg.Op == proto.OpData {
			m.data, m.pub = true, m.msg.Publication()
		}
	case proto.OpcodeBinary:
		if m.pub, err = proto.DecodeDataBinary(payload); err != nil {
			return m, err
		}
		m.data = true
	default:
		return m, fmt.Errorf("opcode %d", op)
	}
	if m.data && f.Seq != m.pub.Seq {
		return m, fmt.Errorf("frame.Seq = %d, payload seq = %d", f.Seq, m.pub.Seq)
	}
	if !m.data && f.Seq != 0 {
		return m, fmt.Errorf("%s frame has Seq %d, want 0", m.msg.Op, f.Seq)
	}
	return m, nil
}

func decodeAll(t testing.TB, fs []*proto.Frame) []message {
	t.Helper()
	out := make([]message, len(fs))
	for i, f := range fs {
		out[i] = decode(t, f)
	}
	return out
}

// messages decodes everything r received so far.
func (r *recorder) messages(t testing.TB) []message {
	t.Helper()
	return decodeAll(t, r.snapshot())
}

// seqs are the seqs of r's data messages for key, in arrival order.
func (r *recorder) seqs(t testing.TB, key string) []uint64 {
	t.Helper()
	return dataSeqs(r.messages(t), key)
}

func dataSeqs(ms []message, key string) []uint64 {
	var out []uint64
	for _, m := range ms {
		if m.data && m.pub.Key == key {
			out = append(out, m.pub.Seq)
		}
	}
	return out
}

// seqRange is from, from+1, ..., to.
func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
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

func wantSeqs(t testing.TB, who string, got, want []uint64) {
	t.Helper()
	if !equalSeqs(got, want) {
		t.Fatalf("%s: got seqs %s, want %s", who, shortSeqs(got), shortSeqs(want))
	}
}

// shortSeqs prints a seq list compactly, runs as a-b.
func shortSeqs(s []uint64) string {
	if len(s) == 0 {
		return "[]"
	}
	out := "["
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if i > 0 {
			out += " "
		}
		if j > i {
			out += fmt.Sprintf("%d-%d", s[i], s[j])
		} else {
			out += strconv.FormatUint(s[i], 10)
		}
		i = j + 1
	}
	return out + "]"
}

// wantAck checks that m is the ack of request id with the given recovery.
func wantAck(t testing.TB, m message, id uint64, rec proto.Recovery) {
	t.Helper()
	if m.opcode != proto.OpcodeText || m.msg.Op != proto.OpAck || m.msg.ID != id {
		t.Fatalf("got %v, want ack id=%d", m, id)
	}
	var got proto.Recovery
	switch {
	case m.msg.Recovered == nil:
		got = proto.RecoveryNone
	case *m.msg.Recovered:
		got = proto.Recovered
	default:
		got = proto.NotRecovered
	}
	if got != rec {
		t.Fatalf("ack id=%d: recovery %d, want %d (0 none, 1 recovered, 2 not recovered)", id, got, rec)
	}
}

func newTestNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func subscribe(t testing.TB, n *Node, s Subscriber, req SubscribeRequest) {
	t.Helper()
	if err := n.Subscribe(context.Background(), s, req); err != nil {
		t.Fatalf("subscribe %+v: %v", req, err)
	}
}

// jsonPub is a JSON publication whose value is {"v":v}.
func jsonPub(app, key string, v int) proto.Publication {
	return proto.Publication{App: app, Key: key, Data: []byte(`{"v":` + strconv.Itoa(v) + `}`), JSON: true}
}

// publishValues publishes {"v":from} to {"v":to} one by one and returns the
// seqs assigned.
func publishValues(t testing.TB, n *Node, app, key string, from, to int) []uint64 {
	t.Helper()
	var out []uint64
	for v := from; v <= to; v++ {
		seqs, err := n.Publish(context.Background(), "test", []proto.Publication{jsonPub(app, key, v)})
		if err != nil {
			t.Fatalf("publish %s.%s %d: %v", app, key, v, err)
		}
		out = append(out, seqs...)
	}
	return out
}

// topSeq is the seq of the newest publication of (app, key) in n's store.
func topSeq(t testing.TB, n *Node, app, key string) uint64 {
	t.Helper()
	h, err := n.store.Latest(context.Background(), app, key)
	if err != nil {
		t.Fatal(err)
	}
	return h.Top.Seq
}

// bare is the bare since form of seqs: each key resumes in its current
// epoch.
func bare(seqs map[string]uint64) map[string]proto.Position {
	out := make(map[string]proto.Position, len(seqs))
	for k, s := range seqs {
		out[k] = proto.Position{Seq: s}
	}
	return out
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitSeqs waits until r has received at least len(want) data messages of
// key, then checks they are want exactly.
func waitSeqs(t testing.TB, r *recorder, key string, want []uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.seqs(t, key)) < len(want) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	wantSeqs(t, "subscriber "+strconv.FormatUint(r.id, 10)+" of "+key, r.seqs(t, key), want)
}

// wantAckPositions checks the positions of an ack.
func wantAckPositions(t testing.TB, m message, want map[string]proto.Position) {
	t.Helper()
	if len(m.msg.Positions) != len(want) {
		t.Fatalf("ack positions %v, want %v", m.msg.Positions, want)
	}
	for k, p := range want {
		if m.msg.Positions[k] != p {
			t.Fatalf("ack position of %s: %+v, want %+v (all: %v)", k, m.msg.Positions[k], p, m.msg.Positions)
		}
	}
}

// wantReset checks that m is a reset of key to pos for reason.
func wantReset(t testing.TB, m message, key string, pos proto.Position, reason string) {
	t.Helper()
	if m.opcode != proto.OpcodeText || m.msg.Op != proto.OpReset || m.msg.Key != key ||
		m.msg.Seq != pos.Seq || m.msg.Epoch != pos.Epoch || m.msg.Reason != reason {
		t.Fatalf("got %v %+v, want reset of %s to %+v (%s)", m, m.msg, key, pos, reason)
	}
}

// events renders r's messages of key compactly: "d3" for data seq 3,
// "r5/gap" for a reset to seq 5; acks are left out.
func events(t testing.TB, r *recorder, key string) []string {
	t.Helper()
	var out []string
	for _, m := range r.messages(t) {
		switch {
		case m.data && m.pub.Key == key:
			out = append(out, "d"+strconv.FormatUint(m.pub.Seq, 10))
		case m.msg.Op == proto.OpReset && m.msg.Key == key:
			out = append(out, "r"+strconv.FormatUint(m.msg.Seq, 10)+"/"+m.msg.Reason)
		}
	}
	return out
}

// runNode runs n until the test ends.
func runNode(t testing.TB, n *Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node Run: %v", err)
		}
	})
}
