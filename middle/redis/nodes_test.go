package redis

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

func newTestNodeStats(t testing.TB, c goredis.UniversalClient, prefix, node string) *NodeStats {
	t.Helper()
	s, err := NewNodeStats(NodeStatsConfig{Client: c, NodeID: node, Prefix: prefix})
	if err != nil {
		t.Fatalf("NewNodeStats: %v", err)
	}
	return s
}

func TestNodeStats(t *testing.T) {
	testNodeStats(t, newTestClient(t))
}

func TestNodeStatsRedisCluster(t *testing.T) {
	testNodeStats(t, newTestClusterClient(t))
}

func testNodeStats(t *testing.T, c goredis.UniversalClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	prefix := testPrefix(t, c)
	a := newTestNodeStats(t, c, prefix, "node-a")
	b := newTestNodeStats(t, c, prefix, "node-b")
	put := func(s *NodeStats, v string) {
		t.Helper()
		if err := s.Put(ctx, []byte(v)); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	all := func(s *NodeStats) map[string]string {
		t.Helper()
		m, err := s.All(ctx)
		if err != nil {
			t.Fatalf("All: %v", err)
		}
		return m
	}

	put(a, `{"n":1}`)
	put(b, `{"n":1}`)
	put(a, `{"n":2}`)
	want := map[string]string{"node-a": `{"n":2}`, "node-b": `{"n":1}`}
	for _, s := range []*NodeStats{a, b} {
		if got := all(s); !maps.Equal(got, want) {
			t.Fatalf("All = %v, want %v", got, want)
		}
	}
	if keys := mustKeysUnder(t, c, prefix); len(keys) != 1 || keys[0] != prefix+":nodestats" {
		t.Fatalf("keys under the prefix: %v, want [%s:nodestats]", keys, prefix)
	}

	// Prune deletes what is unchanged since it was read, not a node that
	// wrote again in between.
	seen := all(a)
	put(b, `{"n":3}`)
	n, err := a.Prune(ctx, seen)
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 deleted", n, err)
	}
	if got, want := all(a), map[string]string{"node-b": `{"n":3}`}; !maps.Equal(got, want) {
		t.Fatalf("after Prune: %v, want %v", got, want)
	}

	if err := b.Put(ctx, []byte(strings.Repeat("x", MaxNodeStatsBytes+1))); err == nil {
		t.Fatal("Put of an oversized snapshot succeeded")
	}
	// An oversized entry written by something else is skipped.
	if err := c.HSet(ctx, prefix+":nodestats", "node-c", strings.Repeat("x", MaxNodeStatsBytes+1)).Err(); err != nil {
		t.Fatal(err)
	}
	if got := all(a); len(got) != 1 || got["node-b"] != `{"n":3}` {
		t.Fatalf("All with an oversized entry: %d entries, want node-b only", len(got))
	}

	if err := b.Remove(ctx); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, ok := all(a)["node-b"]; ok {
		t.Fatal("node-b still listed after Remove")
	}
}

func TestNodeStatsConfig(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, cfg := range []NodeStatsConfig{
		{NodeID: "a"},
		{Client: c},
		{Client: c, NodeID: "a:b"},
		{Client: c, NodeID: "a", Prefix: "p{x}"},
	} {
		if _, err := NewNodeStats(cfg); err == nil {
			t.Errorf("NewNodeStats(%+v) succeeded", cfg)
		}
	}
}
