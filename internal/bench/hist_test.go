package bench

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// exactQuantile is the value of rank ceil(q*n) of sorted, the definition
// Histogram.Quantile approximates.
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// latencies returns n log-normally distributed values around 2ms (ns),
// spanning microseconds to seconds, like real latencies.
func latencies(seed uint64, n int) []int64 {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(math.Exp(r.NormFloat64()*1.5 + math.Log(2e6)))
	}
	return out
}

// within tells whether got reads want within the histogram's precision.
func within(got, want int64) bool {
	return math.Abs(float64(got-want)) <= float64(want)*HistRelError+1
}

func TestHistogramQuantilesWithinPrecision(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values []int64
	}{
		{"lognormal", latencies(1, 100000)},
		{"small exact", []int64{0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89}},
		{"one value", []int64{1234567}},
		{"uniform", func() []int64 {
			var v []int64
			for i := range int64(10000) {
				v = append(v, 1000+i*997)
			}
			return v
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, shards := range []int{1, 4} {
				h := newShardedHistogram(shards)
				var sum float64
				for i, v := range tc.values {
					h.recordAt(i, v)
					sum += float64(v)
				}
				sorted := slices.Clone(tc.values)
				slices.Sort(sorted)
				for _, q := range []float64{0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
					if got, want := h.Quantile(q), exactQuantile(sorted, q); !within(got, want) {
						t.Errorf("%d shards, q%g: got %d, exact %d", shards, q, got, want)
					}
				}
				if h.Count() != uint64(len(tc.values)) || !within(h.Min(), sorted[0]) || !within(h.Max(), sorted[len(sorted)-1]) {
					t.Errorf("count %d min %d max %d, want %d %d %d", h.Count(), h.Min(), h.Max(), len(sorted), sorted[0], sorted[len(sorted)-1])
				}
				if mean := sum / float64(len(tc.values)); math.Abs(h.Mean()-mean) > mean*HistRelError+1 {
					t.Errorf("mean %g, want %g", h.Mean(), mean)
				}
			}
		})
	}
}

func TestHistogramEmptyAndOutOfRange(t *testing.T) {
	h := NewHistogram()
	if h.Quantile(0.5) != 0 || h.Mean() != 0 || h.Min() != 0 || h.Max() != 0 {
		t.Fatal("empty histogram should read zeros")
	}
	if s := h.Summarize(); s != (Summary{}) {
		t.Fatalf("empty summary %+v", s)
	}
	h.Record(-5)
	if h.Count() != 1 || h.Max() != 0 || h.Min() != 0 {
		t.Fatalf("negative value: count %d min %d max %d, want it counted as 0", h.Count(), h.Min(), h.Max())
	}
	h.Record(int64(100 * time.Hour))
	if h.Count() != 2 || !within(h.Max(), int64(time.Hour)) {
		t.Fatalf("a value over an hour: count %d max %d, want it counted as an hour", h.Count(), h.Max())
	}
}

// TestHistogramMergeIsExact: histograms recorded apart (workers) and sent
// as JSON merge into exactly the histogram of all the values.
func TestHistogramMergeIsExact(t *testing.T) {
	values := latencies(2, 50000)
	whole, a, b := NewHistogram(), newShardedHistogram(8), NewHistogram()
	for i, v := range values {
		whole.Record(v)
		if i%3 == 0 {
			a.recordAt(i, v)
		} else {
			b.Record(v)
		}
	}
	merged := NewHistogram()
	for _, part := range []*Histogram{a, b} {
		j, err := json.Marshal(part)
		if err != nil {
			t.Fatal(err)
		}
		var back Histogram
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatal(err)
		}
		merged.Merge(&back)
	}
	merged.Merge(nil)
	merged.Merge(NewHistogram())
	mj, _ := json.Marshal(merged)
	wj, _ := json.Marshal(whole)
	if string(mj) != string(wj) {
		t.Fatalf("merge of two parts differs from the whole:\n%s\n%s", mj, wj)
	}
	if merged.Summarize() != whole.Summarize() {
		t.Fatalf("summaries differ: %+v vs %+v", merged.Summarize(), whole.Summarize())
	}
}

func TestHistogramJSON(t *testing.T) {
	h := NewHistogram()
	for _, v := range latencies(3, 1000) {
		h.Record(v)
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) || b[0] != '"' || string(b[1:5]) != "HIST" {
		t.Fatalf("want HdrHistogram's base64 V2 encoding (HIST...) as a JSON string, got %.40s", b)
	}
	var back Histogram
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Summarize() != h.Summarize() {
		t.Fatalf("summaries differ: %+v vs %+v", back.Summarize(), h.Summarize())
	}
	for _, bad := range []string{`{"sub_bits":7,"count":0,"buckets":[]}`, `"not base64!"`, `"SElTVEZBQUFBQ"`, `12`} {
		if err := json.Unmarshal([]byte(bad), new(Histogram)); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

func TestHistogramConcurrentRecord(t *testing.T) {
	h := newShardedHistogram(4)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10000 {
				h.recordAt(g, int64(g*10000+i))
			}
		})
	}
	wg.Go(func() { // reading while others record
		for range 10 {
			_ = h.Summarize()
		}
	})
	wg.Wait()
	if h.Count() != 80000 || h.Min() != 0 || !within(h.Max(), 79999) {
		t.Fatalf("count %d min %d max %d", h.Count(), h.Min(), h.Max())
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := newShardedHistogram(2)
	v := int64(12345)
	if n := testing.AllocsPerRun(1000, func() { h.recordAt(int(v), v); v += 977 }); n != 0 {
		t.Fatalf("Record allocates %.1f times", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := newShardedHistogram(latencyShards)
	var next int
	var mu sync.Mutex
	b.RunParallel(func(pb *testing.PB) {
		mu.Lock()
		shard := next
		next++
		mu.Unlock()
		v := int64(1e6)
		for pb.Next() {
			h.recordAt(shard, v)
			v = v*31%int64(1e9) + 1
		}
	})
}
