package middle

import (
	"context"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/wspush/wspush/proto"
)

// benchSub is the cheapest possible Subscriber: Enqueue stores the pointer
// in a fixed ring, so the benchmark measures the middle tier, not a queue.
type benchSub struct {
	id   uint64
	n    int
	ring [8]*proto.Frame
}

func (s *benchSub) Enqueue(f *proto.Frame) bool {
	s.ring[s.n&(len(s.ring)-1)] = f
	s.n++
	return true
}

func (s *benchSub) ConnID() uint64 { return s.id }

var benchPayload = []byte(`{"temp":21.53,"humidity":40.1}`)

// BenchmarkFanout publishes one value at a time to a key with 10,000
// subscribers. The goal of the design is zero allocations per delivery:
// a publication allocates its frame once per format in use, whatever the
// number of subscribers.
func BenchmarkFanout(b *testing.B) {
	const subscribers = 10000
	for _, bc := range []struct {
		name   string
		binary int // how many of the subscribers want binary
	}{
		{"json", 0},
		{"json+binary", subscribers / 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			n, err := NewNode(Config{})
			if err != nil {
				b.Fatal(err)
			}
			subs := make([]benchSub, subscribers)
			for i := range subs {
				subs[i].id = uint64(i + 1)
				f := proto.FormatJSON
				if i < bc.binary {
					f = proto.FormatBinary
				}
				if err := n.Subscribe(ctx, &subs[i], SubscribeRequest{App: "bench", Keys: []string{"s001"}, Format: f}); err != nil {
					b.Fatal(err)
				}
				subs[i].n = 0 // past the ack
			}
			pubs := make([]proto.Publication, 1)

			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				pubs[0] = proto.Publication{App: "bench", Key: "s001", Data: benchPayload, JSON: true}
				if _, err := n.Publish(ctx, "bench", pubs); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			runtime.ReadMemStats(&after)

			deliveries := float64(b.N) * subscribers
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/deliveries, "allocs/delivery")
			for i := range subs {
				if subs[i].n != b.N {
					b.Fatalf("subscriber %d got %d frames, want %d", i, subs[i].n, b.N)
				}
			}
		})
	}
}

// BenchmarkPublishNoSubscribers is the cost of sequencing and storing a
// publication nobody on this node watches (the poller's common case).
func BenchmarkPublishNoSubscribers(b *testing.B) {
	ctx := context.Background()
	n, err := NewNode(Config{})
	if err != nil {
		b.Fatal(err)
	}
	pubs := make([]proto.Publication, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pubs[0] = proto.Publication{App: "bench", Key: "s001", Data: benchPayload, JSON: true}
		if _, err := n.Publish(ctx, "bench", pubs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSubscribeUnsubscribe measures one subscribe (with its ack and
// latest value) and unsubscribe of a single key: "new channel" when the
// subscriber is the key's only one (the channel is created and dropped each
// time), "existing channel" when another subscriber keeps it.
func BenchmarkSubscribeUnsubscribe(b *testing.B) {
	for _, keep := range []bool{false, true} {
		name := "new channel"
		if keep {
			name = "existing channel"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			n, err := NewNode(Config{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := n.Publish(ctx, "bench", []proto.Publication{{App: "bench", Key: "s001", Data: benchPayload, JSON: true}}); err != nil {
				b.Fatal(err)
			}
			if keep {
				if err := n.Subscribe(ctx, &benchSub{id: 1}, SubscribeRequest{App: "bench", Keys: []string{"s001"}}); err != nil {
					b.Fatal(err)
				}
			}
			s := &benchSub{id: 2}
			req := SubscribeRequest{ID: 1, App: "bench", Keys: []string{"s001"}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := n.Subscribe(ctx, s, req); err != nil {
					b.Fatal(err)
				}
				n.Unsubscribe(ctx, s, "bench", req.Keys)
			}
			b.StopTimer()
			if s.n != 2*b.N {
				b.Fatalf("got %d frames, want an ack and the latest value per subscribe (%d)", s.n, 2*b.N)
			}
		})
	}
}

// BenchmarkPublishParallel publishes from every P to distinct keys, each
// with one subscriber: contention on the store and hub shards.
func BenchmarkPublishParallel(b *testing.B) {
	ctx := context.Background()
	n, err := NewNode(Config{})
	if err != nil {
		b.Fatal(err)
	}
	const keys = 256
	subs := make([]benchSub, keys)
	for i := range subs {
		if err := n.Subscribe(ctx, &subs[i], SubscribeRequest{App: "bench", Keys: []string{"s" + strconv.Itoa(i)}}); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		key := "s" + strconv.Itoa(int((next.Add(1)-1)%keys))
		pubs := make([]proto.Publication, 1)
		for pb.Next() {
			pubs[0] = proto.Publication{App: "bench", Key: key, Data: benchPayload, JSON: true}
			if _, err := n.Publish(ctx, "bench", pubs); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
