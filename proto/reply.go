package proto

import (
	"encoding/json"
	"fmt"
	"strconv"
)

// Error codes of error replies.
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeLimit        = "limit"
	CodeUnavailable  = "unavailable"
	CodeInternal     = "internal"
)

// Close codes the server uses.
const (
	CloseGoingAway     = 1001 // server shutting down: reconnect and resume
	CloseProtocolError = 1002 // a frame that breaks RFC 6455
	CloseInvalidData   = 1007 // a text message that is not UTF-8
	ClosePolicy        = 1008 // rate limit, abuse, repeated garbage
	CloseTooLarge      = 1009 // frame over the read limit
	CloseInternal      = 1011
	CloseUnauthorized  = 4001
	CloseTokenExpired  = 4003 // the token expired and was not refreshed in time
	CloseTooSlow       = 4008 // outgoing queue overflowed
	CloseNormal        = 1000
	CloseNoStatus      = 1005
	CloseAbnormal      = 1006
	CloseUnsupportData = 1003 // binary frame from a client
)

// Recovery is what a subscribe ack says of a resume.
type Recovery uint8

const (
	// RecoveryNone: the subscribe had no since; the ack has no "recovered".
	RecoveryNone Recovery = iota
	// Recovered: every publication after since was sent.
	Recovered
	// NotRecovered: history did not reach back far enough; the latest value
	// was sent instead.
	NotRecovered
)

// KeyPosition is one entry of an ack's "positions".
type KeyPosition struct {
	Key string
	Position
}

// AppendAck appends {"op":"ack","id":N}, with "recovered" when r says so
// and "positions" when there are any (docs/PROTOCOL.md, "Ack").
func AppendAck(dst []byte, id uint64, r Recovery, positions []KeyPosition) []byte {
	return AppendAckMode(dst, id, r, ModeStream, 0, positions)
}

// AppendAckMode is AppendAck for a subscribe in mode m: a latest one's ack
// repeats "mode":"latest" and, when not 0, "max_rate"; a stream one's has
// no mode (docs/PROTOCOL.md, "Ack").
func AppendAckMode(dst []byte, id uint64, r Recovery, m Mode, maxRate float64, positions []KeyPosition) []byte {
	dst = append(dst, `{"op":"ack","id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	if m == ModeLatest {
		dst = append(dst, `,"mode":"latest"`...)
		if maxRate > 0 {
			dst = append(dst, `,"max_rate":`...)
			dst = strconv.AppendFloat(dst, maxRate, 'g', -1, 64)
		}
	}
	switch r {
	case Recovered:
		dst = append(dst, `,"recovered":true`...)
	case NotRecovered:
		dst = append(dst, `,"recovered":false`...)
	}
	if len(positions) > 0 {
		dst = append(dst, `,"positions":{`...)
		for i, kp := range positions {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '"')
			dst = append(dst, kp.Key...) // a name: nothing to escape
			dst = append(dst, `":`...)
			dst = appendPosition(dst, kp.Position)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// AppendReset appends {"op":"reset","app":..,"key":..,"seq":N,"epoch":"E",
// "reason":".."}: the client's position of the key becomes (seq, epoch),
// and its next data frame has seq+1 (docs/PROTOCOL.md, "Reset").
func AppendReset(dst []byte, app, key string, pos Position, reason string) []byte {
	dst = append(dst, `{"op":"reset","app":"`...)
	dst = append(dst, app...)
	dst = append(dst, `","key":"`...)
	dst = append(dst, key...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, pos.Seq, 10)
	dst = append(dst, `,"epoch":"`...)
	dst = append(dst, pos.Epoch...)
	dst = append(dst, `","reason":`...)
	dst = appendJSONString(dst, reason)
	return append(dst, '}')
}

// AppendPong appends {"op":"pong","id":N}.
func AppendPong(dst []byte, id uint64) []byte {
	dst = append(dst, `{"op":"pong","id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	return append(dst, '}')
}

// AppendError appends {"op":"error","id":N,"code":"...","message":"..."}.
func AppendError(dst []byte, id uint64, code, message string) []byte {
	dst = append(dst, `{"op":"error","id":`...)
	dst = strconv.AppendUint(dst, id, 10)
	dst = append(dst, `,"code":`...)
	dst = appendJSONString(dst, code)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, '}')
}

func appendJSONString(dst []byte, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil { // cannot happen for a string; keep the reply valid anyway
		return append(dst, `""`...)
	}
	return append(dst, b...)
}

// ServerMessage is any message the server sends as JSON, decoded. Clients
// (wsbench, tests, tools) use it; the server only encodes.
type ServerMessage struct {
	Op        string              `json:"op"`
	ID        uint64              `json:"id,omitempty"`
	Recovered *bool               `json:"recovered,omitempty"`
	Mode      string              `json:"mode,omitempty"`
	MaxRate   float64             `json:"max_rate,omitempty"`
	Positions map[string]Position `json:"positions,omitempty"`
	Epoch     string              `json:"epoch,omitempty"`
	Reason    string              `json:"reason,omitempty"`
	Code      string              `json:"code,omitempty"`
	Message   string              `json:"message,omitempty"`
	App       string              `json:"app,omitempty"`
	Key       string              `json:"key,omitempty"`
	Seq       uint64              `json:"seq,omitempty"`
	TS        int64               `json:"ts,omitempty"`
	Data      json.RawMessage     `json:"data,omitempty"`
	B64       []byte              `json:"b64,omitempty"`
}

// DecodeServerMessage parses one JSON server message.
func DecodeServerMessage(b []byte) (ServerMessage, error) {
	var m ServerMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return ServerMessage{}, fmt.Errorf("server message: %w", err)
	}
	switch m.Op {
	case OpAck, OpError, OpPong, OpData, OpReset:
	default:
		return ServerMessage{}, fmt.Errorf("server message: unknown op %q", m.Op)
	}
	return m, nil
}

// Publication returns a data message as a Publication.
func (m *ServerMessage) Publication() Publication {
	p := Publication{App: m.App, Key: m.Key, Seq: m.Seq, Epoch: m.Epoch, TS: m.TS}
	if m.Data != nil {
		p.Data, p.JSON = m.Data, true
	} else {
		p.Data = m.B64
	}
	return p
}
