package middle

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/proto"
)

// ingestTest is an embedded node fed by an AMQPIngest, and an integrator's
// channel to publish with.
type ingestTest struct {
	url    string
	topo   AMQPTopology
	conn   *testAMQPConn
	node   *Node
	ingest *AMQPIngest
	pub    *amqp.Channel
}

// newIngestTest connects; the ingest is started by start, so that tests can
// queue messages before it consumes.
func newIngestTest(t testing.TB, nodeCfg Config, cfg AMQPIngestConfig) *ingestTest {
	t.Helper()
	it := &ingestTest{url: amqpURLForTest(t)}
	it.topo = amqpTestTopology(t, it.url)
	it.conn = startAMQPConn(t, it.url, it.topo, "ingest")
	nodeCfg.Logger = amqpTestLogger(t)
	it.node = newTestNode(t, nodeCfg)
	cfg.Conn = it.conn.AMQPConn
	if cfg.Publisher == nil {
		cfg.Publisher = it.node.Source("amqp")
	}
	if cfg.Logger == nil {
		cfg.Logger = amqpTestLogger(t)
	}
	in, err := NewAMQPIngest(cfg)
	if err != nil {
		t.Fatal(err)
	}
	it.ingest = in
	it.pub = testAMQPChannel(t, it.url)
	return it
}

func (it *ingestTest) start(t testing.TB) { amqpRunUntilCleanup(t, it.ingest.Run) }

func (it *ingestTest) publish(t testing.TB, rk, contentType string, body []byte) {
	t.Helper()
	amqpPublishConfirmed(t, it.pub, it.topo.IngestExchange, rk, amqp.Publishing{ContentType: contentType, Body: body})
}

func ingestJSONBody(v int) []byte { return []byte(`{"v":` + strconv.Itoa(v) + `}`) }

// ingestValues are the "v" of every JSON data message of key r received.
func ingestValues(t testing.TB, r *recorder, key string) []int {
	t.Helper()
	var out []int
	for _, m := range r.messages(t) {
		if !m.data || m.pub.Key != key {
			continue
		}
		v, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(string(m.pub.Data), `{"v":`), "}"))
		if err != nil {
			t.Fatalf("data %q: not {\"v\":n}", m.pub.Data)
		}
		out = append(out, v)
	}
	return out
}

// deadMessages waits for n messages in the dead queue and returns them.
func (it *ingestTest) deadMessages(t testing.TB, n int) []amqp.Delivery {
	t.Helper()
	var got []amqp.Delivery
	amqpWaitFor(t, 10*time.Second, fmt.Sprintf("%d dead-lettered messages", n), func() error {
		for {
			d, ok, err := it.pub.Get(it.topo.DeadQueue, true)
			if err != nil {
				t.Fatalf("get from %s: %v", it.topo.DeadQueue, err)
			}
			if !ok {
				break
			}
			got = append(got, d)
		}
		if len(got) < n {
			return fmt.Errorf("%d so far", len(got))
		}
		return nil
	})
	if len(got) > n {
		t.Fatalf("%d dead-lettered messages, want %d", len(got), n)
	}
	return got
}

func TestAMQPIngest(t *testing.T) {
	it := newIngestTest(t, Config{}, AMQPIngestConfig{})
	it.start(t)
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "plant-7", Keys: []string{"001"}})

	ts := time.Unix(1763812345, 0)
	amqpPublishConfirmed(t, it.pub, it.topo.IngestExchange, "plant-7.001", amqp.Publishing{
		ContentType: "application/json", Timestamp: ts, Body: []byte(`{"temp":21.5}`),
	})
	it.publish(t, "plant-7.001", "application/octet-stream", []byte{1, 2, 3})
	it.publish(t, "plant-7.001", "application/json; charset=utf-8", []byte(`[1,2]`))
	it.publish(t, "plant-7.001", "", []byte(`{"untyped":true}`)) // valid JSON: JSON
	it.publish(t, "plant-7.001", "", []byte(`not json`))         // binary
	it.publish(t, "plant-7.001", "text/plain", []byte(`"text"`)) // binary, JSON or not

	waitBusSeqs(t, "subscriber", rec, "001", seqRange(1, 6))
	want := []struct {
		data string
		json bool
	}{
		{`{"temp":21.5}`, true},
		{"\x01\x02\x03", false},
		{`[1,2]`, true},
		{`{"untyped":true}`, true},
		{`not json`, false},
		{`"text"`, false},
	}
	ms := rec.messages(t)[1:]
	for i, w := range want {
		p := ms[i].pub
		if string(p.Data) != w.data || p.JSON != w.json {
			t.Errorf("seq %d: data %q json %v, want %q json %v", p.Seq, p.Data, p.JSON, w.data, w.json)
		}
	}
	if got := ms[0].pub.TS; got != ts.UnixMilli() {
		t.Errorf("ts from the AMQP timestamp: %d, want %d", got, ts.UnixMilli())
	}
	if got := ms[1].pub.TS; got == 0 {
		t.Errorf("no AMQP timestamp: ts 0, want the time of sequencing")
	}
	wantMetric(t, "ingested", amqpMetricValue(t, it.ingest.ingested), 6)
}

// Malformed messages go to the dead queue, counted by reason, and the ones
// after them are delivered.
func TestAMQPIngestDeadLetters(t *testing.T) {
	// The node's limit is below the ingest's: its refusal is "rejected".
	it := newIngestTest(t, Config{MaxPayload: 50}, AMQPIngestConfig{MaxPayload: 100})
	it.start(t)
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})

	bad := []struct {
		rk, contentType string
		body            []byte
		reason          string
	}{
		{"a.b.c", "application/json", ingestJSONBody(1), DeadReasonRoutingKey},
		{"bad key", "application/json", ingestJSONBody(2), DeadReasonRoutingKey},
		{"app.k", "application/json", []byte(`{"v":`), DeadReasonInvalidJSON},
		{"app.k", "application/octet-stream", make([]byte, 101), DeadReasonOversized},
		{"app.k", "application/octet-stream", make([]byte, 60), DeadReasonRejected},
	}
	for _, b := range bad {
		it.publish(t, b.rk, b.contentType, b.body)
	}
	it.publish(t, "app.k", "application/json", ingestJSONBody(7))
	waitBusSeqs(t, "subscriber", rec, "k", []uint64{1})
	if v := ingestValues(t, rec, "k"); len(v) != 1 || v[0] != 7 {
		t.Fatalf("delivered %v, want the valid message only", v)
	}

	dead := it.deadMessages(t, len(bad))
	for i, d := range dead {
		if d.RoutingKey != bad[i].rk || len(d.Body) != len(bad[i].body) {
			t.Errorf("dead message %d: %q with %d bytes, want %q with %d", i, d.RoutingKey, len(d.Body), bad[i].rk, len(bad[i].body))
		}
		if _, ok := d.Headers["x-death"]; !ok {
			t.Errorf("dead message %d: no x-death header: not dead-lettered by the broker", i)
		}
	}
	wantReasons := map[string]float64{DeadReasonRoutingKey: 2, DeadReasonInvalidJSON: 1, DeadReasonOversized: 1, DeadReasonRejected: 1}
	for reason, n := range wantReasons {
		wantMetric(t, "dead-lettered "+reason, amqpMetricValue(t, it.ingest.deadLettered.WithLabelValues(reason)), n)
	}
	wantMetric(t, "ingested", amqpMetricValue(t, it.ingest.ingested), 1)
}

// Messages queued before the ingest starts arrive in batches; the ones
// the node refuses are dead-lettered and the others published, in order.
func TestAMQPIngestBatchWithRejected(t *testing.T) {
	var calls, biggest atomic.Int64
	var it *ingestTest
	counting := ingestPublisherFunc(func(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
		calls.Add(1)
		if n := int64(len(pubs)); n > biggest.Load() {
			biggest.Store(n)
		}
		return it.node.Publish(ctx, "amqp", pubs)
	})
	it = newIngestTest(t, Config{MaxPayload: 20}, AMQPIngestConfig{Publisher: counting})
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	const n = 100
	var want []int
	for v := 1; v <= n; v++ {
		if v%10 == 5 {
			it.publish(t, "app.k", "application/json", []byte(`{"v":`+strconv.Itoa(v)+`,"pad":"`+strings.Repeat("x", 20)+`"}`))
			continue
		}
		it.publish(t, "app.k", "application/json", ingestJSONBody(v))
		want = append(want, v)
	}
	it.start(t)
	waitBusSeqs(t, "subscriber", rec, "k", seqRange(1, uint64(len(want))))
	if got := ingestValues(t, rec, "k"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	it.deadMessages(t, n-len(want))
	t.Logf("%d publish calls, largest batch %d", calls.Load(), biggest.Load())
}

// ingestPublisherFunc adapts a function to Publisher.
type ingestPublisherFunc func(ctx context.Context, pubs []proto.Publication) ([]uint64, error)

func (f ingestPublisherFunc) Publish(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
	return f(ctx, pubs)
}

// While publishing fails with ErrUnavailable (Redis down), messages are
// requeued after a pause and delivered once it works again.
func TestAMQPIngestRequeue(t *testing.T) {
	var failures atomic.Int64
	failures.Store(3)
	var it *ingestTest
	flaky := ingestPublisherFunc(func(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
		if failures.Add(-1) >= 0 {
			return nil, fmt.Errorf("publish %s.%s: %w: store down", pubs[0].App, pubs[0].Key, ErrUnavailable)
		}
		return it.node.Publish(ctx, "amqp", pubs)
	})
	it = newIngestTest(t, Config{}, AMQPIngestConfig{Publisher: flaky, RequeueDelay: 20 * time.Millisecond})
	it.start(t)
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	it.publish(t, "app.k", "application/json", ingestJSONBody(1))
	waitBusSeqs(t, "subscriber", rec, "k", []uint64{1})
	wantMetric(t, "requeued", amqpMetricValue(t, it.ingest.requeued), 3)
	wantMetric(t, "ingested", amqpMetricValue(t, it.ingest.ingested), 1)
	wantMetric(t, "dead-lettered", amqpMetricValue(t, it.ingest.deadLettered.WithLabelValues(DeadReasonRejected)), 0)
}

// When Publish fails part way through a batch, the publications that went
// through are acked and only the rest requeued: nothing twice.
func TestAMQPIngestPartialFailure(t *testing.T) {
	var tripped atomic.Bool
	var it *ingestTest
	partial := ingestPublisherFunc(func(ctx context.Context, pubs []proto.Publication) ([]uint64, error) {
		if len(pubs) >= 2 && tripped.CompareAndSwap(false, true) {
			seqs, err := it.node.Publish(ctx, "amqp", pubs[:1])
			if err != nil {
				return nil, err
			}
			return seqs, fmt.Errorf("publish %s.%s: %w: bus down", pubs[1].App, pubs[1].Key, ErrUnavailable)
		}
		return it.node.Publish(ctx, "amqp", pubs)
	})
	it = newIngestTest(t, Config{}, AMQPIngestConfig{Publisher: partial, RequeueDelay: 10 * time.Millisecond})
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	const n = 50
	for v := 1; v <= n; v++ {
		it.publish(t, "app.k", "application/json", ingestJSONBody(v))
	}
	it.start(t)
	waitBusSeqs(t, "subscriber", rec, "k", seqRange(1, n))
	if !tripped.Load() {
		t.Fatal("no batch of two or more: the partial failure was not exercised")
	}
	seen := map[int]int{}
	for _, v := range ingestValues(t, rec, "k") {
		seen[v]++
	}
	for v := 1; v <= n; v++ {
		if seen[v] != 1 {
			t.Fatalf("value %d delivered %d times, want once (all: %v)", v, seen[v], ingestValues(t, rec, "k"))
		}
	}
	if r := amqpMetricValue(t, it.ingest.requeued); r < 1 {
		t.Fatalf("requeued %v, want at least 1", r)
	}
}

// Nodes consume the ingest queue as competing consumers: each message is
// published once, by one of them.
func TestAMQPIngestCompetingConsumers(t *testing.T) {
	it := newIngestTest(t, Config{}, AMQPIngestConfig{Prefetch: 1})
	second := startAMQPConn(t, it.url, it.topo, "ingest-2")
	in2, err := NewAMQPIngest(AMQPIngestConfig{Conn: second.AMQPConn, Publisher: it.node.Source("amqp"), Prefetch: 1, Logger: amqpTestLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	const n = 200
	for v := 1; v <= n; v++ {
		it.publish(t, "app.k", "application/json", ingestJSONBody(v))
	}
	it.start(t)
	amqpRunUntilCleanup(t, in2.Run)
	waitBusSeqs(t, "subscriber", rec, "k", seqRange(1, n))
	seen := map[int]bool{}
	for _, v := range ingestValues(t, rec, "k") {
		if seen[v] {
			t.Fatalf("value %d delivered twice", v)
		}
		seen[v] = true
	}
	one, two := amqpMetricValue(t, it.ingest.ingested), amqpMetricValue(t, in2.ingested)
	if one+two != n || one == 0 || two == 0 {
		t.Fatalf("ingested %v and %v, want %d shared by both", one, two, n)
	}
}

// A consumer the broker cancels (its queue deleted) makes the connection
// start over: the topology is declared again and ingestion resumes.
func TestAMQPIngestQueueDeleted(t *testing.T) {
	it := newIngestTest(t, Config{}, AMQPIngestConfig{})
	it.start(t)
	rec := newRecorder()
	subscribe(t, it.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	it.publish(t, "app.k", "application/json", ingestJSONBody(1))
	waitBusSeqs(t, "subscriber", rec, "k", []uint64{1})

	if _, err := it.pub.QueueDelete(it.topo.IngestQueue, false, false, false); err != nil {
		t.Fatal(err)
	}
	amqpWaitFor(t, 10*time.Second, "a reconnect", func() error {
		if r := amqpMetricValue(t, it.conn.reconnects); r < 1 {
			return errors.New("none yet")
		}
		return it.conn.Ready()
	})
	it.publish(t, "app.k", "application/json", ingestJSONBody(2))
	waitBusSeqs(t, "subscriber", rec, "k", []uint64{1, 2})
}

func TestAMQPIngestConfigValidate(t *testing.T) {
	conn, err := NewAMQPConn(AMQPConfig{URL: "amqp://guest:guest@127.0.0.1:5672/"})
	if err != nil {
		t.Fatal(err)
	}
	pub := ingestPublisherFunc(func(context.Context, []proto.Publication) ([]uint64, error) { return nil, nil })
	for _, cfg := range []AMQPIngestConfig{
		{Publisher: pub},
		{Conn: conn},
		{Conn: conn, Publisher: pub, Prefetch: -1},
		{Conn: conn, Publisher: pub, Prefetch: 1 << 16},
		{Conn: conn, Publisher: pub, MaxBatch: -1},
		{Conn: conn, Publisher: pub, MaxPayload: -1},
		{Conn: conn, Publisher: pub, PublishTimeout: -1},
		{Conn: conn, Publisher: pub, RequeueDelay: -1},
	} {
		if _, err := NewAMQPIngest(cfg); err == nil {
			t.Errorf("NewAMQPIngest(%+v): no error", cfg)
		}
	}
}

func TestAMQPIngestDecode(t *testing.T) {
	in := &AMQPIngest{cfg: AMQPIngestConfig{MaxPayload: 10}}
	for _, tc := range []struct {
		rk, ct, body string
		ts           time.Time
		reason       string
		json         bool
	}{
		{rk: "a.k", ct: "application/json", body: `1`, json: true},
		{rk: "a.k", ct: "Application/JSON; charset=utf-8", body: `"x"`, json: true},
		{rk: "a.k", ct: "application/vnd.x+json", body: `{}`, json: true},
		{rk: "a.k", ct: "application/json", body: `{`, reason: DeadReasonInvalidJSON},
		{rk: "a.k", ct: "application/json", body: ``, reason: DeadReasonInvalidJSON},
		{rk: "a.k", ct: "", body: `{}`, json: true},
		{rk: "a.k", ct: "", body: `{`},
		{rk: "a.k", ct: "application/octet-stream", body: `{}`},
		{rk: "a.k", ct: "application/octet-stream", body: `01234567890`, reason: DeadReasonOversized},
		{rk: "a", body: `1`, reason: DeadReasonRoutingKey},
		{rk: "a.", body: `1`, reason: DeadReasonRoutingKey},
		{rk: ".k", body: `1`, reason: DeadReasonRoutingKey},
		{rk: "a.k.x", body: `1`, reason: DeadReasonRoutingKey},
		{rk: "a.k", ct: "application/json", body: `1`, ts: time.Unix(5, 0), json: true},
	} {
		d := &amqp.Delivery{RoutingKey: tc.rk, ContentType: tc.ct, Body: []byte(tc.body), Timestamp: tc.ts}
		p, reason, err := in.decode(d)
		if reason != tc.reason || (err != nil) != (tc.reason != "") {
			t.Errorf("%q %q %q: reason %q (%v), want %q", tc.rk, tc.ct, tc.body, reason, err, tc.reason)
			continue
		}
		if err != nil {
			continue
		}
		if p.App != "a" || p.Key != "k" || p.JSON != tc.json || string(p.Data) != tc.body {
			t.Errorf("%q %q %q: got %+v, want a.k json %v", tc.rk, tc.ct, tc.body, p, tc.json)
		}
		wantTS := int64(0) // the node stamps it
		if !tc.ts.IsZero() {
			wantTS = tc.ts.UnixMilli()
		}
		if p.TS != wantTS {
			t.Errorf("%q: ts %d, want %d", tc.body, p.TS, wantTS)
		}
	}
}

// ingestBenchSub is a Subscriber that counts its frames.
type ingestBenchSub struct {
	id     uint64
	frames atomic.Int64
}

func (s *ingestBenchSub) Enqueue(*proto.Frame) bool { s.frames.Add(1); return true }
func (s *ingestBenchSub) ConnID() uint64            { return s.id }

// BenchmarkIngest measures messages per second from an integrator's
// publish to the subscriber's queue: consumed from the ingest queue,
// sequenced, fanned out and acked, the messages spread over 16 keys.
// "embedded" hands publications to the local hub; "bus" sends them through
// the AMQP fan-out with publisher confirms and receives them back, as a
// cluster node does; "cluster" also sequences them in Redis, and
// "cluster-hotkey" publishes to one key only.
func BenchmarkIngest(b *testing.B) {
	b.Run("embedded", func(b *testing.B) { benchmarkIngest(b, nil, 16) })
	b.Run("bus", func(b *testing.B) { benchmarkIngest(b, NewMemoryStore(32, time.Minute), 16) })
	redisStore := func(b *testing.B) Store {
		c := redisForTest(b)
		return newTestRedisStore(b, c, redisTestPrefix(b, c), DefaultHistorySize, 0)
	}
	b.Run("cluster", func(b *testing.B) { benchmarkIngest(b, redisStore(b), 16) })
	b.Run("cluster-hotkey", func(b *testing.B) { benchmarkIngest(b, redisStore(b), 1) })
	b.Run("cluster-1000keys", func(b *testing.B) { benchmarkIngest(b, redisStore(b), 1000) })
}

// benchmarkIngest runs a node with a bus and busStore, or an embedded node
// when busStore is nil, and publishes to that many keys.
func benchmarkIngest(b *testing.B, busStore Store, keys int) {
	url := amqpURLForTest(b)
	topo := amqpTestTopology(b, url)
	var node *Node
	var conn *testAMQPConn
	if busStore != nil {
		tn := startBusNode(b, url, topo, "bench", busStore)
		node, conn = tn.node, tn.conn
	} else {
		conn = startAMQPConn(b, url, topo, "bench")
		node = newTestNode(b, Config{})
	}
	in, err := NewAMQPIngest(AMQPIngestConfig{Conn: conn.AMQPConn, Publisher: node.Source("amqp")})
	if err != nil {
		b.Fatal(err)
	}
	amqpRunUntilCleanup(b, in.Run)
	sub := &ingestBenchSub{id: 1}
	var names []string
	for k := range keys {
		names = append(names, "k"+strconv.Itoa(k))
	}
	subscribe(b, node, sub, SubscribeRequest{ID: 1, App: "bench", Keys: names})

	// The integrator publishes without confirms, as fast as it can.
	pc, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	ch, err := pc.Channel()
	if err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"temp":21.53,"humidity":40.1}`)
	want := int64(b.N) + sub.frames.Load()
	b.ResetTimer()
	pubErr := make(chan error, 1)
	go func() {
		for i := range b.N {
			msg := amqp.Publishing{ContentType: "application/json", Body: body}
			if err := ch.Publish(topo.IngestExchange, "bench."+names[i%keys], false, false, msg); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()
	if err := <-pubErr; err != nil {
		b.Fatal(err)
	}
	amqpWaitFor(b, 5*time.Minute, "every message delivered", func() error {
		if got := sub.frames.Load(); got < want {
			return fmt.Errorf("%d of %d", got, want)
		}
		return nil
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
