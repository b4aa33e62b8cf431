package proto

import (
	"encoding/binary"
	"unicode/utf8"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	OpcodeText   byte = 1
	OpcodeBinary byte = 2
	OpcodeClose  byte = 8
	OpcodePing   byte = 9
	OpcodePong   byte = 10
)

// MaxFrameHeaderLen is the longest header of an unmasked server frame.
const MaxFrameHeaderLen = 10

// Frame is one complete server-to-client WebSocket frame (header and
// payload), encoded once and shared read-only by every connection that sends
// it. Seq is the publication's sequence number, 0 for anything else.
// Stream, set on the data and reset frames of a key, names the key's
// stream, so that a connection can tell the frames of its latest keys
// apart (docs/PROTOCOL.md, "Delivery modes"); nil for anything else.
type Frame struct {
	Seq    uint64
	Bytes  []byte
	Stream *StreamRef
}

// StreamRef names one key's stream on a node. The node holds one per key
// it serves, for as long as the key has a subscriber there, and puts it on
// every data and reset frame of the key: a connection compares the
// pointer, not the names.
type StreamRef struct {
	App, Key string
}

// AppendFrameHeader appends the header of a final, unmasked server frame
// with the given opcode and payload length.
func AppendFrameHeader(dst []byte, opcode byte, n int) []byte {
	b0 := 0x80 | opcode
	switch {
	case n <= 125:
		return append(dst, b0, byte(n))
	case n <= 0xFFFF:
		return append(dst, b0, 126, byte(n>>8), byte(n))
	default:
		dst = append(dst, b0, 127)
		return binary.BigEndian.AppendUint64(dst, uint64(n))
	}
}

// FrameHeaderLen is the length of the header AppendFrameHeader writes.
func FrameHeaderLen(n int) int {
	switch {
	case n <= 125:
		return 2
	case n <= 0xFFFF:
		return 4
	default:
		return 10
	}
}

// NewFrame frames payload as one server frame with the given opcode.
func NewFrame(opcode byte, payload []byte) *Frame {
	b := make([]byte, 0, FrameHeaderLen(len(payload))+len(payload))
	b = AppendFrameHeader(b, opcode, len(payload))
	return &Frame{Bytes: append(b, payload...)}
}

// frameBuilder lets an encoder write a payload first and put the header in
// front of it afterwards, without copying the payload: the payload starts at
// MaxFrameHeaderLen and the header is written right-aligned before it.
type frameBuilder struct{ buf []byte }

func newFrameBuilder(sizeHint int) frameBuilder {
	b := make([]byte, MaxFrameHeaderLen, MaxFrameHeaderLen+sizeHint)
	return frameBuilder{buf: b}
}

func (fb *frameBuilder) finish(opcode byte) []byte {
	n := len(fb.buf) - MaxFrameHeaderLen
	h := FrameHeaderLen(n)
	start := MaxFrameHeaderLen - h
	AppendFrameHeader(fb.buf[start:start], opcode, n)
	return fb.buf[start:]
}

// CloseFramePayload is the payload of a close frame: a 2-byte code and a
// reason of at most 123 bytes (longer reasons are cut, at a rune boundary so
// that the reason stays valid UTF-8 as RFC 6455 requires).
func CloseFramePayload(code int, reason string) []byte {
	if len(reason) > 123 {
		n := 123
		for n > 0 && !utf8.RuneStart(reason[n]) {
			n--
		}
		reason = reason[:n]
	}
	b := make([]byte, 2, 2+len(reason))
	binary.BigEndian.PutUint16(b, uint16(code))
	return append(b, reason...)
}
