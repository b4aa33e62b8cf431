package proto

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// benchCommands are client commands of the sizes a client sends: a ping,
// a subscribe to one key, and one to 100 keys (--max-keys-per-subscribe).
func benchCommands() []struct {
	name string
	cmd  []byte
} {
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("%q", fmt.Sprintf("s%03d", i))
	}
	return []struct {
		name string
		cmd  []byte
	}{
		{"ping", []byte(`{"op":"ping","id":4}`)},
		{"subscribe-1", []byte(`{"op":"subscribe","id":1,"app":"plant-7","keys":["001"],"format":"json"}`)},
		{"subscribe-100", []byte(`{"op":"subscribe","id":1,"app":"plant-7","keys":[` + strings.Join(keys, ",") + `],"format":"json"}`)},
	}
}

var benchValid bool

// BenchmarkCommandUTF8Check is what the UTF-8 check of a text message
// costs ClientReader per command.
func BenchmarkCommandUTF8Check(b *testing.B) {
	for _, bc := range benchCommands() {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.cmd)))
			for b.Loop() {
				benchValid = utf8.Valid(bc.cmd)
			}
		})
	}
}

// BenchmarkClientReaderFeed reads one command frame (unmasking, and the
// UTF-8 check of a text frame), for comparison with the check alone.
func BenchmarkClientReaderFeed(b *testing.B) {
	for _, bc := range benchCommands() {
		b.Run(bc.name, func(b *testing.B) {
			frame := clientFrame(true, OpcodeText, bc.cmd, testMask)
			buf := make([]byte, len(frame))
			r := ClientReader{MaxMessage: 64 << 10}
			n := 0
			count := func(m ClientMessage) bool { n += len(m.Payload); return true }
			b.SetBytes(int64(len(bc.cmd)))
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, frame)
				if err := r.Feed(buf, count); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
