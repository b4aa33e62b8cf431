package middle

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspush/wspush/proto"
)

// channel is the local state of one (app, key): its subscribers per format
// (and per max_rate, for latest ones that have one) and the position this
// node has delivered up to.
//
// Two locks, always taken in this order: io serializes the store and bus
// I/O of the key (watch, catching up with the store, the subscribe that
// reads history), and mu guards the state. Nothing waits for I/O under mu,
// so a bus delivery never waits for another key's store call, and a
// delivery of this key never waits for its own: while an I/O is under way
// (syncing), live publications are parked, and the I/O holder merges them
// with what it read before it lets go of io.
type channel struct {
	app, key string
	// ref names the key on every data and reset frame of the channel
	// (proto.Frame.Stream).
	ref proto.StreamRef

	io      sync.Mutex
	watched bool // the Bus delivers this key to this node; guarded by io

	mu          sync.Mutex
	dead        bool // removed from the hub; a subscriber must get a fresh one
	initialized bool // pos was read from the Store
	syncing     bool // an io holder is reading the store: park live publications
	catchingUp  bool // a catch-up goroutine runs for this channel
	pos         proto.Position
	// latest is the publication at pos when hasLatest (the store may no
	// longer retain one, after a gap or in a new epoch).
	latest    proto.Publication
	hasLatest bool
	// latestFrames caches latest encoded per format, for subscribes.
	latestFrames [proto.NumFormats]*proto.Frame
	// subs are the subscribers that get every value: stream ones, and
	// latest ones without max_rate. groups are the latest subscribers with
	// a max_rate, paced once per (format, rate) (docs/PROTOCOL.md,
	// "Delivery modes"); nil while there are none.
	subs   [proto.NumFormats]subSet
	groups map[groupKey]*rateGroup
	// parked holds live publications that arrived while syncing, in
	// arrival order (seq order within an epoch); bounded by maxParked.
	parked []proto.Publication
	// lostParked is set when parked overflowed: the io holder must read
	// the store again.
	lostParked bool

	size atomic.Int32 // subscribers over all formats, read without mu
}

// maxParked bounds the publications parked on one channel during one
// store read; beyond it they are dropped and read back from the store.
const maxParked = 4096

// groupKey names a rateGroup of a channel.
type groupKey struct {
	format proto.Format
	rate   float64 // max_rate, values per second
}

// rateGroup is the latest subscribers of a channel that share a format and
// a max_rate (docs/PROTOCOL.md, "Delivery modes"): they get at most one
// value per interval, always the channel's newest, never held back longer
// than interval. The pacing is the group's, not each subscriber's: one
// timer per group, whatever its size. Guarded by the channel's mu.
type rateGroup struct {
	key      groupKey
	interval time.Duration // 1/rate
	subs     subSet
	last     time.Time // when the group was last sent a value
	// held: a value arrived within interval of last and waits for the
	// timer, which sends the channel's newest value then.
	held bool
	// joined are the members that subscribed while a value was held and
	// got that very value with their subscribe: the timer skips them.
	// Cleared when the held value changes or goes.
	joined map[Subscriber]struct{}
	timer  *time.Timer // created on the first hold
	armed  bool        // timer runs
}

// maxInterval bounds a group's 1/max_rate (a century): a tiny rate (1e-300
// is valid JSON and > 0) would overflow a time.Duration.
const maxInterval = float64(100 * 365 * 24 * time.Hour)

// rateInterval is 1/rate as a time.Duration.
func rateInterval(rate float64) time.Duration {
	return time.Duration(min(float64(time.Second)/rate, maxInterval))
}

// addLocked adds s, which is in no set of ch, where its mode puts it:
// the group of (f, rate) for a latest subscriber with a max_rate, subs[f]
// otherwise. It reports the group, or nil.
func (ch *channel) addLocked(s Subscriber, f proto.Format, mode proto.Mode, rate float64) *rateGroup {
	ch.size.Add(1)
	if mode != proto.ModeLatest || rate <= 0 {
		ch.subs[f].add(s)
		return nil
	}
	k := groupKey{f, rate}
	g := ch.groups[k]
	if g == nil {
		if ch.groups == nil {
			ch.groups = make(map[groupKey]*rateGroup)
		}
		g = &rateGroup{key: k, interval: rateInterval(rate)}
		ch.groups[k] = g
	}
	g.subs.add(s)
	return g
}

// removeLocked drops s from every format and group; it reports whether s
// was there. A group left empty stops its timer and goes.
func (ch *channel) removeLocked(s Subscriber) bool {
	for f := range ch.subs {
		if ch.subs[f].remove(s) {
			ch.size.Add(-1)
			return true
		}
	}
	for k, g := range ch.groups {
		if !g.subs.remove(s) {
			continue
		}
		delete(g.joined, s)
		ch.size.Add(-1)
		if len(g.subs.list) == 0 {
			g.stop()
			delete(ch.groups, k)
			if len(ch.groups) == 0 {
				ch.groups = nil
			}
		}
		return true
	}
	return false
}

// stopGroupsLocked stops the timers of every group (the channel dies).
func (ch *channel) stopGroupsLocked() {
	for _, g := range ch.groups {
		g.stop()
	}
}

// stop stops g's timer and forgets what it held.
func (g *rateGroup) stop() {
	if g.timer != nil {
		g.timer.Stop()
	}
	g.armed, g.held, g.joined = false, false, nil
}

// latestFrameLocked is the latest publication encoded in format f, or nil.
func (ch *channel) latestFrameLocked(f proto.Format) *proto.Frame {
	if !ch.hasLatest {
		return nil
	}
	if ch.latestFrames[f] == nil {
		frame := proto.EncodeDataFrame(&ch.latest, f)
		frame.Stream = &ch.ref
		ch.latestFrames[f] = frame
	}
	return ch.latestFrames[f]
}

// dataFrame encodes p, a publication of ch, in format f.
func (ch *channel) dataFrame(p *proto.Publication, f proto.Format) *proto.Frame {
	frame := proto.EncodeDataFrame(p, f)
	frame.Stream = &ch.ref
	return frame
}

// resetFrame is the reset of ch to pos.
func (ch *channel) resetFrame(pos proto.Position, reason string) *proto.Frame {
	frame := proto.NewFrame(proto.OpcodeText, proto.AppendReset(nil, ch.app, ch.key, pos, reason))
	frame.Stream = &ch.ref
	return frame
}

// park keeps p for the io holder; false when the parking is full.
func (ch *channel) parkLocked(p *proto.Publication) {
	if len(ch.parked) >= maxParked {
		ch.lostParked = true
		return
	}
	ch.parked = append(ch.parked, *p)
}
