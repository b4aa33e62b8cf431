package proto

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"
)

// Position names one publication of a key's stream: its seq within an
// epoch (docs/PROTOCOL.md, "Positions"). A key never published
// is at seq 0 of its epoch.
type Position struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

// UnmarshalJSON accepts {"seq":N,"epoch":"E"} and, for resumes written
// before epochs existed, a bare seq N, which means "in the current epoch"
// (Epoch "").
func (p *Position) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] != '{' {
		seq, err := strconv.ParseUint(string(b), 10, 64)
		if err != nil {
			return fmt.Errorf("position %s: want a seq or {\"seq\":N,\"epoch\":\"E\"}", b)
		}
		*p = Position{Seq: seq}
		return nil
	}
	type plain Position // without this method
	var v plain
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("position: %w", err)
	}
	*p = Position(v)
	return nil
}

// appendPosition appends {"seq":N,"epoch":"E"}; epochs are names, which
// need no escaping.
func appendPosition(dst []byte, p Position) []byte {
	dst = append(dst, `{"seq":`...)
	dst = strconv.AppendUint(dst, p.Seq, 10)
	dst = append(dst, `,"epoch":"`...)
	dst = append(dst, p.Epoch...)
	return append(dst, `"}`...)
}

// ValidateEpoch reports whether s can be an epoch: the same alphabet and
// length as names, so that it needs no escaping anywhere.
func ValidateEpoch(s string) error {
	if err := ValidateName(s); err != nil {
		return fmt.Errorf("epoch %q: %w", s, err)
	}
	return nil
}

// epochLen is the length of the epochs NewEpoch makes: 12 characters of 62
// are 71 bits, so two epochs of one key never collide.
const epochLen = 12

// NewEpoch returns a fresh random epoch.
func NewEpoch() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, epochLen)
	for i := range b {
		// 62 does not divide 256: drop the bytes that would favour the
		// first letters.
		for {
			var r [1]byte
			_, _ = rand.Read(r[:]) // never fails (crypto/rand)
			if r[0] < 248 {
				b[i] = alphabet[r[0]%62]
				break
			}
		}
	}
	return string(b)
}

// MaxIdempotencyIDLen is the longest idempotency id (an AMQP message-id or
// an HTTP item's "id"), in bytes.
const MaxIdempotencyIDLen = 128

// ValidateIdempotencyID reports whether s can be an idempotency id: 1 to
// 128 bytes of printable ASCII without spaces.
func ValidateIdempotencyID(s string) error {
	if len(s) == 0 {
		return fmt.Errorf("idempotency id: empty")
	}
	if len(s) > MaxIdempotencyIDLen {
		return fmt.Errorf("idempotency id: longer than %d bytes", MaxIdempotencyIDLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("idempotency id: byte %#x at %d: want printable ASCII without spaces", c, i)
		}
	}
	return nil
}
