package userservice

import (
	"slices"
	"testing"
)

// A writev may end in the middle of a frame: what is left starts there.
func TestConsumePartialWrites(t *testing.T) {
	bufs := func() [][]byte { return [][]byte{[]byte("abc"), []byte("de"), []byte("fghi")} }
	for _, tc := range []struct {
		n    int
		want []string
	}{
		{0, []string{"abc", "de", "fghi"}},
		{2, []string{"c", "de", "fghi"}},
		{3, []string{"de", "fghi"}},
		{4, []string{"e", "fghi"}},
		{6, []string{"ghi"}},
		{9, nil},
	} {
		var got []string
		for _, b := range consume(bufs(), tc.n) {
			got = append(got, string(b))
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("consume %d: %q, want %q", tc.n, got, tc.want)
		}
	}
}

// Once stopped, the pool takes no session: its caller starts the
// connection's own writer.
func TestWriterPoolRefusesAfterStop(t *testing.T) {
	p := newWriterPool(2, 0)
	p.stop()
	if p.push(&session{}) {
		t.Fatal("push accepted after stop")
	}
	if n := p.waiting(); n != 0 {
		t.Fatalf("%d waiting", n)
	}
}
