package dataservice

import (
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/testutil"
)

// stepStartMs is a fixed instant on a step boundary (of steps up to 1s) for
// the simulator's clock, so that tests know which step, and ts, every value
// belongs to.
const stepStartMs = 1763812345000

// clock is a settable clock for the simulator.
type clock struct{ ms atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ms.Store(stepStartMs)
	return c
}

func (c *clock) Now() time.Time          { return time.UnixMilli(c.ms.Load()) }
func (c *clock) Advance(d time.Duration) { c.ms.Add(d.Milliseconds()) }

// startSimulator serves a real simulator on a random local port for the
// duration of the test.
func startSimulator(t testing.TB, cfg simulator.Config) (*simulator.Simulator, *httptest.Server) {
	t.Helper()
	sim := simulator.New(cfg)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	return sim, srv
}

// metricValue returns the value of the counter or gauge name whose labels
// include the given name/value pairs, from reg; it fails when there is none.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, ok := testutil.Metric(t, reg, name, labels...)
	if !ok {
		t.Fatalf("metric %s%v not found", name, labels)
	}
	return v
}
