package middle

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/proto"
)

func TestLocalSubscriptions(t *testing.T) {
	ctx := context.Background()
	n := newTestNode(t, Config{})
	list := func() string {
		var out []string
		n.LocalSubscriptions(func(app, key string, ids []uint64) {
			sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
			out = append(out, fmt.Sprintf("%s.%s:%v", app, key, ids))
		})
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	if got := list(); got != "" {
		t.Fatalf("fresh node: %q", got)
	}
	s1, s2 := &recorder{id: 1}, &recorder{id: 2}
	subscribe(t, n, s1, SubscribeRequest{App: "a", Keys: []string{"k1", "k2"}})
	subscribe(t, n, s2, SubscribeRequest{App: "a", Keys: []string{"k1"}, Format: proto.FormatBinary})
	subscribe(t, n, s2, SubscribeRequest{App: "b", Keys: []string{"k1"}})
	if got, want := list(), "a.k1:[1 2] a.k2:[1] b.k1:[2]"; got != want {
		t.Fatalf("LocalSubscriptions: %q, want %q", got, want)
	}
	n.Unsubscribe(ctx, s1, "a", []string{"k1", "k2"})
	if got, want := list(), "a.k1:[2] b.k1:[2]"; got != want {
		t.Fatalf("after unsubscribing: %q, want %q", got, want)
	}
}

// TestResync plays a bus that missed publications: the store moved on
// without this node, and Resync catches the subscribers up.
func TestResync(t *testing.T) {
	ctx := context.Background()
	store, clock := newClockedStore(8, time.Minute)
	n := newTestNode(t, Config{Store: store})
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"busy", "quiet", "still"}})
	publishValues(t, n, "a", "busy", 1, 2)
	publishValues(t, n, "a", "quiet", 1, 1)
	publishValues(t, n, "a", "still", 1, 1)

	missed := func(key string, count int) {
		for i := 0; i < count; i++ {
			p := jsonPub("a", key, 0)
			if err := store.Append(ctx, &p); err != nil {
				t.Fatal(err)
			}
		}
	}
	missed("busy", 3)   // 3..5, retained
	missed("quiet", 20) // 2..21, only 14..21 retained
	n.Resync(ctx)
	wantSeqs(t, "busy", s.seqs(t, "busy"), seqRange(1, 5))
	wantSeqs(t, "quiet", s.seqs(t, "quiet"), append([]uint64{1}, seqRange(14, 21)...))
	wantSeqs(t, "still", s.seqs(t, "still"), []uint64{1})

	// Up to date: nothing more.
	before := len(s.snapshot())
	n.Resync(ctx)
	if got := len(s.snapshot()); got != before {
		t.Fatalf("resync of an up-to-date node sent %d frames", got-before)
	}

	// An outage longer than the history TTL: the history is gone, but the
	// latest value outlives it and must still reach the subscribers.
	missed("quiet", 2) // 22..23
	clock.advance(2 * time.Minute)
	n.Resync(ctx)
	if got := s.seqs(t, "quiet"); got[len(got)-1] != 23 {
		t.Fatalf("after an outage past the TTL: quiet got %s, want it to end with the latest, 23", shortSeqs(got))
	}
	publishValues(t, n, "a", "quiet", 24, 24)
	wantSeqs(t, "quiet", s.seqs(t, "quiet"), append(append([]uint64{1}, seqRange(14, 21)...), 23, 24))
}
