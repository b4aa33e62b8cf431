package dataservice

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/wspush/wspush/dataservice/simulator"
)

// leaseTable is a Lease whose answer per app the test sets; it stands for
// the lease store (redis.Lease of middle/redis, tested against Redis there).
type leaseTable struct {
	mu    sync.Mutex
	held  map[string]bool
	err   error
	asked []string
}

func (l *leaseTable) Acquire(_ context.Context, app string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.asked = append(l.asked, app)
	return l.held[app], l.err
}

func (l *leaseTable) set(app string, held bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held[app] = held
}

func (l *leaseTable) takeAsked() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	a := l.asked
	l.asked = nil
	slices.Sort(a)
	return a
}

func TestPollerPollsOnlyLeasedApps(t *testing.T) {
	lease := &leaseTable{held: map[string]bool{"mine": true}}
	f := newFixture(t, Config{Lease: lease}, simulator.Config{}, map[string][]string{
		"mine":   {"001", "002"},
		"theirs": {"001"},
	})
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if got := pubKeys(f.pub.take()); !slices.Equal(got, []string{"mine/001", "mine/002"}) {
		t.Errorf("published %v, want mine's keys only", got)
	}
	if got := f.sim.Requests(); got != 1 {
		t.Errorf("data center got %d requests, want 1 (the leased app)", got)
	}
	if got := lease.takeAsked(); !slices.Equal(got, []string{"mine", "theirs"}) {
		t.Errorf("lease asked for %v, want both apps", got)
	}
}

func TestPollerWithoutAnyLeasePollsNothing(t *testing.T) {
	lease := &leaseTable{held: map[string]bool{}}
	f := newFixture(t, Config{Lease: lease}, simulator.Config{}, map[string][]string{"a": {"001"}, "b": {"002"}})
	for range 3 {
		if err := f.p.PollOnce(context.Background()); err != nil {
			t.Fatalf("PollOnce: %v", err)
		}
	}
	if n := f.sim.Requests(); n != 0 {
		t.Errorf("data center got %d requests, want 0", n)
	}
	if n := f.pub.count(); n != 0 {
		t.Errorf("published %d values, want 0", n)
	}
}

// TestPollerLeaseTakeover: a node that gets an app back publishes every
// value again, even one equal to what it published before losing the
// lease, since the other node may have published newer ones meanwhile.
func TestPollerLeaseTakeover(t *testing.T) {
	lease := &leaseTable{held: map[string]bool{"app": true}}
	f := newFixture(t, Config{Lease: lease}, simulator.Config{}, map[string][]string{"app": {"001", "002"}})
	ctx := context.Background()
	poll := func() []string {
		t.Helper()
		if err := f.p.PollOnce(ctx); err != nil {
			t.Fatalf("PollOnce: %v", err)
		}
		return pubKeys(f.pub.take())
	}
	all := []string{"app/001", "app/002"}
	if got := poll(); !slices.Equal(got, all) {
		t.Fatalf("first poll published %v, want %v", got, all)
	}
	if got := poll(); len(got) != 0 {
		t.Fatalf("unchanged values published again: %v", got)
	}
	lease.set("app", false)
	if got := poll(); len(got) != 0 {
		t.Fatalf("published %v without the lease", got)
	}
	lease.set("app", true)
	if got := poll(); !slices.Equal(got, all) {
		t.Errorf("after taking the app back published %v, want %v", got, all)
	}
	if n := f.log.count("polling app: this node holds its lease"); n != 2 {
		t.Errorf("logged taking the lease %d times, want 2", n)
	}
	if n := f.log.count("not polling app any more: another node holds its lease"); n != 1 {
		t.Errorf("logged losing the lease %d times, want 1", n)
	}
}

// TestPollerLeaseFailure: a lease that cannot be asked (Redis down) fails
// the app's poll, which backs off, and nothing is polled.
func TestPollerLeaseFailure(t *testing.T) {
	down := errors.New("lease store down")
	lease := &leaseTable{held: map[string]bool{"app": true}, err: down}
	f := newFixture(t, Config{Lease: lease}, simulator.Config{}, map[string][]string{"app": {"001"}})
	err := f.p.PollOnce(context.Background())
	if !errors.Is(err, down) {
		t.Fatalf("PollOnce = %v, want an error wrapping %v", err, down)
	}
	if n := f.sim.Requests(); n != 0 {
		t.Errorf("data center got %d requests, want 0", n)
	}
	if got := metricValue(t, f.reg, "wspush_poller_apps_failing"); got != 1 {
		t.Errorf("apps_failing = %v, want 1", got)
	}
}
