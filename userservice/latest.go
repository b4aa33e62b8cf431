package userservice

import (
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
//   - a latest key has at most one data frame waiting, in the queue (a
//     slot that points at the key, so that a newer value replaces the
//     frame in place). Its bytes never count toward QueueMaxBytes: a slow
//     connection conflates its latest keys instead of overflowing. Its
//     max_rate is not the connection's: the node paces the key once for
//     all its subscribers of that rate (middle, channel.go);
//   - with max_bandwidth, take hands the writer only the data frames the
//     connection's token bucket allows; the rest waits in the queue, where
//     latest keys go on conflating.
//
// A connection with no latest key and no max_bandwidth pays for the
// outbox one nil pointer beside its queue; none has a timer or a goroutine
// of its own for it.

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
	keys map[*proto.StreamRef]*latestKey // the connection's latest keys
	bw   *tokenBucket                    // nil: no max_bandwidth
	m    *metrics
}

// latestKey is the state of one latest key on a connection.
type latestKey struct {
	queued *proto.Frame // the value in the queue (an outItem points here)
	gen    uint32       // bumped when the outItem of the key is void
}

func (o *outbox) extend(m *metrics) *outboxExt {
	if o.ext == nil {
		o.ext = &outboxExt{m: m}
	}
	return o.ext
}

// setBandwidth limits the data written to bytesPerSec (token bucket, burst
// one second's worth, full at the start).
func (o *outbox) setBandwidth(bytesPerSec int, m *metrics) {
	if bytesPerSec <= 0 {
		return
	}
	o.extend(m).bw = &tokenBucket{rate: float64(bytesPerSec), tokens: float64(bytesPerSec), at: time.Now()}
}

// setMode makes ref's key latest (conflated) or stream. What the key had
// waiting belongs to the earlier subscription, whose ack comes before the
// new one's: it is dropped.
func (o *outbox) setMode(ref *proto.StreamRef, mode proto.Mode, m *metrics) {
	if mode != proto.ModeLatest {
		o.forget(ref)
		return
	}
	ext := o.extend(m)
	if ext.keys == nil {
		ext.keys = make(map[*proto.StreamRef]*latestKey)
	}
	k := ext.keys[ref]
	if k == nil {
		k = &latestKey{}
		ext.keys[ref] = k
	} else {
		o.dropLatest(k)
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

// offer takes f, a data or reset frame of latest key k. It reports whether
// the queue got a new item (the writer must run).
func (o *outbox) offer(k *latestKey, f *proto.Frame) bool {
	if f.Seq == 0 {
		// A reset: what the key had waiting is of the position it voids.
		// The reset itself is queued in order, and the values after it
		// go into a new slot behind it.
		o.dropLatest(k)
		o.push(f)
		return true
	}
	if k.queued != nil {
		// Still in the queue (a slow connection): the newer value
		// replaces it in place.
		o.latestBytes += len(f.Bytes) - len(k.queued.Bytes)
		k.queued = f
		o.ext.m.skippedConflated.Inc()
		return false
	}
	k.queued = f
	o.latestBytes += len(f.Bytes)
	o.items = append(o.items, outItem{key: k, gen: k.gen})
	return true
}

// dropLatest voids what k has waiting.
func (o *outbox) dropLatest(k *latestKey) {
	k.gen++
	if k.queued != nil {
		o.latestBytes -= len(k.queued.Bytes)
		k.queued = nil
	}
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

// clear drops everything queued (a connection that overflowed or ends).
func (o *outbox) clear() {
	clear(o.items)
	o.items, o.bytes, o.latestBytes = nil, 0, 0
	if o.ext == nil {
		return
	}
	for _, k := range o.ext.keys {
		k.queued = nil
		k.gen++
	}
}

func (o *outbox) len() int { return len(o.items) }

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
