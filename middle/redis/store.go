package middle

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/proto"
)

// RedisStoreConfig configures a RedisStore. The zero value of every field
// but Client means its default.
type RedisStoreConfig struct {
	// Client is the Redis every node of the cluster shares. Required. The
	// store uses Lua scripts over two keys of one (app, key), so Redis
	// Cluster is not supported: use a single Redis (or Sentinel).
	Client *redis.Client
	// Prefix starts every key (default DefaultRedisPrefix, "wspush").
	Prefix string
	// HistorySize is how many publications each key's stream keeps
	// (default DefaultHistorySize, 32; exact trimming, at least 1 so that
	// the latest value is kept).
	HistorySize int
	// HistoryTTL, when set, makes the history of a key expire once nothing
	// was published to it for that long: the whole stream, latest value
	// included, so that abandoned keys free their memory. The seq counter
	// never expires, so seqs never restart. Default 0: never expire. With a
	// TTL, a subscriber that arrives after the expiry sees no latest value
	// until the next publication, and nodes report that publication as a
	// gap history cannot fill.
	HistoryTTL time.Duration
}

// Validate reports the first invalid field.
func (c RedisStoreConfig) Validate() error {
	switch {
	case c.Client == nil:
		return errors.New("redis store: Client is required")
	case c.HistorySize < 0:
		return fmt.Errorf("redis store: history size %d: must be positive", c.HistorySize)
	case c.HistoryTTL < 0:
		return fmt.Errorf("redis store: history TTL %s: must be positive", c.HistoryTTL)
	case c.HistoryTTL > 0 && c.HistoryTTL < time.Millisecond:
		return fmt.Errorf("redis store: history TTL %s: must be at least 1ms", c.HistoryTTL)
	}
	return validateRedisPrefix(c.Prefix)
}

// RedisStore is the Store of the cluster mode. Per (app, key) it keeps
//
//   - <prefix>:seq:<app>:<key>, the counter (INCR), never expiring;
//   - <prefix>:hist:<app>:<key>, a stream of the last HistorySize
//     publications whose entry IDs are 0-<seq>, so that a range by seq is a
//     range by ID; fields d (payload), j ("1" when JSON, else "0") and t (ts,
//     Unix ms).
//
// Append increments the counter and adds the entry in one Lua script, so
// once seq N exists every lower seq is in the stream (unless trimmed), and
// every node sharing the Redis assigns the same seqs. AppendBatch pipelines
// those script calls: one round trip per batch.
type RedisStore struct {
	client *redis.Client
	keys   redisKeys
	size   string // MAXLEN argument
	ttlMs  string // PEXPIRE argument, "0": none
}

// NewRedisStore validates cfg and returns a store.
func NewRedisStore(cfg RedisStoreConfig) (*RedisStore, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.HistorySize == 0 {
		cfg.HistorySize = DefaultHistorySize
	}
	return &RedisStore{
		client: cfg.Client,
		keys:   newRedisKeys(cfg.Prefix),
		size:   strconv.Itoa(cfg.HistorySize),
		ttlMs:  strconv.FormatInt(cfg.HistoryTTL.Milliseconds(), 10),
	}, nil
}

// appendScript sequences and retains one publication.
//
// KEYS[1] seq counter, KEYS[2] history stream.
// ARGV[1] MAXLEN, ARGV[2] TTL in ms ("0": none), ARGV[3] payload,
// ARGV[4] "1" if JSON else "0", ARGV[5] ts.
//
// A counter that starts at 1 while the stream still holds entries was lost
// (evicted, deleted by hand): it resumes after the stream's last entry so
// that no seq is ever assigned twice. string.format('%d') keeps seqs above
// 1e14 out of Lua's exponent notation.
var appendScript = redis.NewScript(`
local seq = redis.call('INCR', KEYS[1])
if seq == 1 then
  local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #last > 0 then
    local top = string.match(last[1][1], '^0%-(%d+)$')
    if top then
      seq = redis.call('INCRBY', KEYS[1], top)
    end
  end
end
local id = string.format('0-%d', seq)
local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', ARGV[1], id, 'd', ARGV[3], 'j', ARGV[4], 't', ARGV[5])
if type(ok) == 'table' and ok.err then
  return redis.error_reply('XADD ' .. id .. ' to ' .. KEYS[2] .. ': ' .. ok.err)
end
if ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return seq
`)

// Append implements Store in one round trip.
func (s *RedisStore) Append(ctx context.Context, p *proto.Publication) error {
	keys, args := s.appendArgs(p)
	return setAppendedSeq(appendScript.Run(ctx, s.client, keys, args...), p)
}

// AppendBatch implements Store in one round trip: a pipeline of one script
// call per publication, which Redis runs in order, each atomically (other
// clients' commands may run in between: the seqs of a key within a batch
// are increasing, consecutive only without another writer of the key).
// The batch goes out whole, so callers bound its size.
//
// Scripts cannot fall back to EVAL inside a pipeline: when Redis lacks the
// script (it restarted, or SCRIPT FLUSH ran), AppendBatch loads it and
// sends the failed calls again, provided that every call from the first
// failure on failed for that reason, so that none of them ran.
func (s *RedisStore) AppendBatch(ctx context.Context, pubs []proto.Publication) (int, error) {
	n, noScript, err := s.appendPipelined(ctx, pubs)
	if !noScript {
		return n, err
	}
	if err := appendScript.Load(ctx, s.client).Err(); err != nil {
		return n, fmt.Errorf("redis append: load script: %w", err)
	}
	m, _, err := s.appendPipelined(ctx, pubs[n:])
	return n + m, err
}

// appendPipelined runs the append script for each of pubs in one
// pipeline. It returns how many leading pubs got their seq and the error
// of the first that did not; noScript reports that this call and every
// later one failed because Redis lacked the script.
func (s *RedisStore) appendPipelined(ctx context.Context, pubs []proto.Publication) (n int, noScript bool, err error) {
	cmds := make([]*redis.Cmd, len(pubs))
	// Every command carries its own result, read below; Pipelined's error
	// is only the first of them.
	_, _ = s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range pubs {
			keys, args := s.appendArgs(&pubs[i])
			cmds[i] = appendScript.EvalSha(ctx, pipe, keys, args...)
		}
		return nil
	})
	for i, cmd := range cmds {
		if err := setAppendedSeq(cmd, &pubs[i]); err != nil {
			return i, allNoScript(cmds[i:]), err
		}
	}
	return len(pubs), false, nil
}

// appendArgs are the KEYS and ARGV of appendScript for p.
func (s *RedisStore) appendArgs(p *proto.Publication) ([]string, []any) {
	j := "0"
	if p.JSON {
		j = "1"
	}
	return []string{s.keys.seq(p.App, p.Key), s.keys.hist(p.App, p.Key)},
		[]any{s.size, s.ttlMs, p.Data, j, p.TS}
}

// setAppendedSeq sets p.Seq from the reply of appendScript.
func setAppendedSeq(cmd *redis.Cmd, p *proto.Publication) error {
	seq, err := cmd.Int64()
	if err != nil {
		return fmt.Errorf("redis append to %s.%s: %w", p.App, p.Key, err)
	}
	if seq < 1 {
		return fmt.Errorf("redis append to %s.%s: got seq %d", p.App, p.Key, seq)
	}
	p.Seq = uint64(seq)
	return nil
}

// allNoScript reports whether every one of cmds failed because Redis
// lacked its script.
func allNoScript(cmds []*redis.Cmd) bool {
	for _, c := range cmds {
		if !isNoScript(c.Err()) {
			return false
		}
	}
	return true
}

// History implements Store in one round trip: the counter, then the stream
// after since. Reading the counter first makes an empty range conclusive:
// whatever was appended after the read is in the range, so an empty range
// with since below the counter means the entries expired.
//
// complete is true when the range starts at since+1, or when it is empty
// and since is the counter (nothing was missed: since 0 of a key never
// published to included); it is false when the first entry is above since+1
// (trimmed), when since is above the counter (a seq the key never had) and
// when the entries up to the counter have expired.
func (s *RedisStore) History(ctx context.Context, app, key string, since uint64) ([]proto.Publication, bool, error) {
	if since == math.MaxUint64 {
		// No seq can follow; only the counter matters.
		top, err := s.top(ctx, app, key)
		if err != nil {
			return nil, false, err
		}
		return nil, top == since, nil
	}
	var (
		topCmd  *redis.StringCmd
		histCmd *redis.XMessageSliceCmd
	)
	_, err := s.client.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		topCmd = pipe.Get(ctx, s.keys.seq(app, key))
		histCmd = pipe.XRange(ctx, s.keys.hist(app, key), "0-"+strconv.FormatUint(since+1, 10), "+")
		return nil
	})
	if err == nil || errors.Is(err, redis.Nil) {
		// Pipelined reports the first failure only, which may be the
		// counter's harmless redis.Nil hiding an error of XRANGE.
		err = histCmd.Err()
	}
	if err != nil {
		return nil, false, fmt.Errorf("redis history of %s.%s since %d: %w", app, key, since, err)
	}
	top, err := parseTop(topCmd)
	if err != nil {
		return nil, false, fmt.Errorf("redis history of %s.%s: %w", app, key, err)
	}
	msgs := histCmd.Val()
	if len(msgs) == 0 {
		return nil, since == top, nil
	}
	pubs := make([]proto.Publication, len(msgs))
	for i := range msgs {
		if err := decodeStreamEntry(&msgs[i], app, key, &pubs[i]); err != nil {
			return nil, false, fmt.Errorf("redis history of %s.%s: %w", app, key, err)
		}
	}
	return pubs, pubs[0].Seq == since+1, nil
}

// Latest implements Store. Without HistoryTTL the latest value is kept for
// ever; with it, it expires with the rest of a quiet key's history.
func (s *RedisStore) Latest(ctx context.Context, app, key string) (proto.Publication, bool, error) {
	msgs, err := s.client.XRevRangeN(ctx, s.keys.hist(app, key), "+", "-", 1).Result()
	if err != nil {
		return proto.Publication{}, false, fmt.Errorf("redis latest of %s.%s: %w", app, key, err)
	}
	if len(msgs) == 0 {
		return proto.Publication{}, false, nil
	}
	var p proto.Publication
	if err := decodeStreamEntry(&msgs[0], app, key, &p); err != nil {
		return proto.Publication{}, false, fmt.Errorf("redis latest of %s.%s: %w", app, key, err)
	}
	return p, true, nil
}

// top is the key's counter, 0 when it has none.
func (s *RedisStore) top(ctx context.Context, app, key string) (uint64, error) {
	cmd := s.client.Get(ctx, s.keys.seq(app, key))
	if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("redis seq of %s.%s: %w", app, key, err)
	}
	top, err := parseTop(cmd)
	if err != nil {
		return 0, fmt.Errorf("redis seq of %s.%s: %w", app, key, err)
	}
	return top, nil
}

func parseTop(cmd *redis.StringCmd) (uint64, error) {
	v, err := cmd.Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	top, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("seq counter %q: %w", v, err)
	}
	return top, nil
}

// decodeStreamEntry fills p from a history entry.
func decodeStreamEntry(m *redis.XMessage, app, key string, p *proto.Publication) error {
	seqStr, ok := strings.CutPrefix(m.ID, "0-")
	if !ok {
		return fmt.Errorf("entry %s: ID is not 0-<seq>", m.ID)
	}
	seq, err := strconv.ParseUint(seqStr, 10, 64)
	if err != nil {
		return fmt.Errorf("entry %s: %w", m.ID, err)
	}
	d, ok := m.Values["d"].(string)
	if !ok {
		return fmt.Errorf("entry %s: no payload field d", m.ID)
	}
	var ts int64
	if t, ok := m.Values["t"].(string); ok {
		if ts, err = strconv.ParseInt(t, 10, 64); err != nil {
			return fmt.Errorf("entry %s: ts %q: %w", m.ID, t, err)
		}
	}
	j, _ := m.Values["j"].(string)
	*p = proto.Publication{App: app, Key: key, Seq: seq, TS: ts, Data: []byte(d), JSON: j == "1"}
	return nil
}
