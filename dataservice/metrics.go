package dataservice

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values of wspush_poller_ticks_skipped_total{reason}.
const (
	// skipRunning: the app's poll from an earlier tick was still running.
	skipRunning = "app_running"
	// skipBusy: the earlier tick was still starting polls (all
	// MaxConcurrentApps slots taken), so the whole tick was skipped.
	skipBusy = "tick_busy"
)

type metrics struct {
	callsOK      prometheus.Counter
	callsError   prometheus.Counter
	callDuration prometheus.Histogram
	published    prometheus.Counter
	unchanged    prometheus.Counter
	ignored      prometheus.Counter
	skipRunning  prometheus.Counter
	skipBusy     prometheus.Counter
	appsFailing  prometheus.Gauge
}

// newMetrics creates the poller's collectors and registers them with reg
// unless it is nil. They exist either way so that the poller never checks.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	calls := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspush_poller_calls_total",
		Help: "getRealTimeData calls to the data center, by result (ok or error).",
	}, []string{"result"})
	skipped := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "wspush_poller_ticks_skipped_total",
		Help: "Polls not started because the previous one was still running: of one app (app_running) or of the whole tick (tick_busy).",
	}, []string{"reason"})
	m := &metrics{
		callsOK:    calls.WithLabelValues("ok"),
		callsError: calls.WithLabelValues("error"),
		callDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wspush_poller_call_duration_seconds",
			Help:    "Duration of getRealTimeData calls, failed ones included.",
			Buckets: prometheus.DefBuckets,
		}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_poller_values_published_total",
			Help: "Values that differed from the last one published for their key and were published.",
		}),
		unchanged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_poller_values_unchanged_total",
			Help: "Values equal to the last one published for their key, not published again.",
		}),
		ignored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_poller_values_ignored_total",
			Help: "Response entries dropped: invalid or unrequested id, repeated id, missing value or invalid ts.",
		}),
		skipRunning: skipped.WithLabelValues(skipRunning),
		skipBusy:    skipped.WithLabelValues(skipBusy),
		appsFailing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wspush_poller_apps_failing",
			Help: "Apps whose last poll failed and that are backing off.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{calls, skipped, m.callDuration, m.published, m.unchanged, m.ignored, m.appsFailing}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			// Leave the registry as it was, so that a corrected config can
			// register again.
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register poller metrics: %w", err)
		}
	}
	return m, nil
}
