package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// newHTTPClient returns the client of /api/publish and /metrics: loopback
// only, no proxy, enough idle connections for the publish concurrency.
func newHTTPClient(conns int) *http.Client {
	d := &net.Dialer{Control: loopbackOnly, Timeout: 10 * time.Second}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         d.DialContext,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

// batch is what the publisher sends to one target in one go: a value
// for each of keys (a key may repeat), value i carrying payloads[i].
type batch struct {
	app      string
	keys     []string
	payloads [][]byte // {"t":<scheduled send time, Unix ns>}, see appendPayload
}

// transport carries the publisher's batches: over HTTP to one server
// (httpTransport) or over AMQP to the broker the servers share
// (amqpTransport). send is called concurrently.
type transport interface {
	// targets is how many destinations batches go to, numbered from 0:
	// the servers, or 1 for a broker that feeds them all.
	targets() int
	// send publishes b to target. A nil error means every value was
	// accepted. With an error, failed marks the values that were not,
	// and a nil failed means all of them. seqs, when the transport learns
	// them (HTTP), are the seqs the server gave b's values.
	send(ctx context.Context, target int, b batch) (seqs []uint64, failed []bool, err error)
	// close releases what the transport holds; sends must have ended.
	close()
}

// publisher publishes a step's values through a transport: Total values
// at Rate per second, value v going to key v mod keys, each sent to every
// target with a subscriber of that key (or, in a cluster, to one target).
// Each tick sends what is due as one batch per target.
//
// Value v is scheduled at start + v/Rate, and its payload carries that
// time, not the time it actually went out: a receiver's latency is
// measured from when the value should have been sent, so a publisher that
// falls behind (a stalled process, a full machine, slow answers holding
// every publish slot) shows in the latency instead of hiding it
// (coordinated omission). How far behind each value went out is the
// publisher's own lag histogram.
type publisher struct {
	tr          transport
	app, prefix string
	keys        int
	rate        float64
	total       int64
	cluster     bool
	subs        [][]uint32 // planned subscriptions per node and key
	nodesOf     [][]int32  // targets to publish key k to
	interval    time.Duration
	maxBatch    int
	concurrency int
	// stall, when not nil, is called before value v is batched, which is
	// when v is due; tests make it sleep to play a publisher that falls
	// behind.
	stall func(v int64)

	startNano int64 // Unix ns of value 0's schedule
	lag       *Histogram

	mu          sync.Mutex
	counts      [][]uint64 // values accepted per target and key (cluster: summed over targets)
	finals      [][]uint64 // highest seq the server answered per target and key (HTTP)
	items       int64
	failedItems int64
	failedDeliv uint64 // planned deliveries of failed items
	requests    int64
	failedReqs  int64
	errs        []string
}

type publisherConfig struct {
	Transport   transport
	App, Prefix string
	Keys        int
	Rate        float64
	Total       int64
	Cluster     bool
	Subs        [][]uint32
	Interval    time.Duration
	MaxBatch    int
	Concurrency int
	Stall       func(v int64) // see publisher.stall
}

// newPublisher checks that c's targets are the nodes of c.Subs unless
// c.Cluster, where every value reaches every node whatever its target.
func newPublisher(c publisherConfig) (*publisher, error) {
	targets := c.Transport.targets()
	if targets < 1 || !c.Cluster && targets != len(c.Subs) {
		return nil, fmt.Errorf("%d publish targets for %d servers: only a cluster can take fewer", targets, len(c.Subs))
	}
	p := &publisher{
		tr: c.Transport, app: c.App, prefix: c.Prefix,
		keys: c.Keys, rate: c.Rate, total: c.Total, cluster: c.Cluster, subs: c.Subs,
		interval: c.Interval, maxBatch: c.MaxBatch, concurrency: c.Concurrency, stall: c.Stall,
		lag: NewHistogram(),
	}
	p.counts = make([][]uint64, targets)
	p.finals = make([][]uint64, targets)
	for n := range p.counts {
		p.counts[n] = make([]uint64, c.Keys)
		p.finals[n] = make([]uint64, c.Keys)
	}
	p.nodesOf = make([][]int32, c.Keys)
	for k := range c.Keys {
		if c.Cluster {
			p.nodesOf[k] = []int32{int32(k % targets)}
			continue
		}
		for n := range targets {
			if c.Subs[n][k] > 0 {
				p.nodesOf[k] = append(p.nodesOf[k], int32(n))
			}
		}
	}
	return p, nil
}

// expected is how many values subscribers of key on node should get.
func (p *publisher) expected(node int, key int) uint64 {
	if p.cluster {
		var n uint64
		for _, c := range p.counts {
			n += c[key]
		}
		return n
	}
	return p.counts[node][key]
}

// final is the seq of the last value of key that subscribers on node
// should get: the highest seq the servers answered (0: unknown, or no
// value accepted). In a cluster the servers share one sequencer.
func (p *publisher) final(node int, key int) uint64 {
	if p.cluster {
		var s uint64
		for _, f := range p.finals {
			s = max(s, f[key])
		}
		return s
	}
	return p.finals[node][key]
}

// subscribersOf is how many planned subscriptions a value of key sent to
// target reaches.
func (p *publisher) subscribersOf(target, key int) uint64 {
	if !p.cluster {
		return uint64(p.subs[target][key])
	}
	var n uint64
	for _, s := range p.subs {
		n += uint64(s[key])
	}
	return n
}

// scheduled is the Unix ns at which value v is due.
func (p *publisher) scheduled(v int64) int64 {
	return p.startNano + int64(float64(v)/p.rate*float64(time.Second))
}

// pubItem is one value of a batch: its key and number.
type pubItem struct {
	key int32
	v   int64
}

// run publishes until Total values are out and every batch has been
// answered, or ctx ends.
func (p *publisher) run(ctx context.Context) error {
	sem := make(chan struct{}, p.concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	batches := make([][]pubItem, len(p.counts))
	flush := func(target int) error {
		if len(batches[target]) == 0 {
			return nil
		}
		items := batches[target]
		batches[target] = nil
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			p.send(ctx, target, items)
		})
		return nil
	}
	start := time.Now()
	p.startNano = start.UnixNano()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	var sent int64
	for sent < p.total {
		// Value v is due once v/rate seconds have passed.
		due := min(p.total, int64(p.rate*time.Since(start).Seconds())+1)
		for ; sent < due; sent++ {
			if p.stall != nil {
				p.stall(sent)
			}
			k := int32(sent % int64(p.keys))
			for _, n := range p.nodesOf[k] {
				batches[n] = append(batches[n], pubItem{k, sent})
				if len(batches[n]) >= p.maxBatch {
					if err := flush(int(n)); err != nil {
						return err
					}
				}
			}
		}
		for n := range batches {
			if err := flush(n); err != nil {
				return err
			}
		}
		if sent >= p.total {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// send publishes one batch of values to target and counts the outcome.
func (p *publisher) send(ctx context.Context, target int, items []pubItem) {
	b := batch{app: p.app, keys: make([]string, len(items)), payloads: make([][]byte, len(items))}
	for i, it := range items {
		b.keys[i] = keyName(p.prefix, int(it.key))
		b.payloads[i] = appendPayload(nil, p.scheduled(it.v))
	}
	now := time.Now().UnixNano()
	for _, it := range items {
		p.lag.Record(now - p.scheduled(it.v))
	}
	seqs, failed, err := p.tr.send(ctx, target, b)

	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	if err != nil {
		p.failedReqs++
		if ctx.Err() == nil {
			p.errs = addErrorSample(p.errs, err.Error())
		}
	}
	for i, it := range items {
		if err != nil && (failed == nil || failed[i]) {
			p.failedItems++
			p.failedDeliv += p.subscribersOf(target, int(it.key))
			continue
		}
		p.items++
		p.counts[target][it.key]++
		if i < len(seqs) {
			p.finals[target][it.key] = max(p.finals[target][it.key], seqs[i])
		}
	}
}

// httpTransport publishes over POST /api/publish, one target per server.
type httpTransport struct {
	client *http.Client
	bases  []string // HTTP base of every server
	apiKey string
}

func (t *httpTransport) targets() int { return len(t.bases) }

// close does nothing: the client is the Runner's.
func (t *httpTransport) close() {}

// send posts b to server target; the server answers once every value is
// sequenced, and it takes all of them or none.
func (t *httpTransport) send(ctx context.Context, target int, b batch) ([]uint64, []bool, error) {
	body := make([]byte, 0, 16+len(b.keys)*(48+len(b.app)+32))
	body = append(body, `{"items":[`...)
	for i, k := range b.keys {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"app":"`...)
		body = append(body, b.app...)
		body = append(body, `","key":"`...)
		body = append(body, k...)
		body = append(body, `","data":`...)
		body = append(body, b.payloads[i]...)
		body = append(body, '}')
	}
	body = append(body, "]}"...)
	seqs, err := t.post(ctx, t.bases[target], body)
	if err == nil && len(seqs) != len(b.keys) {
		err = fmt.Errorf("publish to %s: %d seqs for %d items", t.bases[target], len(seqs), len(b.keys))
	}
	if err != nil {
		return nil, nil, err
	}
	return seqs, nil, nil
}

func (t *httpTransport) post(ctx context.Context, base string, body []byte) ([]uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/publish", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if t.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+t.apiKey)
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("publish to %s: read answer: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("publish to %s: HTTP %d: %s", base, resp.StatusCode, bytes.TrimSpace(b))
	}
	var out struct {
		Seqs []uint64 `json:"seqs"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("publish to %s: answer: %w", base, err)
	}
	return out.Seqs, nil
}

// expectedFor lists [node, key, count] for every (node, key) the
// connections first..first+count-1 of plan subscribe to: the finish
// message of their worker.
func (p *publisher) expectedFor(plan *Plan, first, count int) [][3]uint64 {
	return p.perKeyFor(plan, first, count, p.expected)
}

// finalsFor lists [node, key, final seq] as expectedFor lists counts.
func (p *publisher) finalsFor(plan *Plan, first, count int) [][3]uint64 {
	return p.perKeyFor(plan, first, count, p.final)
}

func (p *publisher) perKeyFor(plan *Plan, first, count int, value func(node, key int) uint64) [][3]uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := make(map[uint64]bool)
	var out [][3]uint64
	for c := first; c < first+count; c++ {
		n := plan.node(c)
		for j := range plan.KeysPerConn {
			k := plan.keyOf(c, j)
			nk := nodeKey(n, int32(k))
			if seen[nk] {
				continue
			}
			seen[nk] = true
			out = append(out, [3]uint64{uint64(n), uint64(k), value(n, k)})
		}
	}
	return out
}
