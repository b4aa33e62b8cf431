package middle

import (
	"sync"
	"testing"

	"github.com/wspush/wspush/proto"
)

// Delivery modes in the node (docs/PROTOCOL.md, "Delivery modes"): a
// latest resume replays no history, a ModeSubscriber hears of every key's
// mode before the ack, and every data and reset frame names its stream.

// modeRecorder is a recorder that is a ModeSubscriber: it notes, in the
// order of its frames, each SetMode.
type modeRecorder struct {
	recorder
	mu    sync.Mutex
	modes []string // "key=mode/rate", before the frame count noted
	at    []int
}

func (r *modeRecorder) SetMode(ref *proto.StreamRef, mode proto.Mode, rate float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.modes = append(r.modes, ref.Key+"="+mode.String())
	r.at = append(r.at, len(r.snapshot()))
}

func TestLatestResumeReplaysNoHistory(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 10)
	r := newRecorder()
	subscribe(t, n, r, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k"}})
	ms := r.messages(t)
	epoch := ms[0].msg.Positions["k"].Epoch
	r.take()

	for _, tc := range []struct {
		name  string
		since proto.Position
		rec   proto.Recovery
		want  []string
	}{
		{"behind", proto.Position{Seq: 3, Epoch: epoch}, proto.Recovered, []string{"d10"}},
		{"bare", proto.Position{Seq: 3}, proto.Recovered, []string{"d10"}},
		{"up to date", proto.Position{Seq: 10, Epoch: epoch}, proto.Recovered, nil},
		{"ahead", proto.Position{Seq: 12, Epoch: epoch}, proto.NotRecovered, []string{"r9/gap", "d10"}},
		{"other epoch", proto.Position{Seq: 3, Epoch: "other"}, proto.NotRecovered, []string{"r9/epoch", "d10"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newRecorder()
			subscribe(t, n, s, SubscribeRequest{ID: 2, App: "a", Keys: []string{"k"}, Mode: proto.ModeLatest, MaxRate: 2,
				Since: map[string]proto.Position{"k": tc.since}})
			ms := s.messages(t)
			wantAck(t, ms[0], 2, tc.rec)
			if ms[0].msg.Mode != "latest" || ms[0].msg.MaxRate != 2 {
				t.Fatalf("ack %+v", ms[0].msg)
			}
			got := events(t, s, "k")
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestModeSubscriberHearsTheModeBeforeTheAck(t *testing.T) {
	n := newTestNode(t, Config{})
	publishValues(t, n, "a", "k", 1, 3)
	r := &modeRecorder{recorder: recorder{id: recorderIDs.Add(1)}}
	subscribe(t, n, r, SubscribeRequest{ID: 1, App: "a", Keys: []string{"k", "j"}, Mode: proto.ModeLatest})
	subscribe(t, n, r, SubscribeRequest{ID: 2, App: "a", Keys: []string{"k"}})
	r.mu.Lock()
	modes, at := r.modes, r.at
	r.mu.Unlock()
	if len(modes) != 3 || modes[0] != "j=latest" || modes[1] != "k=latest" || modes[2] != "k=stream" {
		t.Fatalf("SetMode calls %v", modes)
	}
	// Before each subscribe's ack: nothing, then the first ack and the
	// latest value of k.
	if at[0] != 0 || at[1] != 0 || at[2] != 2 {
		t.Fatalf("SetMode after %v frames", at)
	}
	publishValues(t, n, "a", "k", 4, 4)
	for _, f := range r.snapshot() {
		m := decode(t, f)
		if (m.data || m.msg.Op == proto.OpReset) && (f.Stream == nil || f.Stream.App != "a" || f.Stream.Key != "k") {
			t.Fatalf("%v: Stream %+v", m, f.Stream)
		}
		if m.msg.Op == proto.OpAck && f.Stream != nil {
			t.Fatalf("ack with a Stream")
		}
	}
}
