package redis

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/proto"
)

// DefaultClaimTTL is the default lifetime of an ingest partition claim.
const DefaultClaimTTL = 6 * time.Second

// ClaimsConfig configures Claims. The zero value of every field but Client
// and NodeID means its default.
type ClaimsConfig struct {
	// Client is the Redis every node shares: a single Redis or a Redis
	// Cluster. Required.
	Client goredis.UniversalClient
	// NodeID names this node in the claims and in the members: 1–64
	// characters of [A-Za-z0-9_-], unique among the live nodes. Required.
	NodeID string
	// Prefix starts every key (default DefaultPrefix, "wspush").
	Prefix string
	// TTL is how long a claim lasts after it was taken or last renewed,
	// and how long a member counts as live after its last heartbeat
	// (default 6s). The ingest renews several times per TTL.
	TTL time.Duration
}

// Validate reports the first invalid field.
func (c ClaimsConfig) Validate() error {
	if c.Client == nil {
		return errors.New("redis claims: Client is required")
	}
	if err := proto.ValidateName(c.NodeID); err != nil {
		return fmt.Errorf("redis claims: node ID %q: %w", c.NodeID, err)
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("redis claims: %w", err)
	}
	if c.TTL < 0 || (c.TTL > 0 && c.TTL < time.Millisecond) {
		return fmt.Errorf("redis claims: TTL %s: must be at least 1ms", c.TTL)
	}
	return nil
}

// Claims are the ingest partition claims of docs/PROTOCOL.md, "Partitions
// and fencing". All of their keys carry the hash tag {ingest}, so each
// script runs in one hash slot (Redis Cluster):
//
//   - <p>:{ingest}:claim:<n>, STRING "<node-id>/<instance>/<token>" with
//     the claim's TTL: who holds partition n, and the fencing token the
//     claim got when it was taken;
//   - <p>:{ingest}:fence, the fencing token counter. When it is missing (a
//     new deployment, or Redis lost it), it starts at Redis's clock in
//     microseconds, so that a token is higher than any handed out before
//     the loss;
//   - <p>:{ingest}:members, ZSET of the live node IDs, scored by their last
//     heartbeat (Redis's clock, ms).
//
// The instance (one per Claims value) tells this process from another that
// wrongly uses the same node ID: a claim is renewed only by the instance
// that took it. Claims are safe for concurrent use.
type Claims struct {
	client goredis.UniversalClient
	keys   keys
	node   string
	holder string // "<node-id>/<instance>/": the claim value's start
	ttl    time.Duration
}

// NewClaims validates cfg and returns the node's claims.
func NewClaims(cfg ClaimsConfig) (*Claims, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultClaimTTL
	}
	return &Claims{
		client: cfg.Client,
		keys:   newKeys(cfg.Prefix),
		node:   cfg.NodeID,
		holder: cfg.NodeID + "/" + instanceToken() + "/",
		ttl:    cfg.TTL,
	}, nil
}

// claimScript takes a free claim with a new fencing token, or renews one
// this instance holds and keeps its token.
// KEYS[1] claim, KEYS[2] fence; ARGV[1] holder "<node>/<instance>/",
// ARGV[2] TTL in ms.
// Returns {1, token} when held, {0, value} when another holds it.
var claimScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, string.sub(v, #ARGV[1] + 1)}
  end
  return {0, v}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[2], t[1] .. string.format('%06d', tonumber(t[2])))
end
redis.call('INCR', KEYS[2])
-- Read back as a string: a Lua number would lose digits in tostring.
local token = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. token, 'PX', ARGV[2])
return {1, token}
`)

// claimReleaseScript deletes the claim if this instance holds it.
// KEYS[1] claim; ARGV[1] holder "<node>/<instance>/".
var claimReleaseScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// membersScript heartbeats a node and counts the live ones, by Redis's
// clock so that the nodes' clocks need not agree.
// KEYS[1] members; ARGV[1] node, ARGV[2] TTL in ms.
var membersScript = goredis.NewScript(`
local t = redis.call('TIME')
local ttl = tonumber(ARGV[2])
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], string.format('%.0f', now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.0f', now - ttl))
redis.call('PEXPIRE', KEYS[1], 2 * ttl)
return redis.call('ZCARD', KEYS[1])
`)

// Claim takes the claim of partition when it is free, or renews it when
// this instance holds it, in one round trip. ok reports whether this
// instance holds it for the next TTL; token is the claim's fencing token,
// the same across renewals. A claim that expired before its renewal is
// taken anew, with a new, higher token: the caller must use the token of
// its latest Claim.
func (c *Claims) Claim(ctx context.Context, partition int) (token uint64, ok bool, err error) {
	if partition < 0 {
		return 0, false, fmt.Errorf("redis claims: partition %d: must not be negative", partition)
	}
	res, err := claimScript.Run(ctx, c.client, []string{c.keys.claim(partition), c.keys.fence()},
		c.holder, c.ttl.Milliseconds()).Slice()
	if err != nil {
		return 0, false, fmt.Errorf("redis claims: claim partition %d: %w", partition, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("redis claims: claim partition %d: script returned %v", partition, res)
	}
	held, _ := res[0].(int64)
	if held != 1 {
		return 0, false, nil
	}
	s, _ := res[1].(string)
	token, err = strconv.ParseUint(s, 10, 64)
	if err != nil || token == 0 {
		return 0, false, fmt.Errorf("redis claims: claim partition %d: bad fencing token %q", partition, s)
	}
	return token, true, nil
}

// Release gives up the claim of partition if this instance holds it, so
// that another node takes the partition over at once rather than after
// TTL.
func (c *Claims) Release(ctx context.Context, partition int) error {
	if err := claimReleaseScript.Run(ctx, c.client, []string{c.keys.claim(partition)}, c.holder).Err(); err != nil {
		return fmt.Errorf("redis claims: release partition %d: %w", partition, err)
	}
	return nil
}

// Members heartbeats this node into the members, drops the members not
// heard from within TTL, and returns how many are live, this node
// included.
func (c *Claims) Members(ctx context.Context) (int, error) {
	n, err := membersScript.Run(ctx, c.client, []string{c.keys.members()}, c.node, c.ttl.Milliseconds()).Int()
	if err != nil {
		return 0, fmt.Errorf("redis claims: heartbeat: %w", err)
	}
	return n, nil
}

// Leave removes this node from the members, so that the others count
// without it at once rather than after TTL (a clean shutdown, after the
// claims were released).
func (c *Claims) Leave(ctx context.Context) error {
	if err := c.client.ZRem(ctx, c.keys.members(), c.node).Err(); err != nil {
		return fmt.Errorf("redis claims: leave the members: %w", err)
	}
	return nil
}

// TTL is the lifetime of a claim and of a member's heartbeat.
func (c *Claims) TTL() time.Duration { return c.ttl }
