package middle

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/wspush/wspush/proto"
)

// MemoryStore is the Store of the embedded mode: per key, an epoch made
// when the key is first touched (so an embedded restart starts every key in
// a new epoch), a sequence counter, a ring of the last HistorySize
// publications trimmed of entries older than HistoryTTL, and the
// idempotency ids seen within the window.
type MemoryStore struct {
	size       int
	ttl        time.Duration
	idemWindow time.Duration
	now        func() time.Time
	seed       maphash.Seed
	shards     [64]memoryShard
}

type memoryShard struct {
	mu      sync.Mutex
	streams map[StreamKey]*memoryStream
}

type memoryStream struct {
	epoch string
	seq   uint64
	fence uint64              // the highest fencing token appended with
	ring  []proto.Publication // ring[(seq-1) % size] holds seq; grows to size
	at    []int64             // unix nanos each entry was appended, for TTL
	ids   map[string]uint64   // idempotency id → seq, within the window
	order []idemEntry         // ids in the order seen, for expiry
}

type idemEntry struct {
	id string
	at int64 // unix nanos
}

// MaxIdempotencyIDsPerKey bounds the idempotency ids a memory store keeps
// per key, whatever the window: a key published faster than this many
// times per window forgets its oldest ids first.
const MaxIdempotencyIDsPerKey = 100_000

// NewMemoryStore returns a store keeping historySize publications per key
// (at least 1: the latest value) for at most ttl (0: no age limit), and
// idempotency ids for idemWindow (0: DefaultIdempotencyWindow).
func NewMemoryStore(historySize int, ttl, idemWindow time.Duration) *MemoryStore {
	if historySize < 1 {
		historySize = 1
	}
	if idemWindow <= 0 {
		idemWindow = DefaultIdempotencyWindow
	}
	s := &MemoryStore{size: historySize, ttl: ttl, idemWindow: idemWindow, now: time.Now, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].streams = make(map[StreamKey]*memoryStream)
	}
	return s
}

func (s *MemoryStore) shard(app, key string) *memoryShard {
	var h maphash.Hash
	h.SetSeed(s.seed)
	h.WriteString(app)
	h.WriteByte('.')
	h.WriteString(key)
	return &s.shards[h.Sum64()%uint64(len(s.shards))]
}

// stream returns the stream of (app, key), created in a new epoch when the
// key has none. The caller holds sh.mu.
func (sh *memoryShard) stream(app, key string) *memoryStream {
	k := StreamKey{app, key}
	st := sh.streams[k]
	if st == nil {
		// The ring grows with the key's publications: a key published once
		// (say, by a publisher to keys nobody watches) costs one entry, not
		// HistorySize of them.
		st = &memoryStream{epoch: proto.NewEpoch()}
		sh.streams[k] = st
	}
	return st
}

// AppendBatch implements Store. It fails only when a fence is refused
// (an embedded node has no partitions to lose, but the contract is the
// same as a shared store's).
func (s *MemoryStore) AppendBatch(_ context.Context, pubs []proto.Publication, fence uint64) (int, error) {
	for i := range pubs {
		if err := s.append(&pubs[i], fence); err != nil {
			return i, err
		}
	}
	return len(pubs), nil
}

func (s *MemoryStore) append(p *proto.Publication, fence uint64) error {
	sh := s.shard(p.App, p.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.stream(p.App, p.Key)
	if fence > 0 {
		if st.fence > fence {
			return fmt.Errorf("%s.%s: fence %d is below %d: %w", p.App, p.Key, fence, st.fence, ErrFenced)
		}
		st.fence = fence
	}
	now := s.now().UnixNano()
	p.Epoch = st.epoch
	if p.ID != "" {
		s.expireIDs(st, now)
		if seq, ok := st.ids[p.ID]; ok {
			p.Seq = seq
			return nil
		}
	}
	st.seq++
	p.Seq = st.seq
	if p.ID != "" {
		if st.ids == nil {
			st.ids = make(map[string]uint64)
		}
		st.ids[p.ID] = p.Seq
		st.order = append(st.order, idemEntry{p.ID, now})
		if len(st.order) > MaxIdempotencyIDsPerKey {
			delete(st.ids, st.order[0].id)
			st.order = st.order[1:]
		}
	}
	if len(st.ring) < s.size {
		st.ring = append(st.ring, *p)
		st.at = append(st.at, now)
		return nil
	}
	i := (st.seq - 1) % uint64(s.size)
	st.ring[i] = *p
	st.at[i] = now
	return nil
}

// expireIDs forgets the idempotency ids older than the window.
func (s *MemoryStore) expireIDs(st *memoryStream, now int64) {
	cutoff := now - s.idemWindow.Nanoseconds()
	n := 0
	for n < len(st.order) && st.order[n].at < cutoff {
		delete(st.ids, st.order[n].id)
		n++
	}
	if n > 0 {
		st.order = append(st.order[:0:0], st.order[n:]...)
	}
}

// oldest is the lowest seq still retained (1 when nothing was appended).
func (s *MemoryStore) oldest(st *memoryStream) uint64 {
	lo := uint64(1)
	if st.seq > uint64(len(st.ring)) {
		lo = st.seq - uint64(len(st.ring)) + 1
	}
	if s.ttl > 0 {
		cutoff := s.now().Add(-s.ttl).UnixNano()
		// The latest value is always kept (docs/PROTOCOL.md, "Recovered").
		for lo < st.seq && st.at[(lo-1)%uint64(s.size)] < cutoff {
			lo++
		}
	}
	return lo
}

// History implements Store.
func (s *MemoryStore) History(_ context.Context, app, key string, since uint64) (History, error) {
	sh := s.shard(app, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.stream(app, key)
	h := History{Top: proto.Position{Seq: st.seq, Epoch: st.epoch}}
	if since >= st.seq {
		return h, nil
	}
	lo := max(s.oldest(st), since+1)
	h.Pubs = make([]proto.Publication, 0, st.seq-lo+1)
	for seq := lo; seq <= st.seq; seq++ {
		h.Pubs = append(h.Pubs, st.ring[(seq-1)%uint64(s.size)])
	}
	return h, nil
}

// Latest implements Store. The latest value outlives HistoryTTL: a
// dashboard that subscribes to a quiet key still sees its last value.
func (s *MemoryStore) Latest(_ context.Context, app, key string) (History, error) {
	sh := s.shard(app, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.stream(app, key)
	h := History{Top: proto.Position{Seq: st.seq, Epoch: st.epoch}}
	if st.seq > 0 {
		h.Pubs = []proto.Publication{st.ring[(st.seq-1)%uint64(s.size)]}
	}
	return h, nil
}

// Tops implements Store.
func (s *MemoryStore) Tops(_ context.Context, keys []StreamKey) ([]proto.Position, error) {
	out := make([]proto.Position, len(keys))
	for i, k := range keys {
		sh := s.shard(k.App, k.Key)
		sh.mu.Lock()
		st := sh.stream(k.App, k.Key)
		out[i] = proto.Position{Seq: st.seq, Epoch: st.epoch}
		sh.mu.Unlock()
	}
	return out, nil
}
