package redis

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/proto"
)

// MaxNodeStatsBytes bounds one node's entry in NodeStats: larger values are
// refused by Put and skipped by All.
const MaxNodeStatsBytes = 64 << 10

// NodeStatsConfig configures a NodeStats.
type NodeStatsConfig struct {
	// Client is the Redis every node shares. Required.
	Client goredis.UniversalClient
	// NodeID is this node's field in the hash: 1–64 characters of
	// [A-Za-z0-9_-], unique among the live nodes. Required.
	NodeID string
	// Prefix starts the key (default DefaultPrefix, "wspush").
	Prefix string
}

// NodeStats shares the nodes' operator snapshots (GET /api/nodes) through
// one HASH, <prefix>:nodestats (docs/PROTOCOL.md, "Redis schema"): field
// the node ID, value the node's snapshot, which this type treats as opaque
// bytes. One key is one hash slot, so it works on Redis Cluster too. What a
// snapshot holds and when an entry is stale is the caller's business
// (internal/ops).
type NodeStats struct {
	client goredis.UniversalClient
	key    string
	node   string
}

func (k keys) nodeStats() string { return k.p + "nodestats" }

// NewNodeStats validates cfg and returns the node's handle on the hash.
func NewNodeStats(cfg NodeStatsConfig) (*NodeStats, error) {
	if cfg.Client == nil {
		return nil, errors.New("redis node stats: Client is required")
	}
	if err := proto.ValidateName(cfg.NodeID); err != nil {
		return nil, fmt.Errorf("redis node stats: node ID %q: %w", cfg.NodeID, err)
	}
	if err := ValidatePrefix(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("redis node stats: %w", err)
	}
	return &NodeStats{client: cfg.Client, key: newKeys(cfg.Prefix).nodeStats(), node: cfg.NodeID}, nil
}

// Put writes this node's snapshot, replacing the previous one.
func (s *NodeStats) Put(ctx context.Context, snapshot []byte) error {
	if len(snapshot) > MaxNodeStatsBytes {
		return fmt.Errorf("redis node stats: snapshot of %d bytes exceeds %d", len(snapshot), MaxNodeStatsBytes)
	}
	if err := s.client.HSet(ctx, s.key, s.node, snapshot).Err(); err != nil {
		return fmt.Errorf("redis node stats: write %s: %w", s.key, err)
	}
	return nil
}

// All returns every node's snapshot by node ID, this node's included; an
// entry larger than MaxNodeStatsBytes is left out.
func (s *NodeStats) All(ctx context.Context) (map[string]string, error) {
	all, err := s.client.HGetAll(ctx, s.key).Result()
	if err != nil {
		return nil, fmt.Errorf("redis node stats: read %s: %w", s.key, err)
	}
	maps.DeleteFunc(all, func(_, v string) bool { return len(v) > MaxNodeStatsBytes })
	return all, nil
}

// nodeStatsPruneScript deletes each given field whose value is still the
// given one, so that a node that wrote again since it was read stays.
// KEYS[1] hash; ARGV field, value, field, value, ... Returns the number
// deleted.
var nodeStatsPruneScript = goredis.NewScript(`
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i+1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
`)

// maxPruneFields bounds the fields one prune script call checks, so that a
// hash left full by a long-gone deployment is cleaned in several short
// calls rather than one that blocks Redis.
const maxPruneFields = 256

// Prune deletes the entries of stale (node ID to the value All returned)
// that no node has rewritten since, and returns how many it deleted.
func (s *NodeStats) Prune(ctx context.Context, stale map[string]string) (int, error) {
	ids := slices.Sorted(maps.Keys(stale))
	deleted := 0
	for len(ids) > 0 {
		batch := ids[:min(len(ids), maxPruneFields)]
		ids = ids[len(batch):]
		args := make([]any, 0, 2*len(batch))
		for _, id := range batch {
			args = append(args, id, stale[id])
		}
		n, err := nodeStatsPruneScript.Run(ctx, s.client, []string{s.key}, args...).Int()
		deleted += n
		if err != nil {
			return deleted, fmt.Errorf("redis node stats: prune %s: %w", s.key, err)
		}
	}
	return deleted, nil
}

// Remove deletes this node's entry, for a clean shutdown: the other nodes
// stop listing it at once.
func (s *NodeStats) Remove(ctx context.Context) error {
	if err := s.client.HDel(ctx, s.key, s.node).Err(); err != nil {
		return fmt.Errorf("redis node stats: remove %s from %s: %w", s.node, s.key, err)
	}
	return nil
}
