package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/testutil"
)

// What the AMQP ingest asks of its claims (amqp.IngestConfig.Claims).
var _ interface {
	Claim(ctx context.Context, partition int) (uint64, bool, error)
	Release(ctx context.Context, partition int) error
	Members(ctx context.Context) (int, error)
	TTL() time.Duration
} = (*Claims)(nil)

func newIdxClaims(t testing.TB, c goredis.UniversalClient, prefix, node string, ttl time.Duration) *Claims {
	t.Helper()
	cl, err := NewClaims(ClaimsConfig{Client: c, NodeID: node, Prefix: prefix, TTL: ttl})
	if err != nil {
		t.Fatalf("NewClaims: %v", err)
	}
	return cl
}

// idxClaim calls Claim and fails the test on error.
func idxClaim(t testing.TB, cl *Claims, partition int) (uint64, bool) {
	t.Helper()
	token, ok, err := cl.Claim(context.Background(), partition)
	if err != nil {
		t.Fatalf("Claim %d: %v", partition, err)
	}
	if ok != (token != 0) {
		t.Fatalf("Claim %d = %d, %v: a held claim has a token, and only a held claim", partition, token, ok)
	}
	return token, ok
}

// idxRedisTimeMicros is Redis's clock in µs.
func idxRedisTimeMicros(t testing.TB, c goredis.UniversalClient) uint64 {
	t.Helper()
	now, err := c.Time(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	return uint64(now.UnixMicro())
}

func TestClaimsClaimRenewRelease(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	a := newIdxClaims(t, c, prefix, "node-a", time.Minute)
	b := newIdxClaims(t, c, prefix, "node-b", time.Minute)

	t0, ok := idxClaim(t, a, 0)
	if !ok {
		t.Fatal("node a could not take a free claim")
	}
	if _, ok := idxClaim(t, b, 0); ok {
		t.Fatal("node b took the claim node a holds")
	}
	if tok, ok := idxClaim(t, a, 0); !ok || tok != t0 {
		t.Fatalf("renewal = %d, %v; want %d, true (a renewal keeps the token)", tok, ok, t0)
	}
	t1, ok := idxClaim(t, b, 1)
	if !ok || t1 <= t0 {
		t.Fatalf("node b's claim of partition 1 = %d, %v; want a token above %d", t1, ok, t0)
	}

	ks := newKeys(prefix)
	v := c.Get(ctx, ks.claim(0)).Val()
	parts := strings.Split(v, "/")
	if len(parts) != 3 || parts[0] != "node-a" || parts[1] == "" || parts[2] != strconv.FormatUint(t0, 10) {
		t.Errorf("claim value %q, want node-a/<instance>/%d", v, t0)
	}
	if ttl := c.PTTL(ctx, ks.claim(0)).Val(); ttl <= 0 || ttl > time.Minute {
		t.Errorf("claim TTL %s, want (0, 1m]", ttl)
	}

	// Releasing what another node holds does nothing.
	if err := b.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := idxClaim(t, b, 0); ok {
		t.Fatal("node b's Release of partition 0 freed node a's claim")
	}
	if err := a.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, 0); err != nil { // not held any more: nothing
		t.Fatal(err)
	}
	t2, ok := idxClaim(t, b, 0)
	if !ok || t2 <= t1 {
		t.Fatalf("node b's claim of the released partition = %d, %v; want a token above %d", t2, ok, t1)
	}
	if a.TTL() != time.Minute {
		t.Errorf("TTL() = %s, want 1m", a.TTL())
	}
}

// TestClaimsFenceStartsAtRedisTime: a missing counter starts at Redis's
// clock in µs, so that tokens stay monotonic across the loss of the
// counter.
func TestClaimsFenceStartsAtRedisTime(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := newIdxClaims(t, c, prefix, "node-a", time.Minute)

	before := idxRedisTimeMicros(t, c)
	t0, _ := idxClaim(t, a, 0)
	after := idxRedisTimeMicros(t, c)
	if t0 < before || t0 > after+1 {
		t.Fatalf("first token %d, want Redis's clock in µs in [%d, %d]", t0, before, after+1)
	}
	t1, _ := idxClaim(t, a, 1)
	if t1 != t0+1 {
		t.Fatalf("second token %d, want %d", t1, t0+1)
	}

	// The counter is lost (a failover that lost writes, say). Tokens
	// handed out since the clock's value are fewer than the µs elapsed, so
	// the restarted counter is above them.
	for range 100 {
		idxClaim(t, a, 2)
		if err := a.Release(context.Background(), 2); err != nil {
			t.Fatal(err)
		}
	}
	last, _ := idxClaim(t, a, 3)
	if err := c.Del(context.Background(), newKeys(prefix).fence()).Err(); err != nil {
		t.Fatal(err)
	}
	t2, _ := idxClaim(t, a, 4)
	if t2 <= last {
		t.Fatalf("token after the counter was lost %d, want above %d", t2, last)
	}
	// Held claims keep their tokens.
	if tok, _ := idxClaim(t, a, 0); tok != t0 {
		t.Errorf("renewal after the counter was lost = %d, want %d", tok, t0)
	}
}

// TestClaimsExpiry: a holder that stops renewing loses the partition to
// another node within TTL, and the new holder's token is higher.
func TestClaimsExpiry(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	const ttl = 200 * time.Millisecond
	a := newIdxClaims(t, c, prefix, "node-a", ttl)
	b := newIdxClaims(t, c, prefix, "node-b", ttl)
	ta, _ := idxClaim(t, a, 5)
	var tb uint64
	testutil.Eventually(t, ttl+time.Second, 10*time.Millisecond, func() error {
		var ok bool
		if tb, ok = idxClaim(t, b, 5); !ok {
			return fmt.Errorf("node b still does not hold partition 5")
		}
		return nil
	})
	if tb <= ta {
		t.Errorf("node b's token %d, want above node a's %d", tb, ta)
	}
	if _, ok := idxClaim(t, a, 5); ok {
		t.Error("node a renewed a claim node b took over")
	}

	// A holder whose claim expired unnoticed and that nobody took claims
	// it anew, with a new token.
	t1, _ := idxClaim(t, a, 6)
	if err := c.Del(context.Background(), newKeys(prefix).claim(6)).Err(); err != nil { // as if expired
		t.Fatal(err)
	}
	if t2, ok := idxClaim(t, a, 6); !ok || t2 <= t1 {
		t.Errorf("claim after expiry = %d, %v; want a token above %d", t2, ok, t1)
	}
}

// TestClaimsSameNodeIDOtherInstance: a second process with the same node
// ID (a mistake, or a restart before the claim expired) does not share the
// claims of the first.
func TestClaimsSameNodeIDOtherInstance(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	first := newIdxClaims(t, c, prefix, "node-a", time.Minute)
	second := newIdxClaims(t, c, prefix, "node-a", time.Minute)
	if _, ok := idxClaim(t, first, 0); !ok {
		t.Fatal("could not take a free claim")
	}
	if _, ok := idxClaim(t, second, 0); ok {
		t.Error("another instance of the same node ID took the claim")
	}
	if err := second.Release(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := idxClaim(t, first, 0); !ok {
		t.Error("another instance's Release freed the claim")
	}
}

// TestClaimsRacers: of many nodes claiming at once, exactly one wins each
// partition, and every claim gets its own token.
func TestClaimsRacers(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	const nodes, partitions = 8, 4
	var (
		mu     sync.Mutex
		wins   = map[int][]string{}
		tokens = map[uint64]bool{}
		wg     sync.WaitGroup
	)
	for i := range nodes {
		cl := newIdxClaims(t, c, prefix, fmt.Sprintf("node-%d", i), time.Minute)
		for p := range partitions {
			wg.Go(func() {
				token, ok, err := cl.Claim(context.Background(), p)
				if err != nil {
					t.Error(err)
					return
				}
				if ok {
					mu.Lock()
					wins[p] = append(wins[p], fmt.Sprintf("node-%d", i))
					if tokens[token] {
						t.Errorf("token %d handed out twice", token)
					}
					tokens[token] = true
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for p := range partitions {
		if len(wins[p]) != 1 {
			t.Errorf("partition %d winners %v, want exactly one", p, wins[p])
		}
	}
}

func TestClaimsMembers(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	const ttl = 300 * time.Millisecond
	a := newIdxClaims(t, c, prefix, "node-a", ttl)
	b := newIdxClaims(t, c, prefix, "node-b", ttl)
	members := func(cl *Claims) int {
		t.Helper()
		n, err := cl.Members(ctx)
		if err != nil {
			t.Fatalf("Members: %v", err)
		}
		return n
	}
	if n := members(a); n != 1 {
		t.Errorf("Members alone = %d, want 1", n)
	}
	if n := members(b); n != 2 {
		t.Errorf("Members of node b = %d, want 2", n)
	}
	if n := members(a); n != 2 {
		t.Errorf("Members of node a again = %d, want 2", n)
	}
	if ttl := c.PTTL(ctx, newKeys(prefix).members()).Val(); ttl <= 0 {
		t.Errorf("members key TTL %s: the key should expire when every node stopped", ttl)
	}
	// Node b stops heartbeating: it drops out within TTL.
	testutil.Eventually(t, ttl+time.Second, 20*time.Millisecond, func() error {
		if n := members(a); n != 1 {
			return fmt.Errorf("Members = %d, want 1 once node b went silent", n)
		}
		return nil
	})
	if n := members(b); n != 2 {
		t.Errorf("Members of node b back = %d, want 2", n)
	}
	if err := b.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	if n := members(a); n != 1 {
		t.Errorf("Members after node b left = %d, want 1", n)
	}
}

// TestClaimsKeysShareOneSlot: every key of the claims carries the hash tag
// {ingest} (docs/PROTOCOL.md, "Redis schema").
func TestClaimsKeysShareOneSlot(t *testing.T) {
	c := newTestClient(t)
	prefix := testPrefix(t, c)
	a := newIdxClaims(t, c, prefix, "node-a", time.Minute)
	for p := range 3 {
		idxClaim(t, a, p)
	}
	if _, err := a.Members(context.Background()); err != nil {
		t.Fatal(err)
	}
	keys := mustKeysUnder(t, c, prefix)
	if len(keys) != 5 { // 3 claims, fence, members
		t.Errorf("keys %v, want 5", keys)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, prefix+":{ingest}:") {
			t.Errorf("key %q lacks the {ingest} hash tag", k)
		}
	}
}

// TestClaimsUnavailable: a Redis that does not answer is an error, not a
// lost claim.
func TestClaimsUnavailable(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1, DialerRetryTimeout: time.Millisecond})
	defer c.Close()
	cl := newIdxClaims(t, c, "", "node-a", 0)
	ctx := context.Background()
	if _, ok, err := cl.Claim(ctx, 0); err == nil || ok {
		t.Errorf("Claim = %v, %v; want an error", ok, err)
	}
	if err := cl.Release(ctx, 0); err == nil {
		t.Error("Release returned nil")
	}
	if _, err := cl.Members(ctx); err == nil {
		t.Error("Members returned nil")
	}
	if _, _, err := cl.Claim(ctx, -1); err == nil {
		t.Error("Claim of partition -1 returned nil")
	}
	if cl.TTL() != DefaultClaimTTL {
		t.Errorf("default TTL %s, want %s", cl.TTL(), DefaultClaimTTL)
	}
}

func TestClaimsConfigValidate(t *testing.T) {
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	for _, cfg := range []ClaimsConfig{
		{NodeID: "n"},
		{Client: c},
		{Client: c, NodeID: "a/b"},
		{Client: c, NodeID: "n", Prefix: "x{y"},
		{Client: c, NodeID: "n", TTL: -time.Second},
		{Client: c, NodeID: "n", TTL: time.Microsecond},
	} {
		if _, err := NewClaims(cfg); err == nil {
			t.Errorf("NewClaims accepted %+v", cfg)
		}
	}
}

// TestClaimsCluster: claims, tokens and members on Redis Cluster
// (WSPUSH_REDIS_CLUSTER_URL), and the poll lease with them.
func TestClaimsCluster(t *testing.T) {
	c := newTestClusterClient(t)
	prefix := testPrefix(t, c)
	ctx := context.Background()
	a := newIdxClaims(t, c, prefix, "node-a", time.Minute)
	b := newIdxClaims(t, c, prefix, "node-b", time.Minute)
	before := idxRedisTimeMicros(t, c)
	t0, ok := idxClaim(t, a, 0)
	if !ok || t0 < before {
		t.Fatalf("Claim = %d, %v; want a token from Redis's clock (≥ %d)", t0, ok, before)
	}
	if _, ok := idxClaim(t, b, 0); ok {
		t.Error("node b took node a's claim")
	}
	if tok, _ := idxClaim(t, a, 0); tok != t0 {
		t.Errorf("renewal = %d, want %d", tok, t0)
	}
	if err := a.Release(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if tok, ok := idxClaim(t, b, 0); !ok || tok <= t0 {
		t.Errorf("node b's claim after the release = %d, %v; want above %d", tok, ok, t0)
	}
	for _, cl := range []*Claims{a, b} {
		if _, err := cl.Members(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := a.Members(ctx); err != nil || n != 2 {
		t.Errorf("Members = %d, %v; want 2", n, err)
	}

	la := newIdxLease(t, c, prefix, "node-a", time.Minute)
	lb := newIdxLease(t, c, prefix, "node-b", time.Minute)
	if !leaseAcquire(t, la, "app") || leaseAcquire(t, lb, "app") {
		t.Error("lease: want node a to hold it alone")
	}
	if err := la.ReleaseAll(ctx); err != nil {
		t.Fatal(err)
	}
	if !leaseAcquire(t, lb, "app") {
		t.Error("lease: node b could not take it after node a released it")
	}
}
