package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/redis"
)

// workerEnv makes the test binary a wsbench worker (see TestMain), so
// that tests can run workers as processes without building wsbench.
const workerEnv = "WSBENCH_TEST_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := RunWorker(ctx, os.Stdin, os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, "test worker:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testWorkers runs workers as processes of this test binary.
func testWorkers() Spawner {
	return ExecSpawner{Command: func(ctx context.Context) (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), workerEnv+"=1")
		return cmd, nil
	}}
}

// startServer runs a whole wspush process on a loopback port; it is shut
// down when the test ends.
func startServer(t *testing.T, cfg app.Config) ServerURL {
	t.Helper()
	base, _, _ := wstest.StartApp(t, cfg)
	return ServerURL{WS: wstest.WSURL(base), HTTP: base}
}

func newTestRunner(t *testing.T, o Options) *Runner {
	t.Helper()
	o.RampRate = max(o.RampRate, 500)
	if o.Drain == 0 {
		o.Drain = 5 * time.Second
	}
	o.Deadline = time.Now().Add(2 * time.Minute)
	r, err := NewRunner(o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func onlyStep(t *testing.T, rep *Report, err error) StepReport {
	t.Helper()
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if len(rep.Steps) != 1 {
		t.Fatalf("%d steps, want 1", len(rep.Steps))
	}
	s := rep.Steps[0]
	if s.Skipped != "" || s.Error != "" {
		t.Fatalf("step skipped %q, error %q", s.Skipped, s.Error)
	}
	return s
}

// checkClean fails unless every connection came up and stayed up and
// nothing was lost, repeated or reordered.
func checkClean(t *testing.T, s StepReport) {
	t.Helper()
	if s.Connected != int64(s.Connections) || s.ConnectErrors != 0 || s.Dropped != 0 {
		t.Errorf("connections: %d of %d up, %d errors %v, %d dropped", s.Connected, s.Connections, s.ConnectErrors, s.ErrorSamples, s.Dropped)
	}
	l := s.Loss
	if l.Lost != 0 || l.Duplicates != 0 || l.OutOfOrder != 0 || l.Unexpected != 0 || s.Foreign != 0 || s.ErrorRate != 0 {
		t.Errorf("loss %+v, foreign %d, error rate %g", l, s.Foreign, s.ErrorRate)
	}
	if s.Handshake.Count != uint64(s.Connections) || s.Subscribe.Count != uint64(s.Connections) {
		t.Errorf("%d handshakes, %d subscribes timed for %d connections", s.Handshake.Count, s.Subscribe.Count, s.Connections)
	}
	if s.Server.Missing != 0 || s.Server.QueueOverflows != 0 {
		t.Errorf("server figures: %+v", s.Server)
	}
}

// checkDeliveries checks deliveries == publications × subscribers per
// key, against wsbench's own counts and the server's.
func checkDeliveries(t *testing.T, s StepReport, publications int64, want uint64) {
	t.Helper()
	if s.Publications != publications || s.PublishFailed != 0 {
		t.Errorf("publications %d (%d failed, %v), want %d", s.Publications, s.PublishFailed, s.PublishErrors, publications)
	}
	l := s.Loss
	if l.Expected != want || l.Received != want || l.Distinct != want || s.Latency.Count != want {
		t.Errorf("deliveries: expected %d, received %d, distinct %d, latencies %d; want %d each", l.Expected, l.Received, l.Distinct, s.Latency.Count, want)
	}
	if s.Server.Deliveries != float64(want) {
		t.Errorf("the server counted %g deliveries, want %d", s.Server.Deliveries, want)
	}
	if s.Latency.Avg <= 0 || s.Latency.Max < s.Latency.P99 || s.Latency.P99 < s.Latency.P50 {
		t.Errorf("latency %+v", s.Latency)
	}
}

func TestCapacityEndToEnd(t *testing.T) {
	srv := startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}})
	rep, err := r.Capacity(t.Context(), CapacityConfig{Connections: 30, KeysPerConn: 3, Hold: 300 * time.Millisecond})
	s := onlyStep(t, rep, err)
	checkClean(t, s)
	if s.Server.Connections != 30 || s.PerServer[0].After.Connections < 30 {
		t.Errorf("the server saw %g new connections, want 30", s.Server.Connections)
	}
	if s.Loss != (Loss{}) || s.Latency.Count != 0 {
		t.Errorf("capacity has no values, got loss %+v, %d latencies", s.Loss, s.Latency.Count)
	}
}

func TestFanoutEndToEnd(t *testing.T) {
	for _, format := range []string{"binary", "json"} {
		t.Run(format, func(t *testing.T) {
			srv := startServer(t, app.Config{})
			r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Format: format})
			// 20 subscribers on 2 keys, 40 values: each value reaches 10.
			rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 20, Keys: 2, Rate: 20, Duration: 2 * time.Second})
			s := onlyStep(t, rep, err)
			checkClean(t, s)
			checkDeliveries(t, s, 40, 40*10)
			if s.DeliveriesPerSec <= 0 {
				t.Errorf("deliveries per second %g", s.DeliveriesPerSec)
			}
		})
	}
}

func TestFanoutWithWorkerProcessesAndServers(t *testing.T) {
	a, b := startServer(t, app.Config{}), startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{a, b}, Workers: 2, SourceIPs: 3, Spawner: testWorkers()})
	// Two independent servers: every value goes to both, each reaching
	// its 12 subscribers.
	rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 24, Keys: 1, Rate: 10, Duration: 2 * time.Second})
	s := onlyStep(t, rep, err)
	checkClean(t, s)
	if s.Workers != 2 || s.ServerNodes != 2 || s.SourceIPs != 3 {
		t.Errorf("layout: %d workers, %d servers, %d source addresses", s.Workers, s.ServerNodes, s.SourceIPs)
	}
	checkDeliveries(t, s, 2*20, 20*24)
	for _, n := range s.PerServer {
		if n.Connections != 12 || n.Deliveries != 20*12 {
			t.Errorf("server %s: %g connections, %g deliveries; want 12 and 240", n.URL, n.Connections, n.Deliveries)
		}
	}
}

func TestTableHTTPEndToEnd(t *testing.T) {
	srv := startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, MaxConnsPerNode: 25})
	var seen []int
	rep, err := r.Table(t.Context(), TableConfig{Steps: []int{10, 20, 60}, Source: SourceHTTP, Duration: 2 * time.Second},
		func(s StepReport) { seen = append(seen, s.Connections) })
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[10 20 60]" || len(rep.Steps) != 3 {
		t.Fatalf("steps reported %v", seen)
	}
	for i, n := range []int{10, 20} {
		s := rep.Steps[i]
		checkClean(t, s)
		checkDeliveries(t, s, int64(2*n), uint64(2*n))
	}
	// Step 2 reuses the keys of step 1, whose latest values are replayed
	// on subscribe: stale, not counted.
	if rep.Steps[1].Stale != 10 {
		t.Errorf("step 2: %d stale replays, want 10", rep.Steps[1].Stale)
	}
	if s := rep.Steps[2]; !strings.Contains(s.Skipped, "needs 3 server nodes") {
		t.Errorf("60 connections on one 25-connection server: skipped %q", s.Skipped)
	}
}

func TestTablePollerEndToEnd(t *testing.T) {
	// The simulated data center, as cmd/datacenter runs it, answers for
	// every app and ID, so the poller publishes the bench keys (--demo's
	// knows app demo only).
	dc := httptest.NewServer(simulator.New(simulator.Config{}))
	t.Cleanup(dc.Close)
	srv := startServer(t, app.Config{DatacenterURL: dc.URL})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Drain: 1500 * time.Millisecond})
	rep, err := r.Table(t.Context(), TableConfig{Steps: []int{10}, Source: SourcePoller, Duration: 2 * time.Second, Warmup: time.Second}, nil)
	s := onlyStep(t, rep, err)
	checkClean(t, s)
	// Values change every second: two per key in a 2s window, give or
	// take one whose poll fell on the other side of a step.
	if s.Loss.Expected < 10 || s.Loss.Expected > 30 || s.Latency.Count != s.Loss.Expected {
		t.Errorf("expected %d values, %d latencies; want 10 to 30", s.Loss.Expected, s.Latency.Count)
	}
	if s.Latency.Max > 2000 {
		t.Errorf("latency %+v", s.Latency)
	}
}

func TestStopsWhenCancelled(t *testing.T) {
	srv := startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Workers: 2, Spawner: testWorkers()})
	ctx, cancel := context.WithCancelCause(t.Context())
	time.AfterFunc(time.Second, func() { cancel(errors.New("interrupted by the test")) })
	start := time.Now()
	rep, err := r.Capacity(ctx, CapacityConfig{Connections: 20, Hold: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "interrupted by the test") {
		t.Fatalf("err %v, want the cancellation", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("took %s to stop", d)
	}
	if rep == nil || len(rep.Steps) != 1 || rep.Error == "" {
		t.Fatalf("report %+v", rep)
	}
}

func TestWorkerFailureStopsTheStep(t *testing.T) {
	srv := startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Workers: 2, Spawner: ExecSpawner{
		// Reads its config, then dies.
		Command: func(ctx context.Context) (*exec.Cmd, error) {
			return exec.CommandContext(ctx, "sh", "-c", "head -n 1 >/dev/null; exit 3"), nil
		},
	}})
	_, err := r.Capacity(t.Context(), CapacityConfig{Connections: 4, Hold: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "ended before its result") {
		t.Fatalf("err %v, want a worker that ended", err)
	}
}

// TestLeavesNoGoroutines checks that a run stops everything it started:
// workers, connections, publisher, progress view, idle HTTP connections.
func TestLeavesNoGoroutines(t *testing.T) {
	srv := startServer(t, app.Config{})
	var progress strings.Builder
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Progress: &progress})
	// Warm up the server and the runtime, then count.
	if _, err := r.Capacity(t.Context(), CapacityConfig{Connections: 2}); err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		n := runtime.NumGoroutine()
		for range 50 {
			time.Sleep(20 * time.Millisecond)
			n = min(n, runtime.NumGoroutine())
		}
		return n
	}
	before := settle()
	rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 20, Rate: 20, Duration: time.Second})
	checkClean(t, onlyStep(t, rep, err))
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := runtime.NumGoroutine()
		if after <= before {
			break
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines before the run, %d after:\n%s", before, after, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(progress.String(), "fanout publish") {
		t.Errorf("no progress lines: %q", progress.String())
	}
}

// startClusterNodes runs n wspush nodes on the test Redis and RabbitMQ,
// sharing a Redis prefix of this test alone (its keys are deleted when the
// test ends), and waits until they are ready.
func startClusterNodes(t *testing.T, n int) []ServerURL {
	t.Helper()
	prefix := uniqueName("t-bench-")
	t.Cleanup(func() { deleteRedisPrefix(t, prefix) })
	var out []ServerURL
	for range n {
		base, a, _ := wstest.StartApp(t, app.Config{NodeID: uniqueName("node-"), RedisURL: wstest.RedisURL, AMQPURL: wstest.AMQPURL,
			Redis: redis.StoreConfig{Prefix: prefix}})
		wstest.Eventually(t, 15*time.Second, a.Ready)
		out = append(out, ServerURL{WS: wstest.WSURL(base), HTTP: base})
	}
	return out
}

// deleteRedisPrefix deletes the keys under prefix from the test Redis.
func deleteRedisPrefix(t *testing.T, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := redis.NewClient(ctx, wstest.RedisURL, "wspush-test-cleanup")
	if err != nil {
		t.Errorf("cleanup of %s:*: %v", prefix, err)
		return
	}
	defer c.Close()
	it := c.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for it.Next(ctx) {
		if err := c.Del(ctx, it.Val()).Err(); err != nil {
			t.Errorf("cleanup of %s:*: %v", prefix, err)
			return
		}
	}
	if err := it.Err(); err != nil {
		t.Errorf("cleanup of %s:*: %v", prefix, err)
	}
}

// TestAMQPSourceEndToEnd publishes through RabbitMQ to a two-node
// cluster: every value is published once and reaches every subscriber
// of its key on both nodes.
func TestAMQPSourceEndToEnd(t *testing.T) {
	wstest.RequireServices(t)
	nodes := startClusterNodes(t, 2)
	a, b := nodes[0], nodes[1]
	r := newTestRunner(t, Options{Servers: []ServerURL{a, b}, App: uniqueName("bench-"), AMQPURL: wstest.AMQPURL})

	// 20 subscribers of one key, 10 per node; 40 values.
	rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 20, Keys: 1, Rate: 20, Duration: 2 * time.Second, Source: SourceAMQP})
	s := onlyStep(t, rep, err)
	checkClean(t, s)
	checkDeliveries(t, s, 40, 40*20)
	if !rep.Options.Cluster {
		t.Error("the report does not say --source amqp published as a cluster")
	}
	for _, n := range s.PerServer {
		if n.Connections != 10 || n.Deliveries != 40*10 {
			t.Errorf("server %s: %g connections, %g deliveries; want 10 and 400", n.URL, n.Connections, n.Deliveries)
		}
	}

	// The table: every connection its own key, one value per second.
	rep, err = r.Table(t.Context(), TableConfig{Steps: []int{10}, Source: SourceAMQP, Duration: time.Second}, nil)
	s = onlyStep(t, rep, err)
	checkClean(t, s)
	checkDeliveries(t, s, 10, 10)
}

// TestFanoutPublisherStallShowsInLatency: a publisher that falls behind
// its schedule (here it stalls once, as a starved load generator would)
// must not hide it. The value due when it stalled goes out late; its
// latency counts from its scheduled time, so every subscriber's latency
// of it, and the publisher's lag, are at least the stall.
func TestFanoutPublisherStallShowsInLatency(t *testing.T) {
	const stall = 400 * time.Millisecond
	srv := startServer(t, app.Config{})
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}})
	r.o.publishStall = func(v int64) {
		if v == 10 {
			time.Sleep(stall)
		}
	}
	// 20 subscribers on 2 keys, 40 values: value 10 reaches 10
	// subscribers, more than 1% of the 400 deliveries.
	rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 20, Keys: 2, Rate: 20, Duration: 2 * time.Second})
	s := onlyStep(t, rep, err)
	checkClean(t, s)
	checkDeliveries(t, s, 40, 40*10)
	stallMs := float64(stall) / 1e6
	if s.Latency.P99 < stallMs || s.Latency.Max < stallMs {
		t.Errorf("latency %+v: p99 and max should be at least the %s stall", s.Latency, stall)
	}
	if s.PublishLag.Count != 40 || s.PublishLag.Max < stallMs || s.PublishMaxLagMs != s.PublishLag.Max {
		t.Errorf("publisher lag %+v (max %g ms): want 40 values, max at least %s", s.PublishLag, s.PublishMaxLagMs, stall)
	}
	var b strings.Builder
	if err := WriteText(&b, rep); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "publisher lag ms:") {
		t.Errorf("the report does not show the publisher's lag:\n%s", b.String())
	}
}

// TestFanoutLatestEndToEnd subscribes in mode latest with max_rate
// (docs/PROTOCOL.md, "Delivery modes") to keys that change faster than
// that: values are skipped, but the seqs rise, every key's last value
// arrives and no subscription gets more than its rate.
func TestFanoutLatestEndToEnd(t *testing.T) {
	srv := startServer(t, app.Config{})
	// Two worker processes: the finals go out, and the figures come
	// back, over the coordinator's protocol.
	r := newTestRunner(t, Options{Servers: []ServerURL{srv}, Workers: 2, Spawner: testWorkers()})
	// 10 subscribers on 2 keys, 50 values per key per second for 2s,
	// delivered at most 4 per second.
	rep, err := r.Fanout(t.Context(), FanoutConfig{Subscribers: 10, Keys: 2, Rate: 100, Duration: 2 * time.Second, Mode: "latest", MaxRate: 4})
	s := onlyStep(t, rep, err)
	checkClean(t, s) // no lost final value, duplicate, seq going back, foreign data
	if s.Publications != 200 || s.PublishFailed != 0 {
		t.Errorf("publications %d (%d failed), want 200", s.Publications, s.PublishFailed)
	}
	l := s.Latest
	if l == nil || s.Loss.Expected != 10 {
		t.Fatalf("latest figures %+v, loss %+v: want 10 final values due", l, s.Loss)
	}
	if l.RateViolations != 0 || l.MaxPerSecond > 5 || l.MaxRate != 4 {
		t.Errorf("latest figures %+v: at most ceil(4)+1 values per second per subscription", l)
	}
	// A subscription can get at most 4/s, a little over 2s: far fewer
	// than the 100 values of its key.
	if s.Loss.Received < 10 || s.Loss.Received > 10*20 || l.Skipped != 10*100-s.Loss.Distinct {
		t.Errorf("received %d (distinct %d), skipped %d: want 10 to 200 received, the rest skipped", s.Loss.Received, s.Loss.Distinct, l.Skipped)
	}
	if s.Latency.Count != s.Loss.Received || l.DeliveredPerSec <= 0 || l.DeliveredPerSec > 5 {
		t.Errorf("%d ages for %d values, %g delivered values/s per subscription", s.Latency.Count, s.Loss.Received, l.DeliveredPerSec)
	}
	var b strings.Builder
	if err := WriteText(&b, rep); err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(b.String()), " ")
	for _, want := range []string{"mode latest at most 4/s per key", "final values: 10 of 10 arrived", "age ms:", "delivered values/s per subscription"} {
		if !strings.Contains(text, want) {
			t.Errorf("the report lacks %q:\n%s", want, b.String())
		}
	}
}
