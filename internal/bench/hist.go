package bench

import (
	"encoding/json"
	"fmt"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// Every histogram of wsbench is an HdrHistogram of nanoseconds from 1 ns
// to an hour with 3 significant digits: a value read back is within 0.1%
// of the truth. All of them share this geometry, so that merging two of
// them adds counts index by index and is exact, whichever process
// recorded them.
const (
	histLowest  = 1
	histHighest = int64(time.Hour)
	histDigits  = 3
)

// HistRelError is the largest relative error of a value read back from a
// Histogram (quantiles, min, max, mean).
const HistRelError = 1e-3

func newHDR() *hdr.Histogram { return hdr.New(histLowest, histHighest, histDigits) }

// Histogram counts durations in nanoseconds. It wraps hdrhistogram-go's
// Histogram, which is not safe for concurrent use, with a lock per shard:
// a histogram that many connections record into has several shards
// (newShardedHistogram), each connection recording into its own
// (recordAt), and they are merged when read. Values below 0 count as 0,
// values above an hour as an hour.
type Histogram struct {
	shards []histShard
}

type histShard struct {
	mu sync.Mutex
	h  *hdr.Histogram
	_  [48]byte // a shard's lock on its own cache line
}

// NewHistogram returns an empty histogram of one shard.
func NewHistogram() *Histogram { return newShardedHistogram(1) }

// newShardedHistogram returns an empty histogram of n shards.
func newShardedHistogram(n int) *Histogram {
	h := &Histogram{shards: make([]histShard, max(n, 1))}
	for i := range h.shards {
		h.shards[i].h = newHDR()
	}
	return h
}

func clampValue(v int64) int64 { return min(max(v, 0), histHighest) }

// Record adds one value.
func (h *Histogram) Record(v int64) { h.recordAt(0, v) }

// recordAt adds one value to shard i mod the shards: callers that record
// concurrently pass different i (a connection number) to take different
// locks.
func (h *Histogram) recordAt(i int, v int64) {
	s := &h.shards[i%len(h.shards)]
	s.mu.Lock()
	_ = s.h.RecordValue(clampValue(v)) // in range: clamped
	s.mu.Unlock()
}

// read calls f with every value of h in one hdr histogram, which f must
// not keep or change.
func (h *Histogram) read(f func(*hdr.Histogram)) {
	if len(h.shards) == 1 {
		s := &h.shards[0]
		s.mu.Lock()
		defer s.mu.Unlock()
		f(s.h)
		return
	}
	all := newHDR()
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		all.Merge(s.h)
		s.mu.Unlock()
	}
	f(all)
}

// Merge adds every value of o to h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	var from *hdr.Histogram
	o.read(func(x *hdr.Histogram) {
		if x.TotalCount() > 0 {
			from = x.Clone()
		}
	})
	if from == nil {
		return
	}
	s := &h.shards[0]
	s.mu.Lock()
	s.h.Merge(from) // same geometry: nothing is dropped
	s.mu.Unlock()
}

// Count is the number of values recorded.
func (h *Histogram) Count() (n uint64) {
	for i := range h.shards {
		s := &h.shards[i]
		s.mu.Lock()
		n += uint64(s.h.TotalCount())
		s.mu.Unlock()
	}
	return n
}

// Min is the smallest value recorded (0 when empty).
func (h *Histogram) Min() (v int64) {
	h.read(func(x *hdr.Histogram) { v = x.Min() })
	return v
}

// Max is the largest value recorded (0 when empty).
func (h *Histogram) Max() (v int64) {
	h.read(func(x *hdr.Histogram) { v = x.Max() })
	return v
}

// Mean is the average (0 when empty).
func (h *Histogram) Mean() (v float64) {
	h.read(func(x *hdr.Histogram) { v = x.Mean() })
	return v
}

// Quantile returns the value below or at which a fraction q (0..1) of the
// values lie, within HistRelError.
func (h *Histogram) Quantile(q float64) (v int64) {
	h.read(func(x *hdr.Histogram) { v = x.ValueAtQuantile(q * 100) })
	return v
}

// Buckets calls f for every non-empty bucket in increasing order with its
// bounds [low, low+width) and count.
func (h *Histogram) Buckets(f func(low, width, count uint64)) {
	h.read(func(x *hdr.Histogram) {
		for _, b := range x.Distribution() {
			if b.Count > 0 {
				f(uint64(b.From), uint64(b.To-b.From+1), uint64(b.Count))
			}
		}
	})
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
func (h *Histogram) Summarize() (s Summary) {
	h.read(func(x *hdr.Histogram) {
		if x.TotalCount() == 0 {
			return
		}
		q := x.ValueAtPercentilesSlice([]float64{50, 90, 99, 99.9})
		s = Summary{
			Count: uint64(x.TotalCount()),
			Avg:   nsToMs(x.Mean()),
			Min:   nsToMs(float64(x.Min())),
			P50:   nsToMs(float64(q[0])),
			P90:   nsToMs(float64(q[1])),
			P99:   nsToMs(float64(q[2])),
			P999:  nsToMs(float64(q[3])),
			Max:   nsToMs(float64(x.Max())),
		}
	})
	return s
}

// MarshalJSON implements json.Marshaler: the histogram travels (between
// a worker and its coordinator) and is kept (in --json reports) as
// HdrHistogram's standard V2 compressed encoding in base64, a string that
// HdrHistogram's tools in any language decode.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	var enc []byte
	var err error
	h.read(func(x *hdr.Histogram) { enc, err = x.EncodeV2() })
	if err != nil {
		return nil, fmt.Errorf("histogram: %w", err)
	}
	return json.Marshal(string(enc))
}

// UnmarshalJSON implements json.Unmarshaler; h's values are replaced by
// those read. A histogram of another geometry is re-recorded into
// wsbench's; one holding values that wsbench's cannot is refused.
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("histogram: want HdrHistogram's V2 encoding as a string: %w", err)
	}
	dec, err := hdr.Decode([]byte(s))
	if err != nil {
		return fmt.Errorf("histogram: %w", err)
	}
	x := newHDR()
	if dropped := x.Merge(dec); dropped > 0 {
		return fmt.Errorf("histogram: %d values outside 0 to %s", dropped, time.Duration(histHighest))
	}
	*h = Histogram{shards: make([]histShard, 1)}
	h.shards[0].h = x
	return nil
}
