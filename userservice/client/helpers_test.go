package client_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/userservice/client"
)

// server is a wspush process in the test, restartable on the same address.
type server struct {
	t    testing.TB
	cfg  app.Config
	addr string
	app  *app.App
	stop func()
}

// startServer runs a wspush App on addr ("127.0.0.1:0" for a free port).
func startServer(t testing.TB, cfg app.Config, addr string) *server {
	t.Helper()
	s := &server{t: t, cfg: cfg, addr: addr}
	s.start()
	t.Cleanup(func() { s.stop() }) // the stop of the last start
	return s
}

func (s *server) start() {
	s.t.Helper()
	base, a, stop := wstest.StartAppAt(s.t, s.cfg, s.addr)
	s.addr, s.app, s.stop = strings.TrimPrefix(base, "http://"), a, stop
}

// restart stops the server and starts a new one on the same address.
func (s *server) restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

func (s *server) wsURL() string { return "ws://" + s.addr + "/ws" }
func (s *server) base() string  { return "http://" + s.addr }

// publish publishes data (JSON) to app/key and returns its seq; ok is false
// when the server did not take it (down, restarting).
func publish(base, app, key, data string) (seq uint64, ok bool) {
	body := fmt.Sprintf(`{"app":%q,"key":%q,"data":%s}`, app, key, data)
	return post(base, body)
}

func post(base, body string) (uint64, bool) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Post(base+"/api/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var out struct{ Seqs []uint64 }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil || len(out.Seqs) != 1 {
		return 0, false
	}
	return out.Seqs[0], true
}

func mustPublish(t testing.TB, base, app, key, data string) uint64 {
	t.Helper()
	seq, ok := publish(base, app, key, data)
	if !ok {
		t.Fatalf("publish %s/%s %s: refused", app, key, data)
	}
	return seq
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// recorder is a Handler that keeps everything it gets.
type recorder struct {
	mu     sync.Mutex
	data   map[string][]client.Publication
	resets map[string][]client.Reset
	acks   []client.Ack
	log    []string // "data key seq", "reset key seq reason", "ack resumed recovered"
	errs   []error
}

func newRecorder() *recorder {
	return &recorder{data: map[string][]client.Publication{}, resets: map[string][]client.Reset{}}
}

func (r *recorder) OnData(p client.Publication) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.data[p.Key] = append(r.data[p.Key], p)
	r.log = append(r.log, fmt.Sprintf("data %s %d", p.Key, p.Seq))
}

func (r *recorder) OnReset(x client.Reset) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resets[x.Key] = append(r.resets[x.Key], x)
	r.log = append(r.log, fmt.Sprintf("reset %s %d %s", x.Key, x.Seq, x.Reason))
}

func (r *recorder) OnAck(a client.Ack) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, a)
	r.log = append(r.log, fmt.Sprintf("ack resumed=%v recovered=%v", a.Resumed, a.Recovered))
}

func (r *recorder) OnError(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
}

// seqs returns the seqs received for key.
func (r *recorder) seqs(key string) []uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []uint64
	for _, p := range r.data[key] {
		out = append(out, p.Seq)
	}
	return out
}

func (r *recorder) count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.data[key])
}

func (r *recorder) snapshot() (acks []client.Ack, resets map[string][]client.Reset, log []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	resets = map[string][]client.Reset{}
	for k, v := range r.resets {
		resets[k] = append([]client.Reset(nil), v...)
	}
	return append([]client.Ack(nil), r.acks...), resets, append([]string(nil), r.log...)
}

// eventually polls cond every 20ms until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// states records OnState.
type states struct {
	mu sync.Mutex
	ev []client.StateEvent
}

func (s *states) on(e client.StateEvent) {
	s.mu.Lock()
	s.ev = append(s.ev, e)
	s.mu.Unlock()
}

func (s *states) list() []client.StateEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]client.StateEvent(nil), s.ev...)
}

func (s *states) count(st client.State) int {
	n := 0
	for _, e := range s.list() {
		if e.State == st {
			n++
		}
	}
	return n
}

func dial(t testing.TB, cfg client.Config) *client.Client {
	t.Helper()
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func subscribe(t testing.TB, c *client.Client, app string, keys []string, opts client.SubscribeOptions, h client.Handler) *client.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.Subscribe(ctx, app, keys, opts, h)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkSeqs fails unless got is exactly from..to.
func checkSeqs(t testing.TB, key string, got []uint64, from, to uint64) {
	t.Helper()
	if uint64(len(got)) != to-from+1 {
		t.Fatalf("%s: %d values %v, want seqs %d..%d", key, len(got), short(got), from, to)
	}
	for i, s := range got {
		if s != from+uint64(i) {
			t.Fatalf("%s: value %d has seq %d, want %d (all: %v)", key, i, s, from+uint64(i), short(got))
		}
	}
}

func short(s []uint64) string {
	if len(s) <= 40 {
		return fmt.Sprint(s)
	}
	return fmt.Sprint(s[:20], "...", s[len(s)-20:])
}

// waitAcks waits until the Handler got n acks (OnAck runs on the
// dispatcher, possibly after Subscribe returned).
func (r *recorder) waitAcks(t testing.TB, n int) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.acks) < n {
			return fmt.Errorf("%d acks, want %d", len(r.acks), n)
		}
		return nil
	})
}
