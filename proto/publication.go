package proto

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Publication is one value of (App, Key). Seq and Epoch are assigned by the
// sequencer (zero before that); TS is Unix milliseconds. When JSON is true,
// Data is one valid JSON value and is sent as "data"; otherwise it is sent
// base64-encoded as "b64" (or with flags bit0 clear in a binary frame).
// ID, when set, is the publisher's idempotency id: it is sequenced at most
// once within the idempotency window. Neither Epoch nor ID is part of a
// data frame.
type Publication struct {
	App   string
	Key   string
	Seq   uint64
	Epoch string
	TS    int64
	Data  []byte
	JSON  bool
	ID    string
}

// Position is where p stands in its key's stream.
func (p *Publication) Position() Position { return Position{Seq: p.Seq, Epoch: p.Epoch} }

// BinaryVersion is the version byte of binary data frames.
const BinaryVersion = 1

// binaryFlagJSON is bit0 of the flags byte: the payload is JSON.
const binaryFlagJSON = 1

// AppendDataJSON appends p as a JSON data message:
//
//	{"op":"data","app":"a","key":"k","seq":1,"ts":2,"data":{...}}
//
// App and key are valid names (no characters that need escaping); Data is
// copied as is when p.JSON, so it must be valid JSON.
func AppendDataJSON(dst []byte, p *Publication) []byte {
	dst = append(dst, `{"op":"data","app":"`...)
	dst = append(dst, p.App...)
	dst = append(dst, `","key":"`...)
	dst = append(dst, p.Key...)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, p.Seq, 10)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, p.TS, 10)
	if p.JSON {
		dst = append(dst, `,"data":`...)
		dst = append(dst, p.Data...)
	} else {
		dst = append(dst, `,"b64":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, p.Data)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

func jsonSizeHint(p *Publication) int {
	// 53 bytes of fixed text (b64 form, the longer one) and up to 20 each
	// for seq and ts.
	n := 53 + 20 + 20 + len(p.App) + len(p.Key)
	if p.JSON {
		return n + len(p.Data)
	}
	return n + base64.StdEncoding.EncodedLen(len(p.Data))
}

// BinaryLen is the length of p's binary data frame payload.
func BinaryLen(p *Publication) int {
	return 2 + 2 + len(p.App) + 2 + len(p.Key) + 8 + 8 + len(p.Data)
}

// AppendDataBinary appends p in the binary layout, all integers big-endian:
//
//	u8 version=1, u8 flags (bit0: JSON), u16 len(app), app, u16 len(key), key,
//	u64 seq, i64 ts, payload to the end.
func AppendDataBinary(dst []byte, p *Publication) []byte {
	var flags byte
	if p.JSON {
		flags |= binaryFlagJSON
	}
	dst = append(dst, BinaryVersion, flags)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p.App)))
	dst = append(dst, p.App...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(p.Key)))
	dst = append(dst, p.Key...)
	dst = binary.BigEndian.AppendUint64(dst, p.Seq)
	dst = binary.BigEndian.AppendUint64(dst, uint64(p.TS))
	return append(dst, p.Data...)
}

// EncodeDataFrame encodes p once in format f as a complete WebSocket frame
// (text for JSON, binary for binary), in a single allocation.
func EncodeDataFrame(p *Publication, f Format) *Frame {
	var fb frameBuilder
	var opcode byte
	if f == FormatBinary {
		fb = newFrameBuilder(BinaryLen(p))
		fb.buf = AppendDataBinary(fb.buf, p)
		opcode = OpcodeBinary
	} else {
		fb = newFrameBuilder(jsonSizeHint(p))
		fb.buf = AppendDataJSON(fb.buf, p)
		opcode = OpcodeText
	}
	return &Frame{Seq: p.Seq, Bytes: fb.finish(opcode)}
}

// Errors of DecodeDataBinary.
var (
	ErrShortFrame = errors.New("binary frame too short")
	ErrVersion    = errors.New("binary frame: unknown version")
)

// BinaryData is a binary data frame payload read in place: App, Key and
// Data alias the frame, so reading one allocates nothing (what a client
// holding many connections needs on its hot path).
type BinaryData struct {
	JSON     bool
	App, Key []byte
	Seq      uint64
	TS       int64 // Unix ms
	Data     []byte
}

// ParseDataBinary reads a binary data frame payload in place.
func ParseDataBinary(b []byte) (BinaryData, error) {
	var v BinaryData
	if len(b) < 2+2 {
		return v, ErrShortFrame
	}
	if b[0] != BinaryVersion {
		return v, fmt.Errorf("%w %d", ErrVersion, b[0])
	}
	v.JSON = b[1]&binaryFlagJSON != 0
	b = b[2:]
	var ok bool
	if v.App, b, ok = readName(b); !ok {
		return BinaryData{}, fmt.Errorf("%w: app", ErrShortFrame)
	}
	if v.Key, b, ok = readName(b); !ok {
		return BinaryData{}, fmt.Errorf("%w: key", ErrShortFrame)
	}
	if len(b) < 16 {
		return BinaryData{}, fmt.Errorf("%w: seq and ts", ErrShortFrame)
	}
	v.Seq = binary.BigEndian.Uint64(b)
	v.TS = int64(binary.BigEndian.Uint64(b[8:]))
	v.Data = b[16:]
	return v, nil
}

// DecodeDataBinary parses a binary data frame payload. App and Key are
// copied (strings); Data aliases b.
func DecodeDataBinary(b []byte) (Publication, error) {
	v, err := ParseDataBinary(b)
	if err != nil {
		return Publication{}, err
	}
	return Publication{App: string(v.App), Key: string(v.Key), Seq: v.Seq, TS: v.TS, JSON: v.JSON, Data: v.Data}, nil
}

func readName(b []byte) (name, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < n {
		return nil, nil, false
	}
	return b[:n], b[n:], true
}
