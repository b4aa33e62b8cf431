package middle

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// SkippedValuesName and SkippedValuesHelp describe
// wspush_values_skipped_total, whose reason="rate" the node counts and
// reason="conflated" the connections (userservice): both register a
// counter with this name and help, and their reason as a constant label.
const (
	SkippedValuesName = "wspush_values_skipped_total"
	SkippedValuesHelp = "Values a latest subscription did not get because a newer one replaced them, per delivery: rate (within the key's 1/max_rate interval) or conflated (waiting in a slow connection's queue)."
)

type metrics struct {
	published      *prometheus.CounterVec // by source
	publishErrs    prometheus.Counter
	deliveries     prometheus.Counter
	duplicates     prometheus.Counter
	gapsFilled     prometheus.Counter
	resets         *prometheus.CounterVec // by reason
	catchUps       prometheus.Counter
	positionChecks prometheus.Counter
	positionLags   prometheus.Counter
	subscribes     prometheus.Counter
	httpReqs       *prometheus.CounterVec // by status code
	// skippedRate counts, per delivery, the values a max_rate group held
	// back and replaced before they were due (docs/PROTOCOL.md, "Delivery
	// modes"); userservice counts reason="conflated".
	skippedRate prometheus.Counter

	// publications and delivered count what published and deliveries
	// count, for Node.Stats (the operator endpoint) without gathering the
	// registry; countPublished and countDeliveries add to both.
	publications atomic.Uint64
	delivered    atomic.Uint64
}

func newMetrics(reg prometheus.Registerer, h *hub, queues []chan proto.Publication, store Store) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_publications_total", Help: "Publications sequenced by this node, by source (http, amqp, poller).",
		}, []string{"source"}),
		publishErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_publish_errors_total", Help: "Publications not published because the store failed or fenced them (the caller may retry them).",
		}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_deliveries_total", Help: "Publication frames enqueued to local subscribers (including replays).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_duplicates_dropped_total", Help: "Publications dropped because their seq was already delivered (a bus copy of what a catch-up read first).",
		}),
		gapsFilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_gap_fills_total", Help: "Publications delivered from the store's history to catch a key up (lost fan-out, position check, late bus).",
		}),
		resets: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_resets_total", Help: "Resets of a key's stream: reason epoch (the store lost the stream) or gap (publications lost beyond history).",
		}, []string{"reason"}),
		catchUps: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_catchup_reads_total", Help: "Store reads made to bring a key's local position up to the store (gaps, position checks, resumes).",
		}),
		positionChecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_position_checks_total", Help: "Key positions compared with the store by the periodic position check.",
		}),
		positionLags: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_position_lags_total", Help: "Keys the position check (or a bus reconnect) found behind the store and caught up.",
		}),
		subscribes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_subscribe_requests_total", Help: "Subscribe requests handled.",
		}),
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_http_publish_requests_total", Help: "POST /api/publish requests, by HTTP status code.",
		}, []string{"code"}),
		skippedRate: prometheus.NewCounter(prometheus.CounterOpts{
			Name: SkippedValuesName, Help: SkippedValuesHelp, ConstLabels: prometheus.Labels{"reason": "rate"},
		}),
	}
	for _, r := range []string{proto.ResetEpoch, proto.ResetGap} {
		m.resets.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.published, m.publishErrs, m.deliveries, m.duplicates, m.gapsFilled, m.resets,
			m.catchUps, m.positionChecks, m.positionLags, m.subscribes, m.httpReqs, m.skippedRate,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_channels", Help: "Keys with at least one local subscriber.",
			}, func() float64 { c, _ := h.counts(); return float64(c) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_subscriptions", Help: "Local subscriptions (connection × key).",
			}, func() float64 { _, s := h.counts(); return float64(s) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_delivery_queue", Help: "Publications received from the bus and waiting for a delivery worker.",
			}, func() float64 {
				total := 0
				for _, q := range queues {
					total += len(q)
				}
				return float64(total)
			}),
		)
	}
	if ms, ok := store.(*MemoryStore); ok && reg != nil {
		reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_store_keys", Help: "Keys held by the embedded (memory) store; bounded by --max-keys.",
			}, func() float64 { return float64(ms.Keys()) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "wspush_store_evictions_total", Help: "Keys without local subscribers the embedded store evicted to make room for new ones (--max-keys); their next value starts a new epoch.",
			}, func() float64 { return float64(ms.Evictions()) }),
		)
	}
	return m
}
