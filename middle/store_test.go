package middle

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/wspush/wspush/proto"
)

// fakeStore is a Store for the ordering core's tests: a MemoryStore that
// fans what it sequences out to a fakeBus (as the Redis store does), and
// that a test can make fail, block, lose a key, or skip the fan-out.
type fakeStore struct {
	mem *MemoryStore
	bus *fakeBus // nil: no fan-out

	failAppend, failRead atomic.Bool
	noFanout             atomic.Bool // sequence without fanning out (a lost message)
	historyReads         atomic.Int64
	topsCalls            atomic.Int64

	mu   sync.Mutex    // orders the fan-out like the sequencing
	gate chan struct{} // when not nil, reads wait until it is closed
}

var errStoreDown = errors.New("store down")

func newFakeStore(historySize int, bus *fakeBus) *fakeStore {
	return &fakeStore{mem: NewMemoryStore(historySize, 0, DefaultIdempotencyWindow), bus: bus}
}

// block makes reads wait until the returned function is called.
func (s *fakeStore) block() (release func()) {
	g := make(chan struct{})
	s.mu.Lock()
	s.gate = g
	s.mu.Unlock()
	return sync.OnceFunc(func() {
		s.mu.Lock()
		s.gate = nil
		s.mu.Unlock()
		close(g)
	})
}

func (s *fakeStore) read(ctx context.Context) error {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		select {
		case <-g:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if s.failRead.Load() {
		return errStoreDown
	}
	return nil
}

// lose drops (app, key) as a store losing its data does: the next touch
// starts a new epoch.
func (s *fakeStore) lose(app, key string) {
	sh := s.mem.shard(app, key)
	sh.mu.Lock()
	delete(sh.streams, StreamKey{app, key})
	sh.mu.Unlock()
}

// sequence appends pubs without fanning them out and returns them
// sequenced: what another node's publication whose message was lost looks
// like from here.
func (s *fakeStore) sequence(pubs ...proto.Publication) []proto.Publication {
	if _, err := s.mem.AppendBatch(context.Background(), pubs, 0); err != nil {
		panic(err)
	}
	return pubs
}

func (s *fakeStore) AppendBatch(ctx context.Context, pubs []proto.Publication, fence uint64) (int, error) {
	if s.failAppend.Load() {
		return 0, errStoreDown
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range pubs {
		p := &pubs[i]
		top, _ := s.mem.Tops(ctx, []StreamKey{{p.App, p.Key}})
		if _, err := s.mem.AppendBatch(ctx, pubs[i:i+1], fence); err != nil {
			return i, err
		}
		if s.bus != nil && !s.noFanout.Load() && p.Seq > top[0].Seq {
			s.bus.send(*p)
		}
	}
	return len(pubs), nil
}

func (s *fakeStore) History(ctx context.Context, app, key string, since uint64) (History, error) {
	if err := s.read(ctx); err != nil {
		return History{}, err
	}
	s.historyReads.Add(1)
	return s.mem.History(ctx, app, key, since)
}

func (s *fakeStore) Latest(ctx context.Context, app, key string) (History, error) {
	if err := s.read(ctx); err != nil {
		return History{}, err
	}
	return s.mem.Latest(ctx, app, key)
}

func (s *fakeStore) Tops(ctx context.Context, keys []StreamKey) ([]proto.Position, error) {
	if err := s.read(ctx); err != nil {
		return nil, err
	}
	s.topsCalls.Add(1)
	return s.mem.Tops(ctx, keys)
}

// fakeBus is a Bus that carries what a fakeStore sends (and what a test
// injects) to the node's deliver, from one goroutine, in order, for the
// keys watched.
type fakeBus struct {
	mu      sync.Mutex
	cond    *sync.Cond
	queue   []proto.Publication
	watched map[StreamKey]int // watch count, to catch unbalanced calls
	running bool
	resyncF func()

	failWatch             atomic.Bool
	watches, unwatches    atomic.Int64
	delivered, notWatched atomic.Int64
}

func newFakeBus() *fakeBus {
	b := &fakeBus{watched: make(map[StreamKey]int)}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// send queues p for delivery when its key is watched (else drops it, as
// pub/sub does).
func (b *fakeBus) send(p proto.Publication) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.watched[StreamKey{p.App, p.Key}] == 0 {
		b.notWatched.Add(1)
		return
	}
	b.queue = append(b.queue, p)
	b.cond.Broadcast()
}

// inject queues p whether or not its key is watched: duplicates,
// reorderings, publications of another epoch.
func (b *fakeBus) inject(pubs ...proto.Publication) {
	b.mu.Lock()
	b.queue = append(b.queue, pubs...)
	b.cond.Broadcast()
	b.mu.Unlock()
}

// idle waits until everything queued was handed to deliver.
func (b *fakeBus) idle() {
	b.mu.Lock()
	for len(b.queue) > 0 {
		b.cond.Wait()
	}
	b.mu.Unlock()
}

func (b *fakeBus) isWatched(app, key string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.watched[StreamKey{app, key}] > 0
}

// resync calls the node's resync, as after a reconnect.
func (b *fakeBus) resync() {
	b.mu.Lock()
	f := b.resyncF
	b.mu.Unlock()
	f()
}

func (b *fakeBus) Run(ctx context.Context, deliver func(*proto.Publication), resync func()) error {
	b.mu.Lock()
	if b.running {
		b.mu.Unlock()
		return errors.New("fakeBus: Run twice")
	}
	b.running, b.resyncF = true, resync
	b.mu.Unlock()
	stop := context.AfterFunc(ctx, func() {
		b.mu.Lock()
		b.cond.Broadcast()
		b.mu.Unlock()
	})
	defer stop()
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && ctx.Err() == nil {
			b.cond.Wait()
		}
		if ctx.Err() != nil {
			b.mu.Unlock()
			return nil
		}
		p := b.queue[0]
		b.mu.Unlock()
		deliver(&p)
		b.delivered.Add(1)
		b.mu.Lock()
		b.queue = b.queue[1:]
		b.cond.Broadcast()
		b.mu.Unlock()
	}
}

func (b *fakeBus) Watch(ctx context.Context, app, key string) error {
	if b.failWatch.Load() {
		return errStoreDown
	}
	b.watches.Add(1)
	b.mu.Lock()
	b.watched[StreamKey{app, key}]++
	b.mu.Unlock()
	return nil
}

func (b *fakeBus) Unwatch(ctx context.Context, app, key string) error {
	b.unwatches.Add(1)
	b.mu.Lock()
	b.watched[StreamKey{app, key}]--
	if b.watched[StreamKey{app, key}] < 0 {
		panic("fakeBus: Unwatch without Watch of " + app + "." + key)
	}
	b.mu.Unlock()
	return nil
}
