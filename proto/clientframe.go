package proto

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// OpcodeContinuation continues a fragmented message (RFC 6455, section 5.4).
const OpcodeContinuation byte = 0

// FrameError is a violation of RFC 6455 by the client, a text message
// that is not UTF-8, or a message over the size limit: the connection must
// be closed with Code.
type FrameError struct {
	Code   int // CloseProtocolError, CloseInvalidData or CloseTooLarge
	Reason string
}

func (e *FrameError) Error() string { return fmt.Sprintf("websocket: %s (close %d)", e.Reason, e.Code) }

func protocolError(format string, args ...any) *FrameError {
	return &FrameError{Code: CloseProtocolError, Reason: fmt.Sprintf(format, args...)}
}

// ClientFrameHeader is the header of a frame a client sent.
type ClientFrameHeader struct {
	Fin    bool
	Opcode byte
	Mask   [4]byte
	Length uint64 // of the payload
}

// ParseClientFrameHeader parses the frame header at the start of b and
// returns its length in bytes; 0 with a nil error means b does not hold the
// whole header yet. A header no client may send is a *FrameError: reserved
// bits set (no extension is negotiated), an unknown opcode, a missing mask,
// a fragmented control frame or one over 125 bytes, or a length that is not
// in its shortest form or over 2^63-1. Everything the first two bytes tell
// is checked as soon as they are there.
func ParseClientFrameHeader(b []byte) (h ClientFrameHeader, n int, err error) {
	if len(b) < 2 {
		return h, 0, nil
	}
	b0, b1 := b[0], b[1]
	h.Fin = b0&0x80 != 0
	h.Opcode = b0 & 0x0f
	if b0&0x70 != 0 {
		return h, 0, protocolError("reserved bits set")
	}
	switch h.Opcode {
	case OpcodeContinuation, OpcodeText, OpcodeBinary:
	case OpcodeClose, OpcodePing, OpcodePong:
		if !h.Fin {
			return h, 0, protocolError("fragmented control frame")
		}
	default:
		return h, 0, protocolError("unknown opcode %d", h.Opcode)
	}
	if b1&0x80 == 0 {
		return h, 0, protocolError("client frame not masked")
	}
	if h.Opcode >= OpcodeClose && b1&0x7f > 125 {
		return h, 0, protocolError("control frame over 125 bytes")
	}
	n = 2
	switch l := b1 & 0x7f; l {
	case 126:
		if len(b) < n+2 {
			return h, 0, nil
		}
		h.Length = uint64(binary.BigEndian.Uint16(b[n:]))
		if h.Length < 126 {
			return h, 0, protocolError("length not in its shortest form")
		}
		n += 2
	case 127:
		if len(b) < n+8 {
			return h, 0, nil
		}
		h.Length = binary.BigEndian.Uint64(b[n:])
		if h.Length>>63 != 0 {
			return h, 0, protocolError("length over 2^63-1")
		}
		if h.Length <= 0xFFFF {
			return h, 0, protocolError("length not in its shortest form")
		}
		n += 8
	default:
		h.Length = uint64(l)
	}
	if len(b) < n+4 {
		return h, 0, nil
	}
	copy(h.Mask[:], b[n:n+4])
	return h, n + 4, nil
}

// Unmask XORs p with mask in place, p being the payload from its byte pos on.
func Unmask(p []byte, mask [4]byte, pos int) {
	for i := range p {
		p[i] ^= mask[(pos+i)&3]
	}
}

// ClientMessage is a message a client sent: a data message (text or
// binary, its fragments joined) or a control frame.
type ClientMessage struct {
	Opcode  byte
	Payload []byte // valid only during the callback that receives it
}

// ClientReader turns the bytes of a client's stream into messages. It does
// no I/O: Feed it what the socket returns. While it is between frames it
// holds no buffer; it keeps the bytes of an incomplete frame, and the
// fragments of an unfinished message, and never more than MaxMessage of
// payload. What it keeps is what has arrived: a header announcing a large
// frame reserves nothing, the buffer grows with the bytes (to twice what
// arrived at most, for amortized constant work per piece).
//
// A text message must be UTF-8 (checked once the message is complete, so a
// character may straddle fragments).
type ClientReader struct {
	MaxMessage int // largest message payload in bytes

	pending  []byte // start of an incomplete frame
	need     int    // that frame's size once its header is known, else 0
	frag     []byte // the fragments of an unfinished message so far
	fragOp   byte   // its opcode; 0 while there is none
	finished uint64 // times the reader came back between messages
}

// minPending is the smallest buffer of an incomplete frame: a socket read
// of the session brings at most 128 bytes.
const minPending = 128

// Idle reports whether r is between messages: it holds no part of a frame
// and no fragment of an unfinished message.
func (r *ClientReader) Idle() bool { return len(r.pending) == 0 && r.fragOp == 0 }

// Finished counts the times r came back between messages: a data message
// (with the control frames sent between its fragments) or a control frame
// outside one was complete. A caller that times messages compares it across
// a Feed: if it moved and r is not Idle, a new message began during that
// Feed; if it did not, the message under way is the same one.
func (r *ClientReader) Finished() uint64 { return r.finished }

// Feed consumes b, which it may modify, and calls fn with every complete
// message in order; fn returns false to stop reading (the rest is
// dropped). An error is a *FrameError, after which the stream is unusable.
//
// A frame that arrives in many pieces costs amortized constant work per
// piece: its bytes are appended to one buffer that doubles as they come,
// never beyond the frame's size.
func (r *ClientReader) Feed(b []byte, fn func(ClientMessage) bool) error {
	fromPending := len(r.pending) > 0
	if fromPending {
		r.appendPending(b)
		b = r.pending
	}
	need := 0 // size of the incomplete frame at the end of b, when known
	for len(b) >= 2 {
		if err := r.checkSequence(b[0]); err != nil {
			return err
		}
		h, n, err := ParseClientFrameHeader(b)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if err := r.checkSize(h); err != nil {
			return err
		}
		end := uint64(n) + h.Length
		if uint64(len(b)) < end {
			need = int(end)
			break
		}
		payload := b[n:end]
		Unmask(payload, h.Mask, 0)
		b = b[end:]
		msg, complete := r.assemble(h, payload)
		if r.fragOp == 0 {
			r.finished++
		}
		if !complete {
			continue
		}
		if msg.Opcode == OpcodeText && !utf8.Valid(msg.Payload) {
			return &FrameError{Code: CloseInvalidData, Reason: "text message is not UTF-8"}
		}
		if !fn(msg) {
			return nil
		}
	}
	r.keep(b, fromPending, need)
	return nil
}

// appendPending appends b to the incomplete frame, growing its buffer to
// twice its size at most, and never beyond the frame once its size is
// known.
func (r *ClientReader) appendPending(b []byte) {
	n := len(r.pending) + len(b)
	if n > cap(r.pending) {
		c := max(2*cap(r.pending), n)
		if r.need > 0 {
			c = max(min(c, r.need), n)
		}
		p := make([]byte, len(r.pending), c)
		copy(p, r.pending)
		r.pending = p
	}
	r.pending = append(r.pending, b...)
}

// keep saves rest, the start of an incomplete frame of need bytes (0:
// unknown yet), for the next Feed; rest is a suffix of r.pending when
// fromPending. A buffer much larger than rest (a large frame that ended
// just before it) is not kept.
func (r *ClientReader) keep(rest []byte, fromPending bool, need int) {
	r.need = need
	switch {
	case len(rest) == 0:
		r.pending = nil // between frames, no buffer
	case fromPending && cap(r.pending) <= max(2*len(rest), minPending):
		r.pending = r.pending[:copy(r.pending, rest)]
	default:
		c := max(len(rest), minPending)
		if need > 0 {
			c = max(min(c, need), len(rest))
		}
		r.pending = append(make([]byte, 0, c), rest...)
	}
}

// checkSequence refuses a frame, from its first byte, that cannot come
// next: a continuation with no message under way, or a new data message
// before the last one's final fragment.
func (r *ClientReader) checkSequence(b0 byte) error {
	switch op := b0 & 0x0f; {
	case op == OpcodeContinuation && r.fragOp == 0:
		return protocolError("continuation frame without a message")
	case (op == OpcodeText || op == OpcodeBinary) && r.fragOp != 0:
		return protocolError("new message before the last one's final fragment")
	}
	return nil
}

// checkSize refuses a frame whose payload would take a message over
// MaxMessage, before any of it is buffered.
func (r *ClientReader) checkSize(h ClientFrameHeader) error {
	total := h.Length
	if h.Opcode == OpcodeContinuation {
		total += uint64(len(r.frag))
	}
	if h.Opcode < OpcodeClose && total > uint64(r.MaxMessage) {
		return &FrameError{Code: CloseTooLarge, Reason: fmt.Sprintf("message over %d bytes", r.MaxMessage)}
	}
	return nil
}

// assemble joins fragments (checkSequence has allowed the frame); it
// reports whether a message is complete.
func (r *ClientReader) assemble(h ClientFrameHeader, payload []byte) (ClientMessage, bool) {
	switch {
	case h.Opcode >= OpcodeClose:
		return ClientMessage{Opcode: h.Opcode, Payload: payload}, true
	case h.Opcode == OpcodeContinuation:
		r.frag = append(r.frag, payload...)
		if !h.Fin {
			return ClientMessage{}, false
		}
		msg := ClientMessage{Opcode: r.fragOp, Payload: r.frag}
		r.frag, r.fragOp = nil, 0
		return msg, true
	case !h.Fin:
		r.frag, r.fragOp = append([]byte(nil), payload...), h.Opcode
		return ClientMessage{}, false
	default:
		return ClientMessage{Opcode: h.Opcode, Payload: payload}, true
	}
}

// ParseClosePayload reads the code and reason of a client's close frame. An
// empty payload is CloseNoStatus. A one-byte payload, a code no endpoint
// may send, or a reason that is not UTF-8 is a *FrameError.
func ParseClosePayload(p []byte) (code int, reason string, err error) {
	switch len(p) {
	case 0:
		return CloseNoStatus, "", nil
	case 1:
		return 0, "", protocolError("close payload of 1 byte")
	}
	code = int(binary.BigEndian.Uint16(p))
	if !validCloseCode(code) {
		return 0, "", protocolError("close code %d", code)
	}
	if !utf8.Valid(p[2:]) {
		return 0, "", protocolError("close reason is not UTF-8")
	}
	return code, string(p[2:]), nil
}

// validCloseCode reports whether an endpoint may send code (RFC 6455,
// section 7.4, and the IANA registry's 1012 service restart and 1013 try
// again later, as gorilla/websocket accepts them).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1013:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}
