package chaos

import (
	"fmt"
	"strings"
	"time"
)

// maxViolations is how many violations a stream describes; later ones are
// only counted.
const maxViolations = 8

// Policy is what a run tolerates and when its fault happened.
type Policy struct {
	// AllowResets: the fault destroys data, so resets with reason "epoch"
	// or "gap" between From and Until may skip confirmed values. Any
	// other reset is a violation.
	AllowResets bool
	From, Until time.Time
	// FaultEnd is when the fault was over: recovery is measured from it
	// (zero: no fault, no recovery time).
	FaultEnd time.Time
}

// legit reports whether a reset with reason at time at is one the policy
// expects.
func (p Policy) legit(r resetEvent) bool {
	return p.AllowResets && (r.reason == "epoch" || r.reason == "gap") &&
		!r.at.Before(p.From) && !r.at.After(p.Until)
}

type resetEvent struct {
	pos    Position
	reason string
	at     time.Time
}

// span is the open interval of counters (lo, hi) between two data frames
// with a reset in between.
type span struct {
	lo, hi int64
	reset  resetEvent
}

// Stream follows one key on one subscriber through acks, resets and data,
// applying the client rule of docs/PROTOCOL.md ("Positions") as frames
// arrive. It is not safe for concurrent use.
type Stream struct {
	pos      Position
	havePos  bool
	latestOK bool        // the next data may be the latest value, seq == pos.Seq
	pending  *resetEvent // a reset since the last data frame
	last     int64       // counter of the newest data frame; counters start at 1
	seen     map[int64]bool
	spans    []span
	resets   []resetEvent
	dups     int
	reorders int
	frames   int
	bad      []string
	nbad     int
	markFrom int64 // first counter published after the fault (0: unset)
	markAt   time.Time
}

// NewStream returns a stream with no position yet.
func NewStream() *Stream { return &Stream{seen: map[int64]bool{}} }

func (s *Stream) violate(format string, args ...any) {
	s.nbad++
	if len(s.bad) < maxViolations {
		s.bad = append(s.bad, fmt.Sprintf(format, args...))
	}
}

// Ack applies a subscribe ack's position for this key; sinceSent tells
// that the subscribe carried since for it, and then the position stays
// the client's: the replay starts at since+1.
func (s *Stream) Ack(p Position, sinceSent bool) {
	if sinceSent && s.havePos {
		return
	}
	s.pos, s.havePos, s.latestOK = p, true, true
}

// Reset applies a reset frame received at at.
func (s *Stream) Reset(p Position, reason string, at time.Time) {
	r := resetEvent{pos: p, reason: reason, at: at}
	s.resets = append(s.resets, r)
	if s.pending == nil {
		s.pending = &r
	}
	s.pos, s.havePos, s.latestOK = p, true, false
}

// Data applies a data frame with seq carrying counter, received at at.
func (s *Stream) Data(seq uint64, counter int64, at time.Time) {
	s.frames++
	switch want := s.pos.Seq + 1; {
	case !s.havePos:
		s.violate("data seq %d (counter %d) before any ack", seq, counter)
	case seq == want, s.latestOK && seq == s.pos.Seq:
	case seq > want:
		s.violate("seq gap: data seq %d (counter %d) after position %d/%s, no reset", seq, counter, s.pos.Seq, s.pos.Epoch)
	default:
		s.violate("seq went back: data seq %d (counter %d) after position %d/%s", seq, counter, s.pos.Seq, s.pos.Epoch)
	}
	s.pos.Seq, s.latestOK = seq, false
	switch {
	case s.seen[counter]:
		s.dups++
		s.violate("duplicate: counter %d again as seq %d/%s", counter, seq, s.pos.Epoch)
		return
	case counter < s.last:
		s.reorders++
		s.violate("reorder: counter %d (seq %d) after counter %d", counter, seq, s.last)
	case s.pending != nil && counter > s.last+1:
		s.spans = append(s.spans, span{lo: s.last, hi: counter, reset: *s.pending})
	}
	s.pending = nil
	s.seen[counter] = true
	s.last = max(s.last, counter)
	if s.markFrom > 0 && s.markAt.IsZero() && counter >= s.markFrom {
		s.markAt = at
	}
}

// Mark starts the recovery clock: the first frame with a counter of at
// least from stops it.
func (s *Stream) Mark(from int64) {
	if s.markFrom == 0 {
		s.markFrom = from
	}
}

// Has reports whether counter was delivered.
func (s *Stream) Has(counter int64) bool { return s.seen[counter] }

// Position returns the stream's position and whether it has one.
func (s *Stream) Position() (Position, bool) { return s.pos, s.havePos }

// Result is the verdict on one stream, or the sum of many.
type Result struct {
	Published, Delivered, Lost, Duplicated, Reordered, Resets int
	Recovery                                                  time.Duration // -1: not measured
	Violations                                                []string
}

// Add sums o into r (recovery: the longest).
func (r *Result) Add(o Result) {
	r.Delivered += o.Delivered
	r.Lost += o.Lost
	r.Duplicated += o.Duplicated
	r.Reordered += o.Reordered
	r.Resets += o.Resets
	r.Recovery = max(r.Recovery, o.Recovery)
	r.Violations = append(r.Violations, o.Violations...)
}

// Check judges the stream against the confirmed counters (ascending).
func (s *Stream) Check(confirmed []int64, p Policy) Result {
	r := Result{Published: len(confirmed), Delivered: s.frames, Duplicated: s.dups,
		Reordered: s.reorders, Resets: len(s.resets), Recovery: -1}
	var v []string // the verdict's own violations, after the stream's
	for _, e := range s.resets {
		if !p.legit(e) {
			v = append(v, fmt.Sprintf("reset to %d/%s reason %q at %s: no data was destroyed then",
				e.pos.Seq, e.pos.Epoch, e.reason, e.at.Format("15:04:05.000")))
		}
	}
	var silent []int64
	for _, c := range confirmed {
		if s.seen[c] {
			continue
		}
		r.Lost++
		if !s.excused(c, p) {
			silent = append(silent, c)
		}
	}
	if len(silent) > 0 {
		v = append(v, fmt.Sprintf("%d confirmed counters never delivered nor covered by a reset: %s (last delivered %d)",
			len(silent), ranges(silent), s.last))
	}
	if !p.FaultEnd.IsZero() && !s.markAt.IsZero() {
		r.Recovery = s.markAt.Sub(p.FaultEnd)
	}
	r.Violations = append([]string(nil), s.bad...)
	if s.nbad > len(s.bad) {
		r.Violations = append(r.Violations, fmt.Sprintf("... and %d more", s.nbad-len(s.bad)))
	}
	r.Violations = append(r.Violations, v...)
	return r
}

func (s *Stream) excused(c int64, p Policy) bool {
	for _, sp := range s.spans {
		if sp.lo < c && c < sp.hi && p.legit(sp.reset) {
			return true
		}
	}
	return false
}

// ranges writes ascending counters as "1-3,7,9-10" (at most 10 ranges).
func ranges(cs []int64) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(cs); {
		j := i
		for j+1 < len(cs) && cs[j+1] == cs[j]+1 {
			j++
		}
		if n == 10 {
			b.WriteString(",...")
			break
		}
		if n > 0 {
			b.WriteByte(',')
		}
		if i == j {
			fmt.Fprintf(&b, "%d", cs[i])
		} else {
			fmt.Fprintf(&b, "%d-%d", cs[i], cs[j])
		}
		n++
		i = j + 1
	}
	return b.String()
}
