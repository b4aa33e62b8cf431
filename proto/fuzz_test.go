package proto

import (
	"bytes"
	"errors"
	"testing"
)

// Seed corpora live in testdata/fuzz/<FuzzName>/.

func FuzzDecodeCommand(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			var ce *CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T is not a *CommandError: %v", err, err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded command %+v does not validate: %v", c, err)
		}
		enc, err := EncodeCommand(&c)
		if err != nil {
			t.Fatalf("EncodeCommand(%+v): %v", c, err)
		}
		c2, err := DecodeCommand(enc)
		if err != nil {
			t.Fatalf("re-decoding %s (from %q): %v", enc, b, err)
		}
		if !commandsEqual(c, c2) {
			t.Fatalf("round trip of %q via %s: %+v, then %+v", b, enc, c, c2)
		}
	})
}

// commandsEqual compares commands as the wire sees them: a nil and an empty
// Keys or Since are the same (both are omitted when encoded).
func commandsEqual(a, b Command) bool {
	if a.Op != b.Op || a.ID != b.ID || a.App != b.App || a.Format != b.Format || a.Token != b.Token ||
		a.Mode != b.Mode || a.MaxRate != b.MaxRate ||
		len(a.Keys) != len(b.Keys) || len(a.Since) != len(b.Since) {
		return false
	}
	for i := range a.Keys {
		if a.Keys[i] != b.Keys[i] {
			return false
		}
	}
	for k, v := range a.Since {
		if w, ok := b.Since[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func FuzzDecodeDataBinary(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeDataBinary(b)
		if err != nil {
			if !errors.Is(err, ErrShortFrame) && !errors.Is(err, ErrVersion) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if BinaryLen(&p) != len(b) {
			t.Fatalf("BinaryLen %d of a %d-byte frame", BinaryLen(&p), len(b))
		}
		// Only bit0 of the flags byte means anything, and the encoder
		// writes only that bit.
		want := append([]byte(nil), b...)
		want[1] &= binaryFlagJSON
		got := AppendDataBinary(nil, &p)
		if !bytes.Equal(got, want) {
			t.Fatalf("re-encoding of\n% x\ngave\n% x", b, got)
		}
		if b[1] <= 1 && !bytes.Equal(got, b) {
			t.Fatalf("flags %d: re-encoding differs", b[1])
		}
	})
}

func FuzzDecodeServerMessage(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeServerMessage(b)
		if err != nil {
			return
		}
		switch m.Op {
		case OpAck, OpError, OpPong, OpData, OpReset:
		default:
			t.Fatalf("decoded unknown op %q", m.Op)
		}
		p := m.Publication()
		if m.Op != OpData || ValidateName(p.App) != nil || ValidateName(p.Key) != nil {
			return
		}
		// A data message with valid names survives being re-encoded.
		enc := AppendDataJSON(nil, &p)
		m2, err := DecodeServerMessage(enc)
		if err != nil {
			t.Fatalf("re-encoded %q as %s: %v", b, enc, err)
		}
		p2 := m2.Publication()
		if p2.App != p.App || p2.Key != p.Key || p2.Seq != p.Seq || p2.TS != p.TS || p2.JSON != p.JSON || !bytes.Equal(p2.Data, p.Data) {
			t.Fatalf("%q: publication %+v, re-encoded as %s, decoded to %+v", b, p, enc, p2)
		}
	})
}

func FuzzParseRoutingKey(f *testing.F) {
	f.Fuzz(func(t *testing.T, rk string) {
		app, key, err := ParseRoutingKey(rk)
		if err != nil {
			if app != "" || key != "" {
				t.Fatalf("%q: error %v with %q, %q", rk, err, app, key)
			}
			return
		}
		if err := ValidateName(app); err != nil {
			t.Fatalf("%q: app %q: %v", rk, app, err)
		}
		if err := ValidateName(key); err != nil {
			t.Fatalf("%q: key %q: %v", rk, key, err)
		}
		if got := RoutingKey(app, key); got != rk {
			t.Fatalf("RoutingKey(%q, %q) = %q, want %q", app, key, got, rk)
		}
	})
}
