package bench

// windowWords × 64 is how far below the highest seq seen a late seq can
// still be told apart from a duplicate.
const windowWords = 8

// SeqWindow is how many seqs below the highest one seen a SeqTracker
// remembers.
const SeqWindow = windowWords * 64

// SeqTracker counts the seqs one subscription (one key on one connection)
// received: how many, how many distinct, duplicates and out-of-order
// arrivals. It remembers which of the last SeqWindow seqs it saw; a seq
// older than that is counted out of order and, since it cannot be told
// from a duplicate, not as a new value (loss is over- rather than
// under-counted). wspush delivers in order, so any such count is a bug
// the run reveals. The zero value is ready; it is not safe for concurrent
// use (each connection's reader owns its trackers).
type SeqTracker struct {
	lo, hi     uint64 // lowest and highest seq seen
	received   uint64
	distinct   uint64
	duplicates uint64
	outOfOrder uint64
	seen       [windowWords]uint64 // bit d: seq hi-d was seen
}

// Observe records one arrival of seq.
func (t *SeqTracker) Observe(seq uint64) {
	t.received++
	if t.received == 1 {
		t.lo, t.hi, t.distinct = seq, seq, 1
		t.seen[0] = 1
		return
	}
	if seq < t.lo {
		t.lo = seq
	}
	switch {
	case seq > t.hi:
		t.shift(seq - t.hi)
		t.hi = seq
		t.seen[0] |= 1
		t.distinct++
	case seq == t.hi:
		t.duplicates++
	default:
		d := t.hi - seq
		if d >= SeqWindow {
			t.outOfOrder++
			return
		}
		w, b := d/64, d%64
		if t.seen[w]&(1<<b) != 0 {
			t.duplicates++
			return
		}
		t.seen[w] |= 1 << b
		t.distinct++
		t.outOfOrder++
	}
}

// shift moves the window up by d seqs: bit i becomes bit i+d.
func (t *SeqTracker) shift(d uint64) {
	if d >= SeqWindow {
		t.seen = [windowWords]uint64{}
		return
	}
	words, b := int(d/64), d%64
	for i := windowWords - 1; i >= 0; i-- {
		var v uint64
		if j := i - words; j >= 0 {
			v = t.seen[j] << b
			if b != 0 && j > 0 {
				v |= t.seen[j-1] >> (64 - b)
			}
		}
		t.seen[i] = v
	}
}

// Received is every arrival counted, duplicates included.
func (t *SeqTracker) Received() uint64 { return t.received }

// Distinct is the number of different seqs received.
func (t *SeqTracker) Distinct() uint64 { return t.distinct }

// Range is the lowest and highest seq received (zeros when none).
func (t *SeqTracker) Range() (lo, hi uint64) { return t.lo, t.hi }

// Loss is what a set of subscriptions should have received and what
// they did. Lost is Expected minus the distinct values received (never
// negative); Unexpected is distinct values beyond Expected (another
// publisher on the same keys, or a server delivering something twice
// under different seqs).
type Loss struct {
	Expected   uint64 `json:"expected"`
	Received   uint64 `json:"received"`
	Distinct   uint64 `json:"distinct"`
	Duplicates uint64 `json:"duplicates"`
	OutOfOrder uint64 `json:"out_of_order"`
	Lost       uint64 `json:"lost"`
	Unexpected uint64 `json:"unexpected"`
}

// Account adds one subscription, which should have received expected
// distinct values, to l.
func (l *Loss) Account(t *SeqTracker, expected uint64) {
	l.Expected += expected
	l.Received += t.received
	l.Distinct += t.distinct
	l.Duplicates += t.duplicates
	l.OutOfOrder += t.outOfOrder
	if t.distinct < expected {
		l.Lost += expected - t.distinct
	} else {
		l.Unexpected += t.distinct - expected
	}
}

// AccountLatest adds one subscription of mode latest (docs/PROTOCOL.md,
// "Delivery modes") to l. Such a subscription may skip values by design,
// but its seqs must rise (a duplicate or a seq below one already seen is
// an error) and the key's last value, of seq final, must arrive. Expected
// counts the final values due (one per subscription of a key that got
// values, final > 0), Lost those that did not arrive, Unexpected the
// subscriptions that got a seq beyond final (another publisher).
func (l *Loss) AccountLatest(t *SeqTracker, final uint64) {
	l.Received += t.received
	l.Distinct += t.distinct
	l.Duplicates += t.duplicates
	l.OutOfOrder += t.outOfOrder
	if final == 0 {
		return
	}
	l.Expected++
	switch {
	case t.received == 0 || t.hi < final:
		l.Lost++
	case t.hi > final:
		l.Unexpected++
	}
}

// AccountGaps adds a subscription whose expected count is unknown (values
// come from the poller): it should have received every seq from the
// lowest to the highest it saw, and ifSilent values when it saw none.
func (l *Loss) AccountGaps(t *SeqTracker, ifSilent uint64) {
	if t.received == 0 {
		l.Account(t, ifSilent)
		return
	}
	l.Account(t, t.hi-t.lo+1)
}

// Add adds o to l.
func (l *Loss) Add(o Loss) {
	l.Expected += o.Expected
	l.Received += o.Received
	l.Distinct += o.Distinct
	l.Duplicates += o.Duplicates
	l.OutOfOrder += o.OutOfOrder
	l.Lost += o.Lost
	l.Unexpected += o.Unexpected
}

// secondCount counts a subscription's values per second of the window
// (latest mode with max_rate), keeping the most any second had.
type secondCount struct {
	sec  int64 // the second counted: (receive time - window start) / 1s
	n    uint32
	most uint32
}

func (s *secondCount) add(sec int64) {
	if sec != s.sec {
		s.sec, s.n = sec, 0
	}
	s.n++
	s.most = max(s.most, s.n)
}

// LatestFigures is what a fanout of mode latest measured besides Loss:
// how often each subscription got a value.
type LatestFigures struct {
	// MaxRate is the subscriptions' max_rate (0: none).
	MaxRate float64 `json:"max_rate,omitempty"`
	// MaxPerSecond is the most values one subscription got within one
	// second of the window.
	MaxPerSecond uint32 `json:"max_per_second"`
	// RateViolations counts subscriptions that got more than
	// ceil(max_rate) + 1 values within one second (with max_rate only).
	RateViolations uint64 `json:"rate_violations"`
	// Skipped is the values published to a subscription's key that it
	// did not get, by design: published - distinct received.
	Skipped uint64 `json:"skipped"`
	// DeliveredPerSec is the values one subscription got per second, on
	// average, from the start of publishing to the last value received.
	DeliveredPerSec float64 `json:"delivered_per_sec"`
}

// add adds one subscription that got distinct values of the published
// ones, at most most within one second, to f; limit is Plan.rateLimit.
func (f *LatestFigures) add(published, distinct uint64, most, limit uint32) {
	f.MaxPerSecond = max(f.MaxPerSecond, most)
	if limit > 0 && most > limit {
		f.RateViolations++
	}
	if published > distinct {
		f.Skipped += published - distinct
	}
}

// merge adds a worker's figures to f.
func (f *LatestFigures) merge(o *LatestFigures) {
	if o == nil {
		return
	}
	f.MaxPerSecond = max(f.MaxPerSecond, o.MaxPerSecond)
	f.RateViolations += o.RateViolations
	f.Skipped += o.Skipped
}
