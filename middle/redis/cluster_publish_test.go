package middle

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/proto"
)

// testCluster is two nodes sharing a Redis store and a broker.
type testCluster struct {
	a, b   *busTestNode
	redis  *redis.Client
	prefix string // of the store's keys
}

// startTestCluster starts nodes a and b and subscribes rec on a to keys
// of app "app".
func startTestCluster(t *testing.T, rec *recorder, keys ...string) testCluster {
	t.Helper()
	url := amqpURLForTest(t)
	c := redisForTest(t)
	topo := amqpTestTopology(t, url)
	tc := testCluster{redis: c, prefix: redisTestPrefix(t, c)}
	tc.a = startBusNode(t, url, topo, "a", newTestRedisStore(t, c, tc.prefix, 1000, 0))
	tc.b = startBusNode(t, url, topo, "b", newTestRedisStore(t, c, tc.prefix, 1000, 0))
	subscribe(t, tc.a.node, rec, SubscribeRequest{ID: 1, App: "app", Keys: keys})
	return tc
}

// TestClusterPublishBatch: a batch over several chunks, keys interleaved,
// is sequenced in order per key and reaches the other node whole and in
// order.
func TestClusterPublishBatch(t *testing.T) {
	rec := newRecorder()
	b := startTestCluster(t, rec, "k1", "k2").b
	const total = 2*publishChunk + 10
	pubs := make([]proto.Publication, total)
	want := map[string][]string{} // the payloads of each key, in order
	for i := range pubs {
		k := "k1"
		if i%4 == 0 {
			k = "k2"
		}
		pubs[i] = jsonPub("app", k, i)
		want[k] = append(want[k], string(pubs[i].Data))
	}
	seqs, err := b.node.Publish(context.Background(), "test", pubs)
	if err != nil || len(seqs) != total {
		t.Fatalf("Publish: %d seqs, %v; want %d, nil", len(seqs), err, total)
	}
	next := map[string]uint64{}
	for i, seq := range seqs {
		if next[pubs[i].Key]++; seq != next[pubs[i].Key] {
			t.Fatalf("item %d (%s): seq %d, want %d", i, pubs[i].Key, seq, next[pubs[i].Key])
		}
	}
	for k, payloads := range want {
		waitBusSeqs(t, k+" on a", rec, k, seqRange(1, uint64(len(payloads))))
		var got []string
		for _, m := range rec.messages(t) {
			if m.data && m.pub.Key == k {
				got = append(got, string(m.pub.Data))
			}
		}
		if !slices.Equal(got, payloads) {
			t.Fatalf("%s on a: payloads out of order", k)
		}
	}
	wantMetric(t, "b sent", amqpMetricValue(t, b.bus.sent), total)
	wantMetric(t, "b published", amqpMetricValue(t, b.node.metrics.published.WithLabelValues("test")), total)
	wantMetric(t, "b publish errors", amqpMetricValue(t, b.node.metrics.publishErrs), 0)
}

// TestClusterPublishStoreFailure: when the store fails in the middle of a
// batch, the publications before are sent and reported, the rest are
// counted as errors, and one the store sequenced after the failure reaches
// subscribers from the history with the next publication of its key.
func TestClusterPublishStoreFailure(t *testing.T) {
	rec := newRecorder()
	tc := startTestCluster(t, rec, "k")
	a, b := tc.a, tc.b
	ctx := context.Background()
	// A history that is not a stream makes the store fail for key "bad".
	if err := tc.redis.Set(ctx, newRedisKeys(tc.prefix).hist("app", "bad"), "not a stream", 0).Err(); err != nil {
		t.Fatal(err)
	}
	pubs := []proto.Publication{jsonPub("app", "k", 1), jsonPub("app", "k", 2), jsonPub("app", "bad", 3), jsonPub("app", "k", 4)}
	seqs, err := b.node.Publish(ctx, "test", pubs)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "publish app.bad") {
		t.Fatalf("Publish: %v; want ErrUnavailable for app.bad", err)
	}
	wantSeqs(t, "seqs reported", seqs, seqRange(1, 2))
	waitBusSeqs(t, "subscriber on a", rec, "k", seqRange(1, 2))
	wantMetric(t, "b published", amqpMetricValue(t, b.node.metrics.published.WithLabelValues("test")), 2)
	wantMetric(t, "b publish errors", amqpMetricValue(t, b.node.metrics.publishErrs), 2)

	publishValues(t, b.node, "app", "k", 5, 5) // seq 4: seq 3 is {"v":4}
	waitBusSeqs(t, "subscriber on a", rec, "k", seqRange(1, 4))
	wantMetric(t, "a gap fills", amqpMetricValue(t, a.node.metrics.gapsFilled), 1)
}

// BenchmarkClusterPublish measures Node.Publish in the cluster mode: one
// node with a Redis store and an AMQP bus, publishing batches (as the HTTP
// API and the ingest do) and receiving every publication back through its
// fan-out queue, to a subscriber of every key. An op is one batch; pubs/s
// counts publications from Publish to the subscriber.
func BenchmarkClusterPublish(b *testing.B) {
	for _, bc := range []struct{ keys, batch int }{
		{10, 100},
		{1, 100},
		{10, 1},
	} {
		b.Run(fmt.Sprintf("keys=%d/batch=%d", bc.keys, bc.batch), func(b *testing.B) {
			benchmarkClusterPublish(b, bc.keys, bc.batch)
		})
	}
}

func benchmarkClusterPublish(b *testing.B, keys, batch int) {
	url := amqpURLForTest(b)
	c := redisForTest(b)
	store := newTestRedisStore(b, c, redisTestPrefix(b, c), DefaultHistorySize, 0)
	node := startBusNode(b, url, amqpTestTopology(b, url), "bench", store).node
	names := make([]string, keys)
	for k := range names {
		names[k] = "k" + strconv.Itoa(k)
	}
	sub := &ingestBenchSub{id: 1}
	subscribe(b, node, sub, SubscribeRequest{ID: 1, App: "bench", Keys: names})
	want := int64(b.N*batch) + sub.frames.Load()

	ctx := context.Background()
	pubs := make([]proto.Publication, batch)
	b.ResetTimer()
	for i := range b.N {
		for j := range pubs {
			pubs[j] = proto.Publication{App: "bench", Key: names[(i*batch+j)%keys], Data: benchPayload, JSON: true}
		}
		if _, err := node.Publish(ctx, "bench", pubs); err != nil {
			b.Fatal(err)
		}
	}
	amqpWaitFor(b, 5*time.Minute, "every publication delivered", func() error {
		if got := sub.frames.Load(); got < want {
			return fmt.Errorf("%d of %d", got, want)
		}
		return nil
	})
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "pubs/s")
}
