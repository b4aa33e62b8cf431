package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/testutil"
)

// result is what one run of wspushctl did.
type result struct {
	code           int
	stdout, stderr string
}

// ctl runs wspushctl with args and stdin, without environment, and waits
// for it (bounded by a minute).
func ctl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	return ctlEnv(t, nil, stdin, args...)
}

func ctlEnv(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut strings.Builder
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut, func(k string) string { return env[k] })
	return result{code, out.String(), errOut.String()}
}

// background is a wspushctl run in a goroutine (sub), until stop.
type background struct {
	stdout, stderr testutil.SyncBuffer
	cancel         context.CancelFunc
	done           chan int
	code           int
}

func ctlBackground(t *testing.T, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{cancel: cancel, done: make(chan int, 1)}
	go func() {
		b.done <- run(ctx, args, strings.NewReader(""), &b.stdout, &b.stderr, func(string) string { return "" })
	}()
	t.Cleanup(func() { b.stop(t) })
	return b
}

// stop interrupts the run (as SIGINT does) and returns its exit code.
func (b *background) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	return b.wait(t)
}

// wait returns the exit code once the run ends by itself.
func (b *background) wait(t *testing.T) int {
	t.Helper()
	select {
	case code, ok := <-b.done:
		if ok {
			close(b.done)
			b.code = code
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("wspushctl did not stop; stderr: %s", b.stderr.String())
	}
	return b.code
}

// lines decodes stdout's JSON lines.
func (b *background) lines(t *testing.T) []map[string]any {
	t.Helper()
	return jsonLinesOf(t, b.stdout.String())
}

func jsonLinesOf(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("output line %q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// waitLines waits until stdout holds at least n lines.
func (b *background) waitLines(t *testing.T, n int) []map[string]any {
	t.Helper()
	testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
		if got := strings.Count(b.stdout.String(), "\n"); got < n {
			return fmt.Errorf("%d lines of %d; stderr: %s", got, n, b.stderr.String())
		}
		return nil
	})
	return b.lines(t)
}

// scrapeT reads a node's /metrics.
func scrapeT(t *testing.T, base string) metrics {
	t.Helper()
	m, err := scrape(context.Background(), http.DefaultClient, base)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func (m metrics) mustValue(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, ok := m.value(name, labels...)
	if !ok {
		t.Fatalf("no metric %s", name)
	}
	return v
}

// startHTTP serves h on a loopback port until the test ends.
func startHTTP(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}
