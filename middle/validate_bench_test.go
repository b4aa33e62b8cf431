package middle

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/wspush/wspush/proto"
)

// validatePayload is a JSON object of about size bytes: readings with string
// fields, the shape of a typical publication.
func validatePayload(size int) []byte {
	var b strings.Builder
	b.WriteString(`{"readings":[`)
	for i := 0; b.Len() < size-40; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"sensor":"s%03d","unit":"°C","value":%d.5}`, i, 20+i%7)
	}
	b.WriteString(`],"ok":true}`)
	return []byte(b.String())
}

// BenchmarkValidate is the per-publication cost of Node.Validate (names,
// size, JSON and UTF-8 of the payload), by payload size.
func BenchmarkValidate(b *testing.B) {
	n := newTestNode(b, Config{MaxPayload: 1 << 20})
	for _, size := range []int{64, 1 << 10, 16 << 10} {
		p := proto.Publication{App: "plant-7", Key: "001", Data: validatePayload(size), JSON: true}
		b.Run(fmt.Sprintf("json-%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(p.Data)))
			for b.Loop() {
				if err := n.Validate(&p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPayloadChecks splits Validate's payload checks: json.Valid, and
// utf8.Valid, which is what refusing invalid UTF-8 adds per publication.
func BenchmarkPayloadChecks(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10} {
		data := validatePayload(size)
		b.Run(fmt.Sprintf("json.Valid-%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if !json.Valid(data) {
					b.Fatal("invalid")
				}
			}
		})
		b.Run(fmt.Sprintf("utf8.Valid-%dB", size), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if !utf8.Valid(data) {
					b.Fatal("invalid")
				}
			}
		})
	}
}
