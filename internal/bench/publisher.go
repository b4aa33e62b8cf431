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

// publisher publishes a step's values over POST /api/publish: Total
// values at Rate per second, value v going to key v mod keys, each sent
// to every node with a subscriber of that key (or, in a cluster, to one
// node). Each tick sends what is due as one batch per node.
type publisher struct {
	client      *http.Client
	bases       []string // HTTP base of every node
	apiKey      string
	app, prefix string
	keys        int
	rate        float64
	total       int64
	cluster     bool
	subs        [][]uint32 // planned subscriptions per node and key
	nodesOf     [][]int32  // nodes to publish key k to
	interval    time.Duration
	maxBatch    int
	concurrency int

	mu           sync.Mutex
	counts       [][]uint64 // values accepted per node and key (cluster: per key, in counts[0])
	items        int64
	failedItems  int64
	failedDeliv  uint64 // planned deliveries of failed items
	requests     int64
	failedReqs   int64
	errs         []string
	maxLag       time.Duration
	firstSend    time.Time
	lastResponse time.Time
}

type publisherConfig struct {
	Bases       []string
	APIKey      string
	App, Prefix string
	Keys        int
	Rate        float64
	Total       int64
	Cluster     bool
	Subs        [][]uint32
	Interval    time.Duration
	MaxBatch    int
	Concurrency int
}

func newPublisher(client *http.Client, c publisherConfig) *publisher {
	p := &publisher{
		client: client, bases: c.Bases, apiKey: c.APIKey, app: c.App, prefix: c.Prefix,
		keys: c.Keys, rate: c.Rate, total: c.Total, cluster: c.Cluster, subs: c.Subs,
		interval: c.Interval, maxBatch: c.MaxBatch, concurrency: c.Concurrency,
	}
	p.counts = make([][]uint64, len(c.Bases))
	for n := range p.counts {
		p.counts[n] = make([]uint64, c.Keys)
	}
	p.nodesOf = make([][]int32, c.Keys)
	for k := range c.Keys {
		if c.Cluster {
			p.nodesOf[k] = []int32{int32(k % len(c.Bases))}
			continue
		}
		for n := range c.Bases {
			if c.Subs[n][k] > 0 {
				p.nodesOf[k] = append(p.nodesOf[k], int32(n))
			}
		}
	}
	return p
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

// subscribersOf is how many planned subscriptions a value of key sent to
// node reaches.
func (p *publisher) subscribersOf(node, key int) uint64 {
	if !p.cluster {
		return uint64(p.subs[node][key])
	}
	var n uint64
	for _, s := range p.subs {
		n += uint64(s[key])
	}
	return n
}

// run publishes until Total values are out and every request has been
// answered, or ctx ends.
func (p *publisher) run(ctx context.Context) error {
	sem := make(chan struct{}, p.concurrency)
	var wg sync.WaitGroup
	defer wg.Wait()
	batches := make([][]int32, len(p.bases))
	flush := func(node int) error {
		if len(batches[node]) == 0 {
			return nil
		}
		keys := batches[node]
		batches[node] = nil
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		wg.Go(func() {
			defer func() { <-sem }()
			p.send(ctx, node, keys)
		})
		return nil
	}
	start := time.Now()
	p.mu.Lock()
	p.firstSend = start
	p.mu.Unlock()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	var sent int64
	for sent < p.total {
		elapsed := time.Since(start)
		due := min(p.total, int64(p.rate*elapsed.Seconds())+1)
		if lag := elapsed - time.Duration(float64(sent)/p.rate*float64(time.Second)); sent < due && lag > 0 {
			p.mu.Lock()
			p.maxLag = max(p.maxLag, lag)
			p.mu.Unlock()
		}
		for ; sent < due; sent++ {
			k := int32(sent % int64(p.keys))
			for _, n := range p.nodesOf[k] {
				batches[n] = append(batches[n], k)
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

// send publishes one batch of keys to node.
func (p *publisher) send(ctx context.Context, node int, keys []int32) {
	body := make([]byte, 0, 16+len(keys)*(48+len(p.app)+len(p.prefix)))
	body = append(body, `{"items":[`...)
	now := time.Now().UnixNano()
	for i, k := range keys {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, `{"app":"`...)
		body = append(body, p.app...)
		body = append(body, `","key":"`...)
		body = append(body, keyName(p.prefix, int(k))...)
		body = append(body, `","data":`...)
		body = appendPayload(body, now)
		body = append(body, '}')
	}
	body = append(body, "]}"...)
	seqs, err := p.post(ctx, p.bases[node], body)
	if err == nil && len(seqs) != len(keys) {
		err = fmt.Errorf("%d seqs for %d items", len(seqs), len(keys))
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	p.lastResponse = time.Now()
	if err != nil {
		p.failedReqs++
		p.failedItems += int64(len(keys))
		for _, k := range keys {
			p.failedDeliv += p.subscribersOf(node, int(k))
		}
		if ctx.Err() == nil {
			p.errs = addErrorSample(p.errs, err.Error())
		}
		return
	}
	p.items += int64(len(keys))
	for _, k := range keys {
		p.counts[node][k]++
	}
}

func (p *publisher) post(ctx context.Context, base string, body []byte) ([]uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/publish", bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("publish to %s: %w", base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	resp, err := p.client.Do(req)
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
			out = append(out, [3]uint64{uint64(n), uint64(k), p.expected(n, k)})
		}
	}
	return out
}
