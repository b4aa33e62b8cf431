package middle

import (
	"sync"
	"sync/atomic"

	"github.com/wspush/wspush/proto"
)

// channel is the local state of one (app, key): its subscribers per format
// and how far this node has delivered. All fields but size are guarded by
// mu; deliveries of one key are serialized by it, which is what keeps each
// subscriber's stream in seq order.
type channel struct {
	app, key string

	mu          sync.Mutex
	dead        bool // removed from the hub; a subscriber must get a fresh one
	watched     bool // the Bus delivers this key to this node
	initialized bool // lastSeq and latest were read from the Store
	lastSeq     uint64
	latest      proto.Publication // seq == lastSeq, when lastSeq > 0
	// latestFrames caches latest encoded per format, for subscribes.
	latestFrames [proto.NumFormats]*proto.Frame
	subs         [proto.NumFormats]subSet

	size atomic.Int32 // subscribers over all formats, read without mu
}

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
	if ch.lastSeq == 0 {
		return nil
	}
	if ch.latestFrames[f] == nil {
		ch.latestFrames[f] = proto.EncodeDataFrame(&ch.latest, f)
	}
	return ch.latestFrames[f]
}
