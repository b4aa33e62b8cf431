package middle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// Config configures a Node. The zero value of every field means its
// default; Store, Bus and Index nil mean the embedded mode.
type Config struct {
	// HistorySize is how many publications the memory store keeps per key
	// (default 32). Ignored when Store is set.
	HistorySize int
	// HistoryTTL drops retained publications older than this from the
	// memory store (default 5m; the latest value is always kept).
	HistoryTTL time.Duration
	// IdempotencyWindow is how long the memory store remembers the
	// idempotency ids of publications (default 10m). Ignored when Store is
	// set.
	IdempotencyWindow time.Duration
	// MaxKeys bounds the keys the memory store holds (default 100,000): a
	// new key beyond it evicts the least recently published key that has
	// no local subscriber (its next value starts a new epoch), or is
	// refused when every one has. Ignored when Store is set.
	MaxKeys int
	// MaxPayload is the largest publication payload in bytes (default 64 KiB).
	MaxPayload int
	// StoreTimeout bounds one store read made to catch a key up (a gap, a
	// position check).
	StoreTimeout time.Duration
	// PositionCheck is how often every served key's position is compared
	// with the store's, so that a publication whose fan-out was lost still
	// reaches the subscribers of a quiet key (default 5s).
	PositionCheck time.Duration
	// DeliveryWorkers is the number of goroutines that deliver what the Bus
	// receives, each owning a share of the keys (default 16): a key that
	// waits for the store delays only its share.
	DeliveryWorkers int
	// DeliveryQueue bounds the publications waiting for one worker
	// (default 1024); a full queue holds the Bus back.
	DeliveryQueue int

	Store Store // nil: a MemoryStore
	Bus   Bus   // nil: deliver in-process
	Index Index // nil: the local hub is the index

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of Config.
const (
	DefaultHistorySize       = 32
	DefaultHistoryTTL        = 5 * time.Minute
	DefaultIdempotencyWindow = 10 * time.Minute
	DefaultMaxKeys           = 100_000
	DefaultMaxPayload        = 64 << 10
	DefaultStoreTimeout      = 5 * time.Second
	DefaultPositionCheck     = 5 * time.Second
	DefaultDeliveryWorkers   = 16
	DefaultDeliveryQueue     = 1024
)

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.HistorySize == 0 {
		c.HistorySize = DefaultHistorySize
	}
	def(&c.HistoryTTL, DefaultHistoryTTL)
	def(&c.IdempotencyWindow, DefaultIdempotencyWindow)
	if c.MaxKeys == 0 {
		c.MaxKeys = DefaultMaxKeys
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	def(&c.StoreTimeout, DefaultStoreTimeout)
	def(&c.PositionCheck, DefaultPositionCheck)
	if c.DeliveryWorkers == 0 {
		c.DeliveryWorkers = DefaultDeliveryWorkers
	}
	if c.DeliveryQueue == 0 {
		c.DeliveryQueue = DefaultDeliveryQueue
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	switch {
	case c.HistorySize < 0:
		return fmt.Errorf("history size %d: must be positive", c.HistorySize)
	case c.HistoryTTL < 0:
		return fmt.Errorf("history TTL %s: must be positive", c.HistoryTTL)
	case c.IdempotencyWindow < 0:
		return fmt.Errorf("idempotency window %s: must be positive", c.IdempotencyWindow)
	case c.MaxKeys < 0:
		return fmt.Errorf("max keys %d: must be positive", c.MaxKeys)
	case c.MaxPayload < 0:
		return fmt.Errorf("max payload %d: must be positive", c.MaxPayload)
	case c.StoreTimeout < 0:
		return fmt.Errorf("store timeout %s: must be positive", c.StoreTimeout)
	case c.PositionCheck < 0:
		return fmt.Errorf("position check %s: must be positive", c.PositionCheck)
	case c.DeliveryWorkers < 0 || c.DeliveryWorkers > 4096:
		return fmt.Errorf("delivery workers %d: must be 1 to 4096", c.DeliveryWorkers)
	case c.DeliveryQueue < 0:
		return fmt.Errorf("delivery queue %d: must be positive", c.DeliveryQueue)
	}
	return nil
}

// Node is the middle tier of one process: it sequences publications through
// the Store, receives what the Bus carries, and fans publications out to
// the local subscribers of each key, each subscriber receiving every seq
// once, in order, or a reset (docs/PROTOCOL.md, "Delivery guarantees").
type Node struct {
	cfg     Config
	log     *slog.Logger
	store   Store
	bus     Bus
	index   Index
	hub     *hub
	metrics *metrics
	queues  []chan proto.Publication // one per delivery worker

	// ctx ends when Run returns; catch-ups started by deliveries run in it.
	ctx      context.Context
	cancel   context.CancelFunc
	catchUps sync.WaitGroup
	// catchUpSlots bounds the store reads of concurrent catch-ups.
	catchUpSlots chan struct{}
}

// maxConcurrentCatchUps bounds the store reads that catch keys up at once
// (after a bus outage every served key needs one).
const maxConcurrentCatchUps = 64

// NewNode validates cfg and returns a node; call Run to start it.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("middle config: %w", err)
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg: cfg, log: cfg.Logger, store: cfg.Store, bus: cfg.Bus, index: cfg.Index,
		hub:          newHub(),
		catchUpSlots: make(chan struct{}, maxConcurrentCatchUps),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if n.store == nil {
		// A key with a channel in the hub has local subscribers (or one
		// subscribing): evicting it would cut their stream.
		n.store = NewMemoryStore(cfg.HistorySize, cfg.HistoryTTL, cfg.IdempotencyWindow).
			LimitKeys(cfg.MaxKeys, func(app, key string) bool { return n.hub.get(app, key) != nil })
	}
	n.queues = make([]chan proto.Publication, cfg.DeliveryWorkers)
	for i := range n.queues {
		n.queues[i] = make(chan proto.Publication, cfg.DeliveryQueue)
	}
	n.metrics = newMetrics(cfg.Registerer, n.hub, n.queues, n.store)
	return n, nil
}

// Run delivers what the bus receives and checks every served key's
// position periodically, until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	defer func() {
		n.cancel()
		n.catchUps.Wait()
		// Nothing is held back for a stopped node: the rate groups'
		// timers end with it.
		for _, ch := range n.hub.all() {
			ch.mu.Lock()
			ch.stopGroupsLocked()
			ch.mu.Unlock()
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, q := range n.queues {
		wg.Go(func() { n.deliveryWorker(ctx, q) })
	}
	wg.Go(func() { n.positionCheckLoop(ctx) })
	if n.bus == nil {
		<-ctx.Done()
		return nil
	}
	return n.bus.Run(ctx, func(p *proto.Publication) { n.enqueueDelivery(ctx, p) }, n.resync)
}

// PublishError is a publication rejected before sequencing; Index is its
// position in the batch.
type PublishError struct {
	Index int
	Err   error
}

func (e *PublishError) Error() string { return fmt.Sprintf("item %d: %v", e.Index, e.Err) }
func (e *PublishError) Unwrap() error { return e.Err }

// ErrInvalidUTF8 refuses a JSON payload that is not valid UTF-8 (binary
// payloads are bytes and need not be): it would be sent in text frames,
// which RFC 6455 requires to be UTF-8 (docs/PROTOCOL.md, "HTTP publish API").
var ErrInvalidUTF8 = errors.New("payload is not valid UTF-8 (send bytes as b64)")

// Validate checks one publication before it is sequenced.
func (n *Node) Validate(p *proto.Publication) error {
	if err := proto.ValidateName(p.App); err != nil {
		return fmt.Errorf("app %q: %w", p.App, err)
	}
	if err := proto.ValidateName(p.Key); err != nil {
		return fmt.Errorf("key %q: %w", p.Key, err)
	}
	if len(p.Data) > n.cfg.MaxPayload {
		return fmt.Errorf("payload of %d bytes is over the limit of %d", len(p.Data), n.cfg.MaxPayload)
	}
	if p.JSON {
		if !json.Valid(p.Data) {
			return errors.New("payload is not valid JSON")
		}
		// json.Valid lets invalid UTF-8 through; a text frame carrying it
		// makes every browser subscriber fail its connection.
		if !utf8.Valid(p.Data) {
			return ErrInvalidUTF8
		}
	}
	if p.ID != "" {
		if err := proto.ValidateIdempotencyID(p.ID); err != nil {
			return err
		}
	}
	return nil
}

// publishChunk bounds the publications of one store round trip.
const publishChunk = 256

// Publish validates every publication of the batch (nothing is published if
// one is invalid: *PublishError), then sequences them in order; a shared
// store fans them out to every node as it sequences them. source labels the
// metrics (http, amqp, poller). It returns the assigned seqs (for a repeated
// idempotency id, the original seq); on a store failure, the seqs of the
// leading publications that went through and an error wrapping
// ErrUnavailable.
func (n *Node) Publish(ctx context.Context, source string, pubs []proto.Publication) ([]uint64, error) {
	return n.PublishFenced(ctx, source, 0, pubs)
}

// PublishFenced is Publish for a sequencer that holds fencing token fence
// (the AMQP ingest, per partition): a key that a holder of a newer token
// has appended to refuses the publication with an error wrapping ErrFenced.
func (n *Node) PublishFenced(ctx context.Context, source string, fence uint64, pubs []proto.Publication) ([]uint64, error) {
	if err := n.validateBatch(pubs); err != nil {
		return nil, err
	}
	seqs := make([]uint64, 0, len(pubs))
	var err error
	for start := 0; start < len(pubs) && err == nil; start += publishChunk {
		chunk := pubs[start:min(start+publishChunk, len(pubs))]
		var done int
		done, err = n.sequence(ctx, chunk, fence)
		for i := range done {
			seqs = append(seqs, chunk[i].Seq)
		}
		if err != nil {
			p := &chunk[done]
			if !errors.Is(err, ErrFenced) {
				err = fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			err = fmt.Errorf("publish %s.%s: %w", p.App, p.Key, err)
		}
	}
	n.metrics.countPublished(source, len(seqs))
	if err != nil {
		n.metrics.publishErrs.Add(float64(len(pubs) - len(seqs)))
	}
	return seqs, err
}

// validateBatch validates pubs and stamps those without a ts.
func (n *Node) validateBatch(pubs []proto.Publication) error {
	now := time.Now().UnixMilli()
	for i := range pubs {
		if err := n.Validate(&pubs[i]); err != nil {
			return &PublishError{Index: i, Err: err}
		}
		if pubs[i].TS == 0 {
			pubs[i].TS = now
		}
	}
	return nil
}

// sequence appends chunk to the store. Without a bus, this node delivers
// what it sequenced itself; with one, the store's fan-out brings it back
// like any other node's.
func (n *Node) sequence(ctx context.Context, chunk []proto.Publication, fence uint64) (int, error) {
	if n.bus != nil {
		return n.store.AppendBatch(ctx, chunk, fence)
	}
	for i := range chunk {
		if err := n.publishLocal(ctx, chunk[i:i+1], fence); err != nil {
			return i, err
		}
	}
	return len(chunk), nil
}

// publishLocal sequences and delivers one[0] without a bus. While the key
// has a live channel in step with the store, both happen under its lock, so
// that concurrent publishers of one key cannot overtake each other between
// sequencing and delivery (which would cost a catch-up from the store).
func (n *Node) publishLocal(ctx context.Context, one []proto.Publication, fence uint64) error {
	p := &one[0]
	if ch := n.hub.get(p.App, p.Key); ch != nil {
		ch.mu.Lock()
		if !ch.dead && ch.initialized && !ch.syncing && len(ch.parked) == 0 {
			_, err := n.store.AppendBatch(ctx, one, fence)
			if err == nil {
				n.deliverLocked(ch, p)
			}
			ch.mu.Unlock()
			return err
		}
		ch.mu.Unlock()
	}
	if _, err := n.store.AppendBatch(ctx, one, fence); err != nil {
		return err
	}
	n.deliver(p)
	return nil
}

// Apps lists the apps with at least one subscribed key, cluster-wide when
// there is an Index.
func (n *Node) Apps(ctx context.Context) ([]string, error) {
	if n.index != nil {
		return n.index.Apps(ctx)
	}
	return n.hub.apps(), nil
}

// Keys lists the subscribed keys of app, cluster-wide when there is an Index.
func (n *Node) Keys(ctx context.Context, app string) ([]string, error) {
	if n.index != nil {
		return n.index.Keys(ctx, app)
	}
	return n.hub.keys(app), nil
}

func uniqueSorted(keys []string) []string {
	out := append([]string(nil), keys...)
	sort.Strings(out)
	w := 0
	for i, k := range out {
		if i == 0 || k != out[w-1] {
			out[w] = k
			w++
		}
	}
	return out[:w]
}

// SourcePublisher publishes through a node, labelling metrics with a source.
type SourcePublisher struct {
	node   *Node
	source string
}

// Source returns a publisher for one ingestion path (poller, amqp, ...).
func (n *Node) Source(source string) SourcePublisher { return SourcePublisher{n, source} }

// Publish is Node.Publish with the source filled in.
func (p SourcePublisher) Publish(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
	return p.node.Publish(ctx, p.source, pubs)
}

// PublishFenced is Node.PublishFenced with the source filled in.
func (p SourcePublisher) PublishFenced(ctx context.Context, fence uint64, pubs []proto.Publication) ([]uint64, error) {
	return p.node.PublishFenced(ctx, p.source, fence, pubs)
}

// LocalSubscriptions calls fn for every key with local subscribers, with
// their connection IDs: the node's whole share of the cluster index, for an
// Index to rewrite after it lost its store.
func (n *Node) LocalSubscriptions(fn func(app, key string, connIDs []uint64)) {
	for _, ch := range n.hub.all() {
		ch.mu.Lock()
		var ids []uint64
		if !ch.dead {
			for f := range ch.subs {
				for _, s := range ch.subs[f].list {
					ids = append(ids, s.ConnID())
				}
			}
			for _, g := range ch.groups {
				for _, s := range g.subs.list {
					ids = append(ids, s.ConnID())
				}
			}
		}
		ch.mu.Unlock()
		if len(ids) > 0 {
			fn(ch.app, ch.key, ids)
		}
	}
}
