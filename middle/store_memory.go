package middle

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wspush/wspush/proto"
)

// MemoryStore is the Store of the embedded mode: per key, an epoch made
// when the key is first touched (so an embedded restart starts every key in
// a new epoch), a sequence counter, a ring of the last HistorySize
// publications trimmed of entries older than HistoryTTL, and the
// idempotency ids seen within the window.
//
// With a key limit (LimitKeys), a key the store has no room for evicts the
// least recently published key that has no local subscribers, so that a
// publisher to ever new keys cannot grow the process without bound; an
// evicted key published again starts a new epoch, so that a resume from
// an old position gets a reset, never a wrong replay.
type MemoryStore struct {
	size       int
	ttl        time.Duration
	idemWindow time.Duration
	now        func() time.Time
	seed       maphash.Seed
	shards     [64]memoryShard

	// maxKeys bounds the keys held (0: no bound); inUse reports a key with
	// local subscribers, never evicted (nil: none is). Set before use.
	maxKeys   int64
	inUse     func(app, key string) bool
	keys      atomic.Int64  // keys held
	evictions atomic.Uint64 // keys evicted to make room
	rotor     atomic.Uint32 // the shard where a search for room starts
}

// memoryShard holds its keys in a map and in a list from the most recently
// published (head) to the least (tail), the order of eviction.
type memoryShard struct {
	mu         sync.Mutex
	idx        int // in MemoryStore.shards
	streams    map[StreamKey]*memoryStream
	head, tail *memoryStream
}

type memoryStream struct {
	key        StreamKey
	prev, next *memoryStream // the shard's recency list; prev is more recent

	epoch string
	seq   uint64
	fence uint64              // the highest fencing token appended with
	ring  []proto.Publication // ring[(seq-1) % size] holds seq; grows to size
	at    []int64             // unix nanos each entry was appended, for TTL
	ids   *memoryIDs          // nil while the key has no idempotency id
}

// memoryIDs are the idempotency ids of one key within the window: apart
// from its stream, so that a key published without ids does not pay for
// them.
type memoryIDs struct {
	seqs  map[string]uint64 // idempotency id → seq
	order []idemEntry       // ids in the order seen, for expiry
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
		s.shards[i].idx = i
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

// ErrKeyLimit is a key the memory store has no room for: it holds
// --max-keys keys and every one it could evict has local subscribers.
// Node.Publish wraps it in ErrUnavailable too: room comes back when
// subscribers leave, so the publication may be retried.
var ErrKeyLimit = errors.New("key limit reached: the keys held have local subscribers (see --max-keys)")

// evictScan bounds the keys one eviction looks at in a shard, from its
// least recently published end.
const evictScan = 16

// LimitKeys bounds the keys s holds to maxKeys (0: no bound). A new key
// beyond it evicts the least recently published key for which inUse (nil:
// none) is false, or is refused with ErrKeyLimit. Recency is kept per
// shard (1/64th of the keys): the key evicted is the least recently
// published of the new key's shard, or of another shard when that one has
// none to spare. Call it before s is used; it returns s.
func (s *MemoryStore) LimitKeys(maxKeys int, inUse func(app, key string) bool) *MemoryStore {
	s.maxKeys, s.inUse = int64(max(maxKeys, 0)), inUse
	return s
}

// Keys returns the number of keys held.
func (s *MemoryStore) Keys() int { return int(s.keys.Load()) }

// Evictions returns the number of keys evicted to make room for others.
func (s *MemoryStore) Evictions() uint64 { return s.evictions.Load() }

// stream returns the stream of (app, key), created in a new epoch when the
// key has none. The caller holds sh.mu.
func (s *MemoryStore) stream(sh *memoryShard, app, key string) (*memoryStream, error) {
	k := StreamKey{app, key}
	if st := sh.streams[k]; st != nil {
		return st, nil
	}
	if err := s.reserveKey(sh); err != nil {
		return nil, fmt.Errorf("%s.%s: %w", app, key, err)
	}
	// The ring grows with the key's publications: a key published once
	// (say, by a publisher to keys nobody watches) costs one entry, not
	// HistorySize of them.
	st := &memoryStream{key: k, epoch: proto.NewEpoch()}
	sh.streams[k] = st
	sh.pushFront(st)
	return st, nil
}

// reserveKey counts one more key, evicting one first when the store is
// full. The caller holds own.mu, the shard of the new key.
func (s *MemoryStore) reserveKey(own *memoryShard) error {
	for {
		n := s.keys.Load()
		if s.maxKeys == 0 || n < s.maxKeys {
			if s.keys.CompareAndSwap(n, n+1) {
				return nil
			}
			continue
		}
		if !s.makeRoom(own) {
			return ErrKeyLimit
		}
	}
}

// makeRoom evicts one key: from own (whose mu the caller holds), else from
// another shard. Shards are locked in index order (after own, blocking) or
// tried (before it), so that two makers of room never wait for each other.
func (s *MemoryStore) makeRoom(own *memoryShard) bool {
	if s.evictLocked(own) {
		return true
	}
	start := int(s.rotor.Add(1))
	for i := range len(s.shards) {
		sh := &s.shards[(start+i)%len(s.shards)]
		switch {
		case sh == own:
			continue
		case sh.idx > own.idx:
			sh.mu.Lock()
		case !sh.mu.TryLock():
			continue
		}
		ok := s.evictLocked(sh)
		sh.mu.Unlock()
		if ok {
			return true
		}
	}
	return false
}

// evictLocked removes the least recently published key of sh that is not
// in use, looking at up to evictScan keys; the keys in use it passes move
// to the head, so that the next look sees others. The caller holds sh.mu.
func (s *MemoryStore) evictLocked(sh *memoryShard) bool {
	for range min(evictScan, len(sh.streams)) {
		st := sh.tail
		if s.inUse != nil && s.inUse(st.key.App, st.key.Key) {
			sh.moveToFront(st)
			continue
		}
		sh.unlink(st)
		delete(sh.streams, st.key)
		s.keys.Add(-1)
		s.evictions.Add(1)
		return true
	}
	return false
}

func (sh *memoryShard) pushFront(st *memoryStream) {
	st.prev, st.next = nil, sh.head
	if sh.head != nil {
		sh.head.prev = st
	} else {
		sh.tail = st
	}
	sh.head = st
}

func (sh *memoryShard) unlink(st *memoryStream) {
	if st.prev != nil {
		st.prev.next = st.next
	} else {
		sh.head = st.next
	}
	if st.next != nil {
		st.next.prev = st.prev
	} else {
		sh.tail = st.prev
	}
	st.prev, st.next = nil, nil
}

func (sh *memoryShard) moveToFront(st *memoryStream) {
	if sh.head != st {
		sh.unlink(st)
		sh.pushFront(st)
	}
}

// AppendBatch implements Store. It fails only when a fence is refused
// (an embedded node has no partitions to lose, but the contract is the
// same as a shared store's) or a new key finds no room (ErrKeyLimit).
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
	st, err := s.stream(sh, p.App, p.Key)
	if err != nil {
		return err
	}
	sh.moveToFront(st)
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
		if st.ids != nil {
			if seq, ok := st.ids.seqs[p.ID]; ok {
				p.Seq = seq
				return nil
			}
		}
	}
	st.seq++
	p.Seq = st.seq
	if p.ID != "" {
		if st.ids == nil {
			st.ids = &memoryIDs{seqs: make(map[string]uint64)}
		}
		ids := st.ids
		ids.seqs[p.ID] = p.Seq
		ids.order = append(ids.order, idemEntry{p.ID, now})
		if len(ids.order) > MaxIdempotencyIDsPerKey {
			delete(ids.seqs, ids.order[0].id)
			ids.order = ids.order[1:]
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
	ids := st.ids
	if ids == nil {
		return
	}
	cutoff := now - s.idemWindow.Nanoseconds()
	n := 0
	for n < len(ids.order) && ids.order[n].at < cutoff {
		delete(ids.seqs, ids.order[n].id)
		n++
	}
	switch {
	case n == len(ids.order):
		st.ids = nil // every id expired: give their memory back
	case n > 0:
		ids.order = append(ids.order[:0:0], ids.order[n:]...)
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
	st, err := s.stream(sh, app, key)
	if err != nil {
		return History{}, err
	}
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
	st, err := s.stream(sh, app, key)
	if err != nil {
		return History{}, err
	}
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
		st, err := s.stream(sh, k.App, k.Key)
		if err != nil {
			sh.mu.Unlock()
			return nil, err
		}
		out[i] = proto.Position{Seq: st.seq, Epoch: st.epoch}
		sh.mu.Unlock()
	}
	return out, nil
}
