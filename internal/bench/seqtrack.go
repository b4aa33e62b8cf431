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
