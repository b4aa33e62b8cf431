package middle

import (
	"sync"
	"sync/atomic"

	"github.com/wspush/wspush/proto"
)

// channel is the local state of one (app, key): its subscribers per format
// and the position this node has delivered up to.
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
	subs         [proto.NumFormats]subSet
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

// removeLocked drops s from every format; it reports whether s was there.
func (ch *channel) removeLocked(s Subscriber) bool {
	for f := range ch.subs {
		if ch.subs[f].remove(s) {
			ch.size.Add(-1)
			return true
		}
	}
	return false
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
