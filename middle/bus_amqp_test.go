package middle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/proto"
)

// busTestNode is a Node whose bus is an AMQPBus on a connection of its own.
type busTestNode struct {
	conn    *testAMQPConn
	bus     *AMQPBus
	node    *Node
	resyncs atomic.Int64 // OnReconnect calls
}

// startBusNode starts a node on the broker; nodes sharing store stand for
// a cluster sharing Redis. It returns once the bus consumes its queue.
func startBusNode(t testing.TB, url string, topo AMQPTopology, id string, store Store) *busTestNode {
	t.Helper()
	tn := &busTestNode{conn: startAMQPConn(t, url, topo, id)}
	bus, err := NewAMQPBus(AMQPBusConfig{
		Conn:   tn.conn.AMQPConn,
		NodeID: id,
		OnReconnect: func(ctx context.Context) {
			tn.resyncs.Add(1)
			tn.node.Resync(ctx)
		},
		Logger: amqpTestLogger(t).With("node", id),
	})
	if err != nil {
		t.Fatal(err)
	}
	tn.bus = bus
	tn.node = newTestNode(t, Config{Store: store, Bus: bus, Logger: amqpTestLogger(t).With("node", id)})
	amqpRunUntilCleanup(t, tn.node.Run)
	waitBusAttached(t, bus)
	return tn
}

func waitBusAttached(t testing.TB, b *AMQPBus) {
	t.Helper()
	amqpWaitFor(t, 10*time.Second, "bus consuming "+b.Queue(), func() error {
		if b.currentLink() == nil {
			return errors.New("not attached")
		}
		return nil
	})
}

// waitBusSeqs waits until r holds exactly want for key, failing at once when
// what arrived is not a prefix of want (out of order, duplicate, foreign).
func waitBusSeqs(t testing.TB, who string, r *recorder, key string, want []uint64) {
	t.Helper()
	amqpWaitFor(t, 20*time.Second, who+" receiving "+shortSeqs(want), func() error {
		got := r.seqs(t, key)
		if len(got) > len(want) || !equalSeqs(got, want[:len(got)]) {
			t.Fatalf("%s: got seqs %s, want %s", who, shortSeqs(got), shortSeqs(want))
		}
		if len(got) < len(want) {
			return fmt.Errorf("got %s", shortSeqs(got))
		}
		return nil
	})
}

func wantMetric(t testing.TB, what string, got, want float64) {
	t.Helper()
	if got != want {
		t.Fatalf("%s = %v, want %v", what, got, want)
	}
}

func TestAMQPBusFanout(t *testing.T) {
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	store := NewMemoryStore(1000, time.Hour)
	a := startBusNode(t, url, topo, "a", store)
	b := startBusNode(t, url, topo, "b", store)

	onA, onB := newRecorder(), newRecorder()
	subscribe(t, a.node, onA, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k1"}})
	subscribe(t, b.node, onB, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k1"}})

	// What b publishes reaches the subscribers of both nodes, in order.
	publishValues(t, b.node, "app", "k1", 1, 50)
	waitBusSeqs(t, "subscriber on a", onA, "k1", seqRange(1, 50))
	waitBusSeqs(t, "subscriber on b", onB, "k1", seqRange(1, 50))
	wantMetric(t, "b sent", amqpMetricValue(t, b.bus.sent), 50)
	wantMetric(t, "a received", amqpMetricValue(t, a.bus.received), 50)
	m := onA.messages(t)[1:] // after the ack
	if p := m[49].pub; string(p.Data) != `{"v":50}` || !p.JSON || p.TS == 0 {
		t.Fatalf("seq 50 on a: %+v, want JSON {\"v\":50} with a ts", p)
	}

	// A key nobody on a watches is not routed to a: a received k1's seq 51
	// after b published k2, and nothing else.
	publishValues(t, b.node, "app", "k2", 1, 5)
	publishValues(t, b.node, "app", "k1", 51, 51)
	waitBusSeqs(t, "subscriber on a", onA, "k1", seqRange(1, 51))
	wantMetric(t, "a received", amqpMetricValue(t, a.bus.received), 51)

	// Once a's last subscriber of k1 left, k1 is no longer routed to a.
	a.node.Unsubscribe(context.Background(), onA, "app", []string{"k1"})
	onA3 := newRecorder()
	subscribe(t, a.node, onA3, SubscribeRequest{ID: 2, App: "app", Keys: []string{"k3"}})
	publishValues(t, b.node, "app", "k1", 52, 52)
	publishValues(t, b.node, "app", "k3", 1, 1)
	waitBusSeqs(t, "k3 subscriber on a", onA3, "k3", []uint64{1})
	waitBusSeqs(t, "subscriber on b", onB, "k1", seqRange(1, 52))
	wantMetric(t, "a received", amqpMetricValue(t, a.bus.received), 52)
	wantSeqs(t, "unsubscribed subscriber on a", onA.seqs(t, "k1"), seqRange(1, 51))

	// A fan-out message not in wspush's format is dropped and counted.
	ch := testAMQPChannel(t, url)
	amqpPublishConfirmed(t, ch, topo.FanoutExchange, "app.k3", amqp.Publishing{ContentType: "application/json", Body: []byte(`{"v":2}`)})
	publishValues(t, b.node, "app", "k3", 2, 2)
	waitBusSeqs(t, "k3 subscriber on a", onA3, "k3", []uint64{1, 2})
	wantMetric(t, "a malformed", amqpMetricValue(t, a.bus.malformed), 1)
}

func TestAMQPBusBinaryPayload(t *testing.T) {
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	store := NewMemoryStore(10, time.Hour)
	a := startBusNode(t, url, topo, "a", store)
	b := startBusNode(t, url, topo, "b", store)
	rec := newRecorder()
	subscribe(t, a.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"bin"}, Format: proto.FormatBinary})
	payload := []byte{0, 1, 2, 0xff}
	if _, err := b.node.Publish(context.Background(), "test", []proto.Publication{{App: "app", Key: "bin", TS: 1763812345123, Data: payload}}); err != nil {
		t.Fatal(err)
	}
	waitBusSeqs(t, "binary subscriber", rec, "bin", []uint64{1})
	p := rec.messages(t)[1].pub
	if string(p.Data) != string(payload) || p.JSON || p.TS != 1763812345123 {
		t.Fatalf("got %+v, want binary %x with ts 1763812345123", p, payload)
	}
}

// TestAMQPBusSendBatch: a batch is confirmed whole and reaches a watching
// node in the order sent, its keys interleaved.
func TestAMQPBusSendBatch(t *testing.T) {
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	conn := startAMQPConn(t, url, topo, "n")
	bus, err := NewAMQPBus(AMQPBusConfig{Conn: conn.AMQPConn, NodeID: "n"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got []string
	)
	amqpRunUntilCleanup(t, func(ctx context.Context) error {
		return bus.Run(ctx, func(p *proto.Publication) {
			mu.Lock()
			got = append(got, fmt.Sprintf("%s.%d", p.Key, p.Seq))
			mu.Unlock()
		})
	})
	waitBusAttached(t, bus)
	ctx := context.Background()
	for _, k := range []string{"k1", "k2"} {
		if err := bus.Watch(ctx, "app", k); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := bus.SendBatch(ctx, nil); n != 0 || err != nil {
		t.Fatalf("empty batch: %d, %v; want 0, nil", n, err)
	}

	var (
		pubs []proto.Publication
		want []string
		top  = map[string]uint64{}
	)
	for i := range 300 {
		k := "k1"
		if i%3 == 0 {
			k = "k2"
		}
		top[k]++
		pubs = append(pubs, proto.Publication{App: "app", Key: k, Seq: top[k], TS: 1, Data: []byte("x")})
		want = append(want, fmt.Sprintf("%s.%d", k, top[k]))
	}
	if n, err := bus.SendBatch(ctx, pubs); n != len(pubs) || err != nil {
		t.Fatalf("SendBatch: %d, %v; want %d, nil", n, err, len(pubs))
	}
	wantMetric(t, "sent", amqpMetricValue(t, bus.sent), float64(len(pubs)))
	amqpWaitFor(t, 10*time.Second, "the batch delivered in order", func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(got) > len(want) || !slices.Equal(got, want[:len(got)]) {
			t.Fatalf("delivered %v, want %v", got, want)
		}
		if len(got) < len(want) {
			return fmt.Errorf("%d of %d", len(got), len(want))
		}
		return nil
	})
}

// A node that falls QueueMaxLength messages behind loses the oldest ones
// from its queue rather than growing it without bound.
func TestAMQPBusQueueMaxLength(t *testing.T) {
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	conn := startAMQPConn(t, url, topo, "m")
	bus, err := NewAMQPBus(AMQPBusConfig{Conn: conn.AMQPConn, NodeID: "m", Prefetch: 1, QueueMaxLength: 3})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		got     []uint64
		release = make(chan struct{})
		once    sync.Once
	)
	deliver := func(p *proto.Publication) {
		mu.Lock()
		got = append(got, p.Seq)
		first := len(got) == 1
		mu.Unlock()
		if first {
			<-release // hold the only prefetch slot
		}
	}
	amqpRunUntilCleanup(t, func(ctx context.Context) error { return bus.Run(ctx, deliver) })
	t.Cleanup(func() { once.Do(func() { close(release) }) })
	waitBusAttached(t, bus)

	ctx := context.Background()
	if err := bus.Watch(ctx, "app", "k"); err != nil {
		t.Fatal(err)
	}
	received := func(want ...uint64) func() error {
		return func() error {
			mu.Lock()
			defer mu.Unlock()
			if !equalSeqs(got, want) {
				return fmt.Errorf("got %v, want %v", got, want)
			}
			return nil
		}
	}
	send := func(seq uint64) {
		if _, err := bus.SendBatch(ctx, []proto.Publication{{App: "app", Key: "k", Seq: seq, TS: 1, Data: []byte("x")}}); err != nil {
			t.Fatal(err)
		}
	}
	send(1)
	amqpWaitFor(t, 10*time.Second, "seq 1 delivered", received(1))
	for seq := uint64(2); seq <= 10; seq++ {
		send(seq)
	}
	once.Do(func() { close(release) })
	amqpWaitFor(t, 10*time.Second, "the newest 3 after seq 1", received(1, 8, 9, 10))
}

// Without a connection, Watch and Send fail with ErrUnavailable after
// their wait, and a failed Watch leaves no binding to restore.
func TestAMQPBusDisconnected(t *testing.T) {
	conn, err := NewAMQPConn(AMQPConfig{URL: "amqp://guest:guest@127.0.0.1:1/"}) // never run
	if err != nil {
		t.Fatal(err)
	}
	bus, err := NewAMQPBus(AMQPBusConfig{Conn: conn, NodeID: "n", WatchWait: 20 * time.Millisecond, SendTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := bus.Watch(ctx, "app", "k"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Watch while disconnected: %v, want ErrUnavailable", err)
	}
	if _, err := bus.SendBatch(ctx, []proto.Publication{{App: "app", Key: "k", Seq: 1}}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("SendBatch while disconnected: %v, want ErrUnavailable", err)
	}
	batch := []proto.Publication{{App: "app", Key: "k", Seq: 1}, {App: "app", Key: "k", Seq: 2}}
	if n, err := bus.SendBatch(ctx, batch); n != 0 || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("SendBatch while disconnected: %d, %v; want 0, ErrUnavailable", n, err)
	}
	if err := bus.Unwatch(ctx, "app", "k"); err != nil {
		t.Fatalf("Unwatch while disconnected: %v", err)
	}
	if len(bus.watched) != 0 {
		t.Fatalf("watched after a failed Watch: %v", bus.watched)
	}
	if err := conn.Ready(); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Ready before connecting: %v, want ErrUnavailable", err)
	}

	// Through a node, the subscriber gets the error and nothing is left
	// behind.
	n := newTestNode(t, Config{Bus: bus})
	err = n.Subscribe(ctx, newRecorder(), SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Subscribe while disconnected: %v, want ErrUnavailable", err)
	}
	if len(bus.watched) != 0 {
		t.Fatalf("watched after a failed Subscribe: %v", bus.watched)
	}
}

func TestAMQPConnReady(t *testing.T) {
	// Unreachable: Ready says why; Run stops with its context.
	down, err := NewAMQPConn(AMQPConfig{URL: "amqp://guest:guest@127.0.0.1:1/", MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- down.Run(ctx) }()
	amqpWaitFor(t, 10*time.Second, "a failed attempt", func() error {
		if err := down.Ready(); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "dial") {
			return fmt.Errorf("Ready = %v", err)
		}
		return nil
	})
	if err := down.Run(ctx); err == nil {
		t.Fatal("second Run: no error")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}

	// Reachable: the topology is declared.
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	c := startAMQPConn(t, url, topo, "ready")
	wantMetric(t, "connected", amqpMetricValue(t, c.connected), 1)
	ch := testAMQPChannel(t, url)
	for _, x := range []struct{ name, kind string }{
		{topo.FanoutExchange, "topic"}, {topo.IngestExchange, "topic"}, {topo.DeadLetterExchange, "fanout"},
	} {
		if err := ch.ExchangeDeclarePassive(x.name, x.kind, true, false, false, false, nil); err != nil {
			t.Fatalf("exchange %s: %v", x.name, err)
		}
	}
	for _, q := range []string{topo.IngestQueue, topo.DeadQueue} {
		if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
			t.Fatalf("queue %s: %v", q, err)
		}
	}
}

func TestAMQPConfigValidate(t *testing.T) {
	url := "amqp://guest:guest@127.0.0.1:5672/"
	for _, cfg := range []AMQPConfig{
		{},
		{URL: "http://x/"},
		{URL: url, DialTimeout: -1},
		{URL: url, Heartbeat: -1},
		{URL: url, MinBackoff: -1},
		{URL: url, MinBackoff: time.Second, MaxBackoff: time.Millisecond},
		{URL: url, Topology: AMQPTopology{IngestQueue: strings.Repeat("q", 256)}},
	} {
		if _, err := NewAMQPConn(cfg); err == nil {
			t.Errorf("NewAMQPConn(%+v): no error", cfg)
		}
	}
	conn, err := NewAMQPConn(AMQPConfig{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.Topology(); got.FanoutExchange != "wspush.fanout" || got.IngestQueue != "wspush.ingest" || got.DeadQueue != "wspush.dead" ||
		got.IngestExchange != "wspush.ingest" || got.DeadLetterExchange != "wspush.dlx" || got.NodeQueuePrefix != "wspush.node." {
		t.Fatalf("default topology %+v: not the DESIGN.md names", got)
	}
	for _, cfg := range []AMQPBusConfig{
		{NodeID: "n"},
		{Conn: conn},
		{Conn: conn, NodeID: "a b"},
		{Conn: conn, NodeID: strings.Repeat("n", 250)},
		{Conn: conn, NodeID: "n", Prefetch: -1},
		{Conn: conn, NodeID: "n", Prefetch: 70000},
		{Conn: conn, NodeID: "n", QueueMaxLength: -1},
		{Conn: conn, NodeID: "n", SendTimeout: -1},
		{Conn: conn, NodeID: "n", WatchWait: -1},
	} {
		if _, err := NewAMQPBus(cfg); err == nil {
			t.Errorf("NewAMQPBus(%+v): no error", cfg)
		}
	}
	bus, err := NewAMQPBus(AMQPBusConfig{Conn: conn, NodeID: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	if bus.Queue() != "wspush.node.node-1" {
		t.Fatalf("queue %q, want wspush.node.node-1", bus.Queue())
	}
}

// The subscriber of a node whose connection breaks (cut, or closed) while
// values flow, and whose publisher's connection breaks too, still ends
// with every seq exactly once, in order: the bus restores its bindings
// and resyncs from the store what passed by meanwhile.
func TestAMQPBusReconnect(t *testing.T) {
	url := amqpURLForTest(t)
	topo := amqpTestTopology(t, url)
	store := NewMemoryStore(10000, time.Hour)
	a := startBusNode(t, url, topo, "a", store)
	b := startBusNode(t, url, topo, "b", store)
	rec := newRecorder()
	subscribe(t, a.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: []string{"k"}})

	const total = 300
	var published atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pubDone := make(chan error, 1)
	go func() {
		for v := 1; v <= total; v++ {
			// A publication that failed to reach the bus is sequenced all
			// the same; trying again gives it another seq.
			for {
				_, err := b.node.Publish(ctx, "test", []proto.Publication{jsonPub("app", "k", v)})
				if err == nil {
					break
				}
				if !errors.Is(err, ErrUnavailable) || ctx.Err() != nil {
					pubDone <- err
					return
				}
			}
			published.Store(int64(v))
			time.Sleep(time.Millisecond) // spread the values over the outages
		}
		pubDone <- nil
	}()
	after := func(n int64, reconnects float64, c *testAMQPConn) func() error {
		return func() error {
			if p := published.Load(); p < n {
				return fmt.Errorf("%d published", p)
			}
			if r := amqpMetricValue(t, c.reconnects); r < reconnects {
				return fmt.Errorf("%v reconnects", r)
			}
			return nil
		}
	}
	amqpWaitFor(t, 20*time.Second, "50 published", after(50, 0, a.conn))
	a.conn.cut(t)
	amqpWaitFor(t, 20*time.Second, "a back and 150 published", after(150, 1, a.conn))
	a.conn.closeAMQP(t)
	amqpWaitFor(t, 20*time.Second, "a back and 220 published", after(220, 2, a.conn))
	b.conn.cut(t)
	select {
	case err := <-pubDone:
		if err != nil {
			t.Fatalf("publisher: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("publisher did not finish")
	}
	top := topSeq(t, a.node, "app", "k")
	if top < total {
		t.Fatalf("store top seq %d < %d publications", top, total)
	}
	waitBusSeqs(t, "subscriber on a", rec, "k", seqRange(1, top))
	wantMetric(t, "a reconnects", amqpMetricValue(t, a.conn.reconnects), 2)
	wantMetric(t, "b reconnects", amqpMetricValue(t, b.conn.reconnects), 1)
	amqpWaitFor(t, 10*time.Second, "a resynced twice and b once", func() error {
		if ra, rb := a.resyncs.Load(), b.resyncs.Load(); ra != 2 || rb != 1 {
			return fmt.Errorf("a resynced %d times, b %d", ra, rb)
		}
		return nil
	})
	// Values published while a was away were recovered from the store, or
	// the test did not test that.
	if filled := amqpMetricValue(t, a.node.metrics.gapsFilled); filled == 0 {
		t.Fatal("a filled no gap: no publication passed it by during its outages")
	}
	wantMetric(t, "a unrecoverable gaps", amqpMetricValue(t, a.node.metrics.gapsLost), 0)
}

func BenchmarkAMQPBusSend(b *testing.B) {
	url := amqpURLForTest(b)
	topo := amqpTestTopology(b, url)
	conn := startAMQPConn(b, url, topo, "bench")
	bus, err := NewAMQPBus(AMQPBusConfig{Conn: conn.AMQPConn, NodeID: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	var received atomic.Int64
	amqpRunUntilCleanup(b, func(ctx context.Context) error {
		return bus.Run(ctx, func(*proto.Publication) { received.Add(1) })
	})
	waitBusAttached(b, bus)
	ctx := context.Background()
	if err := bus.Watch(ctx, "bench", "k"); err != nil { // routed to a queue, as in production
		b.Fatal(err)
	}
	payload := []byte(`{"temp":21.53,"humidity":40.1}`)
	var seq atomic.Uint64
	b.Run("serial", func(b *testing.B) {
		p := proto.Publication{App: "bench", Key: "k", TS: 1, Data: payload, JSON: true}
		for range b.N {
			p.Seq = seq.Add(1)
			if _, err := bus.SendBatch(ctx, []proto.Publication{p}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pubs/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.SetParallelism(16)
		b.RunParallel(func(pb *testing.PB) {
			p := proto.Publication{App: "bench", Key: "k", TS: 1, Data: payload, JSON: true}
			for pb.Next() {
				p.Seq = seq.Add(1)
				if _, err := bus.SendBatch(ctx, []proto.Publication{p}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pubs/s")
	})
	b.StopTimer()
	amqpWaitFor(b, 30*time.Second, "every publication back through the queue", func() error {
		if r, s := received.Load(), int64(seq.Load()); r != s {
			return fmt.Errorf("%d of %d", r, s)
		}
		return nil
	})
}
