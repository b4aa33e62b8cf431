package bench

import (
	"bytes"
	"strconv"
)

// sendTimeField is the field wsbench puts in every payload it publishes:
// {"t":<Unix nanoseconds at send>}.
const sendTimeField = `"t"`

// appendPayload appends wsbench's payload for a value sent at unixNano.
func appendPayload(dst []byte, unixNano int64) []byte {
	dst = append(dst, `{"t":`...)
	dst = strconv.AppendInt(dst, unixNano, 10)
	return append(dst, '}')
}

// parseSendTime reads t from a payload made by appendPayload, tolerating
// whitespace that a server may add; ok is false for any other payload
// (a value wsbench did not publish).
func parseSendTime(p []byte) (t int64, ok bool) {
	i := bytes.Index(p, []byte(sendTimeField))
	if i < 0 {
		return 0, false
	}
	p = skipSpace(p[i+len(sendTimeField):])
	if len(p) == 0 || p[0] != ':' {
		return 0, false
	}
	p = skipSpace(p[1:])
	n := 0
	for ; n < len(p) && p[n] >= '0' && p[n] <= '9'; n++ {
		if n == 19 { // more digits than an int64 holds
			return 0, false
		}
		t = t*10 + int64(p[n]-'0')
	}
	return t, n > 0 && t >= 0
}

func skipSpace(p []byte) []byte {
	for len(p) > 0 && (p[0] == ' ' || p[0] == '\t' || p[0] == '\n' || p[0] == '\r') {
		p = p[1:]
	}
	return p
}

// keyIndex reads the index of a key named by keyName (prefix and a
// 1-based decimal number); ok is false for any other key.
func keyIndex(key []byte, prefix string) (idx int, ok bool) {
	if len(key) <= len(prefix) || string(key[:len(prefix)]) != prefix {
		return 0, false
	}
	n := 0
	for _, c := range key[len(prefix):] {
		if c < '0' || c > '9' || n > 1e8 {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	if n == 0 {
		return 0, false
	}
	return n - 1, true
}

// keyName is the key of index idx: prefix and idx+1 in at least six
// digits (s000001, s000002, ...).
func keyName(prefix string, idx int) string {
	s := strconv.Itoa(idx + 1)
	for len(s) < 6 {
		s = "0" + s
	}
	return prefix + s
}
