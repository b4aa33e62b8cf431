package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// clientFrame frames payload as a client would: masked with mask.
func clientFrame(fin bool, opcode byte, payload []byte, mask [4]byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	var b []byte
	switch n := len(payload); {
	case n <= 125:
		b = []byte{b0, 0x80 | byte(n)}
	case n <= 0xFFFF:
		b = []byte{b0, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		b = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	b = append(b, mask[:]...)
	start := len(b)
	b = append(b, payload...)
	Unmask(b[start:], mask, 0)
	return b
}

var testMask = [4]byte{0x12, 0x34, 0x56, 0x78}

// feedAll feeds stream in pieces of at most chunk bytes and returns the
// messages (payloads copied) and the error.
func feedAll(t *testing.T, stream []byte, chunk, max int) ([]ClientMessage, error) {
	t.Helper()
	r := ClientReader{MaxMessage: max}
	var got []ClientMessage
	stream = bytes.Clone(stream)
	for len(stream) > 0 {
		n := min(chunk, len(stream))
		err := r.Feed(stream[:n], func(m ClientMessage) bool {
			got = append(got, ClientMessage{m.Opcode, bytes.Clone(m.Payload)})
			return true
		})
		if err != nil {
			return got, err
		}
		stream = stream[n:]
	}
	return got, nil
}

func TestClientReaderMessages(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 70000)
	var stream []byte
	stream = append(stream, clientFrame(true, OpcodeText, []byte(`{"op":"ping"}`), testMask)...)
	stream = append(stream, clientFrame(false, OpcodeText, []byte(`{"op":`), testMask)...)
	stream = append(stream, clientFrame(true, OpcodePing, []byte("hi"), testMask)...) // between fragments
	stream = append(stream, clientFrame(false, OpcodeContinuation, []byte(`"pi`), testMask)...)
	stream = append(stream, clientFrame(true, OpcodeContinuation, []byte(`ng"}`), testMask)...)
	stream = append(stream, clientFrame(true, OpcodeBinary, big, testMask)...)
	stream = append(stream, clientFrame(true, OpcodePong, nil, testMask)...)
	stream = append(stream, clientFrame(true, OpcodeClose, CloseFramePayload(1000, "bye"), testMask)...)
	want := []ClientMessage{
		{OpcodeText, []byte(`{"op":"ping"}`)},
		{OpcodePing, []byte("hi")},
		{OpcodeText, []byte(`{"op":"ping"}`)},
		{OpcodeBinary, big},
		{OpcodePong, nil},
		{OpcodeClose, CloseFramePayload(1000, "bye")},
	}
	for _, chunk := range []int{1, 2, 3, 7, 64, 128, len(stream)} {
		got, err := feedAll(t, stream, chunk, 1<<20)
		if err != nil {
			t.Fatalf("chunk %d: %v", chunk, err)
		}
		if len(got) != len(want) {
			t.Fatalf("chunk %d: %d messages, want %d", chunk, len(got), len(want))
		}
		for i := range want {
			if got[i].Opcode != want[i].Opcode || !bytes.Equal(got[i].Payload, want[i].Payload) {
				t.Fatalf("chunk %d: message %d is %d %.40q, want %d %.40q", chunk, i, got[i].Opcode, got[i].Payload, want[i].Opcode, want[i].Payload)
			}
		}
	}
}

func TestClientReaderHoldsNothingBetweenFrames(t *testing.T) {
	r := ClientReader{MaxMessage: 100}
	f := clientFrame(true, OpcodeText, []byte("hello"), testMask)
	if err := r.Feed(f[:3], func(ClientMessage) bool { return true }); err != nil || r.pending == nil {
		t.Fatalf("after a partial header: err %v, pending %v", err, r.pending)
	}
	if err := r.Feed(f[3:], func(ClientMessage) bool { return true }); err != nil || r.pending != nil || r.frag != nil {
		t.Fatalf("after the frame: err %v, pending %v, frag %v", err, r.pending, r.frag)
	}
}

// A frame dribbled in byte by byte must not be copied again at every byte.
func TestClientReaderDribbledFrameIsNotRecopied(t *testing.T) {
	const size = 60000
	frame := clientFrame(true, OpcodeText, bytes.Repeat([]byte("x"), size), testMask)
	var got int
	allocs := testing.AllocsPerRun(1, func() {
		r := ClientReader{MaxMessage: size}
		for i := range frame {
			if err := r.Feed(frame[i:i+1:i+1], func(m ClientMessage) bool { got = len(m.Payload); return true }); err != nil {
				t.Fatal(err)
			}
		}
	})
	if got != size {
		t.Fatalf("message of %d bytes, want %d", got, size)
	}
	if allocs > 32 {
		t.Fatalf("%v allocations to read one frame a byte at a time", allocs)
	}
}

func TestClientReaderStops(t *testing.T) {
	stream := append(clientFrame(true, OpcodeText, []byte("a"), testMask), clientFrame(true, OpcodeText, []byte("b"), testMask)...)
	r := ClientReader{MaxMessage: 100}
	n := 0
	if err := r.Feed(stream, func(ClientMessage) bool { n++; return false }); err != nil || n != 1 {
		t.Fatalf("err %v, %d messages after stopping at the first", err, n)
	}
}

func TestClientReaderErrors(t *testing.T) {
	unmasked := clientFrame(true, OpcodeText, []byte("a"), testMask)
	unmasked[1] &^= 0x80
	rsv := clientFrame(true, OpcodeText, []byte("a"), testMask)
	rsv[0] |= 0x40
	longForm := []byte{0x81, 0x80 | 126, 0, 5, 1, 2, 3, 4}
	for name, tc := range map[string]struct {
		stream []byte
		code   int
		reason string
	}{
		"unmasked":                  {unmasked, CloseProtocolError, "not masked"},
		"reserved bits":             {rsv, CloseProtocolError, "reserved"},
		"unknown opcode":            {clientFrame(true, 3, nil, testMask), CloseProtocolError, "opcode 3"},
		"fragmented control":        {clientFrame(false, OpcodePing, nil, testMask), CloseProtocolError, "fragmented"},
		"long control":              {clientFrame(true, OpcodePing, make([]byte, 126), testMask), CloseProtocolError, "control frame"},
		"non-minimal length":        {longForm, CloseProtocolError, "shortest"},
		"stray continuation":        {clientFrame(true, OpcodeContinuation, []byte("a"), testMask), CloseProtocolError, "continuation"},
		"stray continuation header": {clientFrame(true, OpcodeContinuation, []byte("a"), testMask)[:2], CloseProtocolError, "continuation"},
		"long control header":       {[]byte{0x89, 0x80 | 126}, CloseProtocolError, "control frame"},
		"invalid UTF-8":             {clientFrame(true, OpcodeText, []byte("{\"op\":\"\xff\"}"), testMask), CloseInvalidData, "UTF-8"},
		"surrogate half":            {clientFrame(true, OpcodeText, []byte("\xed\xa0\x80"), testMask), CloseInvalidData, "UTF-8"},
		"invalid UTF-8 fragments":   {append(clientFrame(false, OpcodeText, []byte("ok"), testMask), clientFrame(true, OpcodeContinuation, []byte("\xc3"), testMask)...), CloseInvalidData, "UTF-8"},
		"interleaved messages":      {append(clientFrame(false, OpcodeText, []byte("a"), testMask), clientFrame(true, OpcodeText, []byte("b"), testMask)...), CloseProtocolError, "final fragment"},
		"frame over the limit":      {clientFrame(true, OpcodeText, make([]byte, 101), testMask), CloseTooLarge, "over 100"},
		"fragments over the limit":  {append(clientFrame(false, OpcodeText, make([]byte, 60), testMask), clientFrame(true, OpcodeContinuation, make([]byte, 41), testMask)...), CloseTooLarge, "over 100"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := feedAll(t, tc.stream, len(tc.stream), 100)
			var fe *FrameError
			if !errors.As(err, &fe) || fe.Code != tc.code || !strings.Contains(fe.Reason, tc.reason) {
				t.Fatalf("error %v, want close %d with %q", err, tc.code, tc.reason)
			}
		})
	}
}

// A text message is checked whole: a character split between fragments is
// fine, and binary messages are not checked.
func TestClientReaderUTF8AcrossFragments(t *testing.T) {
	var stream []byte
	stream = append(stream, clientFrame(false, OpcodeText, []byte("caf\xc3"), testMask)...)
	stream = append(stream, clientFrame(true, OpcodePing, nil, testMask)...)
	stream = append(stream, clientFrame(true, OpcodeContinuation, []byte("\xa9"), testMask)...)
	stream = append(stream, clientFrame(true, OpcodeBinary, []byte{0xff, 0xfe}, testMask)...)
	got, err := feedAll(t, stream, 1, 100)
	if err != nil || len(got) != 3 || string(got[1].Payload) != "café" || got[2].Opcode != OpcodeBinary {
		t.Fatalf("err %v, messages %q", err, got)
	}
}

// A header announcing a large frame reserves nothing: the reader holds at
// most twice what arrived, and drops a large buffer once its frame is done.
func TestClientReaderHoldsOnlyWhatArrived(t *testing.T) {
	const size = 64 << 10
	frame := clientFrame(true, OpcodeText, bytes.Repeat([]byte("x"), size), testMask)
	r := ClientReader{MaxMessage: size}
	noMsg := func(m ClientMessage) bool { t.Fatalf("unexpected message of %d bytes", len(m.Payload)); return false }
	if err := r.Feed(bytes.Clone(frame[:14]), noMsg); err != nil {
		t.Fatal(err)
	}
	if c := cap(r.pending); c > minPending {
		t.Fatalf("a header announcing %d bytes holds a buffer of %d", size, c)
	}
	arrived := 14
	for _, step := range []int{1, 100, 1000, 5000, 20000} {
		if err := r.Feed(bytes.Clone(frame[arrived:arrived+step]), noMsg); err != nil {
			t.Fatal(err)
		}
		arrived += step
		if c := cap(r.pending); c > max(2*arrived, minPending) {
			t.Fatalf("%d bytes arrived, buffer of %d", arrived, c)
		}
	}
	// The rest, and the first bytes of a small frame that stalls.
	next := clientFrame(true, OpcodeText, []byte("hello"), testMask)
	n := 0
	if err := r.Feed(append(bytes.Clone(frame[arrived:]), next[:4]...), func(m ClientMessage) bool { n = len(m.Payload); return true }); err != nil || n != size {
		t.Fatalf("err %v, message of %d bytes", err, n)
	}
	if c := cap(r.pending); c > minPending {
		t.Fatalf("4 bytes of a frame held in a buffer of %d", c)
	}
}

// Finished and Idle tell a caller when a message begins and ends; a control
// frame between fragments belongs to the message under way.
func TestClientReaderFinished(t *testing.T) {
	r := ClientReader{MaxMessage: 100}
	feed := func(b []byte) {
		t.Helper()
		if err := r.Feed(b, func(ClientMessage) bool { return true }); err != nil {
			t.Fatal(err)
		}
	}
	check := func(finished uint64, idle bool) {
		t.Helper()
		if r.Finished() != finished || r.Idle() != idle {
			t.Fatalf("Finished %d, Idle %v; want %d, %v", r.Finished(), r.Idle(), finished, idle)
		}
	}
	check(0, true)
	feed(clientFrame(true, OpcodeText, []byte("a"), testMask))
	check(1, true)
	ping := clientFrame(true, OpcodePing, nil, testMask)
	feed(ping[:1])
	check(1, false)
	feed(ping[1:])
	check(2, true)
	feed(clientFrame(false, OpcodeText, []byte("a"), testMask))
	check(2, false)
	feed(clientFrame(true, OpcodePing, nil, testMask))
	check(2, false)
	feed(clientFrame(true, OpcodeContinuation, []byte("b"), testMask))
	check(3, true)
}

func TestParseClosePayload(t *testing.T) {
	for _, tc := range []struct {
		p      []byte
		code   int
		reason string
		ok     bool
	}{
		{nil, CloseNoStatus, "", true},
		{CloseFramePayload(1000, "bye"), 1000, "bye", true},
		{CloseFramePayload(4321, ""), 4321, "", true},
		{CloseFramePayload(1013, ""), 1013, "", true},
		{CloseFramePayload(1014, ""), 0, "", false},
		{[]byte{3}, 0, "", false},
		{CloseFramePayload(1005, ""), 0, "", false},
		{CloseFramePayload(999, ""), 0, "", false},
		{CloseFramePayload(5000, ""), 0, "", false},
		{append(CloseFramePayload(1000, ""), 0xff), 0, "", false},
	} {
		code, reason, err := ParseClosePayload(tc.p)
		if (err == nil) != tc.ok || err == nil && (code != tc.code || reason != tc.reason) {
			t.Errorf("ParseClosePayload(%x) = %d %q %v", tc.p, code, reason, err)
		}
	}
}

// FuzzClientReader feeds a stream whole and in two pieces: neither panics,
// both give the same messages and the same outcome, and no message is over
// the limit.
func FuzzClientReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte, split uint16) {
		const max = 1 << 10
		whole, errWhole := feedAll(t, stream, len(stream)+1, max)
		cut := int(split) % (len(stream) + 1)
		r := ClientReader{MaxMessage: max}
		var parts []ClientMessage
		collect := func(m ClientMessage) bool {
			parts = append(parts, ClientMessage{m.Opcode, bytes.Clone(m.Payload)})
			return true
		}
		s := bytes.Clone(stream)
		errParts := r.Feed(s[:cut], collect)
		if errParts == nil {
			errParts = r.Feed(s[cut:], collect)
		}
		if (errWhole == nil) != (errParts == nil) {
			t.Fatalf("whole: %v; split at %d: %v", errWhole, cut, errParts)
		}
		if len(whole) != len(parts) {
			t.Fatalf("whole: %d messages; split at %d: %d", len(whole), cut, len(parts))
		}
		for i := range whole {
			if whole[i].Opcode != parts[i].Opcode || !bytes.Equal(whole[i].Payload, parts[i].Payload) {
				t.Fatalf("message %d differs when split at %d", i, cut)
			}
			if len(whole[i].Payload) > max {
				t.Fatalf("message %d of %d bytes is over %d", i, len(whole[i].Payload), max)
			}
		}
	})
}
