package chaos

import (
	"strings"
	"testing"
	"time"
)

// ev is one frame fed to a Stream in the checker's tests.
type ev struct {
	op     string // ack, resume (ack of a subscribe with since), reset, data
	seq    uint64
	epoch  string
	c      int64
	reason string
	at     time.Duration // after t0
}

func TestStreamCheck(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	window := Policy{AllowResets: true, From: t0, Until: t0.Add(5 * time.Second)}
	noLoss := Policy{}
	data := func(seq uint64, c int64) ev { return ev{op: "data", seq: seq, c: c} }
	ack := func(seq uint64, e string) ev { return ev{op: "ack", seq: seq, epoch: e} }
	reset := func(e, reason string, at time.Duration) ev {
		return ev{op: "reset", epoch: e, reason: reason, at: at}
	}
	tests := []struct {
		name      string
		frames    []ev
		confirmed []int64
		policy    Policy
		want      Result // counts compared; Violations: substrings expected (nil: none)
	}{
		{"clean", []ev{ack(0, "E"), data(1, 1), data(2, 2), data(3, 3)}, []int64{1, 2, 3}, noLoss,
			Result{Delivered: 3}},
		{"latest value after ack", []ev{ack(3, "E"), data(3, 3), data(4, 4)}, []int64{3, 4}, noLoss,
			Result{Delivered: 2}},
		{"unconfirmed values may come", []ev{ack(0, "E"), data(1, 1), data(2, 2), data(3, 3)}, []int64{1, 3}, noLoss,
			Result{Delivered: 3}},
		{"resume keeps the client's position", []ev{ack(0, "E"), data(1, 1), data(2, 2), {op: "resume", seq: 9, epoch: "E"}, data(3, 3)},
			[]int64{1, 2, 3}, noLoss, Result{Delivered: 3}},
		{"gap", []ev{ack(0, "E"), data(1, 1), data(3, 3)}, []int64{1, 2, 3}, noLoss,
			Result{Delivered: 2, Lost: 1, Violations: []string{"seq gap: data seq 3", "never delivered nor covered by a reset: 2 "}}},
		{"missing at the end", []ev{ack(0, "E"), data(1, 1)}, []int64{1, 2, 3}, noLoss,
			Result{Delivered: 1, Lost: 2, Violations: []string{"counters never delivered nor covered by a reset: 2-3"}}},
		{"duplicate", []ev{ack(0, "E"), data(1, 1), data(2, 2), data(3, 2)}, []int64{1, 2}, noLoss,
			Result{Delivered: 3, Duplicated: 1, Violations: []string{"duplicate: counter 2"}}},
		{"reorder", []ev{ack(0, "E"), data(1, 1), data(2, 3), data(3, 2)}, []int64{1, 2, 3}, noLoss,
			Result{Delivered: 3, Reordered: 1, Violations: []string{"reorder: counter 2"}}},
		{"silent epoch change", []ev{ack(0, "E"), data(1, 1), data(2, 2), data(1, 3)}, []int64{1, 2, 3}, noLoss,
			Result{Delivered: 3, Violations: []string{"seq went back"}}},
		{"legitimate reset", []ev{ack(0, "E"), data(1, 1), data(2, 2), reset("F", "epoch", time.Second), data(1, 5)},
			[]int64{1, 2, 3, 4, 5}, window, Result{Delivered: 3, Lost: 2, Resets: 1}},
		{"reset under a no-loss fault", []ev{ack(0, "E"), data(1, 1), reset("F", "gap", time.Second), data(1, 3)},
			[]int64{1, 2, 3}, noLoss, Result{Delivered: 2, Lost: 1, Resets: 1,
				Violations: []string{`reason "gap"`, "never delivered nor covered by a reset: 2 "}}},
		{"reset outside the fault", []ev{ack(0, "E"), data(1, 1), reset("F", "epoch", time.Minute), data(1, 2)},
			[]int64{1, 2}, window, Result{Delivered: 2, Resets: 1, Violations: []string{"no data was destroyed then"}}},
		{"reset with an unknown reason", []ev{ack(0, "E"), data(1, 1), reset("F", "whim", time.Second), data(1, 2)},
			[]int64{1, 2}, window, Result{Delivered: 2, Resets: 1, Violations: []string{`reason "whim"`}}},
		{"data after a reset must follow it", []ev{ack(0, "E"), data(1, 1), reset("F", "epoch", time.Second), data(7, 2)},
			[]int64{1, 2}, window, Result{Delivered: 2, Resets: 1, Violations: []string{"seq gap: data seq 7"}}},
		{"data before the ack", []ev{data(1, 1)}, []int64{1}, noLoss,
			Result{Delivered: 1, Violations: []string{"before any ack"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewStream()
			for _, f := range tt.frames {
				switch f.op {
				case "ack", "resume":
					s.Ack(Position{Seq: f.seq, Epoch: f.epoch}, f.op == "resume")
				case "reset":
					s.Reset(Position{Seq: f.seq, Epoch: f.epoch}, f.reason, t0.Add(f.at))
				case "data":
					s.Data(f.seq, f.c, t0.Add(f.at))
				}
			}
			got := s.Check(tt.confirmed, tt.policy)
			w := tt.want
			if got.Published != len(tt.confirmed) || got.Delivered != w.Delivered || got.Lost != w.Lost ||
				got.Duplicated != w.Duplicated || got.Reordered != w.Reordered || got.Resets != w.Resets {
				t.Errorf("counts: got %+v, want %+v", got, w)
			}
			if len(got.Violations) != len(w.Violations) {
				t.Fatalf("violations: got %q, want ones containing %q", got.Violations, w.Violations)
			}
			for i, sub := range w.Violations {
				if !strings.Contains(got.Violations[i]+" ", sub) {
					t.Errorf("violation %d: %q does not contain %q", i, got.Violations[i], sub)
				}
			}
		})
	}
}

func TestStreamRecovery(t *testing.T) {
	t0 := time.Now()
	s := NewStream()
	s.Ack(Position{Epoch: "E"}, false)
	s.Data(1, 1, t0)
	s.Mark(3)
	s.Data(2, 2, t0.Add(time.Second))
	s.Data(3, 3, t0.Add(1500*time.Millisecond))
	s.Data(4, 4, t0.Add(2*time.Second))
	got := s.Check([]int64{1, 2, 3, 4}, Policy{FaultEnd: t0.Add(time.Second)})
	if got.Recovery != 500*time.Millisecond || len(got.Violations) > 0 {
		t.Errorf("recovery %s, violations %q; want 500ms, none", got.Recovery, got.Violations)
	}
}

func TestRanges(t *testing.T) {
	if got := ranges([]int64{1, 2, 3, 7, 9, 10}); got != "1-3,7,9-10" {
		t.Errorf("ranges: %q", got)
	}
}
