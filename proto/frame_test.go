package proto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// wsFrame is one WebSocket frame parsed per RFC 6455, section 5.2.
type wsFrame struct {
	fin     bool
	rsv     byte // RSV1..3
	opcode  byte
	masked  bool
	hdrLen  int
	payload []byte
}

// parseWSFrame parses exactly one complete server frame. It rejects
// non-minimal length encodings and a 64-bit length with the top bit set,
// which RFC 6455 forbids, and trailing bytes.
func parseWSFrame(b []byte) (wsFrame, error) {
	var f wsFrame
	if len(b) < 2 {
		return f, errors.New("short header")
	}
	f.fin = b[0]&0x80 != 0
	f.rsv = b[0] >> 4 & 0x7
	f.opcode = b[0] & 0x0f
	f.masked = b[1]&0x80 != 0
	var n uint64
	switch l7 := b[1] & 0x7f; {
	case l7 <= 125:
		n, f.hdrLen = uint64(l7), 2
	case l7 == 126:
		if len(b) < 4 {
			return f, errors.New("short 16-bit length")
		}
		n, f.hdrLen = uint64(binary.BigEndian.Uint16(b[2:])), 4
		if n <= 125 {
			return f, fmt.Errorf("non-minimal 16-bit length %d", n)
		}
	default:
		if len(b) < 10 {
			return f, errors.New("short 64-bit length")
		}
		n, f.hdrLen = binary.BigEndian.Uint64(b[2:]), 10
		if n>>63 != 0 {
			return f, errors.New("64-bit length with the top bit set")
		}
		if n <= 0xFFFF {
			return f, fmt.Errorf("non-minimal 64-bit length %d", n)
		}
	}
	if f.masked {
		f.hdrLen += 4 // a server must not mask, but parse it anyway
	}
	if uint64(len(b)-f.hdrLen) != n {
		return f, fmt.Errorf("length field %d, %d payload bytes", n, len(b)-f.hdrLen)
	}
	f.payload = b[f.hdrLen:]
	return f, nil
}

func checkServerFrame(t *testing.T, b []byte, opcode byte, payload []byte) {
	t.Helper()
	f, err := parseWSFrame(b)
	if err != nil {
		t.Fatalf("frame of %d bytes: %v", len(b), err)
	}
	if !f.fin {
		t.Errorf("FIN not set")
	}
	if f.rsv != 0 {
		t.Errorf("RSV bits %#x", f.rsv)
	}
	if f.masked {
		t.Errorf("server frame is masked")
	}
	if f.opcode != opcode {
		t.Errorf("opcode %d, want %d", f.opcode, opcode)
	}
	if f.hdrLen != FrameHeaderLen(len(payload)) {
		t.Errorf("header length %d, FrameHeaderLen %d", f.hdrLen, FrameHeaderLen(len(payload)))
	}
	if !bytes.Equal(f.payload, payload) {
		t.Errorf("payload differs (len %d, want %d)", len(f.payload), len(payload))
	}
}

var frameLengths = []int{0, 1, 124, 125, 126, 127, 65534, 65535, 65536, 65537, 1 << 20}

func TestAppendFrameHeader(t *testing.T) {
	for _, n := range frameLengths {
		for _, op := range []byte{OpcodeText, OpcodeBinary, OpcodeClose, OpcodePing, OpcodePong} {
			payload := bytes.Repeat([]byte{'p'}, n)
			h := AppendFrameHeader([]byte("pre"), op, n)
			if string(h[:3]) != "pre" {
				t.Fatalf("AppendFrameHeader did not append")
			}
			h = h[3:]
			if len(h) != FrameHeaderLen(n) || len(h) > MaxFrameHeaderLen {
				t.Fatalf("n=%d: header %d bytes, FrameHeaderLen %d", n, len(h), FrameHeaderLen(n))
			}
			checkServerFrame(t, append(h, payload...), op, payload)
		}
	}
	// Exact bytes at the boundaries.
	for _, tt := range []struct {
		n    int
		want []byte
	}{
		{0, []byte{0x81, 0}},
		{125, []byte{0x81, 125}},
		{126, []byte{0x81, 126, 0, 126}},
		{65535, []byte{0x81, 126, 0xff, 0xff}},
		{65536, []byte{0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0}},
	} {
		if got := AppendFrameHeader(nil, OpcodeText, tt.n); !bytes.Equal(got, tt.want) {
			t.Errorf("AppendFrameHeader(text, %d) = % x, want % x", tt.n, got, tt.want)
		}
	}
}

func TestNewFrame(t *testing.T) {
	for _, n := range frameLengths {
		payload := bytes.Repeat([]byte{'n'}, n)
		f := NewFrame(OpcodeBinary, payload)
		if f.Seq != 0 {
			t.Errorf("Seq %d", f.Seq)
		}
		if len(f.Bytes) != cap(f.Bytes) {
			t.Errorf("n=%d: len %d cap %d: not sized exactly", n, len(f.Bytes), cap(f.Bytes))
		}
		checkServerFrame(t, f.Bytes, OpcodeBinary, payload)
		if n > 0 {
			payload[0] = 'X' // the frame owns a copy
			if f.Bytes[len(f.Bytes)-n] != 'n' {
				t.Fatalf("NewFrame aliases its payload")
			}
		}
	}
	f := NewFrame(OpcodePing, nil)
	if !bytes.Equal(f.Bytes, []byte{0x89, 0}) {
		t.Errorf("empty ping frame % x", f.Bytes)
	}
}

func TestEncodeDataFrame(t *testing.T) {
	for _, f := range []Format{FormatJSON, FormatBinary} {
		for _, n := range []int{125, 126, 65535, 65536, 65537} {
			p := dataFrameOfLen(t, f, n)
			fr := EncodeDataFrame(&p, f)
			if fr.Seq != p.Seq {
				t.Errorf("%v n=%d: Seq %d, want %d", f, n, fr.Seq, p.Seq)
			}
			want, op := AppendDataJSON(nil, &p), OpcodeText
			if f == FormatBinary {
				want, op = AppendDataBinary(nil, &p), OpcodeBinary
			}
			if len(want) != n {
				t.Fatalf("payload %d bytes, want %d", len(want), n)
			}
			checkServerFrame(t, fr.Bytes, op, want)
		}
	}
}

// The smallest data frames (payload length 0 is impossible for a data
// message, so check the short end with the shortest ones and a few others).
func TestEncodeDataFrameSmall(t *testing.T) {
	pubs := []Publication{
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte("1"), JSON: true},
		{App: "a", Key: "k", Seq: 1, TS: 0},
		{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte(`{"temp":21.53,"humidity":40.1}`), JSON: true},
		{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte{0xff, 0}},
	}
	for _, p := range pubs {
		checkServerFrame(t, EncodeDataFrame(&p, FormatJSON).Bytes, OpcodeText, AppendDataJSON(nil, &p))
		checkServerFrame(t, EncodeDataFrame(&p, FormatBinary).Bytes, OpcodeBinary, AppendDataBinary(nil, &p))
	}
}

// EncodeDataFrame sizes its buffer up front: one allocation for the bytes
// and one for the Frame, whatever the seq, ts and names.
func TestEncodeDataFrameAllocs(t *testing.T) {
	pubs := []Publication{
		{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte(`{"temp":21.53,"humidity":40.1}`), JSON: true},
		{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte("raw")},
		{App: strings.Repeat("a", 64), Key: strings.Repeat("k", 64), Seq: 1<<64 - 1, TS: -1 << 63, Data: []byte(`{}`), JSON: true},
		{App: strings.Repeat("a", 64), Key: strings.Repeat("k", 64), Seq: 1<<64 - 1, TS: -1 << 63, Data: []byte("raw")},
		{App: "a", Key: "k", Seq: 1<<64 - 1, TS: -1 << 63, Data: nil},
		{App: "a", Key: "k", Seq: 1<<64 - 1, TS: -1 << 63, Data: []byte("1"), JSON: true},
	}
	for _, p := range pubs {
		for _, f := range []Format{FormatJSON, FormatBinary} {
			allocs := testing.AllocsPerRun(20, func() { EncodeDataFrame(&p, f) })
			if allocs > 2 {
				t.Errorf("EncodeDataFrame(%v, seq %d, ts %d): %v allocs, want <= 2", f, p.Seq, p.TS, allocs)
			}
		}
	}
}

func TestCloseFramePayload(t *testing.T) {
	tests := []struct {
		code   int
		reason string
		want   string // the reason in the payload
	}{
		{CloseGoingAway, "", ""},
		{ClosePolicy, "rate limit", "rate limit"},
		{CloseTooSlow, "too slow", "too slow"},
		{CloseUnauthorized, strings.Repeat("r", 123), strings.Repeat("r", 123)},
		{CloseInternal, strings.Repeat("r", 124), strings.Repeat("r", 123)},
		{CloseInternal, strings.Repeat("r", 1000), strings.Repeat("r", 123)},
		// A cut must not split a UTF-8 sequence: the reason must stay valid
		// UTF-8 (RFC 6455, section 5.5.1), so it is cut before the rune.
		{CloseGoingAway, strings.Repeat("r", 122) + "é", strings.Repeat("r", 122)},
		{CloseGoingAway, strings.Repeat("r", 121) + "é", strings.Repeat("r", 121) + "é"},
		{CloseGoingAway, strings.Repeat("r", 121) + "😀", strings.Repeat("r", 121)},
		{CloseGoingAway, strings.Repeat("日", 60), strings.Repeat("日", 41)},
	}
	for _, tt := range tests {
		b := CloseFramePayload(tt.code, tt.reason)
		if len(b) > 125 {
			t.Errorf("close payload %d bytes, over the 125 of a control frame", len(b))
		}
		if code := int(binary.BigEndian.Uint16(b)); code != tt.code {
			t.Errorf("code %d, want %d", code, tt.code)
		}
		if got := string(b[2:]); got != tt.want {
			t.Errorf("CloseFramePayload(%d, %d bytes): reason %q (%d bytes), want %d bytes", tt.code, len(tt.reason), got, len(got), len(tt.want))
		}
		if !utf8.Valid(b[2:]) {
			t.Errorf("CloseFramePayload(%d, %q): reason not valid UTF-8", tt.code, tt.reason)
		}
		f := NewFrame(OpcodeClose, b)
		checkServerFrame(t, f.Bytes, OpcodeClose, b)
	}
}
