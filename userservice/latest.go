package userservice

import (
	"container/heap"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/wspush/wspush/proto"
)

// The delivery modes on a connection (docs/PROTOCOL.md, "Delivery modes").
// Both kinds of connection, a WebSocket session and an SSE stream, queue
// what they send in an outbox, under their own mutex:
//
//   - a frame of a stream key, or any other frame (replies, pongs), is
//     queued as it comes; its bytes count toward QueueMaxBytes (4008);
//   - a latest key has at most one data frame waiting: in the queue (a
//     slot that points at the key, so that a newer value replaces the
//     frame in place), or held back while the key's 1/max_rate interval
//     runs (then one timer per connection moves it to the queue when the
//     interval ends). Its bytes never count toward QueueMaxBytes: a slow
//     connection conflates its latest keys instead of overflowing;
//   - with max_bandwidth, take hands the writer only the data frames the
//     connection's token bucket allows; the rest waits in the queue, where
//     latest keys go on conflating.
//
// An idle connection with no latest key and no max_bandwidth pays for the
// outbox one nil pointer beside its queue; no timer, no goroutine.

// Limits of max_bandwidth, bytes per second.
const (
	minBandwidth = 1024
	maxBandwidth = 1_000_000_000
)

// parseBandwidth reads the max_bandwidth query parameter of /ws and /sse:
// 0 when absent.
func parseBandwidth(q url.Values) (int, error) {
	vs, ok := q["max_bandwidth"]
	if !ok {
		return 0, nil
	}
	if len(vs) > 1 {
		return 0, fmt.Errorf("max_bandwidth given %d times", len(vs))
	}
	n, err := strconv.Atoi(vs[0])
	if err != nil || n < minBandwidth || n > maxBandwidth {
		return 0, fmt.Errorf("max_bandwidth %q: want an integer from %d to %d (bytes per second)", vs[0], minBandwidth, maxBandwidth)
	}
	return n, nil
}

// maxInterval bounds a latest key's 1/max_rate (a century).
const maxInterval = float64(100 * 365 * 24 * time.Hour)

// outbox is a connection's outgoing queue with the delivery modes.
type outbox struct {
	items []outItem
	// bytes is what the frames of stream keys and the replies in items
	// hold: what QueueMaxBytes limits. latestBytes is what latest keys'
	// frames hold.
	bytes       int
	latestBytes int
	ext         *outboxExt // nil until a key is latest or the connection has max_bandwidth
}

// outItem is one queued frame: f, or the frame its latest key has queued
// (key.queued) as long as gen is the key's.
type outItem struct {
	f   *proto.Frame
	key *latestKey
	gen uint32
}

type outboxExt struct {
	keys  map[*proto.StreamRef]*latestKey // the connection's latest keys
	due   dueHeap                         // keys holding a value back, by when it is due
	timer *time.Timer                     // one per connection: fires when due[0] is due
	armed time.Time                       // when timer fires; zero: stopped
	owner dueHandler                      // its onDue: lock, fire, wake the writer
	bw    *tokenBucket                    // nil: no max_bandwidth
	m     *metrics
}

// latestKey is the state of one latest key on a connection.
type latestKey struct {
	interval time.Duration // 1/max_rate; 0: no limit
	last     time.Time     // when the last value entered the queue
	queued   *proto.Frame  // the value in the queue (an outItem points here)
	gen      uint32        // bumped when the outItem of the key is void
	pending  *proto.Frame  // the value held back until due
	due      time.Time
	idx      int // in outboxExt.due; -1: not there
}

// dueHandler is the connection that owns an outbox: its onDue runs on the
// timer, locks the connection, calls fire and wakes the writer.
type dueHandler interface{ onDue() }

func (o *outbox) extend(m *metrics, owner dueHandler) *outboxExt {
	if o.ext == nil {
		o.ext = &outboxExt{m: m, owner: owner}
	}
	return o.ext
}

// setBandwidth limits the data written to bytesPerSec (token bucket, burst
// one second's worth, full at the start).
func (o *outbox) setBandwidth(bytesPerSec int, m *metrics, owner dueHandler) {
	if bytesPerSec <= 0 {
		return
	}
	o.extend(m, owner).bw = &tokenBucket{rate: float64(bytesPerSec), tokens: float64(bytesPerSec), at: time.Now()}
}

// setMode makes ref's key latest (with rate values per second, 0: no
// limit) or stream. What the key had waiting belongs to the earlier
// subscription, whose ack comes before the new one's: it is dropped.
func (o *outbox) setMode(ref *proto.StreamRef, mode proto.Mode, rate float64, m *metrics, owner dueHandler) {
	if mode != proto.ModeLatest {
		o.forget(ref)
		return
	}
	ext := o.extend(m, owner)
	if ext.keys == nil {
		ext.keys = make(map[*proto.StreamRef]*latestKey)
	}
	k := ext.keys[ref]
	if k == nil {
		k = &latestKey{idx: -1}
		ext.keys[ref] = k
	} else {
		o.dropLatest(k)
	}
	k.interval = 0
	if rate > 0 {
		// A tiny rate (1e-300 is valid JSON and > 0) would overflow.
		k.interval = time.Duration(min(float64(time.Second)/rate, maxInterval))
	}
}

// forget makes ref's key no longer latest (unsubscribed, or stream).
func (o *outbox) forget(ref *proto.StreamRef) {
	if o.ext == nil || o.ext.keys == nil {
		return
	}
	k := o.ext.keys[ref]
	if k == nil {
		return
	}
	o.dropLatest(k)
	delete(o.ext.keys, ref)
	if len(o.ext.keys) == 0 {
		o.ext.keys = nil
	}
}

// forgetNames is forget for keys of app given by name (an unsubscribe).
func (o *outbox) forgetNames(app string, keys []string) {
	if o.ext == nil || o.ext.keys == nil {
		return
	}
	for ref := range o.ext.keys {
		if ref.App != app {
			continue
		}
		for _, k := range keys {
			if ref.Key == k {
				o.forget(ref)
				break
			}
		}
	}
}

// latestKeyOf returns the latest key f belongs to, or nil.
func (o *outbox) latestKeyOf(f *proto.Frame) *latestKey {
	if o.ext == nil || o.ext.keys == nil || f.Stream == nil {
		return nil
	}
	return o.ext.keys[f.Stream]
}

// push queues f, a frame of no latest key.
func (o *outbox) push(f *proto.Frame) {
	o.items = append(o.items, outItem{f: f})
	o.bytes += len(f.Bytes)
}

// offer takes f, a data or reset frame of latest key k, at now. It reports
// whether the queue got a new item (the writer must run).
func (o *outbox) offer(k *latestKey, f *proto.Frame, now time.Time) bool {
	if f.Seq == 0 {
		// A reset: what the key had waiting is of the position it voids.
		// The reset itself is queued in order, and the values after it
		// go into a new slot behind it.
		o.dropLatest(k)
		o.push(f)
		return true
	}
	switch {
	case k.queued != nil:
		// Still in the queue (a slow connection): the newer value
		// replaces it in place.
		o.latestBytes += len(f.Bytes) - len(k.queued.Bytes)
		k.queued = f
		o.ext.m.skippedConflated.Inc()
		return false
	case k.pending != nil:
		k.pending = f
		o.ext.m.skippedRate.Inc()
		return false
	case k.interval > 0 && !k.last.IsZero() && now.Sub(k.last) < k.interval:
		// Within the interval: it waits for its end.
		k.pending = f
		o.schedule(k, k.last.Add(k.interval), now)
		return false
	}
	o.queueLatest(k, f, now)
	return true
}

func (o *outbox) queueLatest(k *latestKey, f *proto.Frame, now time.Time) {
	k.queued, k.last = f, now
	o.latestBytes += len(f.Bytes)
	o.items = append(o.items, outItem{key: k, gen: k.gen})
}

// dropLatest voids what k has waiting, queued or held back.
func (o *outbox) dropLatest(k *latestKey) {
	k.gen++
	if k.queued != nil {
		o.latestBytes -= len(k.queued.Bytes)
		k.queued = nil
	}
	if k.pending != nil {
		k.pending = nil
	}
	if k.idx >= 0 {
		heap.Remove(&o.ext.due, k.idx)
	}
}

func (o *outbox) schedule(k *latestKey, at, now time.Time) {
	k.due = at
	heap.Push(&o.ext.due, k)
	o.arm(now)
}

// arm sets the connection's timer to the first due key.
func (o *outbox) arm(now time.Time) {
	ext := o.ext
	if len(ext.due) == 0 {
		return // a timer that fires for nothing re-arms nothing
	}
	next := ext.due[0].due
	if !ext.armed.IsZero() && !next.Before(ext.armed) {
		return
	}
	ext.armed = next
	if ext.timer == nil {
		ext.timer = time.AfterFunc(next.Sub(now), ext.owner.onDue)
	} else {
		ext.timer.Reset(next.Sub(now))
	}
}

// fire moves the values that are due to the queue (the timer's work); it
// reports whether the queue got a new item.
func (o *outbox) fire(now time.Time) bool {
	ext := o.ext
	if ext == nil {
		return false
	}
	ext.armed = time.Time{}
	grew := false
	for len(ext.due) > 0 && !ext.due[0].due.After(now) {
		k := heap.Pop(&ext.due).(*latestKey)
		if f := k.pending; f != nil {
			k.pending = nil
			o.queueLatest(k, f, now)
			grew = true
		}
	}
	o.arm(now)
	return grew
}

// take appends to batch, in order, what the writer may write at now and
// removes it from the queue. With budget, data frames are held to the
// connection's max_bandwidth: wait then says when to take the rest.
func (o *outbox) take(batch []*proto.Frame, now time.Time, budget bool) (_ []*proto.Frame, wait time.Duration) {
	var bw *tokenBucket
	if budget && o.ext != nil {
		bw = o.ext.bw
	}
	i := 0
	for ; i < len(o.items); i++ {
		it := &o.items[i]
		f := it.f
		if it.key != nil {
			if it.gen != it.key.gen || it.key.queued == nil {
				continue // voided by a reset or a new subscribe
			}
			f = it.key.queued
		}
		if bw != nil && f.Seq != 0 {
			if wait = bw.take(len(f.Bytes), now); wait > 0 {
				break
			}
		}
		if it.key != nil {
			it.key.queued = nil
			o.latestBytes -= len(f.Bytes)
		} else {
			o.bytes -= len(f.Bytes)
		}
		batch = append(batch, f)
	}
	if i == len(o.items) {
		clear(o.items)
		o.items = o.items[:0]
	} else {
		n := copy(o.items, o.items[i:])
		clear(o.items[n:])
		o.items = o.items[:n]
	}
	return batch, wait
}

// idle lets go of the queue's array once the writer has nothing to do, so
// that an idle connection keeps no burst-sized one.
func (o *outbox) idle() {
	if len(o.items) == 0 {
		o.items = nil
	}
}

// clear drops everything queued or held back (a connection that overflowed
// or ends).
func (o *outbox) clear() {
	clear(o.items)
	o.items, o.bytes, o.latestBytes = nil, 0, 0
	if o.ext == nil {
		return
	}
	for _, k := range o.ext.keys {
		k.queued, k.pending, k.idx = nil, nil, -1
		k.gen++
	}
	o.ext.due = nil
}

// stop stops the timer of a connection that ends.
func (o *outbox) stop() {
	if o.ext != nil && o.ext.timer != nil {
		o.ext.timer.Stop()
		o.ext.armed = time.Time{}
	}
}

func (o *outbox) len() int { return len(o.items) }

// dueHeap orders latest keys by when their held-back value is due.
type dueHeap []*latestKey

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}

func (h *dueHeap) Push(x any) {
	k := x.(*latestKey)
	k.idx = len(*h)
	*h = append(*h, k)
}

func (h *dueHeap) Pop() any {
	old := *h
	k := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	k.idx = -1
	return k
}

// tokenBucket paces a connection's data to rate bytes per second, with a
// burst of one second's worth.
type tokenBucket struct {
	rate   float64
	tokens float64
	at     time.Time
}

// take spends n bytes at now and returns 0, or returns how long to wait
// before n may be written. A frame larger than the burst goes once the
// bucket is full, and leaves a debt the next ones wait for.
func (b *tokenBucket) take(n int, now time.Time) time.Duration {
	if now.After(b.at) {
		b.tokens = min(b.rate, b.tokens+now.Sub(b.at).Seconds()*b.rate)
		b.at = now
	}
	need := min(float64(n), b.rate)
	if b.tokens >= need {
		b.tokens -= float64(n)
		return 0
	}
	return max(time.Millisecond, time.Duration((need-b.tokens)/b.rate*float64(time.Second)))
}
