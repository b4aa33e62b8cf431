package middle

import (
	"context"
	crand "crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/wspush/wspush/internal/testutil"
)

// redisTestURL is the Redis the tests use: WSPUSH_REDIS_URL, else the
// local default that scripts/test.sh starts.
func redisTestURL() string {
	if u := os.Getenv("WSPUSH_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// redisForTest returns a client of the test Redis, closed when the test
// ends. When Redis does not answer, the test fails if
// WSPUSH_REQUIRE_SERVICES=1 (CI) and is skipped otherwise.
func redisForTest(t testing.TB) *redis.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, err := NewRedisClient(ctx, redisTestURL())
	if err != nil {
		if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatalf("Redis is required (WSPUSH_REQUIRE_SERVICES=1): %v", err)
		}
		t.Skipf("Redis not reachable (set WSPUSH_REQUIRE_SERVICES=1 to fail instead): %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var unsafePrefixChars = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// redisTestPrefix returns a key prefix of this test alone, and deletes
// every key under it when the test ends, so tests can share one Redis and
// run concurrently.
func redisTestPrefix(t testing.TB, c *redis.Client) string {
	t.Helper()
	p := "wspushtest:" + unsafePrefixChars.ReplaceAllString(t.Name(), "_") + ":" + crand.Text()[:10]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		keys := redisKeysUnder(t, c, p)
		if len(keys) > 0 {
			if err := c.Del(ctx, keys...).Err(); err != nil {
				t.Errorf("clean up prefix %s: %v", p, err)
			}
		}
	})
	return p
}

// redisKeysUnder lists the keys under prefix.
func redisKeysUnder(t testing.TB, c *redis.Client, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var keys []string
	iter := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("scan %s:*: %v", prefix, err)
	}
	return keys
}

// redisMetric returns the value of the counter or gauge name whose labels
// include the given name/value pairs (0 when there is none).
func redisMetric(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, _ := testutil.Metric(t, reg, name, labels...)
	return v
}

// redisProxy is a TCP proxy in front of the test Redis that a test can cut
// (every connection dropped, new ones refused) and restore: a Redis outage
// as the client sees it, without disturbing the tests that share Redis.
type redisProxy struct {
	t      testing.TB
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newRedisProxy(t testing.TB) *redisProxy {
	t.Helper()
	opt, err := redis.ParseURL(redisTestURL())
	if err != nil {
		t.Fatalf("parse %s: %v", redisTestURL(), err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p := &redisProxy{t: t, ln: ln, target: opt.Addr, conns: make(map[net.Conn]struct{})}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

// client returns a client of the test Redis through the proxy, with short
// timeouts so that an outage is noticed quickly.
func (p *redisProxy) client(db int) *redis.Client {
	c := redis.NewClient(&redis.Options{
		Addr:                     p.ln.Addr().String(),
		DB:                       db,
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
