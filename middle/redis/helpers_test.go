package redis

import (
	"context"
	crand "crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/wspush/wspush/internal/testutil"
)

// redisURLForTest is the Redis the tests use: WSPUSH_REDIS_URL, else the
// local default that scripts/services.sh starts. When it does not answer,
// the test fails if WSPUSH_REQUIRE_SERVICES=1 (.ci/run sets it), and is
// skipped otherwise.
func redisURLForTest(t testing.TB) string {
	t.Helper()
	u := os.Getenv("WSPUSH_REDIS_URL")
	if u == "" {
		u = "redis://127.0.0.1:6379/0"
	}
	requireRedis(t, u)
	return u
}

// redisClusterURLForTest is the Redis Cluster of WSPUSH_REDIS_CLUSTER_URL
// (comma-separated seed URLs; scripts/test.sh starts one and sets it).
// Without it the test fails if WSPUSH_REQUIRE_SERVICES=1, and is skipped
// otherwise.
func redisClusterURLForTest(t testing.TB) string {
	t.Helper()
	u := os.Getenv("WSPUSH_REDIS_CLUSTER_URL")
	if u == "" {
		if servicesRequired() {
			t.Fatal("WSPUSH_REDIS_CLUSTER_URL not set (scripts/test.sh starts a Redis Cluster and sets it)")
		}
		t.Skip("WSPUSH_REDIS_CLUSTER_URL not set: no Redis Cluster to test against")
	}
	requireRedis(t, u)
	return u
}

// requireRedis fails (CI) or skips the test when the Redis of rawURL does
// not answer PING.
func requireRedis(t testing.TB, rawURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := NewClient(ctx, rawURL, "wspush-test-probe")
	if err != nil {
		if servicesRequired() {
			t.Fatalf("Redis is required (WSPUSH_REQUIRE_SERVICES=1): %v", err)
		}
		t.Skipf("Redis not reachable (set WSPUSH_REQUIRE_SERVICES=1 to fail instead): %v", err)
	}
	_ = c.Close()
}

// servicesRequired reports whether the integration tests must fail, not
// skip, without their services (.ci/run sets WSPUSH_REQUIRE_SERVICES=1).
func servicesRequired() bool { return os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" }

var unsafeNameChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// testClientName is a CLIENT SETNAME of this test: a test can find (and
// CLIENT KILL) its own connections by it.
func testClientName(t testing.TB) string {
	return "wspush-test-" + unsafeNameChars.ReplaceAllString(t.Name(), "_")
}

// newTestClient returns a client of the test Redis (redisURLForTest),
// named testClientName(t), closed when the test ends.
func newTestClient(t testing.TB) goredis.UniversalClient {
	t.Helper()
	return newTestClientOf(t, redisURLForTest(t))
}

// newTestClusterClient is newTestClient on the Redis Cluster of
// WSPUSH_REDIS_CLUSTER_URL; the test is skipped without it.
func newTestClusterClient(t testing.TB) goredis.UniversalClient {
	t.Helper()
	return newTestClientOf(t, redisClusterURLForTest(t))
}

func newTestClientOf(t testing.TB, rawURL string) goredis.UniversalClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := NewClient(ctx, rawURL, testClientName(t))
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testPrefix returns a key prefix of this test alone ("t-" and random
// letters), and deletes every key under it (<prefix>:*) when the test
// ends, so that tests can share one Redis and run concurrently.
func testPrefix(t testing.TB, c goredis.UniversalClient) string {
	t.Helper()
	p := "t-" + strings.ToLower(crand.Text()[:12])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := deleteUnder(ctx, c, p); err != nil {
			t.Errorf("clean up prefix %s: %v", p, err)
		}
	})
	return p
}

// keysUnder lists the keys under prefix (<prefix>:*), on every primary of
// a Redis Cluster.
func keysUnder(ctx context.Context, c goredis.UniversalClient, prefix string) ([]string, error) {
	var (
		mu   sync.Mutex
		keys []string
	)
	scan := func(ctx context.Context, n goredis.UniversalClient) error {
		iter := n.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := c.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, n *goredis.Client) error { return scan(ctx, n) })
	} else {
		err = scan(ctx, c)
	}
	return keys, err
}

// deleteUnder deletes the keys under prefix, one DEL per key so that keys
// of different Redis Cluster slots may be mixed.
func deleteUnder(ctx context.Context, c goredis.UniversalClient, prefix string) error {
	keys, err := keysUnder(ctx, c, prefix)
	if err != nil || len(keys) == 0 {
		return err
	}
	_, err = c.Pipelined(ctx, func(pipe goredis.Pipeliner) error {
		for _, k := range keys {
			pipe.Del(ctx, k)
		}
		return nil
	})
	return err
}

// mustKeysUnder is keysUnder that fails the test on error.
func mustKeysUnder(t testing.TB, c goredis.UniversalClient, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := keysUnder(ctx, c, prefix)
	if err != nil {
		t.Fatalf("scan %s:*: %v", prefix, err)
	}
	return keys
}

// metricValue returns the value of the counter or gauge name whose labels
// include the given name/value pairs (0 when there is none).
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, _ := testutil.Metric(t, reg, name, labels...)
	return v
}

// redisProxy is a TCP proxy in front of the test Redis (a single Redis, not
// a cluster) that a test can cut (every connection dropped, new ones
// refused) and restore: a Redis outage as the client sees it, without
// disturbing the tests that share Redis.
type redisProxy struct {
	t      testing.TB
	ln     net.Listener
	target string
	db     int

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newRedisProxy(t testing.TB) *redisProxy {
	t.Helper()
	u := redisURLForTest(t)
	opt, err := goredis.ParseURL(u)
	if err != nil {
		t.Fatalf("parse %s: %v", u, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &redisProxy{t: t, ln: ln, target: opt.Addr, db: opt.DB, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

// url is the proxy's redis:// URL (for NewClient), without credentials.
func (p *redisProxy) url() string {
	return "redis://" + p.ln.Addr().String() + "/" + strconv.Itoa(p.db)
}

// client returns a client of the test Redis through the proxy, with short
// timeouts and no retries, so that an outage is noticed quickly; it is
// closed when the test ends.
func (p *redisProxy) client() goredis.UniversalClient {
	c := goredis.NewClient(&goredis.Options{
		Addr:                     p.ln.Addr().String(),
		DB:                       p.db,
		ClientName:               testClientName(p.t),
		DialTimeout:              time.Second,
		ReadTimeout:              time.Second,
		WriteTimeout:             time.Second,
		MaxRetries:               -1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
	p.t.Cleanup(func() { _ = c.Close() })
	return c
}

func (p *redisProxy) accept() {
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = in.Close()
			continue
		}
		out, err := net.DialTimeout("tcp", p.target, time.Second)
		if err != nil {
			p.mu.Unlock()
			_ = in.Close()
			continue
		}
		p.conns[in], p.conns[out] = struct{}{}, struct{}{}
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
			p.mu.Lock()
			delete(p.conns, dst)
			delete(p.conns, src)
			p.mu.Unlock()
		}
		p.wg.Go(func() { pipe(out, in) })
		p.wg.Go(func() { pipe(in, out) })
	}
}

// setDown cuts (true) or restores (false) the path to Redis.
func (p *redisProxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			_ = c.Close()
		}
	}
}

// errNotYet is what testutil.Eventually conditions return while they wait.
var errNotYet = errors.New("not yet")
