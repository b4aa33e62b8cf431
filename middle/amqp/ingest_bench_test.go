package amqp

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/middle/redis"
	"github.com/wspush/wspush/proto"
)

// storePublisher sequences in a real Redis store, as a cluster node does,
// without the node's local fan-out.
type storePublisher struct{ s *redis.Store }

func (p storePublisher) PublishFenced(ctx context.Context, fence uint64, pubs []proto.Publication) ([]uint64, error) {
	n, err := p.s.AppendBatch(ctx, pubs, fence)
	seqs := make([]uint64, n)
	for i := range seqs {
		seqs[i] = pubs[i].Seq
	}
	return seqs, err
}

// BenchmarkIngestDrain measures the ingest path of one node on its own:
// b.N JSON values over 1,000 keys wait in the 8 partition queues, then one
// node consumes them, sequences them in the machine's Redis (with the
// fan-out SPUBLISH of the append script) and acks them. The publisher and
// the subscribers of an end-to-end run (wsbench) are not on the clock.
//
//	go test -run '^$' -bench IngestDrain -benchtime 100000x ./middle/amqp/
func BenchmarkIngestDrain(b *testing.B) {
	url := testURL(b)
	redisURL := os.Getenv("WSPUSH_REDIS_URL")
	if redisURL == "" {
		redisURL = "redis://127.0.0.1:6379/0"
	}
	ctx := context.Background()
	client, err := redis.NewClient(ctx, redisURL, "wspush-bench-ingest")
	if err != nil {
		b.Fatalf("Redis: %v", err)
	}
	prefix := fmt.Sprintf("bench-ingest-%08x", rand.Uint32())
	b.Cleanup(func() { // after the Ingest stopped (cleanups run last first)
		defer client.Close()
		iter := client.Scan(ctx, 0, prefix+":*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := client.Del(ctx, iter.Val()).Err(); err != nil {
				b.Errorf("cleanup of %s:*: %v", prefix, err)
				return
			}
		}
		if err := iter.Err(); err != nil {
			b.Errorf("cleanup of %s:*: %v", prefix, err)
		}
	})
	store, err := redis.NewStore(redis.StoreConfig{Client: client, Prefix: prefix})
	if err != nil {
		b.Fatal(err)
	}

	topo := testTopology(b, url, 8)
	log := testLogger(b)
	conn := startConn(b, url, topo, "bench", log) // declares the topology
	in := newIntegrator(b, url, topo)
	const keys = 1000
	confirms := make([]*amqp091.DeferredConfirmation, 0, b.N)
	for i := 0; i < b.N; i++ {
		dc, err := in.ch.PublishWithDeferredConfirmWithContext(ctx, in.topo.Exchange(), fmt.Sprintf("bench.k%d", i%keys), true, false,
			amqp091.Publishing{ContentType: "application/json", DeliveryMode: amqp091.Persistent, Body: fmt.Appendf(nil, `{"v":%d}`, i)})
		if err != nil {
			b.Fatal(err)
		}
		confirms = append(confirms, dc)
	}
	for _, dc := range confirms {
		if ok, err := dc.WaitContext(ctx); !ok || err != nil {
			b.Fatalf("confirm: %v, %v", ok, err)
		}
	}

	// Confirmed messages may still be written behind by the broker: let it
	// settle, so that the drain does not compete with the publish phase.
	time.Sleep(3 * time.Second)

	ingest, err := NewIngest(IngestConfig{Conn: conn.Conn, Publisher: storePublisher{store}, Claims: newClaimsState(time.Minute).node("bench"), Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	stop := runUntilCleanup(b, ingest.Run)
	for metricValue(b, ingest.ingested) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "values/s")
}
