package client_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/redis"
)

// redisStore is a Redis prefix of the test's own, removed when it ends.
type redisStore struct {
	url string
	cfg redis.StoreConfig
}

// newRedisStore skips the test without Redis, or fails it with
// WSPUSH_REQUIRE_SERVICES=1 (CI).
func newRedisStore(t *testing.T) *redisStore {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:6379", time.Second)
	if err != nil {
		if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatalf("Redis unreachable (WSPUSH_REQUIRE_SERVICES=1): %v", err)
		}
		t.Skipf("Redis unreachable: %v", err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := redis.NewClient(ctx, wstest.RedisURL, "wspush-client-test")
	if err != nil {
		t.Fatal(err)
	}
	rs := &redisStore{url: wstest.RedisURL, cfg: redis.StoreConfig{Prefix: uniqueName("t-client-")}}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if c, ok := rdb.(*goredis.Client); ok {
			it := c.Scan(ctx, 0, rs.cfg.Prefix+":*", 1000).Iterator()
			for it.Next(ctx) {
				c.Del(ctx, it.Val())
			}
			if err := it.Err(); err != nil {
				t.Logf("removing %s:* from Redis: %v", rs.cfg.Prefix, err)
			}
		}
		rdb.Close()
	})
	return rs
}

// proxy forwards TCP to a server; cut breaks every connection at once,
// without a close frame (what a crash or a network failure looks like).
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, in, out)
			p.mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(out, in); out.Close() }()
			go func() { defer wg.Done(); io.Copy(in, out); in.Close() }()
		}
	}()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // RST, not FIN
		}
		c.Close()
	}
	p.conns = nil
}

const testSecret = "client-test-secret-of-32-bytes-at-least"

// signToken makes an HS256 JWT of claims with testSecret.
func signToken(t testing.TB, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	s := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, []byte(testSecret))
	mac.Write([]byte(s))
	return s + "." + enc.EncodeToString(mac.Sum(nil))
}
