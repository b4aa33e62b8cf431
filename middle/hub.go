package middle

import (
	"hash/maphash"
	"sort"
	"sync"

	"github.com/wspush/wspush/proto"
)

// hub maps (app, key) to the channel holding its local subscribers.
type hub struct {
	seed   maphash.Seed
	shards [64]hubShard
}

type hubShard struct {
	mu       sync.RWMutex
	channels map[StreamKey]*channel
}

func newHub() *hub {
	h := &hub{seed: maphash.MakeSeed()}
	for i := range h.shards {
		h.shards[i].channels = make(map[StreamKey]*channel)
	}
	return h
}

// hash spreads (app, key) over the hub's shards and the node's delivery
// workers.
func (h *hub) hash(app, key string) uint64 {
	var mh maphash.Hash
	mh.SetSeed(h.seed)
	mh.WriteString(app)
	mh.WriteByte('.')
	mh.WriteString(key)
	return mh.Sum64()
}

func (h *hub) shard(app, key string) *hubShard {
	return &h.shards[h.hash(app, key)%uint64(len(h.shards))]
}

func (h *hub) get(app, key string) *channel {
	sh := h.shard(app, key)
	sh.mu.RLock()
	ch := sh.channels[StreamKey{app, key}]
	sh.mu.RUnlock()
	return ch
}

func (h *hub) getOrCreate(app, key string) *channel {
	if ch := h.get(app, key); ch != nil {
		return ch
	}
	sh := h.shard(app, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := StreamKey{app, key}
	ch := sh.channels[k]
	if ch == nil {
		ch = &channel{app: app, key: key, ref: proto.StreamRef{App: app, Key: key}}
		sh.channels[k] = ch
	}
	return ch
}

// remove deletes ch from the map; the caller holds ch.mu and has marked it
// dead, so a subscriber that still finds it retries with a fresh channel.
func (h *hub) remove(ch *channel) {
	sh := h.shard(ch.app, ch.key)
	sh.mu.Lock()
	if sh.channels[StreamKey{ch.app, ch.key}] == ch {
		delete(sh.channels, StreamKey{ch.app, ch.key})
	}
	sh.mu.Unlock()
}

// apps lists the apps with at least one local subscriber.
func (h *hub) apps() []string {
	set := make(map[string]struct{})
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for k := range sh.channels {
			set[k.App] = struct{}{}
		}
		sh.mu.RUnlock()
	}
	return sortedSet(set)
}

// keys lists the keys of app with at least one local subscriber.
func (h *hub) keys(app string) []string {
	set := make(map[string]struct{})
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for k := range sh.channels {
			if k.App == app {
				set[k.Key] = struct{}{}
			}
		}
		sh.mu.RUnlock()
	}
	return sortedSet(set)
}

// counts returns the number of channels and of subscriptions.
func (h *hub) counts() (channels, subs int) {
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		channels += len(sh.channels)
		for _, ch := range sh.channels {
			subs += int(ch.size.Load())
		}
		sh.mu.RUnlock()
	}
	return channels, subs
}

func sortedSet(set map[string]struct{}) []string {
	out := make([]string, 0, len(set))
	for s := range set {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// subSet is a set of subscribers that iterates as a slice (fan-out is the
// hot path) and removes in O(1) by swapping with the last element.
type subSet struct {
	list []Subscriber
	pos  map[Subscriber]int
}

func (s *subSet) add(sub Subscriber) bool {
	if _, ok := s.pos[sub]; ok {
		return false
	}
	if s.pos == nil {
		s.pos = make(map[Subscriber]int)
	}
	s.pos[sub] = len(s.list)
	s.list = append(s.list, sub)
	return true
}

func (s *subSet) remove(sub Subscriber) bool {
	i, ok := s.pos[sub]
	if !ok {
		return false
	}
	last := len(s.list) - 1
	moved := s.list[last]
	s.list[i] = moved
	s.pos[moved] = i
	s.list[last] = nil
	s.list = s.list[:last]
	delete(s.pos, sub)
	if len(s.list) == 0 {
		*s = subSet{} // give the memory of a once-crowded key back
	}
	return true
}

func (s *subSet) has(sub Subscriber) bool {
	_, ok := s.pos[sub]
	return ok
}

// all returns every channel (a snapshot; each may die meanwhile).
func (h *hub) all() []*channel {
	var out []*channel
	for i := range h.shards {
		sh := &h.shards[i]
		sh.mu.RLock()
		for _, ch := range sh.channels {
			out = append(out, ch)
		}
		sh.mu.RUnlock()
	}
	return out
}
