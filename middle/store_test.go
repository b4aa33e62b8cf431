package middle

import (
	"context"
	"testing"

	"github.com/wspush/wspush/proto"
)

// testStoreAppendBatch checks what every Store's AppendBatch must do: with
// one writer, each key's seqs continue from its count, one by one in slice
// order, however the keys of the batch interleave, and the history holds
// every publication under its seq. s must keep at least 8 per key.
func testStoreAppendBatch(t *testing.T, s Store) {
	t.Helper()
	ctx := context.Background()
	if n, err := s.AppendBatch(ctx, nil); n != 0 || err != nil {
		t.Fatalf("empty batch: %d, %v; want 0, nil", n, err)
	}
	first := jsonPub("app", "a", 0)
	if err := s.Append(ctx, &first); err != nil {
		t.Fatal(err)
	}
	keys := []string{"a", "b", "b", "a", "b", "a", "a"}
	pubs := make([]proto.Publication, len(keys))
	for i, k := range keys {
		pubs[i] = jsonPub("app", k, i+1)
		pubs[i].TS = int64(1000 + i)
	}
	n, err := s.AppendBatch(ctx, pubs)
	if n != len(pubs) || err != nil {
		t.Fatalf("AppendBatch: %d, %v; want %d, nil", n, err, len(pubs))
	}
	got := make([]uint64, len(pubs))
	for i := range pubs {
		got[i] = pubs[i].Seq
	}
	wantSeqs(t, "batch seqs in slice order", got, []uint64{2, 1, 2, 3, 3, 4, 5})

	for _, k := range []string{"a", "b"} {
		hist, complete, err := s.History(ctx, "app", k, 0)
		if err != nil || !complete {
			t.Fatalf("history of %s: complete=%v, %v", k, complete, err)
		}
		var want []proto.Publication
		if k == "a" {
			want = append(want, first)
		}
		for i := range pubs {
			if pubs[i].Key == k {
				want = append(want, pubs[i])
			}
		}
		if len(hist) != len(want) {
			t.Fatalf("history of %s: %d publications, want %d", k, len(hist), len(want))
		}
		for i := range want {
			h, w := hist[i], want[i]
			if h.Seq != w.Seq || string(h.Data) != string(w.Data) || h.TS != w.TS || h.JSON != w.JSON {
				t.Errorf("history of %s, entry %d: %+v, want %+v", k, i, h, w)
			}
		}
	}
}
