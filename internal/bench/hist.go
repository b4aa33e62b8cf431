package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// The histogram is log-linear, like HdrHistogram: values below subCount
// have a bucket each; above, every power of two is cut into subCount
// buckets of equal width. A bucket's width is at most 1/subCount of its
// lower bound, so a value read back (the bucket's midpoint) is within
// 1/(2*subCount) of the truth: 0.4% with subBits = 7.
const (
	subBits    = 7
	subCount   = 1 << subBits
	numBuckets = (64 - subBits + 1) * subCount
)

// HistRelError is the largest relative error of a value read back from a
// Histogram (quantiles; Min, Max and Mean are exact).
const HistRelError = 1.0 / (2 * subCount)

// Histogram counts non-negative int64 values (nanoseconds here) in
// log-linear buckets. Record is safe for concurrent use and does not
// allocate; two histograms merge by adding counts. The zero value is
// empty and ready.
type Histogram struct {
	counts [numBuckets]atomic.Uint64
	count  atomic.Uint64
	sum    atomic.Uint64
	min    atomic.Uint64 // stored as value+1 so that 0 means "none yet"
	max    atomic.Uint64
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram { return new(Histogram) }

func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - 1 - subBits
	return (shift+1)*subCount + int(v>>shift) - subCount
}

// bucketRange is the lowest value of bucket i and the bucket's width.
func bucketRange(i int) (low, width uint64) {
	if i < subCount {
		return uint64(i), 1
	}
	shift := i/subCount - 1
	mant := uint64(i%subCount + subCount)
	return mant << shift, 1 << shift
}

// Record adds one value; negative values count as 0.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	h.counts[bucketOf(u)].Add(1)
	h.count.Add(1)
	h.sum.Add(u)
	storeMin(&h.min, u+1)
	storeMax(&h.max, u)
}

func storeMin(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if old != 0 && old <= v || a.CompareAndSwap(old, v) {
			return
		}
	}
}

func storeMax(a *atomic.Uint64, v uint64) {
	for {
		old := a.Load()
		if old >= v || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// Merge adds every value of o to h. o must not be recorded into
// concurrently.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil || o.count.Load() == 0 {
		return
	}
	for i := range o.counts {
		if c := o.counts[i].Load(); c != 0 {
			h.counts[i].Add(c)
		}
	}
	h.count.Add(o.count.Load())
	h.sum.Add(o.sum.Load())
	storeMin(&h.min, o.min.Load())
	storeMax(&h.max, o.max.Load())
}

// Count is the number of values recorded.
func (h *Histogram) Count() uint64 { return h.count.Load() }

// Min is the smallest value recorded (0 when empty).
func (h *Histogram) Min() int64 {
	m := h.min.Load()
	if m == 0 {
		return 0
	}
	return int64(m - 1)
}

// Max is the largest value recorded.
func (h *Histogram) Max() int64 { return int64(h.max.Load()) }

// Mean is the exact average (0 when empty).
func (h *Histogram) Mean() float64 {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	return float64(h.sum.Load()) / float64(n)
}

// Quantile returns the value below or at which a fraction q (0..1) of the
// values lie, within HistRelError: the midpoint of the bucket holding the
// value of rank ceil(q*count), clamped to [Min, Max].
func (h *Histogram) Quantile(q float64) int64 {
	n := h.count.Load()
	if n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(n)))
	rank = min(max(rank, 1), n)
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			low, width := bucketRange(i)
			v := int64(low + (width-1)/2)
			return min(max(v, h.Min()), h.Max())
		}
	}
	return h.Max()
}

// Buckets calls f for every non-empty bucket in increasing order with its
// bounds [low, low+width) and count.
func (h *Histogram) Buckets(f func(low, width, count uint64)) {
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			low, width := bucketRange(i)
			f(low, width, c)
		}
	}
}

// Summary is a histogram of durations in milliseconds, for reports.
type Summary struct {
	Count uint64  `json:"count"`
	Avg   float64 `json:"avg_ms"`
	Min   float64 `json:"min_ms"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

func nsToMs(v float64) float64 { return v / float64(time.Millisecond) }

// Summarize reads h's figures as milliseconds.
func (h *Histogram) Summarize() Summary {
	q := func(p float64) float64 { return nsToMs(float64(h.Quantile(p))) }
	return Summary{
		Count: h.Count(),
		Avg:   nsToMs(h.Mean()),
		Min:   nsToMs(float64(h.Min())),
		P50:   q(0.50),
		P90:   q(0.90),
		P99:   q(0.99),
		P999:  q(0.999),
		Max:   nsToMs(float64(h.Max())),
	}
}

// histJSON is the wire and file form: exact figures and the non-empty
// buckets as [index, count] pairs, so that a histogram read back merges
// like the original.
type histJSON struct {
	SubBits int         `json:"sub_bits"`
	Count   uint64      `json:"count"`
	Sum     uint64      `json:"sum"`
	Min     int64       `json:"min"`
	Max     int64       `json:"max"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON implements json.Marshaler.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	j := histJSON{SubBits: subBits, Count: h.Count(), Sum: h.sum.Load(), Min: h.Min(), Max: h.Max(), Buckets: [][2]uint64{}}
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON implements json.Unmarshaler; h must be empty.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("histogram: %w", err)
	}
	if j.SubBits != subBits {
		return fmt.Errorf("histogram: sub_bits %d, this build uses %d", j.SubBits, subBits)
	}
	var total uint64
	for _, b := range j.Buckets {
		if b[0] >= numBuckets {
			return fmt.Errorf("histogram: bucket %d out of range", b[0])
		}
		h.counts[b[0]].Add(b[1])
		total += b[1]
	}
	if total != j.Count {
		return fmt.Errorf("histogram: buckets hold %d values, count says %d", total, j.Count)
	}
	h.count.Store(j.Count)
	h.sum.Store(j.Sum)
	if j.Count > 0 {
		h.min.Store(uint64(j.Min) + 1)
		h.max.Store(uint64(j.Max))
	}
	return nil
}
