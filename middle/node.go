package middle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

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
	// MaxPayload is the largest publication payload in bytes (default 64 KiB).
	MaxPayload int
	// StoreTimeout bounds the store calls made while delivering (gap fills).
	StoreTimeout time.Duration

	Store Store // nil: a MemoryStore
	Bus   Bus   // nil: deliver in-process
	Index Index // nil: the local hub is the index

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Defaults of Config.
const (
	DefaultHistorySize  = 32
	DefaultHistoryTTL   = 5 * time.Minute
	DefaultMaxPayload   = 64 << 10
	DefaultStoreTimeout = 5 * time.Second
)

func (c Config) withDefaults() Config {
	if c.HistorySize == 0 {
		c.HistorySize = DefaultHistorySize
	}
	if c.HistoryTTL == 0 {
		c.HistoryTTL = DefaultHistoryTTL
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	if c.StoreTimeout == 0 {
		c.StoreTimeout = DefaultStoreTimeout
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
	case c.MaxPayload < 0:
		return fmt.Errorf("max payload %d: must be positive", c.MaxPayload)
	}
	return nil
}

// Node is the middle tier of one process: it sequences publications through
// the Store, moves them through the Bus, and fans them out to the local
// subscribers of each key.
type Node struct {
	cfg     Config
	log     *slog.Logger
	store   Store
	bus     Bus
	index   Index
	hub     *hub
	metrics *metrics
}

// NewNode validates cfg and returns a node; call Run to start its bus.
func NewNode(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("middle config: %w", err)
	}
	cfg = cfg.withDefaults()
	n := &Node{cfg: cfg, log: cfg.Logger, store: cfg.Store, bus: cfg.Bus, index: cfg.Index, hub: newHub()}
	if n.store == nil {
		n.store = NewMemoryStore(cfg.HistorySize, cfg.HistoryTTL)
	}
	n.metrics = newMetrics(cfg.Registerer, n.hub)
	return n, nil
}

// Run delivers what the bus receives until ctx ends. In embedded mode there
// is nothing to run and it just waits for ctx.
func (n *Node) Run(ctx context.Context) error {
	if n.bus == nil {
		<-ctx.Done()
		return nil
	}
	return n.bus.Run(ctx, n.deliver)
}

// PublishError is a publication rejected before sequencing; Index is its
// position in the batch.
type PublishError struct {
	Index int
	Err   error
}

func (e *PublishError) Error() string { return fmt.Sprintf("item %d: %v", e.Index, e.Err) }
func (e *PublishError) Unwrap() error { return e.Err }

// ErrUnavailable wraps failures of the store or bus: the publication was not
// accepted and may be retried.
var ErrUnavailable = errors.New("unavailable")

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
	if p.JSON && !json.Valid(p.Data) {
		return errors.New("payload is not valid JSON")
	}
	return nil
}

// publishChunk bounds the publications of one store round trip and one
// wait for bus confirms in the cluster mode.
const publishChunk = 256

// Publish validates every publication of the batch (nothing is published if
// one is invalid: *PublishError), then sequences and delivers them in order.
// source labels the metrics (http, amqp, poller). It returns the assigned
// seqs; on a store or bus failure, the seqs of the leading publications
// that went through and an error wrapping ErrUnavailable.
//
// With a bus, the store sequences up to publishChunk publications before
// the bus sends them, so a failure may leave publications past the
// returned seqs sequenced and in the history (nodes deliver them when they
// fill a gap), though not reported: a caller that retries them publishes
// them again, under new seqs (at least once, never lost).
func (n *Node) Publish(ctx context.Context, source string, pubs []proto.Publication) ([]uint64, error) {
	if err := n.validateBatch(pubs); err != nil {
		return nil, err
	}
	var (
		seqs []uint64
		err  error
	)
	if n.bus == nil {
		seqs, err = n.publishEmbedded(ctx, pubs)
	} else {
		seqs, err = n.publishCluster(ctx, pubs)
	}
	n.metrics.published.WithLabelValues(source).Add(float64(len(seqs)))
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

// publishEmbedded publishes pubs one by one, each sequenced and delivered
// under its channel's lock (see publishLocal).
func (n *Node) publishEmbedded(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
	seqs := make([]uint64, 0, len(pubs))
	for i := range pubs {
		p := &pubs[i]
		if err := n.publishLocal(ctx, p); err != nil {
			return seqs, fmt.Errorf("publish %s.%s: %w: %w", p.App, p.Key, ErrUnavailable, err)
		}
		seqs = append(seqs, p.Seq)
	}
	return seqs, nil
}

// publishCluster publishes pubs through the store and the bus,
// publishChunk at a time.
func (n *Node) publishCluster(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
	seqs := make([]uint64, 0, len(pubs))
	for start := 0; start < len(pubs); start += publishChunk {
		chunk := pubs[start:min(start+publishChunk, len(pubs))]
		done, err := n.sequenceAndSend(ctx, chunk)
		for i := range done {
			seqs = append(seqs, chunk[i].Seq)
		}
		if err != nil {
			p := &chunk[done]
			return seqs, fmt.Errorf("publish %s.%s: %w: %w", p.App, p.Key, ErrUnavailable, err)
		}
	}
	return seqs, nil
}

// sequenceAndSend sequences chunk in one store call, then sends what was
// sequenced in one bus call. It returns how many leading publications went
// through both.
func (n *Node) sequenceAndSend(ctx context.Context, chunk []proto.Publication) (int, error) {
	sequenced, storeErr := n.store.AppendBatch(ctx, chunk)
	if storeErr != nil {
		storeErr = fmt.Errorf("sequence: %w", storeErr)
	}
	// What was sequenced goes out even after a store failure: it is in
	// the history, and a caller retrying it would sequence it twice.
	sent, err := n.bus.SendBatch(ctx, chunk[:sequenced])
	if err != nil {
		// The publications not sent are in the history: nodes that see
		// the next seq of their key fill the gap from there.
		return sent, fmt.Errorf("send: %w", err)
	}
	return sent, storeErr
}

// publishLocal sequences and delivers p without a bus. While the key has a
// live channel, both happen under its lock, so concurrent publishers of one
// key cannot overtake each other between sequencing and delivery: otherwise
// the gap would be filled from the history, and a history shorter than the
// number of publishers in flight loses values to live subscribers.
func (n *Node) publishLocal(ctx context.Context, p *proto.Publication) error {
	if ch := n.hub.get(p.App, p.Key); ch != nil {
		ch.mu.Lock()
		if !ch.dead && ch.initialized {
			err := n.store.Append(ctx, p)
			if err == nil {
				n.deliverLocked(ch, p)
			}
			ch.mu.Unlock()
			if err != nil {
				return fmt.Errorf("sequence: %w", err)
			}
			return nil
		}
		ch.mu.Unlock()
	}
	// No live channel: nobody to deliver to, unless a first subscriber
	// arrives meanwhile; deliver sorts that out (duplicate or gap fill).
	if err := n.store.Append(ctx, p); err != nil {
		return fmt.Errorf("sequence: %w", err)
	}
	n.deliver(p)
	return nil
}

// deliver fans a sequenced publication out to this node's subscribers.
func (n *Node) deliver(p *proto.Publication) {
	ch := n.hub.get(p.App, p.Key)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if ch.dead || !ch.initialized {
		return
	}
	n.deliverLocked(ch, p)
}

// deliverLocked delivers p to ch if its seq is the next one, after filling
// a gap before it from the store; an earlier seq is a duplicate.
func (n *Node) deliverLocked(ch *channel, p *proto.Publication) {
	if p.Seq <= ch.lastSeq {
		n.metrics.duplicates.Inc()
		return
	}
	if p.Seq > ch.lastSeq+1 {
		n.fillGapLocked(ch, p.Seq-1)
	}
	n.emitLocked(ch, p)
}

// fillGapLocked delivers, from the store, the publications after
// ch.lastSeq up to upTo.
func (n *Node) fillGapLocked(ch *channel, upTo uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.StoreTimeout)
	defer cancel()
	from := ch.lastSeq
	pubs, complete, err := n.store.History(ctx, ch.app, ch.key, from)
	if err != nil || !complete {
		n.metrics.gapsLost.Inc()
		n.log.Warn("seq gap not fully recoverable from history", "app", ch.app, "key", ch.key,
			"from", from+1, "to", upTo, "error", err)
	}
	for i := range pubs {
		p := &pubs[i]
		if p.Seq > upTo {
			break
		}
		if p.Seq > ch.lastSeq {
			n.emitLocked(ch, p)
			n.metrics.gapsFilled.Inc()
		}
	}
}

// emitLocked encodes p once per format in use and enqueues the frame to
// every subscriber of ch.
func (n *Node) emitLocked(ch *channel, p *proto.Publication) {
	ch.lastSeq = p.Seq
	ch.latest = *p
	ch.latestFrames = [proto.NumFormats]*proto.Frame{}
	delivered := 0
	for f := range ch.subs {
		list := ch.subs[f].list
		if len(list) == 0 {
			continue
		}
		frame := proto.EncodeDataFrame(p, proto.Format(f))
		ch.latestFrames[f] = frame
		for _, s := range list {
			s.Enqueue(frame) // an overflowing subscriber closes itself
		}
		delivered += len(list)
	}
	n.metrics.deliveries.Add(float64(delivered))
}

// SubscribeRequest is one subscribe command, validated by the caller.
type SubscribeRequest struct {
	ID     uint64
	App    string
	Keys   []string
	Format proto.Format
	Since  map[string]uint64
}

// Subscribe adds s to every key of req and enqueues to s, in this order: the
// ack (with the recovery outcome when req has Since), then per key either
// the missed publications (seq > since) or the latest value. All channels of
// the request stay locked meanwhile, so no live publication slips in between
// and none is sent twice. Subscribing again to a key replaces the earlier
// subscription (and its format). On error nothing was enqueued or added.
func (n *Node) Subscribe(ctx context.Context, s Subscriber, req SubscribeRequest) error {
	n.metrics.subscribes.Inc()
	keys := uniqueSorted(req.Keys)
	chans := make([]*channel, 0, len(keys))
	for _, k := range keys {
		chans = append(chans, n.lockChannel(req.App, k))
	}
	defer func() {
		for _, ch := range chans {
			ch.mu.Unlock()
		}
	}()
	fail := func(err error) error {
		for _, ch := range chans {
			n.dropIfEmptyLocked(ctx, ch)
		}
		return err
	}
	for _, ch := range chans {
		if err := n.prepareLocked(ctx, ch); err != nil {
			return fail(fmt.Errorf("subscribe %s.%s: %w: %w", ch.app, ch.key, ErrUnavailable, err))
		}
	}

	replays := make([][]proto.Publication, len(chans))
	sendLatest := make([]bool, len(chans))
	recovery := proto.RecoveryNone
	for i, ch := range chans {
		since, ok := req.Since[ch.key]
		if !ok {
			sendLatest[i] = true
			continue
		}
		if recovery == proto.RecoveryNone {
			recovery = proto.Recovered
		}
		switch {
		case since == ch.lastSeq: // missed nothing
		case since > ch.lastSeq: // a seq this key never had (the store was reset)
			recovery, sendLatest[i] = proto.NotRecovered, true
		default:
			pubs, complete, err := n.store.History(ctx, ch.app, ch.key, since)
			if err != nil {
				return fail(fmt.Errorf("history of %s.%s: %w: %w", ch.app, ch.key, ErrUnavailable, err))
			}
			if !complete {
				recovery, sendLatest[i] = proto.NotRecovered, true
				continue
			}
			// Publications past lastSeq are still on their way through the
			// bus and reach s by the live path.
			for len(pubs) > 0 && pubs[len(pubs)-1].Seq > ch.lastSeq {
				pubs = pubs[:len(pubs)-1]
			}
			replays[i] = pubs
		}
	}

	s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendAck(nil, req.ID, recovery)))
	delivered := 0
	for i, ch := range chans {
		if sendLatest[i] {
			if f := ch.latestFrameLocked(req.Format); f != nil {
				s.Enqueue(f)
				delivered++
			}
		}
		for j := range replays[i] {
			s.Enqueue(proto.EncodeDataFrame(&replays[i][j], req.Format))
			delivered++
		}
		wasThere := ch.removeLocked(s)
		ch.subs[req.Format].add(s)
		ch.size.Add(1)
		if !wasThere && n.index != nil {
			n.index.Add(ch.app, ch.key, s.ConnID())
		}
	}
	n.metrics.deliveries.Add(float64(delivered))
	return nil
}

// lockChannel returns the live channel of (app, key), locked.
func (n *Node) lockChannel(app, key string) *channel {
	for {
		ch := n.hub.getOrCreate(app, key)
		ch.mu.Lock()
		if !ch.dead {
			return ch
		}
		ch.mu.Unlock()
	}
}

// prepareLocked makes the bus deliver ch's key to this node, then reads
// where the key stands. The order matters: a publication sequenced after
// the read arrives through the bus; one sequenced before is in the store.
func (n *Node) prepareLocked(ctx context.Context, ch *channel) error {
	if !ch.watched && n.bus != nil {
		if err := n.bus.Watch(ctx, ch.app, ch.key); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
	}
	ch.watched = true
	if ch.initialized {
		return nil
	}
	p, ok, err := n.store.Latest(ctx, ch.app, ch.key)
	if err != nil {
		return fmt.Errorf("latest: %w", err)
	}
	if ok {
		ch.lastSeq, ch.latest = p.Seq, p
	}
	ch.initialized = true
	return nil
}

// dropIfEmptyLocked removes a channel that has no subscriber left.
func (n *Node) dropIfEmptyLocked(ctx context.Context, ch *channel) {
	if ch.size.Load() > 0 || ch.dead {
		return
	}
	if ch.watched && n.bus != nil {
		if err := n.bus.Unwatch(ctx, ch.app, ch.key); err != nil {
			n.log.Warn("unwatch failed; the node keeps receiving the key until the bus reconnects",
				"app", ch.app, "key", ch.key, "error", err)
		}
	}
	ch.dead = true
	n.hub.remove(ch)
}

// Unsubscribe removes s from keys of app; keys it does not hold are ignored.
func (n *Node) Unsubscribe(ctx context.Context, s Subscriber, app string, keys []string) {
	for _, k := range keys {
		ch := n.hub.get(app, k)
		if ch == nil {
			continue
		}
		ch.mu.Lock()
		if !ch.dead && ch.removeLocked(s) {
			if n.index != nil {
				n.index.Remove(app, k, s.ConnID())
			}
			n.dropIfEmptyLocked(ctx, ch)
		}
		ch.mu.Unlock()
	}
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
		}
		ch.mu.Unlock()
		if len(ids) > 0 {
			fn(ch.app, ch.key, ids)
		}
	}
}

// Resync brings every local channel up to the store's newest seq, sending
// subscribers what they missed. A Bus calls it after an outage during which
// publications may have passed this node by; without it, a quiet key would
// only catch up with its next publication.
func (n *Node) Resync(ctx context.Context) {
	for _, ch := range n.hub.all() {
		if ctx.Err() != nil {
			return
		}
		ch.mu.Lock()
		if !ch.dead && ch.initialized {
			if p, ok, err := n.store.Latest(ctx, ch.app, ch.key); err != nil {
				n.log.Warn("resync: latest failed", "app", ch.app, "key", ch.key, "error", err)
			} else if ok && p.Seq > ch.lastSeq {
				n.fillGapLocked(ch, p.Seq)
				if p.Seq > ch.lastSeq {
					// The history has expired (the latest value outlives it):
					// at least bring the subscribers the current value.
					n.emitLocked(ch, &p)
				}
			}
		}
		ch.mu.Unlock()
	}
}
