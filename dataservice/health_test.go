package dataservice

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/testutil"
)

func TestPollerHealth(t *testing.T) {
	f := newFixture(t, Config{BackoffMin: time.Millisecond, BackoffMax: time.Millisecond}, simulator.Config{},
		map[string][]string{"demo": {"s001", "s002", "s003"}})
	if h := f.p.Health(); !h.Healthy || h.IDs != 0 || !h.LastSuccess.IsZero() || h.Errors != 0 {
		t.Fatalf("before any poll: %+v, want healthy, 0 IDs, no success, 0 errors", h)
	}
	before := time.Now()
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	h := f.p.Health()
	if !h.Healthy || h.IDs != 3 || h.LastSuccess.Before(before) || h.Errors != 0 || h.FailingApps != 0 {
		t.Fatalf("after a good poll: %+v, want healthy, 3 IDs, a last success, 0 errors", h)
	}
	ok := h.LastSuccess

	f.sim.SetFault(simulator.FaultError500)
	if err := f.p.PollOnce(context.Background()); err == nil {
		t.Fatal("PollOnce succeeded against a failing data center")
	}
	h = f.p.Health()
	if h.Healthy || h.FailingApps != 1 || h.Errors != 1 || !h.LastSuccess.Equal(ok) {
		t.Fatalf("after a failed poll: %+v, want unhealthy, 1 failing app, 1 error, last success unchanged", h)
	}

	f.sim.SetFault(simulator.FaultNone)
	// A poll within the 1ms backoff skips the app; the next one polls it.
	testutil.Eventually(t, 5*time.Second, time.Millisecond, func() error {
		if err := f.p.PollOnce(context.Background()); err != nil {
			return err
		}
		if h := f.p.Health(); !h.Healthy || h.FailingApps != 0 || h.Errors != 1 || !h.LastSuccess.After(ok) {
			return fmt.Errorf("after recovery: %+v, want healthy, errors still 1, a later last success", h)
		}
		return nil
	})

	f.sub.setErr(errors.New("index down"))
	_ = f.p.PollOnce(context.Background())
	if h = f.p.Health(); h.Healthy || h.Errors != 2 {
		t.Fatalf("while the apps cannot be listed: %+v, want unhealthy, 2 errors", h)
	}
	f.sub.setErr(nil)
	f.sub.set("demo") // no keys left: the app is forgotten
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if h = f.p.Health(); !h.Healthy || h.IDs != 0 {
		t.Fatalf("without subscriptions: %+v, want healthy, 0 IDs", h)
	}
}

// leaseOf is a Lease that holds the apps it is told to.
type leaseOf map[string]bool

func (l leaseOf) Acquire(_ context.Context, app string) (bool, error) { return l[app], nil }

func TestPollerHealthCountsLeasedAppsOnly(t *testing.T) {
	f := newFixture(t, Config{Lease: leaseOf{"demo": true}}, simulator.Config{},
		map[string][]string{"demo": {"s001", "s002"}, "other": {"s001", "s002", "s003"}})
	if err := f.p.PollOnce(context.Background()); err != nil {
		t.Fatalf("PollOnce: %v", err)
	}
	if h := f.p.Health(); !h.Healthy || h.IDs != 2 {
		t.Fatalf("%+v, want healthy, 2 IDs (the app whose lease this node holds)", h)
	}
}
