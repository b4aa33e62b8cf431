package redis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// SnapshotFunc calls fn for every key with local subscribers, with their
// connection IDs: Node.LocalSubscriptions.
type SnapshotFunc func(fn func(app, key string, connIDs []uint64))

// Defaults of IndexConfig.
const (
	DefaultIndexFlushInterval   = 50 * time.Millisecond
	DefaultIndexBatchSize       = 1024
	DefaultIndexNodeTTL         = 10 * time.Second
	DefaultIndexTimeout         = 5 * time.Second
	DefaultIndexShutdownTimeout = 2 * time.Second
	DefaultIndexBackoffMin      = 100 * time.Millisecond
	DefaultIndexBackoffMax      = 5 * time.Second
)

// IndexConfig configures an Index. The zero value of every field but
// Client and NodeID means its default.
type IndexConfig struct {
	// Client is the Redis every node shares: a single Redis or a Redis
	// Cluster. Required. Every index key carries the hash tag {index}, so
	// on Redis Cluster the whole index lives on the shard of that one slot
	// (docs/PROTOCOL.md, "Redis schema").
	Client goredis.UniversalClient
	// NodeID names this node in members (<node-id>/<conn-id>) and in its
	// liveness key: 1–64 characters of [A-Za-z0-9_-], unique among the live
	// nodes. A node restarted with the same ID replaces what its previous
	// run left behind. Required.
	NodeID string
	// Prefix starts every key (default DefaultPrefix, "wspush").
	Prefix string
	// FlushInterval is how often queued Add/Remove calls are written
	// (default 50ms).
	FlushInterval time.Duration
	// BatchSize is the number of queued changes that triggers a flush
	// before FlushInterval, and the most changes written by one script call
	// (default 1024).
	BatchSize int
	// NodeTTL is the lifetime of this node's liveness key, refreshed every
	// NodeTTL/3; every NodeTTL/2 the node looks for nodes whose key expired
	// and removes their entries (default 10s).
	NodeTTL time.Duration
	// Timeout bounds one Redis round trip (default 5s).
	Timeout time.Duration
	// ShutdownTimeout bounds the removal of this node's entries when Run
	// ends (default 2s). What is left is removed by the other nodes once
	// the liveness key expires.
	ShutdownTimeout time.Duration
	// BackoffMin and BackoffMax bound the wait between retries while Redis
	// fails: BackoffMin doubled per failure up to BackoffMax (defaults 100ms
	// and 5s).
	BackoffMin time.Duration
	BackoffMax time.Duration
	// Logger receives one line per change of state (Redis lost, Redis back,
	// a dead node cleaned up). Nil discards.
	Logger *slog.Logger
	// Registerer receives the wspush_index_* metrics; nil does not
	// register them.
	Registerer prometheus.Registerer
}

func (c IndexConfig) withDefaults() IndexConfig {
	if c.FlushInterval == 0 {
		c.FlushInterval = DefaultIndexFlushInterval
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultIndexBatchSize
	}
	if c.NodeTTL == 0 {
		c.NodeTTL = DefaultIndexNodeTTL
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultIndexTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultIndexShutdownTimeout
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = DefaultIndexBackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = DefaultIndexBackoffMax
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Validate reports the first invalid field, judging each zero field by its
// default.
func (c IndexConfig) Validate() error {
	if c.Client == nil {
		return errors.New("redis index: Client is required")
	}
	if err := proto.ValidateName(c.NodeID); err != nil {
		return fmt.Errorf("redis index: node ID %q: %w", c.NodeID, err)
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("redis index: %w", err)
	}
	switch {
	case c.FlushInterval < 0:
		return fmt.Errorf("redis index: flush interval %s: must be positive", c.FlushInterval)
	case c.BatchSize < 0:
		return fmt.Errorf("redis index: batch size %d: must be positive", c.BatchSize)
	case c.NodeTTL < 0:
		return fmt.Errorf("redis index: node TTL %s: must be positive", c.NodeTTL)
	case c.Timeout < 0:
		return fmt.Errorf("redis index: timeout %s: must be positive", c.Timeout)
	case c.ShutdownTimeout < 0:
		return fmt.Errorf("redis index: shutdown timeout %s: must be positive", c.ShutdownTimeout)
	case c.BackoffMin < 0:
		return fmt.Errorf("redis index: backoff min %s: must be positive", c.BackoffMin)
	case c.BackoffMax < 0:
		return fmt.Errorf("redis index: backoff max %s: must be positive", c.BackoffMax)
	}
	d := c.withDefaults()
	if d.NodeTTL < 30*time.Millisecond {
		return fmt.Errorf("redis index: node TTL %s: must be at least 30ms", d.NodeTTL)
	}
	if d.BackoffMin > d.BackoffMax {
		return fmt.Errorf("redis index: backoff min %s is above backoff max %s", d.BackoffMin, d.BackoffMax)
	}
	return nil
}

// Index is the cluster-wide subscription index of docs/PROTOCOL.md, "Redis
// schema" (middle.Index). Its keys all start with <p>:{index}: (one hash
// slot):
//
//   - sub:<app>:<key>, SET of the connections <node-id>/<conn-id>
//     subscribed to the key;
//   - keys:<app>, SET of the keys of app with a subscriber (what the poller
//     polls);
//   - node:<node-id>, the node's liveness key, with a TTL;
//   - apps, SET of the apps whose keys SET is not empty (what Apps
//     returns, without scanning the keyspace);
//   - nodes, SET of the node IDs that registered and whose entries have
//     not been removed yet;
//   - nodesubs:<node-id>, SET of "<app>:<key>:<conn-id>", the node's share
//     of the index, so that its entries can be removed exactly (when it
//     dies, or when it rewrites them) without scanning sub sets.
//
// Every write goes through a Lua script that keeps those sets consistent:
// a key leaves keys:<app> only in the script that emptied its sub set, so
// a concurrent subscribe on another node cannot be lost. The scripts name
// every key they touch in KEYS, all in the slot of {index}, so they run on
// Redis Cluster too.
//
// Add and Remove only record the change in memory (the latest change of a
// member wins); Run writes them every FlushInterval. When a write fails, or
// the liveness key turns out to have expired (the other nodes may have
// removed this node's entries), the queued changes are dropped and the node
// rewrites its whole share from the SnapshotFunc once Redis answers: the
// local subscriptions are the truth, so nothing needs to be queued while
// Redis is away and memory stays bounded.
type Index struct {
	cfg    IndexConfig
	log    *slog.Logger
	client goredis.UniversalClient
	keys   keys
	token  string // this run's value of the liveness key
	m      *indexMetrics

	snapshot atomic.Pointer[SnapshotFunc]
	started  atomic.Bool
	// lost is set when a refresh found the liveness key gone.
	lost atomic.Bool
	// wake asks the flush loop to flush now (a full batch, a lost key).
	wake chan struct{}

	mu sync.Mutex
	// recording is false while a rewrite is due (and after Run): changes
	// are then not queued, since the rewrite reads the local subscriptions
	// after them.
	recording bool
	pending   map[indexMember]bool // true: add, false: remove
	queued    uint64               // changes recorded so far
	flushed   uint64               // changes recorded before the last successful write
	lastErr   error                // of the last round trip; errIndexNotStarted before the first
}

type indexMember struct {
	app, key string
	conn     uint64
}

var errIndexNotStarted = errors.New("index not written to Redis yet")

// NewIndex validates cfg and returns an index. Give it the node's
// subscriptions with SetSnapshot, then start Run.
func NewIndex(cfg IndexConfig) (*Index, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	x := &Index{
		cfg:     cfg,
		log:     cfg.Logger.With("node", cfg.NodeID),
		client:  cfg.Client,
		keys:    newKeys(cfg.Prefix),
		token:   instanceToken(),
		wake:    make(chan struct{}, 1),
		pending: make(map[indexMember]bool),
		lastErr: errIndexNotStarted,
	}
	m, err := newIndexMetrics(cfg.Registerer, x)
	if err != nil {
		return nil, err
	}
	x.m = m
	return x, nil
}

// SetSnapshot sets where the index reads this node's subscriptions when it
// rewrites its share: Node.LocalSubscriptions. The index is built before
// the node (the node's Config takes it), so this is a setter; Run refuses
// to start without it.
func (x *Index) SetSnapshot(fn SnapshotFunc) { x.snapshot.Store(&fn) }

// Add implements middle.Index: it records the change and never blocks on Redis.
func (x *Index) Add(app, key string, connID uint64) { x.record(app, key, connID, true) }

// Remove implements middle.Index like Add.
func (x *Index) Remove(app, key string, connID uint64) { x.record(app, key, connID, false) }

func (x *Index) record(app, key string, connID uint64, add bool) {
	x.mu.Lock()
	if !x.recording {
		x.mu.Unlock()
		return
	}
	x.pending[indexMember{app, key, connID}] = add
	x.queued++
	full := len(x.pending) >= x.cfg.BatchSize
	x.mu.Unlock()
	if full {
		x.poke()
	}
}

func (x *Index) poke() {
	select {
	case x.wake <- struct{}{}:
	default:
	}
}

// Apps implements middle.Index: the apps with at least one subscribed key,
// cluster-wide, sorted.
func (x *Index) Apps(ctx context.Context) ([]string, error) {
	apps, err := x.client.SMembers(ctx, x.keys.apps()).Result()
	if err != nil {
		return nil, fmt.Errorf("redis index: list apps: %w", err)
	}
	slices.Sort(apps)
	return apps, nil
}

// Keys implements middle.Index: the subscribed keys of app, cluster-wide, in no
// particular order, in a slice of the caller's own.
func (x *Index) Keys(ctx context.Context, app string) ([]string, error) {
	ks, err := x.client.SMembers(ctx, x.keys.appKeys(app)).Result()
	if err != nil {
		return nil, fmt.Errorf("redis index: list keys of %s: %w", app, err)
	}
	return ks, nil
}

// Ready reports whether the index's last Redis round trip succeeded, for
// /readyz; it is an error until the first write of Run.
func (x *Index) Ready() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.lastErr
}

func (x *Index) setReady(err error) {
	x.mu.Lock()
	x.lastErr = err
	x.mu.Unlock()
}

// Run registers the node, writes its share of the index, then keeps it up
// to date until ctx ends: it flushes queued changes, refreshes the liveness
// key and removes the entries of dead nodes. When ctx ends it removes this
// node's entries and liveness key (within ShutdownTimeout) and returns nil.
// It may be called once, after SetSnapshot.
func (x *Index) Run(ctx context.Context) error {
	if x.snapshot.Load() == nil {
		return errors.New("redis index: Run before SetSnapshot")
	}
	if !x.started.CompareAndSwap(false, true) {
		return errors.New("redis index: Run called twice")
	}
	var wg sync.WaitGroup
	wg.Go(func() { x.keepAlive(ctx) })
	wg.Go(func() { x.reapLoop(ctx) })
	x.flushLoop(ctx)
	wg.Wait()
	x.shutdown()
	return nil
}

// flushLoop writes queued changes, or the whole share when a rewrite is
// due, and retries with backoff while Redis fails.
func (x *Index) flushLoop(ctx context.Context) {
	tick := time.NewTicker(x.cfg.FlushInterval)
	defer tick.Stop()
	bo := retry.Backoff{Min: x.cfg.BackoffMin, Max: x.cfg.BackoffMax}
	var (
		rewriteDue   = true // the first write replaces what a previous run left
		failing      bool
		failingSince time.Time
		wait         *time.Timer
	)
	defer func() {
		if wait != nil {
			wait.Stop()
		}
	}()
	for {
		if x.lost.Swap(false) && !rewriteDue {
			x.log.Warn("index: liveness key had expired, other nodes may have removed this node's entries; rewriting them")
			rewriteDue = true
			x.stopRecording()
		}
		var (
			wrote bool
			n     int // subscriptions rewritten
			err   error
		)
		if rewriteDue {
			n, err = x.rewrite(ctx)
			wrote = true
			if err == nil {
				x.m.rewrites.Inc()
				x.log.Debug("index: share rewritten", "subscriptions", n)
			}
		} else {
			wrote, err = x.flush(ctx)
		}
		if wrote {
			x.m.flushed(err)
			x.setReady(err)
		}
		switch {
		case err == nil:
			rewriteDue = false
			if failing {
				failing = false
				bo.Reset()
				x.log.Info("index: Redis is back; this node's share of the index is rewritten",
					"subscriptions", n, "down_for", time.Since(failingSince).Round(time.Millisecond))
			}
		case ctx.Err() != nil:
			return
		default:
			// A failed pipeline may have been applied in part; only a
			// rewrite is sure to leave the right state, and until it
			// runs nothing needs queueing.
			rewriteDue = true
			x.stopRecording()
			if !failing {
				failing, failingSince = true, time.Now()
				x.log.Warn("index: Redis write failed; serving local subscribers, will rewrite this node's share when Redis answers",
					"err", err)
			}
		}

		if failing {
			if wait == nil {
				wait = time.NewTimer(bo.Next())
			} else {
				wait.Reset(bo.Next())
			}
			select {
			case <-ctx.Done():
				return
			case <-wait.C:
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-x.wake:
		}
	}
}

// stopRecording drops the queued changes: a rewrite is due.
func (x *Index) stopRecording() {
	x.mu.Lock()
	x.recording = false
	clear(x.pending)
	x.mu.Unlock()
}

// indexHelpers are the Lua functions every write script shares. They
// touch only the keys the caller passes, which come from KEYS: sub is the
// key's sub SET, appkeys its app's keys SET, apps and nodesubs the apps SET
// and the node's nodesubs SET; conn is a connection ID, as a string.
const indexHelpers = `
local function subscribe(sub, appkeys, apps, nodesubs, node, app, key, conn)
  redis.call('SADD', sub, node .. '/' .. conn)
  redis.call('SADD', nodesubs, app .. ':' .. key .. ':' .. conn)
  redis.call('SADD', appkeys, key)
  redis.call('SADD', apps, app)
end
local function unsubscribe(sub, appkeys, apps, nodesubs, node, app, key, conn)
  redis.call('SREM', sub, node .. '/' .. conn)
  redis.call('SREM', nodesubs, app .. ':' .. key .. ':' .. conn)
  if redis.call('EXISTS', sub) == 0 then
    redis.call('SREM', appkeys, key)
    if redis.call('EXISTS', appkeys) == 0 then
      redis.call('SREM', apps, app)
    end
  end
end
`

// indexApplyScript applies changes of one node.
// KEYS[1] apps, KEYS[2] the node's nodesubs, then per change its sub and
// its app's keys SET; ARGV[1] node, then per change: "+" or "-", app, key,
// conn.
var indexApplyScript = goredis.NewScript(indexHelpers + `
local node = ARGV[1]
local n = (#ARGV - 1) / 4
for i = 0, n - 1 do
  local k, a = 3 + 2 * i, 2 + 4 * i
  if ARGV[a] == '+' then
    subscribe(KEYS[k], KEYS[k+1], KEYS[1], KEYS[2], node, ARGV[a+1], ARGV[a+2], ARGV[a+3])
  else
    unsubscribe(KEYS[k], KEYS[k+1], KEYS[1], KEYS[2], node, ARGV[a+1], ARGV[a+2], ARGV[a+3])
  end
end
return 0
`)

// indexReapScript removes entries of a node whose liveness key is gone:
// the entries the caller read from its nodesubs SET. Each call is atomic
// and first checks the liveness key, so a node that comes back stops the
// cleanup before its rewrite; two nodes cleaning up at once may remove the
// same entries, which is harmless. When the nodesubs SET is empty, the
// call unregisters the node.
// KEYS[1] liveness key, KEYS[2] nodesubs, KEYS[3] nodes, KEYS[4] apps,
// then per entry its sub and its app's keys SET; ARGV[1] node, then per
// entry: app, key, conn.
// Returns {state, removed}; state 1: more to go, 0: done and the node
// unregistered by this call, -1: the node is alive, -2: done by another.
var indexReapScript = goredis.NewScript(indexHelpers + `
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {-1, 0}
end
local node = ARGV[1]
local n = (#ARGV - 1) / 3
for i = 0, n - 1 do
  local k, a = 5 + 2 * i, 2 + 3 * i
  unsubscribe(KEYS[k], KEYS[k+1], KEYS[4], KEYS[2], node, ARGV[a], ARGV[a+1], ARGV[a+2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, n}
end
if redis.call('SREM', KEYS[3], node) == 1 then
  return {0, n}
end
return {-2, n}
`)

// indexRegisterScript sets the liveness key and registers the node.
// KEYS[1] liveness key, KEYS[2] nodes; ARGV[1] token, ARGV[2] TTL in ms,
// ARGV[3] node. Returns the key's previous value (nil: it had expired).
var indexRegisterScript = goredis.NewScript(`
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return old
`)

var indexScripts = []*goredis.Script{indexApplyScript, indexReapScript, indexRegisterScript}

// flush writes the queued changes in one pipeline; wrote is false when
// there were none.
func (x *Index) flush(ctx context.Context) (wrote bool, err error) {
	x.mu.Lock()
	if len(x.pending) == 0 {
		x.mu.Unlock()
		return false, nil
	}
	batch := x.pending
	upTo := x.queued
	x.pending = make(map[indexMember]bool, len(batch))
	x.mu.Unlock()

	ops := make([]indexOp, 0, len(batch))
	for m, add := range batch {
		ops = append(ops, indexOp{m, add})
	}
	if err := x.apply(ctx, ops); err != nil {
		return true, fmt.Errorf("flush %d changes: %w", len(ops), err)
	}
	x.markFlushed(upTo)
	return true, nil
}

func (x *Index) markFlushed(upTo uint64) {
	x.mu.Lock()
	x.flushed = max(x.flushed, upTo)
	x.mu.Unlock()
}

type indexOp struct {
	indexMember
	add bool
}

// apply writes ops, BatchSize per script call, in one pipeline.
func (x *Index) apply(ctx context.Context, ops []indexOp) error {
	if len(ops) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
	defer cancel()
	node := x.cfg.NodeID
	return x.pipelineScripts(ctx, func(pipe goredis.Pipeliner) {
		for start := 0; start < len(ops); start += x.cfg.BatchSize {
			chunk := ops[start:min(start+x.cfg.BatchSize, len(ops))]
			ks := make([]string, 0, 2+2*len(chunk))
			ks = append(ks, x.keys.apps(), x.keys.nodeSubs(node))
			args := make([]any, 0, 1+4*len(chunk))
			args = append(args, node)
			for _, op := range chunk {
				sign := "-"
				if op.add {
					sign = "+"
				}
				ks = append(ks, x.keys.sub(op.app, op.key), x.keys.appKeys(op.app))
				args = append(args, sign, op.app, op.key, strconv.FormatUint(op.conn, 10))
			}
			indexApplyScript.EvalSha(ctx, pipe, ks, args...)
		}
	})
}

// pipelineScripts runs the EVALSHAs queue adds in one pipeline. Scripts
// cannot fall back to EVAL inside a pipeline, so a NOSCRIPT (Redis
// restarted) loads them and runs the pipeline again: every index script is
// idempotent.
func (x *Index) pipelineScripts(ctx context.Context, queue func(goredis.Pipeliner)) error {
	for attempt := 0; ; attempt++ {
		_, err := x.client.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
			queue(pipe)
			return nil
		})
		if err == nil || attempt > 0 || !isNoScript(err) {
			return err
		}
		if err := x.loadScripts(ctx); err != nil {
			return err
		}
	}
}

func (x *Index) loadScripts(ctx context.Context) error {
	for _, s := range indexScripts {
		if err := s.Load(ctx, x.client).Err(); err != nil {
			return fmt.Errorf("load index scripts: %w", err)
		}
	}
	return nil
}

// register sets the liveness key and registers the node. It returns the
// key's previous value, "" when the key had expired (or never existed).
func (x *Index) register(ctx context.Context) (old string, err error) {
	ctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
	defer cancel()
	old, err = indexRegisterScript.Run(ctx, x.client,
		[]string{x.keys.node(x.cfg.NodeID), x.keys.nodes()},
		x.token, x.cfg.NodeTTL.Milliseconds(), x.cfg.NodeID).Text()
	switch {
	case errors.Is(err, goredis.Nil):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("refresh liveness key: %w", err)
	}
	return old, nil
}

// rewrite replaces this node's share of the index with the local
// subscriptions: it adds every one of them, then removes the entries that
// are no longer local. Adding first keeps a key that stays subscribed in
// keys:<app> throughout. Changes recorded meanwhile are written by the
// next flush; those that the snapshot already saw are written twice,
// which is harmless.
func (x *Index) rewrite(ctx context.Context) (int, error) {
	x.mu.Lock()
	clear(x.pending)
	x.recording = true
	upTo := x.queued
	x.mu.Unlock()

	// The previous value is of no interest: a previous run of this node ID
	// is what a rewrite replaces.
	if _, err := x.register(ctx); err != nil {
		return 0, err
	}
	// Scripts may be gone with a restarted Redis; loading them here saves
	// the pipelines a failed round.
	lctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
	err := x.loadScripts(lctx)
	cancel()
	if err != nil {
		return 0, err
	}

	want := make(map[string]struct{})
	var adds []indexOp
	(*x.snapshot.Load())(func(app, key string, connIDs []uint64) {
		for _, id := range connIDs {
			want[app+":"+key+":"+strconv.FormatUint(id, 10)] = struct{}{}
			adds = append(adds, indexOp{indexMember{app, key, id}, true})
		}
	})
	for start := 0; start < len(adds); start += x.cfg.BatchSize {
		if err := x.apply(ctx, adds[start:min(start+x.cfg.BatchSize, len(adds))]); err != nil {
			return 0, fmt.Errorf("rewrite: add %d subscriptions: %w", len(adds), err)
		}
	}

	// Remove what Redis holds beyond the snapshot.
	var cursor uint64
	for {
		sctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
		entries, next, err := x.client.SScan(sctx, x.keys.nodeSubs(x.cfg.NodeID), cursor, "", int64(x.cfg.BatchSize)).Result()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("rewrite: scan this node's entries: %w", err)
		}
		var (
			removes   []indexOp
			malformed []any
		)
		for _, e := range entries {
			if _, ok := want[e]; ok {
				continue
			}
			if m, ok := parseNodeSub(e); ok {
				removes = append(removes, indexOp{m, false})
			} else {
				malformed = append(malformed, e) // not written by wspush
			}
		}
		if len(malformed) > 0 {
			sctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
			err := x.client.SRem(sctx, x.keys.nodeSubs(x.cfg.NodeID), malformed...).Err()
			cancel()
			if err != nil {
				return 0, fmt.Errorf("rewrite: remove %d malformed entries: %w", len(malformed), err)
			}
		}
		if err := x.apply(ctx, removes); err != nil {
			return 0, fmt.Errorf("rewrite: remove %d stale entries: %w", len(removes), err)
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	x.markFlushed(upTo)
	return len(adds), nil
}

// parseNodeSub splits a nodesubs entry "<app>:<key>:<conn-id>".
func parseNodeSub(e string) (indexMember, bool) {
	app, rest, ok := strings.Cut(e, ":")
	if !ok {
		return indexMember{}, false
	}
	key, conn, ok := strings.Cut(rest, ":")
	if !ok {
		return indexMember{}, false
	}
	id, err := strconv.ParseUint(conn, 10, 64)
	// Only the canonical form: the scripts rebuild the entry from its
	// parts, and must remove exactly the entry that was read.
	if err != nil || app == "" || key == "" || strconv.FormatUint(id, 10) != conn {
		return indexMember{}, false
	}
	return indexMember{app, key, id}, true
}

// keepAlive refreshes the liveness key every NodeTTL/3. A refresh that
// finds the key gone (Redis lost it, or this node could not refresh it in
// time and the others may have removed its entries) asks for a rewrite.
func (x *Index) keepAlive(ctx context.Context) {
	tick := time.NewTicker(x.cfg.NodeTTL / 3)
	defer tick.Stop()
	failing, warnedDuplicate := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		old, err := x.register(ctx)
		x.setReady(err)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			if !failing {
				failing = true
				x.log.Warn("index: cannot refresh the liveness key; other nodes will remove this node's entries if it expires",
					"err", err, "ttl", x.cfg.NodeTTL)
			}
			continue
		case failing:
			failing = false
			x.log.Info("index: liveness key refreshed again")
		}
		switch {
		case old == "":
			x.lost.Store(true)
			x.poke()
		case old != x.token && !warnedDuplicate:
			warnedDuplicate = true
			x.log.Error("index: another process refreshes the liveness key of this node ID; node IDs must be unique",
				"key", x.keys.node(x.cfg.NodeID))
		}
	}
}

// reapLoop looks for dead nodes every NodeTTL/2.
func (x *Index) reapLoop(ctx context.Context) {
	tick := time.NewTicker(x.cfg.NodeTTL / 2)
	defer tick.Stop()
	failing, level := false, slog.LevelWarn
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := x.reapDead(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			// When Redis is unreachable the flush loop and the liveness
			// refresh say so already.
			level = slog.LevelDebug
			if x.Ready() == nil {
				level = slog.LevelWarn
			}
			x.log.Log(ctx, level, "index: cannot check for dead nodes", "err", err)
		case err == nil && failing:
			failing = false
			if level == slog.LevelWarn {
				x.log.Info("index: dead-node check works again")
			} else {
				x.log.Debug("index: dead-node check works again")
			}
		}
	}
}

// reapDead removes the entries of every registered node whose liveness key
// is gone.
func (x *Index) reapDead(ctx context.Context) error {
	tctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
	defer cancel()
	nodes, err := x.client.SMembers(tctx, x.keys.nodes()).Result()
	if err != nil {
		return fmt.Errorf("list nodes: %w", err)
	}
	nodes = slices.DeleteFunc(nodes, func(n string) bool { return n == x.cfg.NodeID })
	if len(nodes) == 0 {
		return nil
	}
	cmds := make([]*goredis.IntCmd, len(nodes))
	if _, err := x.client.Pipelined(tctx, func(pipe goredis.Pipeliner) error {
		for i, n := range nodes {
			cmds[i] = pipe.Exists(tctx, x.keys.node(n))
		}
		return nil
	}); err != nil {
		return fmt.Errorf("check liveness of %d nodes: %w", len(nodes), err)
	}
	var errs []error
	for i, n := range nodes {
		if cmds[i].Val() != 0 {
			continue
		}
		removed, done, err := x.reap(ctx, n)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("remove the entries of dead node %s: %w", n, err))
		case done:
			x.m.deadNodes.Inc()
			x.log.Info("index: removed the entries of a dead node (its liveness key expired)",
				"dead_node", n, "entries", removed)
		}
	}
	return errors.Join(errs...)
}

// reapChunk is how many entries one reap script call removes, so that no
// call blocks Redis for long.
const reapChunk = 256

// reap removes the entries of node, chunk by chunk, while its liveness key
// stays absent. done is whether this call unregistered the node. Each
// round reads up to reapChunk entries of the node's nodesubs SET and hands
// them to the reap script, which declares every key it touches (Redis
// Cluster) and so cannot read the SET itself.
func (x *Index) reap(ctx context.Context, node string) (removed int, done bool, err error) {
	nodeSubs := x.keys.nodeSubs(node)
	for {
		tctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
		entries, err := x.client.SRandMemberN(tctx, nodeSubs, reapChunk).Result()
		cancel()
		if err != nil {
			return removed, false, fmt.Errorf("read the entries: %w", err)
		}
		ks := make([]string, 0, 4+2*len(entries))
		ks = append(ks, x.keys.node(node), nodeSubs, x.keys.nodes(), x.keys.apps())
		args := make([]any, 0, 1+3*len(entries))
		args = append(args, node)
		var malformed []any
		for _, e := range entries {
			m, ok := parseNodeSub(e)
			if !ok {
				malformed = append(malformed, e) // not written by wspush
				continue
			}
			ks = append(ks, x.keys.sub(m.app, m.key), x.keys.appKeys(m.app))
			args = append(args, m.app, m.key, strconv.FormatUint(m.conn, 10))
		}
		if len(malformed) > 0 {
			tctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
			err := x.client.SRem(tctx, nodeSubs, malformed...).Err()
			cancel()
			if err != nil {
				return removed, false, fmt.Errorf("remove %d malformed entries: %w", len(malformed), err)
			}
		}
		tctx, cancel = context.WithTimeout(ctx, x.cfg.Timeout)
		res, err := indexReapScript.Run(tctx, x.client, ks, args...).Int64Slice()
		cancel()
		if err != nil {
			return removed, false, err
		}
		if len(res) != 2 {
			return removed, false, fmt.Errorf("reap script returned %v", res)
		}
		removed += int(res[1])
		switch res[0] {
		case 1:
		case 0:
			return removed, true, nil
		default: // alive again, or cleaned up by another node
			return removed, false, nil
		}
	}
}

// shutdown removes this node's entries and liveness key, so that a node
// stopped cleanly leaves nothing behind. Later Add and Remove calls are
// ignored.
func (x *Index) shutdown() {
	x.stopRecording()
	ctx, cancel := context.WithTimeout(context.Background(), x.cfg.ShutdownTimeout)
	defer cancel()
	err := x.client.Del(ctx, x.keys.node(x.cfg.NodeID)).Err()
	removed := 0
	if err == nil {
		removed, _, err = x.reap(ctx, x.cfg.NodeID)
	}
	if err != nil {
		x.log.Warn("index: could not remove this node's entries on shutdown; other nodes remove them once its liveness key expires",
			"err", err, "ttl", x.cfg.NodeTTL)
		return
	}
	x.log.Info("index: removed this node's entries", "entries", removed)
}

// synced reports whether every change recorded so far has been written.
func (x *Index) synced() bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.flushed == x.queued && len(x.pending) == 0
}

func (x *Index) pendingLen() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.pending)
}

type indexMetrics struct {
	flushesOK  prometheus.Counter
	flushesErr prometheus.Counter
	rewrites   prometheus.Counter
	deadNodes  prometheus.Counter
}

func (m *indexMetrics) flushed(err error) {
	if err != nil {
		m.flushesErr.Inc()
	} else {
		m.flushesOK.Inc()
	}
}

func newIndexMetrics(reg prometheus.Registerer, x *Index) (*indexMetrics, error) {
	flushes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspush_index_flushes_total",
		Help: "Writes to the Redis index (flushes of queued subscription changes, and rewrites of this node's share), by result (ok, error).",
	}, []string{"result"})
	m := &indexMetrics{
		flushesOK:  flushes.WithLabelValues("ok"),
		flushesErr: flushes.WithLabelValues("error"),
		rewrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_index_rewrites_total",
			Help: "Rewrites of this node's whole share of the Redis index (at start, after Redis failed or the liveness key expired).",
		}),
		deadNodes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_index_dead_nodes_cleaned_total",
			Help: "Dead nodes (liveness key expired) whose index entries this node removed.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{flushes, m.rewrites, m.deadNodes,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "wspush_index_pending",
			Help: "Subscription changes queued for the next write to the Redis index.",
		}, func() float64 { return float64(x.pendingLen()) }),
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register index metrics: %w", err)
		}
	}
	return m, nil
}

var _ middle.Index = (*Index)(nil)
