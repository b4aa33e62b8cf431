package bench

import (
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

func TestParseSendTime(t *testing.T) {
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{string(appendPayload(nil, now)), now, true},
		{`{"t":0}`, 0, true},
		{`{ "t" : 1763812345123456789 }`, 1763812345123456789, true},
		{"{\"x\":1,\n\"t\":\t42}", 42, true},
		{`{"t":}`, 0, false},
		{`{"t":-1}`, 0, false},
		{`{"t":99999999999999999999}`, 0, false},
		{`{"t":9999999999999999999}`, 0, false}, // 19 digits, over int64
		{`{"temp":21.5,"humidity":40}`, 0, false},
		{``, 0, false},
		{`"t"`, 0, false},
	} {
		got, ok := parseSendTime([]byte(tc.in))
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("parseSendTime(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestKeyNames(t *testing.T) {
	for _, idx := range []int{0, 1, 9, 99998, 999999, 1234567} {
		name := keyName("s", idx)
		if err := proto.ValidateName(name); err != nil {
			t.Fatalf("keyName(%d) = %q: %v", idx, name, err)
		}
		got, ok := keyIndex([]byte(name), "s")
		if !ok || got != idx {
			t.Fatalf("keyIndex(%q) = %d, %v; want %d", name, got, ok, idx)
		}
	}
	if keyName("s", 0) != "s000001" || keyName("s", 41) != "s000042" {
		t.Fatalf("names: %s %s", keyName("s", 0), keyName("s", 41))
	}
	for _, bad := range []string{"", "s", "f000001", "s000000", "s00x001", "ss000001", "s99999999999"} {
		if idx, ok := keyIndex([]byte(bad), "s"); ok {
			t.Errorf("keyIndex(%q) = %d, want not ok", bad, idx)
		}
	}
}

// TestReceivePathDoesNotAllocate checks that a binary value costs the
// receiver no allocation: parsing, key lookup, send time, seq tracking
// and the latency histogram.
func TestReceivePathDoesNotAllocate(t *testing.T) {
	w := newWorker(WorkerConfig{Count: 1, Plan: Plan{App: "bench", KeyPrefix: "s", Conns: 10, KeysPerConn: 3, KeySpace: 10,
		URLs: []string{"ws://127.0.0.1:1/ws"}, SourceIPs: 1, Format: "binary", Source: SourceHTTP}})
	w.windowStart.Store(1)
	c := newClient(w, 4) // keys 12%10=2, 3, 4: s000003..s000005
	frame := proto.AppendDataBinary(nil, &proto.Publication{App: "bench", Key: "s000004", Seq: 1, TS: 1, JSON: true,
		Data: appendPayload(nil, time.Now().UnixNano())})
	n := testing.AllocsPerRun(1000, func() {
		c.onBinary(frame, time.Now().UnixNano())
	})
	if n != 0 {
		t.Fatalf("a binary value allocates %.1f times", n)
	}
	if got := w.counted.Load(); got < 1000 || c.subs[1].Received() != got {
		t.Fatalf("counted %d, tracker of s000004 received %d", got, c.subs[1].Received())
	}
}
