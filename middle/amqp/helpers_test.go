package amqp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// testURL returns the URL of a reachable RabbitMQ (WSPUSH_AMQP_URL, else
// the local default scripts/services.sh starts). When there is none, the
// test fails under CI and is skipped otherwise.
func testURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv("WSPUSH_AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/"
	}
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(3 * time.Second)})
	if err != nil {
		if os.Getenv("CI") != "" || os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatalf("RabbitMQ at %s is unreachable: %v", retry.RedactURL(url), err)
		}
		t.Skipf("RabbitMQ at %s is unreachable (set CI=1 to fail instead): %v", retry.RedactURL(url), err)
	}
	_ = conn.Close()
	return url
}

// testTopology returns a topology with a prefix no other test uses, and
// deletes its exchanges and queues when the test ends.
func testTopology(t testing.TB, url string, partitions int) Topology {
	t.Helper()
	topo := Topology{Prefix: fmt.Sprintf("t-%08x", rand.Uint32()), Partitions: partitions}
	t.Cleanup(func() { deleteTopology(t, url, topo) })
	return topo
}

// deleteTopology deletes every object a topology may have, whatever its
// partitions (a missing one is fine).
func deleteTopology(t testing.TB, url string, topo Topology) {
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Errorf("cleanup: dial: %v", err)
		return
	}
	defer conn.Close()
	// A failed delete closes its channel: one channel each.
	del := func(what, name string, fn func(ch *amqp091.Channel) error) {
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: channel: %v", err)
			return
		}
		defer ch.Close()
		var e *amqp091.Error
		if err := fn(ch); err != nil && !(errors.As(err, &e) && e.Code == amqp091.NotFound) {
			t.Errorf("cleanup: delete %s %s: %v", what, name, err)
		}
	}
	all := topo
	all.Partitions = MaxPartitions
	queues := append(topo.WithDefaults().Queues(), topo.LegacyQueue())
	for _, q := range queues {
		del("queue", q, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	}
	for _, x := range all.Exchanges() {
		del("exchange", x, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
}

// testLogger writes to the test's output (shown when it fails or with -v).
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testConn is a Conn whose TCP connections the test can cut.
type testConn struct {
	*Conn
	mu sync.Mutex
	nc net.Conn // the newest TCP connection
}

// startConn runs a connection manager until the test ends; it returns once
// the connection is up.
func startConn(t testing.TB, url string, topo Topology, name string, log *slog.Logger) *testConn {
	t.Helper()
	if log == nil {
		log = testLogger(t)
	}
	c, err := NewConn(Config{
		URL: url, Name: name, Topology: topo,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: log.With("conn", name),
	})
	if err != nil {
		t.Fatal(err)
	}
	tc := &testConn{Conn: c}
	dial := c.dial
	c.dial = func(network, addr string) (net.Conn, error) {
		nc, err := dial(network, addr)
		if err == nil {
			tc.mu.Lock()
			tc.nc = nc
			tc.mu.Unlock()
		}
		return nc, err
	}
	runUntilCleanup(t, c.Run)
	waitFor(t, 10*time.Second, "AMQP connection up", c.Ready)
	return tc
}

// cut closes the TCP connection under the AMQP connection, as a network
// failure would.
func (c *testConn) cut(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if err := nc.Close(); err != nil {
		t.Fatalf("cut TCP connection: %v", err)
	}
}

// runUntilCleanup runs fn until the test ends (or stop is called), and
// fails the test if fn returns an error or does not stop.
func runUntilCleanup(t testing.TB, fn func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Run did not return within 15s of its context ending")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond until it returns nil, failing the test after limit.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting %s for %s: %v", limit, what, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// integrator is a client connection of its own, with a channel in confirm
// mode, closed when the test ends.
type integrator struct {
	conn *amqp091.Connection
	ch   *amqp091.Channel
	topo Topology
}

func newIntegrator(t testing.TB, url string, topo Topology) *integrator {
	t.Helper()
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return &integrator{conn: conn, ch: ch, topo: topo.WithDefaults()}
}

// publish publishes msg persistent to the ingest exchange and waits for
// the broker's confirm.
func (i *integrator) publish(t testing.TB, rk string, msg amqp091.Publishing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	msg.DeliveryMode = amqp091.Persistent
	dc, err := i.ch.PublishWithDeferredConfirmWithContext(ctx, i.topo.Exchange(), rk, true, false, msg)
	if err != nil {
		t.Fatalf("publish %q: %v", rk, err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish %q: confirm %v, %v", rk, ok, err)
	}
}

// json publishes a JSON body {"v":v} with message-id id (none when "").
func (i *integrator) json(t testing.TB, rk string, v int, id string) {
	t.Helper()
	i.publish(t, rk, amqp091.Publishing{ContentType: "application/json", Body: fmt.Appendf(nil, `{"v":%d}`, v), MessageId: id})
}

// queueLen is the number of ready messages of a queue.
func (i *integrator) queueLen(t testing.TB, q string) int {
	t.Helper()
	ch, err := i.conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("queue %s: %v", q, err)
	}
	return st.Messages
}

// dead waits for n messages in the dead queue and returns them.
func (i *integrator) dead(t testing.TB, n int) []amqp091.Delivery {
	t.Helper()
	var got []amqp091.Delivery
	waitFor(t, 10*time.Second, fmt.Sprintf("%d dead-lettered messages", n), func() error {
		d, ok, err := i.ch.Get(i.topo.DeadQueue(), true)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = append(got, d)
		}
		if len(got) < n {
			return fmt.Errorf("%d so far", len(got))
		}
		return nil
	})
	return got
}

// metricValue reads a counter or gauge.
func metricValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var pb dto.Metric
	if err := m.Write(&pb); err != nil {
		t.Fatal(err)
	}
	switch {
	case pb.Counter != nil:
		return pb.Counter.GetValue()
	case pb.Gauge != nil:
		return pb.Gauge.GetValue()
	}
	t.Fatalf("metric %s: neither counter nor gauge", m.Desc())
	return 0
}

// claimsState is an in-memory stand-in for the claims in Redis, shared by
// the fakeClaims of the test's nodes.
type claimsState struct {
	ttl time.Duration

	mu      sync.Mutex
	fence   uint64
	claims  map[int]fakeClaim
	members map[string]time.Time
	left    []string // the nodes that called Leave
}

type fakeClaim struct {
	node    string
	token   uint64
	expires time.Time
}

func newClaimsState(ttl time.Duration) *claimsState {
	return &claimsState{ttl: ttl, fence: 1000, claims: map[int]fakeClaim{}, members: map[string]time.Time{}}
}

// holder returns the node and token of partition n's live claim.
func (s *claimsState) holder(n int) (string, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.claims[n]
	if !ok || time.Now().After(c.expires) {
		return "", 0
	}
	return c.node, c.token
}

// expire drops node's claims and membership, as if it had been frozen
// for longer than the TTL.
func (s *claimsState) expire(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n, c := range s.claims {
		if c.node == node {
			delete(s.claims, n)
		}
	}
	delete(s.members, node)
}

// fakeClaims is one node's view of a claimsState.
type fakeClaims struct {
	st   *claimsState
	node string

	mu     sync.Mutex
	frozen map[int]uint64 // non-nil: the node believes it holds these, whatever the state says
}

func (s *claimsState) node(name string) *fakeClaims { return &fakeClaims{st: s, node: name} }

// freeze makes the node keep believing it holds what it holds now.
func (f *fakeClaims) freeze() {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = map[int]uint64{}
	for n, c := range f.st.claims {
		if c.node == f.node {
			f.frozen[n] = c.token
		}
	}
}

func (f *fakeClaims) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozen = nil
}

func (f *fakeClaims) TTL() time.Duration { return f.st.ttl }

func (f *fakeClaims) Claim(ctx context.Context, n int) (uint64, bool, error) {
	f.mu.Lock()
	if f.frozen != nil {
		token, ok := f.frozen[n]
		f.mu.Unlock()
		return token, ok, nil
	}
	f.mu.Unlock()
	s := f.st
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	c, ok := s.claims[n]
	switch {
	case ok && now.Before(c.expires) && c.node != f.node:
		return 0, false, nil
	case ok && now.Before(c.expires):
		c.expires = now.Add(s.ttl)
		s.claims[n] = c
		return c.token, true, nil
	}
	s.fence++
	s.claims[n] = fakeClaim{node: f.node, token: s.fence, expires: now.Add(s.ttl)}
	return s.fence, true, nil
}

func (f *fakeClaims) Release(ctx context.Context, n int) error {
	f.mu.Lock()
	frozen := f.frozen != nil
	f.mu.Unlock()
	if frozen {
		return nil
	}
	s := f.st
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.claims[n]; ok && c.node == f.node {
		delete(s.claims, n)
	}
	return nil
}

func (f *fakeClaims) Members(ctx context.Context) (int, error) {
	s := f.st
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	f.mu.Lock()
	if f.frozen == nil {
		s.members[f.node] = now
	}
	f.mu.Unlock()
	live := 0
	for m, at := range s.members {
		if now.Sub(at) > s.ttl {
			delete(s.members, m)
			continue
		}
		live++
	}
	return live, nil
}

// fakeStore sequences publications in memory per key, with fencing and
// idempotency ids, and records who sequenced what.
type fakeStore struct {
	mu   sync.Mutex
	keys map[string]*fakeKey
	// hook, when set, runs before each publication; an error stops the
	// batch there (the earlier ones are sequenced).
	hook func(node string, p *proto.Publication) error
	// calls counts PublishFenced calls.
	calls atomic.Int64
}

type fakeKey struct {
	seq   uint64
	fence uint64
	ids   map[string]uint64
	pubs  []fakePub
}

type fakePub struct {
	seq  uint64
	data string
	id   string
	ts   int64
	json bool
	node string
}

func newFakeStore() *fakeStore { return &fakeStore{keys: map[string]*fakeKey{}} }

// setFence records fence on a key as if a holder of it had sequenced it.
func (s *fakeStore) setFence(app, key string, fence uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key(app + "." + key).fence = fence
}

func (s *fakeStore) key(k string) *fakeKey {
	fk := s.keys[k]
	if fk == nil {
		fk = &fakeKey{ids: map[string]uint64{}}
		s.keys[k] = fk
	}
	return fk
}

// pubs returns what key app.key sequenced, in seq order.
func (s *fakeStore) pubs(app, key string) []fakePub {
	s.mu.Lock()
	defer s.mu.Unlock()
	if fk := s.keys[app+"."+key]; fk != nil {
		return append([]fakePub(nil), fk.pubs...)
	}
	return nil
}

func (s *fakeStore) publisher(node string) Publisher { return fakePublisher{s, node} }

type fakePublisher struct {
	s    *fakeStore
	node string
}

// PublishFenced is middle.Node.PublishFenced over the fake: a payload
// containing "reject" is an invalid publication, and a JSON payload that
// is not UTF-8 is refused as the node refuses it.
func (f fakePublisher) PublishFenced(ctx context.Context, fence uint64, pubs []proto.Publication) ([]uint64, error) {
	s := f.s
	s.calls.Add(1)
	for i := range pubs {
		if bytes.Contains(pubs[i].Data, []byte("reject")) {
			return nil, &middle.PublishError{Index: i, Err: errors.New("rejected by the test")}
		}
		if pubs[i].JSON && !utf8.Valid(pubs[i].Data) {
			return nil, &middle.PublishError{Index: i, Err: middle.ErrInvalidUTF8}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	seqs := make([]uint64, 0, len(pubs))
	for i := range pubs {
		p := &pubs[i]
		if s.hook != nil {
			if err := s.hook(f.node, p); err != nil {
				return seqs, fmt.Errorf("publish %s.%s: %w", p.App, p.Key, err)
			}
		}
		k := s.key(p.App + "." + p.Key)
		if fence > 0 && k.fence > fence {
			return seqs, fmt.Errorf("publish %s.%s: %w (token %d, key's %d)", p.App, p.Key, middle.ErrFenced, fence, k.fence)
		}
		if fence > 0 {
			k.fence = fence
		}
		if seq, ok := k.ids[p.ID]; ok && p.ID != "" {
			seqs = append(seqs, seq)
			continue
		}
		k.seq++
		if p.ID != "" {
			k.ids[p.ID] = k.seq
		}
		k.pubs = append(k.pubs, fakePub{seq: k.seq, data: string(p.Data), id: p.ID, ts: p.TS, json: p.JSON, node: f.node})
		seqs = append(seqs, k.seq)
	}
	return seqs, nil
}

// values decodes the {"v":n} payloads of pubs.
func values(pubs []fakePub) []int {
	var vs []int
	for _, p := range pubs {
		var v int
		if _, err := fmt.Sscanf(p.data, `{"v":%d}`, &v); err == nil {
			vs = append(vs, v)
		}
	}
	return vs
}

// seq1 is 1..n.
func seq1(n int) []int {
	vs := make([]int, n)
	for i := range vs {
		vs[i] = i + 1
	}
	return vs
}

// waitValues waits until app.key sequenced want, in order, and nothing
// else.
func waitValues(t testing.TB, s *fakeStore, app, key string, want []int) {
	t.Helper()
	waitFor(t, 15*time.Second, fmt.Sprintf("%s.%s sequenced %d values", app, key, len(want)), func() error {
		got := values(s.pubs(app, key))
		if len(got) < len(want) {
			return fmt.Errorf("%d so far", len(got))
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s.%s sequenced %v, want %v", app, key, got, want)
		}
		return nil
	})
}

// slogText logs to b.
func slogText(b *testutil.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Leave drops the node from the members, as redis.Claims does.
func (f *fakeClaims) Leave(ctx context.Context) error {
	f.st.mu.Lock()
	defer f.st.mu.Unlock()
	f.st.left = append(f.st.left, f.node)
	delete(f.st.members, f.node)
	return nil
}
