package middle

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// waitGroupOrDump waits for wg, failing the test with every goroutine's
// stack when it takes longer than limit (a deadlock).
func waitGroupOrDump(t *testing.T, wg *sync.WaitGroup, limit time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(limit):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("not done after %s (deadlock?):\n%s", limit, buf)
	}
}

// counterValue reads a counter of reg by name (0 when absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

// TestConcurrentPublishers races publishers of one key: every subscriber
// must get each seq once, in order. (Gap filling itself, the cluster-mode
// path, is driven deterministically by the tests of ordering_test.go.)
func TestConcurrentPublishers(t *testing.T) {
	const (
		publishers = 8
		each       = 500
		total      = publishers * each
	)
	reg := prometheus.NewRegistry()
	n := newTestNode(t, Config{Registerer: reg})
	subs := []*recorder{newRecorder(), newRecorder(), newRecorder()}
	for i, s := range subs {
		subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.Format(i % proto.NumFormats)})
	}

	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := 0; g < publishers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := 0; i < each; i++ {
				if _, err := n.Publish(context.Background(), "test", []proto.Publication{jsonPub("a", "k", g*each+i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	close(start)
	waitGroupOrDump(t, &wg, time.Minute)

	for i, s := range subs {
		waitSeqs(t, s, "k", seqRange(1, total)) // catch-ups may still run
		ms := s.messages(t)
		wantSeqs(t, fmt.Sprintf("subscriber %d", i), dataSeqs(ms, "k"), seqRange(1, total))
		// Each seq carries the value that was sequenced with it.
		values := make(map[string]bool, total)
		for _, m := range ms[1:] {
			if values[string(m.pub.Data)] {
				t.Fatalf("subscriber %d: value %s delivered twice", i, m.pub.Data)
			}
			values[string(m.pub.Data)] = true
		}
	}
	t.Logf("gap fills %v, duplicates dropped %v, unrecoverable gaps %v",
		counterValue(t, reg, "wspush_gap_fills_total"),
		counterValue(t, reg, "wspush_duplicates_dropped_total"),
		counterValue(t, reg, "wspush_resets_total"))
	if lost := counterValue(t, reg, "wspush_resets_total"); lost != 0 {
		t.Errorf("%v unrecoverable gaps with a history longer than the publishers in flight", lost)
	}
	if got := counterValue(t, reg, "wspush_publications_total"); got != total {
		t.Errorf("wspush_publications_total = %v, want %d", got, total)
	}
}

// TestSubscribeChurn races subscribes (single and multi-key, both formats,
// resuming with since) and unsubscribes against publishers on a few keys.
// Every churning subscriber resumes each key from the last seq it saw, so
// with a history long enough its stream of each key must have no gap and no
// duplicate from the first value it saw to the last.
//
// It runs embedded, and with a shared store whose bus carries every
// publication (fakeStore, fakeBus), where a subscribe races the bus.
func TestSubscribeChurn(t *testing.T) {
	const (
		publishers  = 4
		perPub      = 400
		subscribers = 6
		rounds      = 150
	)
	t.Run("embedded", func(t *testing.T) {
		testSubscribeChurn(t, newTestNode(t, Config{HistorySize: publishers * perPub, HistoryTTL: time.Hour}),
			publishers, perPub, subscribers, rounds)
	})
	t.Run("bus", func(t *testing.T) {
		bus := newFakeBus()
		n := newTestNode(t, Config{Store: newFakeStore(publishers*perPub, bus), Bus: bus})
		runNode(t, n)
		testSubscribeChurn(t, n, publishers, perPub, subscribers, rounds)
	})
}

func testSubscribeChurn(t *testing.T, n *Node, publishers, perPub, subscribers, rounds int) {
	keys := []string{"k0", "k1", "k2", "k3"}

	// One steady subscriber per key checks the total order at the end.
	steady := newRecorder()
	subscribe(t, n, steady, SubscribeRequest{App: "a", Keys: keys})

	var pubsDone atomic.Bool
	var wg, pubWG sync.WaitGroup
	for g := 0; g < publishers; g++ {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for i := 0; i < perPub; i++ {
				key := keys[(g+i)%len(keys)]
				var batch []proto.Publication
				batch = append(batch, jsonPub("a", key, i))
				if i%7 == 0 { // a batch across keys now and then
					batch = append(batch, jsonPub("a", keys[(g+i+1)%len(keys)], i))
				}
				if _, err := n.Publish(context.Background(), "test", batch); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}

	errs := make(chan error, subscribers)
	for g := 0; g < subscribers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- churn(n, keys, rounds, g, &pubsDone)
		}()
	}
	pubWG.Wait()
	pubsDone.Store(true)
	waitGroupOrDump(t, &wg, time.Minute)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	// The steady subscriber saw every key's whole sequence.
	for _, k := range keys {
		waitSeqs(t, steady, k, seqRange(1, topSeq(t, n, "a", k)))
	}
	n.Unsubscribe(context.Background(), steady, "a", keys)
	if c, s := n.hub.counts(); c != 0 || s != 0 {
		t.Fatalf("after everyone left: %d channels, %d subscriptions", c, s)
	}
}

// churn subscribes and unsubscribes s to random subsets of keys, checking
// each round's frames once it has unsubscribed from everything (after which
// nothing more can arrive).
func churn(n *Node, keys []string, rounds, seed int, pubsDone *atomic.Bool) error {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	s := newRecorder()
	last := map[string]uint64{}   // last seq seen per key
	epochs := map[string]string{} // epoch per key, from the acks
	for r := 0; r < rounds || !pubsDone.Load(); r++ {
		var sub []string
		for _, k := range keys {
			if rng.IntN(2) == 0 {
				sub = append(sub, k)
			}
		}
		if len(sub) == 0 {
			sub = keys[:1]
		}
		req := SubscribeRequest{ID: uint64(r + 1), App: "a", Keys: sub, Format: proto.Format(rng.IntN(proto.NumFormats))}
		for _, k := range sub {
			if seq, ok := last[k]; ok {
				if req.Since == nil {
					req.Since = map[string]proto.Position{}
				}
				req.Since[k] = proto.Position{Seq: seq, Epoch: epochs[k]}
			}
		}
		if err := n.Subscribe(ctx, s, req); err != nil {
			return fmt.Errorf("subscriber %d round %d: %w", seed, r, err)
		}
		for i := rng.IntN(50); i > 0; i-- {
			runtime.Gosched()
		}
		n.Unsubscribe(ctx, s, "a", keys)

		fs := s.take()
		if len(fs) == 0 {
			return fmt.Errorf("subscriber %d round %d: no ack", seed, r)
		}
		for i, f := range fs {
			m, err := decodeFrame(f)
			if err != nil {
				return fmt.Errorf("subscriber %d round %d: %w", seed, r, err)
			}
			if i == 0 {
				if m.msg.Op != proto.OpAck || m.msg.ID != req.ID {
					return fmt.Errorf("subscriber %d round %d: first frame %v, want ack", seed, r, m)
				}
				if req.Since != nil && (m.msg.Recovered == nil || !*m.msg.Recovered) {
					return fmt.Errorf("subscriber %d round %d: resume of %v not recovered", seed, r, req.Since)
				}
				for _, k := range sub {
					pos, ok := m.msg.Positions[k]
					if !ok || epochs[k] != "" && pos.Epoch != epochs[k] {
						return fmt.Errorf("subscriber %d round %d: ack position of %s %+v, epoch was %q", seed, r, k, pos, epochs[k])
					}
					epochs[k] = pos.Epoch
					if since, ok := req.Since[k]; ok && pos.Seq < since.Seq {
						return fmt.Errorf("subscriber %d round %d: ack position of %s %+v is before since %+v", seed, r, k, pos, since)
					}
				}
				continue
			}
			if !m.data {
				return fmt.Errorf("subscriber %d round %d: unexpected %v", seed, r, m)
			}
			if (m.opcode == proto.OpcodeBinary) != (req.Format == proto.FormatBinary) {
				return fmt.Errorf("subscriber %d round %d: %v in the wrong format", seed, r, m)
			}
			k := m.pub.Key
			if !containsKey(sub, k) {
				return fmt.Errorf("subscriber %d round %d: %v of a key not subscribed", seed, r, m)
			}
			if prev, ok := last[k]; ok && m.pub.Seq != prev+1 {
				return fmt.Errorf("subscriber %d round %d: %s seq %d after %d", seed, r, k, m.pub.Seq, prev)
			}
			last[k] = m.pub.Seq
		}
	}
	return nil
}

func containsKey(keys []string, k string) bool {
	for _, x := range keys {
		if x == k {
			return true
		}
	}
	return false
}

// TestUnsubscribeRacesLastSubscriber has subscribers of one key come and go
// so that its channel is dropped and recreated while publications are
// delivered: a new subscriber must never be left on a dead channel.
func TestUnsubscribeRacesLastSubscriber(t *testing.T) {
	n := newTestNode(t, Config{})
	ctx := context.Background()
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := n.Publish(ctx, "test", []proto.Publication{jsonPub("a", "k", i)}); err != nil {
				t.Error(err)
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := 0; r < 300; r++ {
				s := newRecorder()
				if err := n.Subscribe(ctx, s, SubscribeRequest{App: "a", Keys: []string{"k"}}); err != nil {
					t.Error(err)
					return
				}
				n.Unsubscribe(ctx, s, "a", []string{"k"})
			}
		}()
	}
	waitGroupOrDump(t, &wg, time.Minute)

	// After the churn, a subscriber still receives live values.
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	deadline := time.Now().Add(10 * time.Second)
	for len(s.seqs(t, "k")) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("subscriber after churn got %v", s.seqs(t, "k"))
		}
		runtime.Gosched()
	}
	close(stop)
	pubWG.Wait()
	seqs := s.seqs(t, "k")
	wantSeqs(t, "after churn", seqs, seqRange(seqs[0], seqs[0]+uint64(len(seqs))-1))
}

// TestConcurrentPublishersShortHistory is TestConcurrentPublishers with a
// history shorter than the number of publishers in flight: in embedded mode
// live subscribers must not depend on the history to get every value.
func TestConcurrentPublishersShortHistory(t *testing.T) {
	const (
		publishers = 8
		each       = 500
	)
	reg := prometheus.NewRegistry()
	n := newTestNode(t, Config{HistorySize: 1, Registerer: reg})
	s, bin := newRecorder(), newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	subscribe(t, n, bin, SubscribeRequest{App: "a", Keys: []string{"k"}, Format: proto.FormatBinary})

	var wg sync.WaitGroup
	for g := 0; g < publishers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				if _, err := n.Publish(context.Background(), "test", []proto.Publication{jsonPub("a", "k", g*each+i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	waitGroupOrDump(t, &wg, time.Minute)
	waitSeqs(t, s, "k", seqRange(1, publishers*each))
	waitSeqs(t, bin, "k", seqRange(1, publishers*each))
	if lost := counterValue(t, reg, "wspush_resets_total"); lost != 0 {
		t.Errorf("%v unrecoverable gaps", lost)
	}
}
