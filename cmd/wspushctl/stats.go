package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

type statsOptions struct {
	url      string
	interval time.Duration
	json     bool
}

func statsCommand() *command {
	var o statsOptions
	return &command{
		name: "stats",
		synopsis: `Usage: wspushctl stats [flags]

Scrapes a wspush node's /metrics twice, --interval apart, and prints a short
summary: connections, subscriptions, publications and deliveries per
second, queued bytes, slow consumers closed (4008), resets, the poller's
health, the AMQP ingest and Redis state, and the process's memory and CPU.
It also reads /readyz and, when the node serves it, /api/nodes (every node
of a cluster). With --json it prints one JSON object instead.

--url is where /metrics is: the node's --admin-addr when it has one, else
its --addr.`,
		examples: `  wspushctl stats                                   # a node on 127.0.0.1:8080
  wspushctl stats --url http://127.0.0.1:9100       # wspush --admin-addr 127.0.0.1:9100
  wspushctl stats --interval 10s --json | jq .deliveries_per_s
`,
		env: []string{"url"},
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "the node's metrics listener (--admin-addr, else --addr)")
			fs.DurationVar(&o.interval, "interval", 3*time.Second, "time between the two scrapes the rates are computed over")
			fs.BoolVar(&o.json, "json", false, "print one JSON object")
		},
		run: o.run,
	}
}

// scrapeTimeout bounds each request of stats.
const scrapeTimeout = 10 * time.Second

// maxScrape bounds a /metrics or /api/nodes body.
const maxScrape = 32 << 20

func (o *statsOptions) run(ctx context.Context, args []string, _ io.Reader, stdout, _ io.Writer) error {
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	if err := durationIn("--interval", o.interval, 100*time.Millisecond, 10*time.Minute); err != nil {
		return err
	}
	base, err := httpBase(o.url)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: scrapeTimeout}
	defer hc.CloseIdleConnections()
	s, err := collectStats(ctx, hc, base, o.interval)
	if err != nil {
		return err
	}
	if o.json {
		b, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			return err
		}
		_, err = stdout.Write(append(b, '\n'))
		return err
	}
	return s.print(stdout)
}

// stats is what stats prints. Rates (per second) and "in interval"
// counts are over the interval between the two scrapes; the other figures
// are the second scrape's.
type stats struct {
	URL       string  `json:"url"`
	Interval  float64 `json:"interval_s"`
	Ready     string  `json:"ready"` // /readyz's answer
	NodeReady bool    `json:"node_ready"`

	Connections         float64            `json:"connections"`
	AcceptedPerS        float64            `json:"connections_accepted_per_s"`
	ClosedPerS          float64            `json:"connections_closed_per_s"`
	Subscriptions       float64            `json:"subscriptions"`
	Channels            float64            `json:"channels"`
	PublicationsPerS    float64            `json:"publications_per_s"`
	PublicationsBySrc   map[string]float64 `json:"publications_per_s_by_source"`
	PublishErrors       float64            `json:"publish_errors_in_interval"`
	DeliveriesPerS      float64            `json:"deliveries_per_s"`
	QueuedBytes         float64            `json:"queued_bytes"`
	SlowConsumerCloses  float64            `json:"slow_consumer_closes_in_interval"`
	SlowConsumerTotal   float64            `json:"slow_consumer_closes_total"`
	Resets              float64            `json:"resets_in_interval"`
	CommandErrors       float64            `json:"command_errors_in_interval"`
	ConnectionsRejected float64            `json:"connections_rejected_in_interval"`

	Poller  *pollerStats `json:"poller"` // nil: the node has no poller
	AMQP    *amqpStats   `json:"amqp"`   // nil: no AMQP ingest
	Redis   *redisStats  `json:"redis"`  // nil: embedded (no Redis)
	Process processStats `json:"process"`

	// Nodes is GET /api/nodes as the node answered it; absent when it
	// does not serve it.
	Nodes json.RawMessage `json:"nodes,omitempty"`
}

type pollerStats struct {
	Healthy       bool    `json:"healthy"`
	CallsPerS     float64 `json:"calls_per_s"`
	ErrorsPerS    float64 `json:"errors_per_s"`
	AppsFailing   float64 `json:"apps_failing"`
	ValuesPerS    float64 `json:"values_published_per_s"`
	TicksSkipped  float64 `json:"ticks_skipped_in_interval"`
	MeanCallMilli float64 `json:"mean_call_ms_in_interval"`
}

type amqpStats struct {
	Connected      bool               `json:"connected"`
	PartitionsHeld float64            `json:"partitions_held"`
	IngestedPerS   float64            `json:"ingested_per_s"`
	Requeued       float64            `json:"requeued_in_interval"`
	DeadLettered   map[string]float64 `json:"dead_lettered_in_interval"`
	Reconnects     float64            `json:"reconnects_in_interval"`
	ClaimsLost     float64            `json:"claims_lost_in_interval"`
}

type redisStats struct {
	Ready         bool    `json:"ready"` // /readyz names no Redis error
	WatchedKeys   float64 `json:"bus_watched_keys"`
	BusReconnects float64 `json:"bus_reconnects_in_interval"`
	BusMalformed  float64 `json:"bus_malformed_in_interval"`
	IndexPending  float64 `json:"index_pending"`
	PositionLags  float64 `json:"position_lags_in_interval"`
}

type processStats struct {
	RSSBytes   float64 `json:"rss_bytes"`
	Goroutines float64 `json:"goroutines"`
	CPUPercent float64 `json:"cpu_percent"`
}

// collectStats scrapes base's /metrics twice, interval apart, and the
// other endpoints once.
func collectStats(ctx context.Context, hc *http.Client, base string, interval time.Duration) (*stats, error) {
	m0, err := scrape(ctx, hc, base)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	select {
	case <-time.After(interval):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	m1, err := scrape(ctx, hc, base)
	if err != nil {
		return nil, err
	}
	s := summarize(m0, m1, time.Since(t0).Seconds())
	s.URL = base
	s.Ready, s.NodeReady, err = readyz(ctx, hc, base)
	if err != nil {
		return nil, err
	}
	if s.Redis != nil {
		s.Redis.Ready = s.NodeReady || !strings.Contains(s.Ready, "redis:")
	}
	if s.Nodes, err = apiNodes(ctx, hc, base); err != nil {
		return nil, err
	}
	return s, nil
}

// metrics is one scrape.
type metrics map[string]*dto.MetricFamily

func scrape(ctx context.Context, hc *http.Client, base string) (metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s/metrics: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("GET %s/metrics: 404: a node started with --admin-addr serves /metrics there only: give that address as --url", base)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/metrics: HTTP %s", base, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(io.LimitReader(resp.Body, maxScrape))
	if err != nil {
		return nil, fmt.Errorf("GET %s/metrics: %w", base, err)
	}
	if _, ok := mfs["wspush_connections"]; !ok {
		return nil, fmt.Errorf("GET %s/metrics: no wspush_connections: not a wspush node", base)
	}
	return mfs, nil
}

// value sums the samples of name whose labels include the given
// name/value pairs; found is false when name is absent.
func (m metrics) value(name string, labels ...string) (v float64, found bool) {
	mf, ok := m[name]
	if !ok {
		return 0, false
	}
	for _, s := range mf.GetMetric() {
		if !hasLabels(s, labels) {
			continue
		}
		switch {
		case s.GetCounter() != nil:
			v += s.GetCounter().GetValue()
		case s.GetGauge() != nil:
			v += s.GetGauge().GetValue()
		case s.GetUntyped() != nil:
			v += s.GetUntyped().GetValue()
		case s.GetHistogram() != nil:
			v += s.GetHistogram().GetSampleSum()
		}
	}
	return v, true
}

// byLabel sums name's samples by the value of one label.
func (m metrics) byLabel(name, label string) map[string]float64 {
	out := map[string]float64{}
	mf, ok := m[name]
	if !ok {
		return out
	}
	for _, s := range mf.GetMetric() {
		for _, lp := range s.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] += s.GetCounter().GetValue() + s.GetGauge().GetValue()
			}
		}
	}
	return out
}

// count is a histogram's sample count.
func (m metrics) count(name string) float64 {
	var n float64
	if mf, ok := m[name]; ok {
		for _, s := range mf.GetMetric() {
			n += float64(s.GetHistogram().GetSampleCount())
		}
	}
	return n
}

func hasLabels(s *dto.Metric, pairs []string) bool {
	for i := 0; i+1 < len(pairs); i += 2 {
		if !slices.ContainsFunc(s.GetLabel(), func(lp *dto.LabelPair) bool {
			return lp.GetName() == pairs[i] && lp.GetValue() == pairs[i+1]
		}) {
			return false
		}
	}
	return true
}

// summarize computes the summary from two scrapes dt seconds apart.
func summarize(m0, m1 metrics, dt float64) *stats {
	gauge := func(name string, labels ...string) float64 { v, _ := m1.value(name, labels...); return v }
	// delta is a counter's increase; a node restarted between the scrapes
	// counts from zero.
	delta := func(name string, labels ...string) float64 {
		a, _ := m0.value(name, labels...)
		b, _ := m1.value(name, labels...)
		if b < a {
			return b
		}
		return b - a
	}
	rate := func(name string, labels ...string) float64 { return delta(name, labels...) / dt }

	s := &stats{
		Interval:            dt,
		Connections:         gauge("wspush_connections"),
		AcceptedPerS:        rate("wspush_connections_accepted_total"),
		ClosedPerS:          rate("wspush_connections_closed_total"),
		Subscriptions:       gauge("wspush_subscriptions"),
		Channels:            gauge("wspush_channels"),
		PublicationsPerS:    rate("wspush_publications_total"),
		PublicationsBySrc:   map[string]float64{},
		PublishErrors:       delta("wspush_publish_errors_total"),
		DeliveriesPerS:      rate("wspush_deliveries_total"),
		QueuedBytes:         gauge("wspush_queued_bytes"),
		SlowConsumerCloses:  delta("wspush_queue_overflows_total"),
		SlowConsumerTotal:   gauge("wspush_queue_overflows_total"),
		Resets:              delta("wspush_resets_total"),
		CommandErrors:       delta("wspush_command_errors_total"),
		ConnectionsRejected: delta("wspush_connections_rejected_total"),
		Process: processStats{
			RSSBytes:   gauge("process_resident_memory_bytes"),
			Goroutines: gauge("go_goroutines"),
			CPUPercent: 100 * rate("process_cpu_seconds_total"),
		},
	}
	for src := range m1.byLabel("wspush_publications_total", "source") {
		s.PublicationsBySrc[src] = rate("wspush_publications_total", "source", src)
	}
	if _, ok := m1["wspush_poller_calls_total"]; ok {
		calls := delta("wspush_poller_call_duration_seconds") // the sum of the durations
		n := m1.count("wspush_poller_call_duration_seconds") - m0.count("wspush_poller_call_duration_seconds")
		p := &pollerStats{
			CallsPerS:    rate("wspush_poller_calls_total"),
			ErrorsPerS:   rate("wspush_poller_calls_total", "result", "error"),
			AppsFailing:  gauge("wspush_poller_apps_failing"),
			ValuesPerS:   rate("wspush_poller_values_published_total"),
			TicksSkipped: delta("wspush_poller_ticks_skipped_total"),
		}
		if n > 0 {
			p.MeanCallMilli = 1000 * calls / n
		}
		p.Healthy = p.AppsFailing == 0 && p.ErrorsPerS == 0
		s.Poller = p
	}
	if _, ok := m1["wspush_amqp_connected"]; ok {
		a := &amqpStats{
			Connected:      gauge("wspush_amqp_connected") == 1,
			PartitionsHeld: gauge("wspush_amqp_partitions_held"),
			IngestedPerS:   rate("wspush_amqp_ingested_total"),
			Requeued:       delta("wspush_amqp_requeued_total"),
			DeadLettered:   map[string]float64{},
			Reconnects:     delta("wspush_amqp_reconnects_total"),
			ClaimsLost:     delta("wspush_amqp_claims_lost_total"),
		}
		for reason := range m1.byLabel("wspush_amqp_dead_lettered_total", "reason") {
			if d := delta("wspush_amqp_dead_lettered_total", "reason", reason); d > 0 {
				a.DeadLettered[reason] = d
			}
		}
		s.AMQP = a
	}
	if _, ok := m1["wspush_bus_watched_keys"]; ok {
		s.Redis = &redisStats{
			WatchedKeys:   gauge("wspush_bus_watched_keys"),
			BusReconnects: delta("wspush_bus_reconnects_total"),
			BusMalformed:  delta("wspush_bus_malformed_total"),
			IndexPending:  gauge("wspush_index_pending"),
			PositionLags:  delta("wspush_position_lags_total"),
		}
	}
	return s
}

// readyz returns /readyz's answer (its first line) and whether it is 200.
func readyz(ctx context.Context, hc *http.Client, base string) (string, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/readyz", nil)
	if err != nil {
		return "", false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", false, fmt.Errorf("GET %s/readyz: %w", base, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line, resp.StatusCode == http.StatusOK, nil
}

// apiNodes returns GET /api/nodes, or nil when the node does not serve it
// (404: an older node).
func apiNodes(ctx context.Context, hc *http.Client, base string) (json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/nodes", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s/api/nodes: %w", base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxScrape))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("GET %s/api/nodes: %w", base, err)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("GET %s/api/nodes: HTTP %s", base, resp.Status)
	case !json.Valid(b):
		return nil, fmt.Errorf("GET %s/api/nodes: not JSON: %q", base, snippet(b))
	}
	return b, nil
}

// nodesReply is the part of GET /api/nodes that stats prints.
type nodesReply struct {
	Self string `json:"self"`
	// Error is set while the node cannot read the other nodes' snapshots.
	Error string `json:"error"`
	Nodes []struct {
		ID            string    `json:"id"`
		Started       time.Time `json:"started"`
		Updated       time.Time `json:"updated"`
		Connections   float64   `json:"connections"`
		Subscriptions float64   `json:"subscriptions"`
		PublishedPerS float64   `json:"publications_per_s"`
		DeliveredPerS float64   `json:"deliveries_per_s"`
		DroppedPerS   float64   `json:"dropped_connections_per_s"`
		Poller        *struct {
			Enabled bool `json:"enabled"`
			Healthy bool `json:"healthy"`
		} `json:"poller"`
	} `json:"nodes"`
}

func (s *stats) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	in := fmt.Sprintf("in %.1fs", s.Interval)
	fmt.Fprintf(tw, "wspush node\t%s (rates over %.1fs)\n", s.URL, s.Interval)
	fmt.Fprintf(tw, "ready\t%s\n", s.Ready)
	fmt.Fprintf(tw, "connections\t%.0f (accepted %.1f/s, closed %.1f/s, %.0f refused %s)\n", s.Connections, s.AcceptedPerS, s.ClosedPerS, s.ConnectionsRejected, in)
	fmt.Fprintf(tw, "subscriptions\t%.0f on %.0f keys\n", s.Subscriptions, s.Channels)
	fmt.Fprintf(tw, "publications\t%.1f/s%s, %.0f failed %s\n", s.PublicationsPerS, bySource(s.PublicationsBySrc), s.PublishErrors, in)
	fmt.Fprintf(tw, "deliveries\t%.1f/s\n", s.DeliveriesPerS)
	fmt.Fprintf(tw, "queued\t%s\n", bytesIEC(s.QueuedBytes))
	fmt.Fprintf(tw, "slow consumers\t%.0f closed (4008) %s, %.0f since start\n", s.SlowConsumerCloses, in, s.SlowConsumerTotal)
	fmt.Fprintf(tw, "resets\t%.0f %s; %.0f command errors %s\n", s.Resets, in, s.CommandErrors, in)
	if p := s.Poller; p != nil {
		health := "healthy"
		if !p.Healthy {
			health = "FAILING"
		}
		fmt.Fprintf(tw, "poller\t%s: %.1f calls/s (%.1f errors/s, mean %.1f ms), %.0f apps failing, %.1f values/s, %.0f ticks skipped %s\n",
			health, p.CallsPerS, p.ErrorsPerS, p.MeanCallMilli, p.AppsFailing, p.ValuesPerS, p.TicksSkipped, in)
	} else {
		fmt.Fprintf(tw, "poller\toff\n")
	}
	if a := s.AMQP; a != nil {
		state := "connected"
		if !a.Connected {
			state = "DISCONNECTED"
		}
		fmt.Fprintf(tw, "amqp\t%s, %.0f partitions held, %.1f ingested/s; %s: %.0f requeued, %s dead-lettered, %.0f reconnects, %.0f claims lost\n",
			state, a.PartitionsHeld, a.IngestedPerS, in, a.Requeued, deadLettered(a.DeadLettered), a.Reconnects, a.ClaimsLost)
	} else {
		fmt.Fprintf(tw, "amqp\toff\n")
	}
	if r := s.Redis; r != nil {
		state := "ok"
		if !r.Ready {
			state = "UNREACHABLE"
		}
		fmt.Fprintf(tw, "redis\t%s; bus: %.0f keys watched, %.0f reconnects %s; index: %.0f pending; %.0f position lags %s\n",
			state, r.WatchedKeys, r.BusReconnects, in, r.IndexPending, r.PositionLags, in)
	} else {
		fmt.Fprintf(tw, "redis\toff (embedded: one node)\n")
	}
	fmt.Fprintf(tw, "process\tRSS %s, %.0f goroutines, CPU %.0f%%\n", bytesIEC(s.Process.RSSBytes), s.Process.Goroutines, s.Process.CPUPercent)
	if err := tw.Flush(); err != nil {
		return err
	}
	if s.Nodes == nil {
		return nil
	}
	var nr nodesReply
	if err := json.Unmarshal(s.Nodes, &nr); err != nil {
		return fmt.Errorf("GET %s/api/nodes: %w", s.URL, err)
	}
	fmt.Fprintf(w, "\nnodes (%d):\n", len(nr.Nodes))
	if nr.Error != "" {
		fmt.Fprintf(w, "  (%s)\n", nr.Error)
	}
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  ID\tUP\tCONNS\tSUBS\tPUB/S\tDELIV/S\tDROPPED/S\tPOLLER\tSEEN\n")
	for _, n := range nr.Nodes {
		id := n.ID
		if id == nr.Self {
			id += " (this)"
		}
		poller := "off"
		if n.Poller != nil && n.Poller.Enabled {
			poller = map[bool]string{true: "healthy", false: "FAILING"}[n.Poller.Healthy]
		}
		fmt.Fprintf(tw, "  %s\t%s\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t%s\t%s ago\n", id, since(n.Started), n.Connections, n.Subscriptions,
			n.PublishedPerS, n.DeliveredPerS, n.DroppedPerS, poller, since(n.Updated))
	}
	return tw.Flush()
}

func since(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return time.Since(t).Round(time.Second).String()
}

func bySource(m map[string]float64) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func deadLettered(m map[string]float64) string {
	if len(m) == 0 {
		return "0"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%.0f %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

// bytesIEC formats a byte count.
func bytesIEC(b float64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", b/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", b/(1<<10))
	}
	return fmt.Sprintf("%.0f B", b)
}
