package app_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// TestSecurityStoreBoundedKeys: a publisher of ever new keys over HTTP
// (issue 9: 300,000 keys grew a node by 120 MiB, never freed) makes the
// embedded store evict the least recently published unsubscribed keys: the
// key count stays at --max-keys, a subscriber of its own key keeps
// receiving every value in one epoch meanwhile, and a client resuming an
// evicted key from its old position gets a reset (epoch).
func TestSecurityStoreBoundedKeys(t *testing.T) {
	const maxKeys, batches, perBatch = 50, 20, 100
	base, _ := startApp(t, app.Config{Middle: middle.Config{MaxKeys: maxKeys}})

	good := wstest.Dial(t, wstest.WSURL(base), nil)
	goodPos := good.Subscribe("plant", "json", nil, "good").Positions["good"]

	// A key published, watched and left before the flood.
	mustPublish(t, base, "plant", "old", `1`)
	old := wstest.Dial(t, wstest.WSURL(base), nil)
	oldPos := old.Subscribe("plant", "json", nil, "old").Positions["old"]
	old.Data(1)
	old.Unsubscribe("plant", "old")

	for b := range batches {
		items := make([]string, perBatch)
		for i := range items {
			items[i] = fmt.Sprintf(`{"app":"spam","key":"k%d","data":%d}`, b*perBatch+i, i)
		}
		if code, out := publish(t, base, `{"items":[`+strings.Join(items, ",")+`]}`); code != http.StatusOK {
			t.Fatalf("batch %d of new keys: %d %v", b, code, out)
		}
		mustPublish(t, base, "plant", "good", fmt.Sprint(b))
		m := good.Data(1)[0]
		if m.Seq != uint64(b+1) || string(m.Data) != fmt.Sprint(b) {
			t.Fatalf("good client, value %d: got seq %d data %s", b, m.Seq, m.Data)
		}
		if keys := metricValue(t, base, "wspush_store_keys"); keys > maxKeys {
			t.Fatalf("after batch %d the store holds %v keys, over --max-keys %d", b, keys, maxKeys)
		}
	}
	if keys := metricValue(t, base, "wspush_store_keys"); keys != maxKeys {
		t.Fatalf("store holds %v keys, want %d", keys, maxKeys)
	}
	// Every spam key past the room left was evicted, and "old" with them.
	if ev, want := metricValue(t, base, "wspush_store_evictions_total"), float64(batches*perBatch+2-maxKeys); ev != want {
		t.Fatalf("evictions %v, want %v", ev, want)
	}

	// The subscribed key was never evicted: its stream goes on in its
	// epoch, with no reset.
	again := wstest.Dial(t, wstest.WSURL(base), nil)
	ack := again.Subscribe("plant", "json", map[string]proto.Position{"good": {Seq: 1, Epoch: goodPos.Epoch}}, "good")
	if ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("resume of the subscribed key: %+v, want recovered", ack)
	}
	if got := wstest.Seqs(again.Data(batches - 1)); got[0] != 2 || got[len(got)-1] != batches {
		t.Fatalf("resumed seqs %v, want 2..%d", got, batches)
	}

	// The evicted key starts over in a new epoch: resuming from before
	// gets a reset, never a replay of another stream.
	back := wstest.Dial(t, wstest.WSURL(base), nil)
	ack = back.Subscribe("plant", "json", map[string]proto.Position{"old": oldPos}, "old")
	if ack.Recovered == nil || *ack.Recovered || ack.Positions["old"].Epoch == oldPos.Epoch {
		t.Fatalf("resume of the evicted key from %+v: %+v, want not recovered in a new epoch", oldPos, ack)
	}
	if m := back.Next(); m.Op != proto.OpReset || m.Key != "old" || m.Reason != proto.ResetEpoch {
		t.Fatalf("resume of the evicted key: got %+v, want a reset (epoch)", m)
	}
}

// TestSecurityStoreFullOfSubscribedKeys: when every key the store holds is
// subscribed, a new key is refused with 503 (code "limit") rather than
// held beyond --max-keys, and the subscribers keep receiving.
func TestSecurityStoreFullOfSubscribedKeys(t *testing.T) {
	base, _ := startApp(t, app.Config{Middle: middle.Config{MaxKeys: 2}})
	good := wstest.Dial(t, wstest.WSURL(base), nil)
	good.Subscribe("plant", "json", nil, "a", "b")

	code, out := publish(t, base, `{"app":"plant","key":"c","data":1}`)
	if code != http.StatusServiceUnavailable || out["error"] != proto.CodeLimit {
		t.Fatalf("publish to a third key: %d %v, want 503 %q", code, out, proto.CodeLimit)
	}
	mustPublish(t, base, "plant", "a", `1`)
	mustPublish(t, base, "plant", "b", `2`)
	if got := good.Data(2); got[0].Key != "a" || got[1].Key != "b" {
		t.Fatalf("good client got %+v", got)
	}
	if keys := metricValue(t, base, "wspush_store_keys"); keys != 2 {
		t.Fatalf("store holds %v keys, want 2", keys)
	}

	// Once a key has no subscriber left, it makes room.
	good.Unsubscribe("plant", "b")
	mustPublish(t, base, "plant", "c", `3`)
	mustPublish(t, base, "plant", "a", `4`)
	if m := good.Data(1)[0]; m.Key != "a" || m.Seq != 2 {
		t.Fatalf("good client got %+v, want a seq 2", m)
	}
}
