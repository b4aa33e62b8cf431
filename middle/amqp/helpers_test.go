package middle

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"
)

// defaultTestAMQPURL is the broker scripts/services.sh starts.
const defaultTestAMQPURL = "amqp://guest:guest@127.0.0.1:5672/"

// amqpURLForTest returns the URL of a reachable RabbitMQ
// (WSPUSH_TEST_AMQP_URL, else the local default). When there is none, the
// test fails if WSPUSH_REQUIRE_SERVICES=1 (CI) and is skipped otherwise.
func amqpURLForTest(t testing.TB) string {
	t.Helper()
	url := os.Getenv("WSPUSH_TEST_AMQP_URL")
	if url == "" {
		url = defaultTestAMQPURL
	}
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatalf("RabbitMQ at %s is unreachable and WSPUSH_REQUIRE_SERVICES=1: %v", redactURL(url), err)
		}
		t.Skipf("RabbitMQ at %s is unreachable (set WSPUSH_REQUIRE_SERVICES=1 to fail instead): %v", redactURL(url), err)
	}
	_ = conn.Close()
	return url
}

// amqpTestTopology returns exchange and queue names no other test uses,
// and deletes them when the test ends.
func amqpTestTopology(t testing.TB, url string) AMQPTopology {
	t.Helper()
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	if len(name) > 60 {
		name = name[:60]
	}
	prefix := fmt.Sprintf("wspush-test.%s.%08x.", name, rand.Uint32())
	topo := AMQPTopology{
		FanoutExchange:     prefix + "fanout",
		NodeQueuePrefix:    prefix + "node.",
		IngestExchange:     prefix + "ingest",
		IngestQueue:        prefix + "ingest",
		DeadLetterExchange: prefix + "dlx",
		DeadQueue:          prefix + "dead",
	}
	t.Cleanup(func() {
		conn, err := amqp.Dial(url)
		if err != nil {
			t.Errorf("cleanup: dial %s: %v", redactURL(url), err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("cleanup: channel: %v", err)
			return
		}
		defer ch.Close()
		for _, q := range []string{topo.IngestQueue, topo.DeadQueue} {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				t.Errorf("cleanup: delete queue %s: %v", q, err)
				return
			}
		}
		for _, x := range []string{topo.FanoutExchange, topo.IngestExchange, topo.DeadLetterExchange} {
			if err := ch.ExchangeDelete(x, false, false); err != nil {
				t.Errorf("cleanup: delete exchange %s: %v", x, err)
				return
			}
		}
	})
	return topo
}

// amqpTestLogger writes to the test's output, shown when it fails or with
// -v.
func amqpTestLogger(t testing.TB) *slog.Logger {
	if _, ok := t.(*testing.B); ok {
		return slog.New(slog.DiscardHandler) // benchmarks print their output
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testAMQPConn is an AMQPConn whose TCP connections the test can cut.
type testAMQPConn struct {
	*AMQPConn
	mu sync.Mutex
	nc net.Conn // the newest TCP connection
}

// startAMQPConn runs a connection manager until the test ends; it returns
// once the connection is up.
func startAMQPConn(t testing.TB, url string, topo AMQPTopology, name string) *testAMQPConn {
	t.Helper()
	c, err := NewAMQPConn(AMQPConfig{
		URL: url, Name: name, Topology: topo,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: amqpTestLogger(t).With("conn", name),
	})
	if err != nil {
		t.Fatal(err)
	}
	tc := &testAMQPConn{AMQPConn: c}
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
	amqpRunUntilCleanup(t, c.Run)
	amqpWaitFor(t, 10*time.Second, "AMQP connection up", c.Ready)
	return tc
}

// cut closes the TCP connection under the AMQP connection, as a network
// failure would.
func (c *testAMQPConn) cut(t testing.TB) {
	t.Helper()
	c.mu.Lock()
	nc := c.nc
	c.mu.Unlock()
	if err := nc.Close(); err != nil {
		t.Fatalf("cut TCP connection: %v", err)
	}
}

// closeAMQP closes the AMQP connection cleanly, as an operator closing it
// in the management UI would (for the client, a close it did not ask for).
func (c *testAMQPConn) closeAMQP(t testing.TB) {
	t.Helper()
	c.AMQPConn.mu.Lock()
	s := c.sess
	c.AMQPConn.mu.Unlock()
	if s == nil {
		t.Fatal("closeAMQP: not connected")
	}
	if err := s.conn.Close(); err != nil {
		t.Fatalf("close AMQP connection: %v", err)
	}
}

// amqpRunUntilCleanup runs fn in a goroutine until the test ends, and fails the
// test if fn returns an error or does not stop.
func amqpRunUntilCleanup(t testing.TB, fn func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	t.Cleanup(func() {
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

// amqpWaitFor polls cond until it returns nil, failing the test after limit.
func amqpWaitFor(t testing.TB, limit time.Duration, what string, cond func() error) {
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

// testAMQPChannel opens a client connection of its own, as an integrator
// would, closed when the test ends.
func testAMQPChannel(t testing.TB, url string) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(url)
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
	return ch
}

// amqpPublishConfirmed publishes msg and waits for the broker's confirm.
func amqpPublishConfirmed(t testing.TB, ch *amqp.Channel, exchange, rk string, msg amqp.Publishing) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, rk, false, false, msg)
	if err != nil {
		t.Fatalf("publish %q: %v", rk, err)
	}
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("publish %q: confirm %v, %v", rk, ok, err)
	}
}

// amqpMetricValue reads a counter or gauge.
func amqpMetricValue(t testing.TB, m prometheus.Metric) float64 {
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
