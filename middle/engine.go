package middle

import (
	"context"

	"github.com/wspush/wspush/proto"
)

// Subscriber is a connection as the middle layer sees it.
type Subscriber interface {
	// Enqueue queues f for writing and never blocks. It returns false when
	// the subscriber's queue overflowed; the subscriber then closes itself
	// and unsubscribes everything.
	Enqueue(f *proto.Frame) bool
	// ConnID identifies the connection within this node.
	ConnID() uint64
}

// Store sequences publications and keeps a bounded history per key. The
// memory store serves one process; a Redis store makes seq and history the
// same on every node.
type Store interface {
	// Append assigns p.Seq (the key's previous seq + 1) and retains p, as one
	// atomic step: once seq N exists, every seq below it is in the history
	// (unless trimmed).
	Append(ctx context.Context, p *proto.Publication) error
	// AppendBatch appends every publication of pubs as Append does, in
	// slice order (keys may differ and interleave), in as few round trips
	// as the store allows. It returns n, how many leading publications are
	// sequenced and retained. On error pubs[n] failed, and a later one may
	// or may not have been sequenced too: a caller that retries pubs[n:]
	// may sequence some twice (at least once, never lost).
	AppendBatch(ctx context.Context, pubs []proto.Publication) (n int, err error)
	// History returns the retained publications of (app, key) with
	// seq > since, in order. complete is false when the history no longer
	// reaches back to since+1.
	History(ctx context.Context, app, key string, since uint64) (pubs []proto.Publication, complete bool, err error)
	// Latest returns the newest publication of (app, key); ok is false when
	// the key has none.
	Latest(ctx context.Context, app, key string) (p proto.Publication, ok bool, err error)
}

// Bus carries sequenced publications to every node that watches their key.
// Without a Bus (embedded mode) a node delivers to itself directly.
type Bus interface {
	// Run delivers publications received from the bus until ctx ends.
	Run(ctx context.Context, deliver func(*proto.Publication)) error
	// SendBatch hands sequenced publications to the bus, to be delivered
	// in slice order, and returns n, how many leading ones it accepted. On
	// error, a later one may or may not reach the nodes: they fill a gap
	// from the Store anyway.
	SendBatch(ctx context.Context, pubs []proto.Publication) (n int, err error)
	// Watch makes this node receive publications of (app, key); Unwatch
	// stops it. The hub calls them when a key gains its first local
	// subscriber and loses its last one, never concurrently for one key.
	Watch(ctx context.Context, app, key string) error
	Unwatch(ctx context.Context, app, key string) error
}

// Index is the cluster-wide subscription index. Add and Remove are queued
// and written in batches; Apps and Keys answer from the shared index.
type Index interface {
	Add(app, key string, connID uint64)
	Remove(app, key string, connID uint64)
	Apps(ctx context.Context) ([]string, error)
	Keys(ctx context.Context, app string) ([]string, error)
}
