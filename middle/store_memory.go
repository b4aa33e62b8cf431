package middle

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/wspush/wspush/proto"
)

// MemoryStore is the Store of the embedded mode: a sequence counter and a
// ring of the last HistorySize publications per key, trimmed of entries
// older than HistoryTTL.
type MemoryStore struct {
	size   int
	ttl    time.Duration
	now    func() time.Time
	seed   maphash.Seed
	shards [64]memoryShard
}

type memoryShard struct {
	mu      sync.Mutex
	streams map[streamKey]*memoryStream
}

type streamKey struct{ app, key string }

type memoryStream struct {
	seq  uint64
	ring []proto.Publication // ring[(seq-1) % size] holds seq; grows to size
	at   []int64             // unix nanos each entry was appended, for TTL
}

// NewMemoryStore returns a store keeping historySize publications per key
// (at least 1: the latest value) for at most ttl (0: no age limit).
func NewMemoryStore(historySize int, ttl time.Duration) *MemoryStore {
	if historySize < 1 {
		historySize = 1
	}
	s := &MemoryStore{size: historySize, ttl: ttl, now: time.Now, seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].streams = make(map[streamKey]*memoryStream)
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

// Append implements Store.
func (s *MemoryStore) Append(_ context.Context, p *proto.Publication) error {
	sh := s.shard(p.App, p.Key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	k := streamKey{p.App, p.Key}
	st := sh.streams[k]
	if st == nil {
		// The ring grows with the key's publications: a key published once
		// (say, by a publisher to keys nobody watches) costs one entry, not
		// HistorySize of them.
		st = &memoryStream{}
		sh.streams[k] = st
	}
	st.seq++
	p.Seq = st.seq
	now := s.now().UnixNano()
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

// AppendBatch implements Store; like Append, it never fails.
func (s *MemoryStore) AppendBatch(ctx context.Context, pubs []proto.Publication) (int, error) {
	for i := range pubs {
		if err := s.Append(ctx, &pubs[i]); err != nil {
			return i, err
		}
	}
	return len(pubs), nil
}

// oldest is the lowest seq still retained (top+1 when nothing is).
func (s *MemoryStore) oldest(st *memoryStream) uint64 {
	lo := uint64(1)
	if st.seq > uint64(s.size) {
		lo = st.seq - uint64(s.size) + 1
	}
	if s.ttl > 0 {
		cutoff := s.now().Add(-s.ttl).UnixNano()
		for lo <= st.seq && st.at[(lo-1)%uint64(s.size)] < cutoff {
			lo++
		}
	}
	return lo
}

// History implements Store.
func (s *MemoryStore) History(_ context.Context, app, key string, since uint64) ([]proto.Publication, bool, error) {
	sh := s.shard(app, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.streams[streamKey{app, key}]
	if st == nil {
		return nil, since == 0, nil
	}
	if since >= st.seq {
		return nil, since == st.seq, nil
	}
	lo := s.oldest(st)
	complete := since+1 >= lo
	if since+1 > lo {
		lo = since + 1
	}
	pubs := make([]proto.Publication, 0, st.seq-lo+1)
	for seq := lo; seq <= st.seq; seq++ {
		pubs = append(pubs, st.ring[(seq-1)%uint64(s.size)])
	}
	return pubs, complete, nil
}

// Latest implements Store. The latest value outlives HistoryTTL: a
// dashboard that subscribes to a quiet key still sees its last value.
func (s *MemoryStore) Latest(_ context.Context, app, key string) (proto.Publication, bool, error) {
	sh := s.shard(app, key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	st := sh.streams[streamKey{app, key}]
	if st == nil {
		return proto.Publication{}, false, nil
	}
	return st.ring[(st.seq-1)%uint64(s.size)], true, nil
}
