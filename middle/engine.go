package middle

import (
	"context"
	"errors"

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

// StreamKey names one key's stream.
type StreamKey struct{ App, Key string }

// History is what a Store holds of one key: where its stream stands and
// the publications it still retains.
type History struct {
	// Top is the key's newest position; its epoch is never empty (a key
	// never published is at seq 0 of an epoch created when first touched).
	Top proto.Position
	// Pubs are retained publications of Top.Epoch, in ascending seq order.
	Pubs []proto.Publication
}

// Store sequences publications and retains a bounded history per key. The
// memory store serves one process; a shared store (Redis) makes seqs,
// epochs and history the same on every node, and fans each publication out
// to the nodes (see Bus) atomically with sequencing it, so that every node
// receives a key's publications in seq order.
type Store interface {
	// AppendBatch sequences pubs in slice order (keys may differ and
	// interleave), each atomically with its retention and fan-out, and sets
	// the Seq and Epoch of each. A publication whose ID was sequenced within
	// the store's idempotency window gets the original Seq (and the current
	// Epoch) back and is neither retained nor fanned out again.
	//
	// fence > 0 is the caller's fencing token (docs/PROTOCOL.md, "Ingest"):
	// a key last appended to with a higher token refuses the publication
	// with an error wrapping ErrFenced; otherwise the key records fence.
	// fence 0 is never refused and records nothing.
	//
	// It returns n, how many leading publications were sequenced. On error
	// pubs[n] failed, and a later one may or may not have been sequenced.
	AppendBatch(ctx context.Context, pubs []proto.Publication, fence uint64) (n int, err error)
	// History returns the key's top position and the retained
	// publications with seq > since in the top epoch. It creates the key's
	// epoch (at seq 0) when the key has none.
	History(ctx context.Context, app, key string, since uint64) (History, error)
	// Latest is History with only the newest retained publication, if any.
	Latest(ctx context.Context, app, key string) (History, error)
	// Tops returns the top position of each key, creating missing epochs,
	// in as few round trips as the store allows (the position check).
	Tops(ctx context.Context, keys []StreamKey) ([]proto.Position, error)
}

// Bus carries what a shared Store sequenced to every node that watches the
// key. Without a Bus (embedded mode) a node delivers to itself directly.
type Bus interface {
	// Run receives until ctx ends. It calls deliver for each publication,
	// in seq order per key, from one goroutine (deliver may block: that is
	// back-pressure). After it lost its connection, when publications may
	// have passed this node by, it calls resync once it receives again.
	Run(ctx context.Context, deliver func(*proto.Publication), resync func()) error
	// Watch returns once publications of (app, key) reach this node: the
	// server confirmed the subscription. Unwatch stops them. The node calls
	// them when a key gains its first local subscriber and loses its last,
	// never concurrently for one key.
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

// ErrUnavailable wraps failures of the store or bus: the publication was not
// accepted and may be retried.
var ErrUnavailable = errors.New("unavailable")

// ErrFenced is a publication the store refused because a newer sequencer
// of its key holds it: this node lost the key's ingest partition.
var ErrFenced = errors.New("fenced: another node sequences this key now")
