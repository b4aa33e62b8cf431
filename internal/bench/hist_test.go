package bench

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
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

func TestBucketsHoldTheirValues(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	values := []uint64{0, 1, 127, 128, 129, 255, 256, 257, 1<<20 - 1, 1 << 20, math.MaxInt64, math.MaxUint64}
	for range 10000 {
		values = append(values, r.Uint64()>>r.IntN(64))
	}
	for _, v := range values {
		i := bucketOf(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketOf(%d) = %d, out of range", v, i)
		}
		low, width := bucketRange(i)
		if v < low || v-low >= width {
			t.Fatalf("value %d in bucket %d = [%d, %d+%d)", v, i, low, low, width)
		}
		if low >= subCount && float64(width)/float64(low) > 1.0/subCount {
			t.Fatalf("bucket %d: width %d over 1/%d of %d", i, width, subCount, low)
		}
	}
}

func TestHistogramQuantilesWithinBucketError(t *testing.T) {
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
			h := NewHistogram()
			var sum float64
			for _, v := range tc.values {
				h.Record(v)
				sum += float64(v)
			}
			sorted := slices.Clone(tc.values)
			slices.Sort(sorted)
			for _, q := range []float64{0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1} {
				got, want := h.Quantile(q), exactQuantile(sorted, q)
				if diff := math.Abs(float64(got - want)); diff > float64(want)*HistRelError+0.5 {
					t.Errorf("q%g: got %d, exact %d: off by %.4f%%, more than %.4f%%", q, got, want, diff/float64(want)*100, HistRelError*100)
				}
			}
			if h.Count() != uint64(len(tc.values)) || h.Min() != sorted[0] || h.Max() != sorted[len(sorted)-1] {
				t.Errorf("count %d min %d max %d, want %d %d %d", h.Count(), h.Min(), h.Max(), len(sorted), sorted[0], sorted[len(sorted)-1])
			}
			if mean := sum / float64(len(tc.values)); math.Abs(h.Mean()-mean) > mean*1e-9 {
				t.Errorf("mean %g, want %g", h.Mean(), mean)
			}
		})
	}
}

func TestHistogramEmptyAndNegative(t *testing.T) {
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
}

func TestHistogramMergeEqualsWhole(t *testing.T) {
	values := latencies(2, 50000)
	whole, a, b := NewHistogram(), NewHistogram(), NewHistogram()
	for i, v := range values {
		whole.Record(v)
		if i%3 == 0 {
			a.Record(v)
		} else {
			b.Record(v)
		}
	}
	merged := NewHistogram()
	merged.Merge(a)
	merged.Merge(b)
	merged.Merge(nil)
	merged.Merge(NewHistogram())
	mj, _ := json.Marshal(merged)
	wj, _ := json.Marshal(whole)
	if string(mj) != string(wj) {
		t.Fatalf("merge of two halves differs from the whole:\n%s\n%s", mj, wj)
	}
	for _, q := range []float64{0.5, 0.99, 0.999} {
		if merged.Quantile(q) != whole.Quantile(q) {
			t.Errorf("q%g: merged %d, whole %d", q, merged.Quantile(q), whole.Quantile(q))
		}
	}
}

func TestHistogramJSONRoundTrip(t *testing.T) {
	h := NewHistogram()
	for _, v := range latencies(3, 1000) {
		h.Record(v)
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	back := NewHistogram()
	if err := json.Unmarshal(b, back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Fatalf("round trip changed the histogram:\n%s\n%s", b, b2)
	}
	if back.Summarize() != h.Summarize() {
		t.Fatalf("summaries differ: %+v vs %+v", back.Summarize(), h.Summarize())
	}
	for _, bad := range []string{
		`{"sub_bits":5,"count":0,"buckets":[]}`,
		`{"sub_bits":7,"count":2,"buckets":[[1,1]]}`,
		`{"sub_bits":7,"count":1,"buckets":[[99999,1]]}`,
	} {
		if err := json.Unmarshal([]byte(bad), NewHistogram()); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

func TestHistogramConcurrentRecord(t *testing.T) {
	h := NewHistogram()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 10000 {
				h.Record(int64(g*10000 + i))
			}
		})
	}
	wg.Wait()
	if h.Count() != 80000 || h.Min() != 0 || h.Max() != 79999 {
		t.Fatalf("count %d min %d max %d", h.Count(), h.Min(), h.Max())
	}
}

func TestHistogramRecordDoesNotAllocate(t *testing.T) {
	h := NewHistogram()
	v := int64(12345)
	if n := testing.AllocsPerRun(1000, func() { h.Record(v); v += 977 }); n != 0 {
		t.Fatalf("Record allocates %.1f times", n)
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	h := NewHistogram()
	b.RunParallel(func(pb *testing.PB) {
		v := int64(1e6)
		for pb.Next() {
			h.Record(v)
			v = v*31%int64(1e9) + 1
		}
	})
}
