package bench

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeTransport records every batch, fails some through fail and
// answers seqs as a server would: per target and key, from 1.
type fakeTransport struct {
	n    int
	fail func(call int, b batch) ([]bool, error)

	mu    sync.Mutex
	sends []fakeSend
	seqs  map[[2]string]uint64
}

type fakeSend struct {
	target int
	b      batch
	failed []bool
	err    error
}

func (f *fakeTransport) targets() int { return f.n }
func (f *fakeTransport) close()       {}

func (f *fakeTransport) send(_ context.Context, target int, b batch) ([]uint64, []bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var failed []bool
	var err error
	if f.fail != nil {
		failed, err = f.fail(len(f.sends), b)
	}
	f.sends = append(f.sends, fakeSend{target, b, failed, err})
	if err != nil {
		return nil, failed, err
	}
	if f.seqs == nil {
		f.seqs = make(map[[2]string]uint64)
	}
	seqs := make([]uint64, len(b.keys))
	for i, k := range b.keys {
		tk := [2]string{strconv.Itoa(target), k}
		f.seqs[tk]++
		seqs[i] = f.seqs[tk]
	}
	return seqs, nil, nil
}

// twoNodeSubs: 3 keys, subscribers on node 0 and node 1.
var twoNodeSubs = [][]uint32{{2, 1, 0}, {1, 1, 3}}

func newTestPublisher(t *testing.T, tr transport, cluster bool, total int64) *publisher {
	t.Helper()
	p, err := newPublisher(publisherConfig{
		Transport: tr, App: "a1", Prefix: "f", Keys: 3, Rate: 1e6, Total: total, Cluster: cluster,
		Subs: twoNodeSubs, Interval: time.Millisecond, MaxBatch: 4, Concurrency: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPublisherOneTargetForACluster is the AMQP case: one target feeding
// both servers; every subscriber of a key, on either node, expects every
// value of it.
func TestPublisherOneTargetForACluster(t *testing.T) {
	tr := &fakeTransport{n: 1}
	p := newTestPublisher(t, tr, true, 9)
	if err := p.run(t.Context()); err != nil {
		t.Fatal(err)
	}
	values := 0
	for _, s := range tr.sends {
		if s.target != 0 || s.b.app != "a1" || len(s.b.keys) > 4 {
			t.Fatalf("batch to %d, app %q, %d keys; want target 0, app a1, at most 4", s.target, s.b.app, len(s.b.keys))
		}
		if len(s.b.payloads) != len(s.b.keys) {
			t.Fatalf("%d payloads for %d keys", len(s.b.payloads), len(s.b.keys))
		}
		for _, pl := range s.b.payloads {
			if _, ok := parseSendTime(pl); !ok {
				t.Fatalf("payload %s", pl)
			}
		}
		values += len(s.b.keys)
	}
	if values != 9 || p.items != 9 || p.failedItems != 0 || p.requests != int64(len(tr.sends)) {
		t.Fatalf("%d values sent, %d counted, %d failed, %d requests for %d batches", values, p.items, p.failedItems, p.requests, len(tr.sends))
	}
	for node := range 2 {
		for k := range 3 {
			if got := p.expected(node, k); got != 3 {
				t.Errorf("node %d key %d: expects %d values, want 3", node, k, got)
			}
			if got := p.final(node, k); got != 3 {
				t.Errorf("node %d key %d: final seq %d, want 3", node, k, got)
			}
		}
	}
	if got := p.subscribersOf(0, 2); got != 3 {
		t.Errorf("a value of key 2 reaches %d subscribers, want 3 (all on node 1)", got)
	}
	plan := Plan{Conns: 4, KeysPerConn: 1, KeySpace: 3, URLs: []string{"a", "b"}}
	// Connections 0..3: node 0 key 0, node 1 key 1, node 0 key 2, node 1 key 0.
	if got := p.expectedFor(&plan, 0, 4); len(got) != 4 || got[0] != [3]uint64{0, 0, 3} || got[3] != [3]uint64{1, 0, 3} {
		t.Errorf("expectedFor: %v", got)
	}
}

func TestPublisherCountsFailures(t *testing.T) {
	tr := &fakeTransport{n: 1, fail: func(call int, b batch) ([]bool, error) {
		if call == 1 {
			return nil, errors.New("all of it failed") // nil failed: every value
		}
		failed := make([]bool, len(b.keys))
		n := 0
		for i := 1; i < len(failed); i += 2 {
			failed[i] = true
			n++
		}
		if n == 0 {
			return nil, nil
		}
		return failed, errors.New("some nacked")
	}}
	p := newTestPublisher(t, tr, true, 40)
	if err := p.run(t.Context()); err != nil {
		t.Fatal(err)
	}
	var want [3]uint64
	var failedItems int64
	var failedDeliv uint64
	var failedReqs int64
	for _, s := range tr.sends {
		if s.err != nil {
			failedReqs++
		}
		for i, key := range s.b.keys {
			k := int(key[len(key)-1] - '1') // f000001 is key 0
			if s.err != nil && (s.failed == nil || s.failed[i]) {
				failedItems++
				failedDeliv += uint64(twoNodeSubs[0][k] + twoNodeSubs[1][k])
				continue
			}
			want[k]++
		}
	}
	if len(tr.sends) < 2 || failedItems == 0 {
		t.Fatalf("%d batches, %d failed values: the test needs failures", len(tr.sends), failedItems)
	}
	for k := range 3 {
		if p.counts[0][k] != want[k] {
			t.Errorf("key %d: %d accepted, want %d", k, p.counts[0][k], want[k])
		}
	}
	if p.items+p.failedItems != 40 || p.failedItems != failedItems || p.failedDeliv != failedDeliv || p.failedReqs != failedReqs {
		t.Errorf("items %d, failed %d (want %d), failed deliveries %d (want %d), failed requests %d (want %d)",
			p.items, p.failedItems, failedItems, p.failedDeliv, failedDeliv, p.failedReqs, failedReqs)
	}
	if len(p.errs) == 0 || !strings.Contains(strings.Join(p.errs, "|"), "all of it failed") {
		t.Errorf("error samples %q", p.errs)
	}
}

func TestPublisherNeedsATargetPerServerOutsideACluster(t *testing.T) {
	_, err := newPublisher(publisherConfig{Transport: &fakeTransport{n: 1}, Keys: 3, Subs: twoNodeSubs})
	if err == nil || !strings.Contains(err.Error(), "1 publish targets for 2 servers") {
		t.Fatalf("err %v", err)
	}
}

// TestPublisherStampsTheScheduledTime: every value carries the time the
// rate plan gave it, not the time it went out, and a publisher that falls
// behind records how far in its lag histogram.
func TestPublisherStampsTheScheduledTime(t *testing.T) {
	const stall = 80 * time.Millisecond
	tr := &fakeTransport{n: 1}
	p, err := newPublisher(publisherConfig{
		Transport: tr, App: "a1", Prefix: "f", Keys: 3, Rate: 200, Total: 20, Cluster: true,
		Subs: twoNodeSubs, Interval: time.Millisecond, MaxBatch: 4, Concurrency: 2,
		Stall: func(v int64) {
			if v == 7 {
				time.Sleep(stall)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.run(t.Context()); err != nil {
		t.Fatal(err)
	}
	var stamps []int64
	for _, s := range tr.sends {
		for _, pl := range s.b.payloads {
			ts, ok := parseSendTime(pl)
			if !ok {
				t.Fatalf("payload %s", pl)
			}
			stamps = append(stamps, ts)
		}
	}
	slices.Sort(stamps)
	if len(stamps) != 20 {
		t.Fatalf("%d values sent, want 20", len(stamps))
	}
	for v, ts := range stamps {
		if want := p.scheduled(int64(v)); ts != want {
			t.Errorf("value %d stamped %d, scheduled %d", v, ts, want)
		}
	}
	if p.scheduled(1)-p.scheduled(0) != int64(5*time.Millisecond) {
		t.Errorf("values 0 and 1 scheduled %d ns apart, want 5ms at 200/s", p.scheduled(1)-p.scheduled(0))
	}
	// Value 7 was due when the stall began, so it went out at least the
	// stall late.
	lag := p.lag.Summarize()
	if lag.Count != 20 || lag.Max < float64(stall)/1e6 {
		t.Errorf("publisher lag %+v: want 20 values, max at least %s", lag, stall)
	}
}
