package chaos

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// Scenario is one run: a cluster, publishing at Rate over Keys keys for
// Before, the fault, then publishing for After more.
type Scenario struct {
	Name        string
	Nodes       int // default 2
	Keys        int // default 4
	SubsPerNode int // default 2
	Rate        float64
	Before      time.Duration
	After       time.Duration
	Fault       Fault
	Drain       time.Duration // longest wait for the last values (default 30s)
	Args        []string      // more node flags
}

// Report is the outcome of a run: one row of the table.
type Report struct {
	Scenario string
	Fault    string
	Subs     int // subscribers: delivered counts the frames of all of them
	Result
	Nacked, Returned, Reconnects int // the publisher's
}

// app is the application every run publishes to (keys are per run).
const app = "chaos"

// Run runs sc against a fresh cluster and reports every violation of the
// client rule as a test error, with the evidence.
func Run(t testing.TB, sc Scenario) Report {
	t.Helper()
	sc.Keys, sc.SubsPerNode = orDefault(sc.Keys, 4), orDefault(sc.SubsPerNode, 2)
	if sc.Drain == 0 {
		sc.Drain = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := StartCluster(ctx, t, ClusterConfig{Nodes: sc.Nodes, Args: sc.Args})
	keys := make([]string, sc.Keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}

	var subs []*Subscriber
	var wg sync.WaitGroup
	subCtx, stopSubs := context.WithCancel(ctx)
	defer func() { stopSubs(); wg.Wait() }()
	for i := range c.Nodes {
		for j := range sc.SubsPerNode {
			s := NewSubscriber(c, fmt.Sprintf("sub%d.%d", i, j), i, app, keys)
			subs = append(subs, s)
			wg.Go(func() { s.Run(subCtx) })
		}
	}
	setupCtx, setupDone := context.WithTimeout(ctx, 30*time.Second)
	defer setupDone()
	if err := c.WaitIngest(setupCtx); err != nil {
		t.Fatal(err)
	}
	if err := poll(setupCtx, func() error { return notReady(subs) }); err != nil {
		c.LogTails(20)
		t.Fatal(err)
	}

	pub := NewPublisher(PublisherConfig{URL: AMQPURL, Exchange: c.Prefix + ".ingest",
		Name: "chaos publisher " + c.Prefix, App: app, Keys: keys, Rate: sc.Rate})
	pubCtx, stopPub := context.WithCancel(ctx)
	defer stopPub()
	var pubErr error
	pubDone := make(chan struct{})
	go func() { defer close(pubDone); pubErr = pub.Run(pubCtx, 20*time.Second) }()

	if err := hold(ctx, sc.Before); err != nil {
		t.Fatal(err)
	}
	faultStart := time.Now()
	if sc.Fault.Inject != nil {
		if err := sc.Fault.Inject(ctx, c); err != nil {
			t.Fatalf("fault %q: %v", sc.Fault.Name, err)
		}
	}
	faultEnd := time.Now()
	for k, from := range pub.Next() {
		for _, s := range subs {
			s.Mark(keys[k], from)
		}
	}
	if err := hold(ctx, sc.After); err != nil {
		t.Fatal(err)
	}
	stopPub()
	<-pubDone
	if pubErr != nil {
		t.Logf("publisher: %v", pubErr)
	}
	confirmed := make([][]int64, len(keys))
	for k := range keys {
		confirmed[k] = pub.Confirmed(k)
	}
	drainCtx, drainDone := context.WithTimeout(ctx, sc.Drain)
	defer drainDone()
	drained := poll(drainCtx, func() error { return missingLast(subs, keys, confirmed) })
	stopSubs()
	wg.Wait()

	policy := Policy{AllowResets: sc.Fault.Loses, From: faultStart, Until: faultEnd.Add(5 * time.Second)}
	if sc.Fault.Inject != nil {
		policy.FaultEnd = faultEnd
	}
	rep := Report{Scenario: sc.Name, Fault: sc.Fault.Name, Subs: len(subs), Result: Result{Recovery: -1}}
	rep.Nacked, rep.Returned, rep.Reconnects = pub.Stats()
	var failed []*Subscriber
	for _, s := range subs {
		bad := false
		for k, key := range keys {
			r := s.Check(key, confirmed[k], policy)
			rep.Add(r)
			for _, v := range r.Violations {
				t.Errorf("%s %s: %s", s.Name, key, v)
				bad = true
			}
		}
		if bad {
			failed = append(failed, s)
		}
	}
	for k := range keys {
		rep.Published += len(confirmed[k])
	}
	for _, err := range c.Unexpected() {
		t.Error(err)
	}
	if drained != nil {
		t.Errorf("after the run, %s later: %v", sc.Drain, drained)
	}
	if t.Failed() {
		t.Logf("fault from %s to %s; publisher: %d nacked, %d returned, %d reconnections",
			faultStart.Format("15:04:05.000"), faultEnd.Format("15:04:05.000"), rep.Nacked, rep.Returned, rep.Reconnects)
		for _, s := range failed[:min(len(failed), 3)] {
			t.Logf("%s connections:\n  %s", s.Name, strings.Join(s.Events(), "\n  "))
		}
		for _, n := range c.Nodes {
			if l := n.Grep(15, `"level":"WARN"`, `"level":"ERROR"`); len(l) > 0 {
				t.Logf("--- warnings and errors of node %s:\n%s", n.ID, strings.Join(l, "\n"))
			}
		}
		c.LogTails(25)
	}
	t.Log("\n" + Table([]Report{rep}))
	return rep
}

// poll calls f every 100 ms until it returns nil or ctx ends (then it
// returns f's last error).
func poll(ctx context.Context, f func() error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-tick.C:
		}
	}
}

func notReady(subs []*Subscriber) error {
	for _, s := range subs {
		if !s.Ready() {
			return fmt.Errorf("subscriber %s not acked", s.Name)
		}
	}
	return nil
}

// missingLast says which subscriber lacks the last confirmed value of a key.
func missingLast(subs []*Subscriber, keys []string, confirmed [][]int64) error {
	for _, s := range subs {
		for k, key := range keys {
			if cs := confirmed[k]; len(cs) > 0 && !s.Has(key, cs[len(cs)-1]) {
				return fmt.Errorf("subscriber %s has not received counter %d of %s", s.Name, cs[len(cs)-1], key)
			}
		}
	}
	return nil
}
