package middle

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	published   *prometheus.CounterVec // by source
	publishErrs prometheus.Counter
	deliveries  prometheus.Counter
	duplicates  prometheus.Counter
	gapsFilled  prometheus.Counter
	gapsLost    prometheus.Counter
	subscribes  prometheus.Counter
	httpReqs    *prometheus.CounterVec // by status code
}

func newMetrics(reg prometheus.Registerer, h *hub) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_publications_total", Help: "Publications sequenced and handed to fan-out by this node, by source (http, amqp, poller).",
		}, []string{"source"}),
		publishErrs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_publish_errors_total", Help: "Publications not published because the store or bus failed (the caller may retry them).",
		}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_deliveries_total", Help: "Publication frames enqueued to local subscribers (including replays).",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_duplicates_dropped_total", Help: "Publications dropped because their seq was already delivered.",
		}),
		gapsFilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_gap_fills_total", Help: "Publications delivered from history to fill a seq gap (reordering between sequencer and bus).",
		}),
		gapsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_gaps_unrecoverable_total", Help: "Seq gaps that history could not fill (history too short or store unreachable).",
		}),
		subscribes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_subscribe_requests_total", Help: "Subscribe requests handled.",
		}),
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_http_publish_requests_total", Help: "POST /api/publish requests, by HTTP status code.",
		}, []string{"code"}),
	}
	if reg != nil {
		reg.MustRegister(m.published, m.publishErrs, m.deliveries, m.duplicates, m.gapsFilled, m.gapsLost, m.subscribes, m.httpReqs,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_channels", Help: "Keys with at least one local subscriber.",
			}, func() float64 { c, _ := h.counts(); return float64(c) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_subscriptions", Help: "Local subscriptions (connection × key).",
			}, func() float64 { _, s := h.counts(); return float64(s) }),
		)
	}
	return m
}
