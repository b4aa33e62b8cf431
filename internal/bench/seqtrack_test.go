package bench

import "testing"

func TestSeqTracker(t *testing.T) {
	for _, tc := range []struct {
		name       string
		seqs       []uint64
		expected   uint64
		distinct   uint64
		duplicates uint64
		outOfOrder uint64
		lost       uint64
		unexpected uint64
	}{
		{name: "in order", seqs: []uint64{1, 2, 3, 4, 5}, expected: 5, distinct: 5},
		{name: "none", seqs: nil, expected: 3, lost: 3},
		{name: "gap", seqs: []uint64{1, 2, 5}, expected: 5, distinct: 3, lost: 2},
		{name: "tail lost", seqs: []uint64{10, 11}, expected: 4, distinct: 2, lost: 2},
		{name: "duplicate of the last", seqs: []uint64{1, 2, 2, 3}, expected: 3, distinct: 3, duplicates: 1},
		{name: "duplicate of an older one", seqs: []uint64{1, 2, 3, 1, 2}, expected: 3, distinct: 3, duplicates: 2},
		{name: "reordered", seqs: []uint64{1, 3, 2, 4}, expected: 4, distinct: 4, outOfOrder: 1},
		{name: "reordered then repeated", seqs: []uint64{1, 3, 2, 2, 3, 4}, expected: 4, distinct: 4, outOfOrder: 1, duplicates: 2},
		{name: "reordered below the first", seqs: []uint64{5, 4, 6}, expected: 3, distinct: 3, outOfOrder: 1},
		{name: "more than expected", seqs: []uint64{1, 2, 3}, expected: 2, distinct: 3, unexpected: 1},
		{name: "late beyond the window", seqs: []uint64{1, 2 + SeqWindow, 1}, expected: 2, distinct: 2, outOfOrder: 1},
		{name: "late just inside the window", seqs: []uint64{1, SeqWindow, 2}, expected: 3, distinct: 3, outOfOrder: 1},
		{name: "window shift across words", seqs: []uint64{1, 70, 2, 70, 1, 140, 71}, expected: 5, distinct: 5, outOfOrder: 2, duplicates: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var tr SeqTracker
			for _, s := range tc.seqs {
				tr.Observe(s)
			}
			var l Loss
			l.Account(&tr, tc.expected)
			want := Loss{Expected: tc.expected, Received: uint64(len(tc.seqs)), Distinct: tc.distinct,
				Duplicates: tc.duplicates, OutOfOrder: tc.outOfOrder, Lost: tc.lost, Unexpected: tc.unexpected}
			if l != want {
				t.Fatalf("seqs %v:\n got %+v\nwant %+v", tc.seqs, l, want)
			}
		})
	}
}

func TestSeqTrackerLongRunWithDuplicatesAndReordering(t *testing.T) {
	// 10,000 seqs delivered in pairs swapped, every 10th repeated, every
	// 100th missing: the counts are known exactly.
	var tr SeqTracker
	var sent, missing uint64
	for s := uint64(1); s <= 10000; s += 2 {
		for _, seq := range []uint64{s + 1, s} {
			if seq%100 == 0 {
				missing++
				continue
			}
			tr.Observe(seq)
			sent++
			if seq%10 == 0 {
				tr.Observe(seq)
			}
		}
	}
	var l Loss
	l.Account(&tr, 10000)
	// Every odd seq arrives after its even successor, out of order, but
	// for those whose successor is missing.
	if l.Lost != missing || l.Distinct != 10000-missing || l.OutOfOrder != 5000-missing || l.Duplicates != 1000-missing {
		t.Fatalf("got %+v; want lost %d, distinct %d, %d out of order, %d duplicates", l, missing, 10000-missing, 5000-missing, 1000-missing)
	}
	if l.Received != sent+1000-missing {
		t.Fatalf("received %d, want %d", l.Received, sent+1000-missing)
	}
}

func TestLossAccountGaps(t *testing.T) {
	var full, gappy, silent SeqTracker
	for s := uint64(7); s <= 9; s++ {
		full.Observe(s)
	}
	gappy.Observe(3)
	gappy.Observe(6)
	var l Loss
	l.AccountGaps(&full, 10)
	l.AccountGaps(&gappy, 10)
	l.AccountGaps(&silent, 10)
	want := Loss{Expected: 3 + 4 + 10, Received: 5, Distinct: 5, Lost: 2 + 10}
	if l != want {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	var sum Loss
	sum.Add(l)
	sum.Add(l)
	if sum.Expected != 2*want.Expected || sum.Lost != 2*want.Lost {
		t.Fatalf("add: %+v", sum)
	}
}
