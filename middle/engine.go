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
	// Send hands a sequenced publication to the bus.
	Send(ctx context.Context, p *proto.Publication) error
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
