package redis

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// Defaults of StoreConfig.
const (
	// DefaultHistoryMinAge protects young history entries from trimming
	// by count: a burst keeps all of its publications for that long, so
	// that a node that fell behind during the burst can still fill its gap.
	DefaultHistoryMinAge = 30 * time.Second
	// DefaultHistoryMaxLen caps the entries of one key's history whatever
	// their age.
	DefaultHistoryMaxLen = 10000
)

// StoreConfig configures a Store. The zero value of every field but Client
// means its default.
type StoreConfig struct {
	// Client is the Redis (or Redis Cluster) every node shares. Required.
	Client goredis.UniversalClient
	// Prefix starts every key (default DefaultPrefix).
	Prefix string
	// HistorySize is how many publications of each key the history keeps
	// at least, when they are older than HistoryMinAge (default
	// middle.DefaultHistorySize).
	HistorySize int
	// HistoryMinAge: entries younger than this are never trimmed by count
	// (default DefaultHistoryMinAge), only by HistoryMaxLen.
	HistoryMinAge time.Duration
	// HistoryMaxLen is the hard cap of entries per key (default
	// DefaultHistoryMaxLen, at least HistorySize).
	HistoryMaxLen int
	// HistoryTTL, when set, trims entries older than this, but never a
	// key's latest one (default 0: entries do not age out). The seq HASH
	// of a key never expires.
	HistoryTTL time.Duration
	// IdempotencyWindow is how long an idempotency id is remembered
	// (default middle.DefaultIdempotencyWindow).
	IdempotencyWindow time.Duration
}

func (c StoreConfig) withDefaults() StoreConfig {
	if c.HistorySize == 0 {
		c.HistorySize = middle.DefaultHistorySize
	}
	if c.HistoryMinAge == 0 {
		c.HistoryMinAge = DefaultHistoryMinAge
	}
	if c.HistoryMaxLen == 0 {
		c.HistoryMaxLen = max(DefaultHistoryMaxLen, c.HistorySize)
	}
	if c.IdempotencyWindow == 0 {
		c.IdempotencyWindow = middle.DefaultIdempotencyWindow
	}
	return c
}

// Validate reports the first invalid field.
func (c StoreConfig) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("redis store: Client is required")
	case c.HistorySize < 0:
		return fmt.Errorf("redis store: history size %d: must be positive", c.HistorySize)
	case c.HistoryMinAge < 0:
		return fmt.Errorf("redis store: history min age %s: must be positive", c.HistoryMinAge)
	case c.HistoryMaxLen < 0:
		return fmt.Errorf("redis store: history max length %d: must be positive", c.HistoryMaxLen)
	case c.HistoryMaxLen > 0 && c.HistoryMaxLen < max(c.HistorySize, 1):
		return fmt.Errorf("redis store: history max length %d: must be at least the history size %d", c.HistoryMaxLen, c.HistorySize)
	case c.HistoryTTL < 0:
		return fmt.Errorf("redis store: history TTL %s: must be positive", c.HistoryTTL)
	case c.HistoryTTL > 0 && c.HistoryTTL < time.Millisecond:
		return fmt.Errorf("redis store: history TTL %s: must be at least 1ms", c.HistoryTTL)
	case c.HistoryMinAge > 0 && c.HistoryMinAge < time.Millisecond:
		return fmt.Errorf("redis store: history min age %s: must be at least 1ms", c.HistoryMinAge)
	case c.IdempotencyWindow < 0:
		return fmt.Errorf("redis store: idempotency window %s: must be positive", c.IdempotencyWindow)
	case c.IdempotencyWindow > 0 && c.IdempotencyWindow < time.Millisecond:
		return fmt.Errorf("redis store: idempotency window %s: must be at least 1ms", c.IdempotencyWindow)
	}
	return ValidatePrefix(c.Prefix)
}

// Store is the middle.Store of a cluster: it keeps the schema of
// docs/PROTOCOL.md, "Redis schema". Per key, one Lua script sequences a
// publication, appends it to the history, trims the history and SPUBLISHes
// it on the key's channel ("Fan-out between nodes"), so a publication is
// fanned out if and only if it was sequenced, and every node receives a
// key's publications in seq order. Every script touches only the keys of
// one (app, key), which share the hash tag {<app>:<key>}, and receives all
// of them in KEYS, so the store runs on Redis Cluster too.
type Store struct {
	c goredis.UniversalClient
	k keys

	// Script arguments, formatted once.
	size, minAge, maxLen, ttl, idemWindow string
}

var _ middle.Store = (*Store)(nil)

// NewStore validates cfg and returns a store. It does not talk to Redis.
func NewStore(cfg StoreConfig) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	ms := func(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }
	return &Store{
		c:          cfg.Client,
		k:          newKeys(cfg.Prefix),
		size:       strconv.Itoa(cfg.HistorySize),
		minAge:     ms(cfg.HistoryMinAge),
		maxLen:     strconv.Itoa(cfg.HistoryMaxLen),
		ttl:        ms(cfg.HistoryTTL),
		idemWindow: ms(cfg.IdempotencyWindow),
	}, nil
}

// luaCommon is shared by the scripts: seq IDs of the history stream, the
// epoch of a key (created when the seq HASH is missing) and trimming.
//
// Seqs stay below 2^53, where Lua's numbers are exact; string.format('%d')
// keeps them out of exponent notation.
const luaCommon = `
local function sid(n) return string.format('0-%d', n) end
local function seqOf(entry) return tonumber(string.sub(entry[1], 3)) end
local function field(entry, name)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end
local function ageOf(entry) return tonumber(field(entry, 'a')) or 0 end
local function nowMs()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The key's epoch. A missing seq HASH (a new key, or data lost: a flush, an
-- eviction, a failover) starts a new epoch at seq 0 and deletes the history
-- left from the old one (docs/PROTOCOL.md, "Redis schema").
local function epoch(seqKey, histKey, new)
  local e = redis.call('HGET', seqKey, 'e')
  if e then return e end
  redis.call('HSET', seqKey, 's', 0, 'e', new)
  redis.call('DEL', histKey)
  return new
end

-- The first seq in [lo, hi] whose entry was appended at or after cutoff
-- (ms), hi + 1 when none was. Append times grow with seqs: a galloping
-- search from lo (lo, lo+1, lo+3, ...), then a binary search, finds it in
-- O(log k) lookups for k old entries, O(1) in the steady state.
local function firstYoung(hist, lo, hi, cutoff)
  local limit = hi + 1
  local probe, step = lo, 1
  while lo <= hi do
    local mid
    if probe then mid = math.min(probe, hi) else mid = math.floor((lo + hi) / 2) end
    local r = redis.call('XRANGE', hist, sid(mid), '+', 'COUNT', 1)
    if #r == 0 then break end
    if ageOf(r[1]) >= cutoff then
      hi = mid - 1
      probe = nil
    else
      lo = seqOf(r[1]) + 1
      if probe then
        probe = lo + step
        step = step * 2
      end
    end
  end
  return math.min(lo, limit)
end

-- trim applies the retention rules to the history whose newest seq is top:
-- keep the newest size entries and every entry younger than minAge; never
-- more than maxLen; drop entries older than ttl (when not 0) but the newest.
-- In the common case (no more than size entries, no TTL) it costs one XLEN.
local function trim(hist, top, now, size, minAge, maxLen, ttl)
  local n = redis.call('XLEN', hist)
  if n == 0 or (n <= size and ttl == 0) then return end
  local first = redis.call('XRANGE', hist, '-', '+', 'COUNT', 1)
  local lo = seqOf(first[1])
  local cut = lo
  local keep = top - size + 1
  if keep > lo then
    if minAge == 0 then
      cut = keep
    elseif ageOf(first[1]) < now - minAge then
      cut = firstYoung(hist, lo + 1, keep - 1, now - minAge)
    end
  end
  local cap = top - maxLen + 1
  if cap > cut then cut = cap end
  if ttl > 0 and cut < top then
    cut = firstYoung(hist, cut, top - 1, now - ttl)
  end
  if cut > lo then
    redis.call('XTRIM', hist, 'MINID', sid(cut))
  end
end
`

// appendScript sequences, retains and fans out one publication.
//
// KEYS: 1 seq HASH, 2 history stream, 3 fan-out channel, 4 (when the
// publication has an ID) its idempotency key.
// ARGV: 1 a new epoch (used only if the key has none), 2 fencing token
// ("0": none), 3 payload, 4 "1" if JSON else "0", 5 ts, 6 history size,
// 7 min age (ms), 8 max length, 9 TTL (ms, "0": none), 10 idempotency
// window (ms).
//
// It returns {seq, epoch, 1}, or {seq, epoch, 0} for a repeat of an
// idempotency id, and an error "FENCED ..." when a higher token sequenced
// the key.
var appendScript = goredis.NewScript(luaCommon + `
local e = epoch(KEYS[1], KEYS[2], ARGV[1])
-- Fencing (docs/PROTOCOL.md, "Partitions and fencing"). Tokens are decimal
-- strings without leading zeros: compared by length, then text, they need
-- no floating point.
local fence = ARGV[2]
if fence ~= '0' then
  local f = redis.call('HGET', KEYS[1], 'f')
  if f and (#f > #fence or (#f == #fence and f > fence)) then
    return redis.error_reply('FENCED ' .. KEYS[1] .. ' was sequenced with token ' .. f .. ', above ' .. fence)
  end
  redis.call('HSET', KEYS[1], 'f', fence)
end
-- Idempotency (docs/PROTOCOL.md, "Idempotent publishing"): a repeat in
-- the same epoch gets the first seq back; one from an older epoch is new.
if KEYS[4] then
  local v = redis.call('GET', KEYS[4])
  if v then
    local s, ve = string.match(v, '^(%d+):(.*)$')
    if s and ve == e then return {tonumber(s), e, 0} end
  end
end
local seq = (tonumber(redis.call('HGET', KEYS[1], 's')) or 0) + 1
local now = nowMs()
-- XADD first: if it fails (a stream whose top is not below seq, which only
-- hand edits make), nothing was sequenced.
local ok = redis.pcall('XADD', KEYS[2], sid(seq), 'd', ARGV[3], 'j', ARGV[4], 't', ARGV[5], 'a', string.format('%d', now))
if type(ok) == 'table' and ok.err then
  return redis.error_reply('XADD ' .. sid(seq) .. ' to ' .. KEYS[2] .. ': ' .. ok.err)
end
local s = string.format('%d', seq)
redis.call('HSET', KEYS[1], 's', s)
trim(KEYS[2], seq, now, tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]))
if KEYS[4] then
  redis.call('SET', KEYS[4], s .. ':' .. e, 'PX', ARGV[10])
end
redis.call('SPUBLISH', KEYS[3], s .. ':' .. e .. ':' .. ARGV[5] .. ':' .. ARGV[4] .. ':' .. ARGV[3])
return {seq, e, 1}
`)

// readScript reads a key's top position and, depending on the mode, its
// history or latest entry, creating its epoch when it has none.
//
// KEYS: 1 seq HASH, 2 history stream.
// ARGV: 1 a new epoch, 2 mode: "t" top only, "l" latest, "h" history from
// the entry ID ARGV[3]; for "h": 4 history size, 5 min age (ms), 6 max
// length, 7 TTL (ms).
//
// It returns {seq, epoch} for "t", else {seq, epoch, entries}.
var readScript = goredis.NewScript(luaCommon + `
local e = epoch(KEYS[1], KEYS[2], ARGV[1])
local s = tonumber(redis.call('HGET', KEYS[1], 's')) or 0
local mode = ARGV[2]
if mode == 't' then return {s, e} end
if s == 0 then return {s, e, {}} end
if mode == 'l' then
  -- Only the entry of seq s is the latest: an older one is never
  -- presented as the newest.
  return {s, e, redis.call('XRANGE', KEYS[2], sid(s), sid(s))}
end
local ttl = tonumber(ARGV[7])
if ttl > 0 then
  -- A quiet key's entries age out without an append to trim them.
  trim(KEYS[2], s, nowMs(), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ttl)
end
return {s, e, redis.call('XRANGE', KEYS[2], ARGV[3], '+')}
`)

// AppendBatch implements middle.Store in one round trip: a pipeline of one
// appendScript call per publication. Redis runs them in order, each
// atomically; on Redis Cluster the pipeline is split by node, and the
// publications of one key, all in one slot, stay in order on their node.
//
// Scripts cannot fall back to EVAL inside a pipeline: when Redis lacks the
// script (it restarted, or SCRIPT FLUSH ran), AppendBatch loads it and sends
// the calls that failed for that reason again, provided that no later
// publication of the same key succeeded (a script loaded meanwhile by
// another node), which would reorder the key.
func (s *Store) AppendBatch(ctx context.Context, pubs []proto.Publication, fence uint64) (int, error) {
	if len(pubs) == 0 {
		return 0, nil
	}
	fenceArg := strconv.FormatUint(fence, 10)
	cmds := make([]*goredis.Cmd, len(pubs))
	run := func(idx []int) {
		// Every command carries its own result, read below.
		_, _ = s.c.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
			for _, i := range idx {
				keys, args := s.appendArgs(&pubs[i], fenceArg)
				cmds[i] = appendScript.EvalSha(ctx, pipe, keys, args...)
			}
			return nil
		})
	}
	all := make([]int, len(pubs))
	for i := range all {
		all[i] = i
	}
	run(all)
	if retry := noScriptRetry(pubs, cmds); len(retry) > 0 {
		if err := appendScript.Load(ctx, s.c).Err(); err != nil {
			return retry[0], s.fail(fmt.Sprintf("append to %s.%s: load script", pubs[retry[0]].App, pubs[retry[0]].Key), err)
		}
		run(retry)
	}
	for i, cmd := range cmds {
		if err := setAppended(cmd, &pubs[i]); err != nil {
			return i, s.fail(fmt.Sprintf("append to %s.%s", pubs[i].App, pubs[i].Key), err)
		}
	}
	return len(pubs), nil
}

// noScriptRetry returns the publications to send again after loading the
// append script: those before the first failure of another kind whose call
// failed with NOSCRIPT. It returns none when resending one would reorder its
// key: a later publication of that key succeeded.
func noScriptRetry(pubs []proto.Publication, cmds []*goredis.Cmd) []int {
	var retry []int
	missing := make(map[middle.StreamKey]bool)
	for i, cmd := range cmds {
		k := middle.StreamKey{App: pubs[i].App, Key: pubs[i].Key}
		err := cmd.Err()
		switch {
		case err == nil:
			if missing[k] {
				return nil
			}
		case isNoScript(err):
			missing[k] = true
			retry = append(retry, i)
		default:
			// pubs[i] fails the batch: nothing after it is retried.
			return trimRetry(retry, i)
		}
	}
	return retry
}

// trimRetry keeps the indices of retry below n.
func trimRetry(retry []int, n int) []int {
	for j, i := range retry {
		if i >= n {
			return retry[:j]
		}
	}
	return retry
}

// appendArgs are the KEYS and ARGV of appendScript for p.
func (s *Store) appendArgs(p *proto.Publication, fence string) ([]string, []any) {
	keys := make([]string, 3, 4)
	keys[0], keys[1], keys[2] = s.k.seq(p.App, p.Key), s.k.hist(p.App, p.Key), s.k.pub(p.App, p.Key)
	if p.ID != "" {
		keys = append(keys, s.k.idemPrefix(p.App, p.Key)+p.ID)
	}
	j := "0"
	if p.JSON {
		j = "1"
	}
	return keys, []any{
		proto.NewEpoch(), fence, p.Data, j, strconv.FormatInt(p.TS, 10),
		s.size, s.minAge, s.maxLen, s.ttl, s.idemWindow,
	}
}

// setAppended sets the Seq and Epoch of p from appendScript's reply.
func setAppended(cmd *goredis.Cmd, p *proto.Publication) error {
	v, err := cmd.Slice()
	if err != nil {
		return err
	}
	if len(v) != 3 {
		return fmt.Errorf("append script replied %d values", len(v))
	}
	seq, epoch, err := parseTop(v)
	if err != nil {
		return err
	}
	if seq == 0 {
		return errors.New("append script replied seq 0")
	}
	p.Seq, p.Epoch = seq, epoch
	return nil
}

// fail wraps a Redis error: a refusal of the fencing check wraps
// middle.ErrFenced, anything else middle.ErrUnavailable (the caller may
// retry).
func (s *Store) fail(op string, err error) error {
	if goredis.HasErrorPrefix(err, "FENCED") {
		return fmt.Errorf("redis %s: %w (%v)", op, middle.ErrFenced, err)
	}
	return fmt.Errorf("redis %s: %w: %w", op, middle.ErrUnavailable, err)
}

// read runs readScript for one key, loading it when Redis lacks it.
func (s *Store) read(ctx context.Context, app, key, mode, start string) ([]any, error) {
	keys := []string{s.k.seq(app, key), s.k.hist(app, key)}
	args := []any{proto.NewEpoch(), mode, start, s.size, s.minAge, s.maxLen, s.ttl}
	v, err := readScript.Run(ctx, s.c, keys, args...).Slice()
	if err != nil {
		return nil, err
	}
	if len(v) != 3 {
		return nil, fmt.Errorf("read script replied %d values", len(v))
	}
	return v, nil
}

// History implements middle.Store in one round trip.
func (s *Store) History(ctx context.Context, app, key string, since uint64) (middle.History, error) {
	start := "+" // since+1 would overflow: no seq follows since
	if since < math.MaxUint64 {
		start = "0-" + strconv.FormatUint(since+1, 10)
	}
	h, err := s.history(ctx, app, key, "h", start)
	if err != nil {
		return middle.History{}, s.fail(fmt.Sprintf("history of %s.%s since %d", app, key, since), err)
	}
	if since == math.MaxUint64 {
		h.Pubs = nil // XRANGE + + may return an entry of the highest ID
	}
	return h, nil
}

// Latest implements middle.Store: the entry of the key's top seq, if
// retained (HistoryTTL never trims it).
func (s *Store) Latest(ctx context.Context, app, key string) (middle.History, error) {
	h, err := s.history(ctx, app, key, "l", "")
	if err != nil {
		return middle.History{}, s.fail(fmt.Sprintf("latest of %s.%s", app, key), err)
	}
	return h, nil
}

func (s *Store) history(ctx context.Context, app, key, mode, start string) (middle.History, error) {
	v, err := s.read(ctx, app, key, mode, start)
	if err != nil {
		return middle.History{}, err
	}
	var h middle.History
	if h.Top.Seq, h.Top.Epoch, err = parseTop(v); err != nil {
		return middle.History{}, err
	}
	entries, ok := v[2].([]any)
	if !ok {
		return middle.History{}, fmt.Errorf("read script replied entries of type %T", v[2])
	}
	if len(entries) > 0 {
		h.Pubs = make([]proto.Publication, 0, len(entries))
	}
	for _, e := range entries {
		p := proto.Publication{App: app, Key: key, Epoch: h.Top.Epoch}
		if err := decodeEntry(e, &p); err != nil {
			return middle.History{}, err
		}
		if p.Seq > h.Top.Seq {
			continue // never: the HASH leads the stream
		}
		h.Pubs = append(h.Pubs, p)
	}
	return h, nil
}

// Tops implements middle.Store in one round trip: a pipeline of one
// readScript call per key.
func (s *Store) Tops(ctx context.Context, sks []middle.StreamKey) ([]proto.Position, error) {
	if len(sks) == 0 {
		return nil, nil
	}
	cmds := make([]*goredis.Cmd, len(sks))
	run := func() {
		_, _ = s.c.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
			for i, k := range sks {
				cmds[i] = readScript.EvalSha(ctx, pipe,
					[]string{s.k.seq(k.App, k.Key), s.k.hist(k.App, k.Key)},
					proto.NewEpoch(), "t")
			}
			return nil
		})
	}
	run()
	for _, cmd := range cmds {
		if isNoScript(cmd.Err()) {
			// Reads are safe to repeat: load the script, run them all again.
			if err := readScript.Load(ctx, s.c).Err(); err != nil {
				return nil, s.fail("tops: load script", err)
			}
			run()
			break
		}
	}
	out := make([]proto.Position, len(sks))
	for i, cmd := range cmds {
		v, err := cmd.Slice()
		if err == nil && len(v) != 2 {
			err = fmt.Errorf("read script replied %d values", len(v))
		}
		if err == nil {
			out[i].Seq, out[i].Epoch, err = parseTop(v)
		}
		if err != nil {
			return nil, s.fail(fmt.Sprintf("top of %s.%s", sks[i].App, sks[i].Key), err)
		}
	}
	return out, nil
}

// parseTop reads {seq, epoch, ...} of a script reply.
func parseTop(v []any) (uint64, string, error) {
	seq, err := replyUint(v[0])
	if err != nil {
		return 0, "", fmt.Errorf("script reply seq: %w", err)
	}
	epoch, ok := v[1].(string)
	if !ok || proto.ValidateEpoch(epoch) != nil {
		return 0, "", fmt.Errorf("script reply epoch %v: invalid", v[1])
	}
	return seq, epoch, nil
}

func replyUint(v any) (uint64, error) {
	switch n := v.(type) {
	case int64:
		if n < 0 {
			return 0, fmt.Errorf("%d is negative", n)
		}
		return uint64(n), nil
	case string:
		return strconv.ParseUint(n, 10, 64)
	}
	return 0, fmt.Errorf("%v of type %T", v, v)
}

// decodeEntry fills the Seq, TS, Data and JSON of p from a history entry as
// a script returns it: {id, {field, value, ...}}.
func decodeEntry(e any, p *proto.Publication) error {
	ev, ok := e.([]any)
	if !ok || len(ev) != 2 {
		return fmt.Errorf("history entry %v: not {id, fields}", e)
	}
	id, _ := ev[0].(string)
	seqStr, ok := strings.CutPrefix(id, "0-")
	if !ok {
		return fmt.Errorf("history entry %q: ID is not 0-<seq>", id)
	}
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if err != nil || seq == 0 {
		return fmt.Errorf("history entry %q: bad seq", id)
	}
	fields, ok := ev[1].([]any)
	if !ok {
		return fmt.Errorf("history entry %q: fields of type %T", id, ev[1])
	}
	p.Seq = seq
	var haveData bool
	for i := 0; i+1 < len(fields); i += 2 {
		name, _ := fields[i].(string)
		val, _ := fields[i+1].(string)
		switch name {
		case "d":
			p.Data, haveData = []byte(val), true
		case "j":
			p.JSON = val == "1"
		case "t":
			if p.TS, err = strconv.ParseInt(val, 10, 64); err != nil {
				return fmt.Errorf("history entry %q: ts %q: %w", id, val, err)
			}
		}
	}
	if !haveData {
		return fmt.Errorf("history entry %q: no payload field d", id)
	}
	return nil
}
