package proto

import (
	"encoding/binary"
	"fmt"
	"unicode/utf8"
)

// OpcodeContinuation continues a fragmented message (RFC 6455, section 5.4).
const OpcodeContinuation byte = 0

// FrameError is a violation of RFC 6455 by the client, or a message over
// the size limit: the connection must be closed with Code.
type FrameError struct {
	Code   int // CloseProtocolError or CloseTooLarge
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
// in its shortest form or over 2^63-1.
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
	if h.Opcode >= OpcodeClose && h.Length > 125 {
		return h, 0, protocolError("control frame of %d bytes", h.Length)
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
// payload.
type ClientReader struct {
	MaxMessage int // largest message payload in bytes

	pending []byte // start of an incomplete frame
	frag    []byte // the fragments of an unfinished message so far
	fragOp  byte   // its opcode; 0 while there is none
}

// Feed consumes b, which it may modify, and calls fn with every complete
// message in order; fn returns false to stop reading (the rest is
// dropped). An error is a *FrameError, after which the stream is unusable.
//
// A frame that arrives in many pieces costs amortized constant work per
// piece: its bytes are appended to one buffer, sized for the whole frame
// once its header is known.
func (r *ClientReader) Feed(b []byte, fn func(ClientMessage) bool) error {
	fromPending := len(r.pending) > 0
	if fromPending {
		r.pending = append(r.pending, b...)
		b = r.pending
	}
	need := 0 // size of the incomplete frame at the end of b, when known
	for len(b) > 0 {
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
		msg, complete, err := r.assemble(h, payload)
		if err != nil {
			return err
		}
		if complete && !fn(msg) {
			return nil
		}
	}
	r.keep(b, fromPending, need)
	return nil
}

// keep saves rest, the start of an incomplete frame of need bytes (0:
// unknown yet), for the next Feed; rest is a suffix of r.pending when
// fromPending.
func (r *ClientReader) keep(rest []byte, fromPending bool, need int) {
	switch {
	case len(rest) == 0:
		r.pending = nil // between frames, no buffer
	case fromPending:
		r.pending = r.pending[:copy(r.pending, rest)]
	default:
		r.pending = append(make([]byte, 0, max(need, len(rest))), rest...)
	}
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

// assemble joins fragments; it reports whether a message is complete.
func (r *ClientReader) assemble(h ClientFrameHeader, payload []byte) (ClientMessage, bool, error) {
	switch {
	case h.Opcode >= OpcodeClose:
		return ClientMessage{Opcode: h.Opcode, Payload: payload}, true, nil
	case h.Opcode == OpcodeContinuation:
		if r.fragOp == 0 {
			return ClientMessage{}, false, protocolError("continuation frame without a message")
		}
		r.frag = append(r.frag, payload...)
		if !h.Fin {
			return ClientMessage{}, false, nil
		}
		msg := ClientMessage{Opcode: r.fragOp, Payload: r.frag}
		r.frag, r.fragOp = nil, 0
		return msg, true, nil
	case r.fragOp != 0:
		return ClientMessage{}, false, protocolError("new message before the last one's final fragment")
	case !h.Fin:
		r.frag, r.fragOp = append([]byte(nil), payload...), h.Opcode
		return ClientMessage{}, false, nil
	default:
		return ClientMessage{Opcode: h.Opcode, Payload: payload}, true, nil
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
// section 7.4).
func validCloseCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1011:
		return true
	default:
		return code >= 3000 && code <= 4999
	}
}
