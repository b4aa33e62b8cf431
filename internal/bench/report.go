package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/wspush/wspush/proto"
)

// Report is everything a run measured; --json writes it.
type Report struct {
	Scenario string          `json:"scenario"`
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished"`
	Servers  []string        `json:"servers"`
	Options  ReportOptions   `json:"options"`
	Capacity *CapacityConfig `json:"capacity,omitempty"`
	Fanout   *FanoutConfig   `json:"fanout,omitempty"`
	Table    *TableConfig    `json:"table,omitempty"`
	Steps    []StepReport    `json:"steps"`
	// Reference is the paper's figures that the table is compared with.
	Reference []PaperPoint `json:"reference,omitempty"`
	Error     string       `json:"error,omitempty"`
}

// ReportOptions is the part of Options worth keeping with the figures.
type ReportOptions struct {
	Workers    int     `json:"workers"` // 0: automatic per step
	SourceIPs  int     `json:"source_ips"`
	Format     string  `json:"format"`
	App        string  `json:"app"`
	Cluster    bool    `json:"cluster"`
	RampRate   float64 `json:"ramp_rate"`
	DrainMs    float64 `json:"drain_ms"`
	BatchMs    float64 `json:"batch_interval_ms"`
	MaxBatch   int     `json:"max_batch"`
	GoMaxProcs int     `json:"gomaxprocs"`
	CPUs       int     `json:"cpus"` // of this machine, shared by the servers and the load generator
}

// PaperPoint is one measurement of the paper wspush started from: a
// Node.js server with Redis and RabbitMQ.
type PaperPoint struct {
	Connections int     `json:"connections"`
	AvgMs       float64 `json:"avg_ms"`
	ErrorPct    float64 `json:"error_pct"`
}

func (p PaperPoint) String() string {
	s := fmt.Sprintf("paper: %s ms at %d connections", ms(p.AvgMs), p.Connections)
	if p.ErrorPct > 0 {
		s += fmt.Sprintf(", %.2f%% errors", p.ErrorPct)
	}
	return s
}

// PaperReference returns the paper's figures: 1,047 ms on average at 500
// concurrent connections; 3,242 ms and 1.83% errors at 1,500.
func PaperReference() []PaperPoint {
	return []PaperPoint{{Connections: 500, AvgMs: 1047}, {Connections: 1500, AvgMs: 3242, ErrorPct: 1.83}}
}

// StepReport is one step: a capacity or fanout run has one, a table one
// per connection count.
type StepReport struct {
	Connections int    `json:"connections"`
	Skipped     string `json:"skipped,omitempty"`
	Error       string `json:"error,omitempty"`

	Workers     int `json:"workers"`
	ServerNodes int `json:"server_nodes"`
	SourceIPs   int `json:"source_ips"`

	Connected     int64          `json:"connected"`
	ConnectErrors int64          `json:"connect_errors"`
	Dropped       int64          `json:"dropped"`
	ErrorSamples  []string       `json:"error_samples,omitempty"`
	CloseCodes    map[string]int `json:"close_codes,omitempty"`

	RampSeconds float64 `json:"ramp_seconds"`
	RunSeconds  float64 `json:"run_seconds"`

	Handshake Summary `json:"handshake"`
	Subscribe Summary `json:"subscribe"`
	Latency   Summary `json:"latency"`

	Publications    int64    `json:"publications"` // values accepted by the servers (SourceAMQP: confirmed by the broker)
	PublishFailed   int64    `json:"publish_failed"`
	PublishRequests int64    `json:"publish_requests"` // POSTs, or AMQP batches waited for as one
	PublishErrors   []string `json:"publish_errors,omitempty"`
	// PublishLag is how late the publisher sent each value: actual send
	// time − scheduled send time. Latency is measured from the scheduled
	// time, so a lag here shows in Latency too, and tells that the load
	// generator, not the server, was behind.
	PublishLag      Summary `json:"publish_lag"`
	PublishMaxLagMs float64 `json:"publish_max_lag_ms"` // PublishLag.Max

	// Loss, in latest mode: Expected is the final values due (one per
	// subscription), Lost those that did not arrive (see
	// Loss.AccountLatest).
	Loss    Loss           `json:"loss"`
	Latest  *LatestFigures `json:"latest,omitempty"` // latest mode
	Stale   uint64         `json:"stale"`            // replays of values older than the window
	Foreign uint64         `json:"foreign"`          // data wsbench did not publish (or garbled)

	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
	// ErrorRate is (lost values + deliveries of failed publications) /
	// (expected values + deliveries of failed publications); a failed
	// connection's subscriptions expected their values too, so its
	// losses count. Without values (capacity): (connect errors +
	// dropped) / connections.
	ErrorRate float64 `json:"error_rate"`

	Server    ServerTotals  `json:"server"`
	PerServer []NodeFigures `json:"per_server,omitempty"`
	// ClientCPUSeconds is the load generator's CPU time in the step
	// (coordinator and workers), to tell when it, not the server, is the
	// bottleneck.
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`

	LatencyHistogram   *Histogram `json:"latency_histogram,omitempty"`
	HandshakeHistogram *Histogram `json:"handshake_histogram,omitempty"`
}

// NodeFigures is what one server's /metrics said about a step: samples
// before connecting, once every connection is up (ready) and at the end
// with the connections still open (after).
type NodeFigures struct {
	URL                    string        `json:"url"`
	Error                  string        `json:"error,omitempty"`
	Before                 *ServerSample `json:"before,omitempty"`
	Ready                  *ServerSample `json:"ready,omitempty"`
	After                  *ServerSample `json:"after,omitempty"`
	Connections            float64       `json:"connections"` // wspush_connections after - before
	RSSDeltaBytes          float64       `json:"rss_delta_bytes"`
	KiBPerConn             float64       `json:"kib_per_conn"`
	CPURampSeconds         float64       `json:"cpu_ramp_seconds"`
	CPURunSeconds          float64       `json:"cpu_run_seconds"`
	Deliveries             float64       `json:"deliveries"` // wspush_deliveries_total, ready to after
	DeliveriesPerCPUSecond float64       `json:"deliveries_per_cpu_second"`
	QueueOverflows         float64       `json:"queue_overflows"`
	Goroutines             float64       `json:"goroutines"` // after
}

// ServerTotals sums NodeFigures over the servers.
type ServerTotals struct {
	Connections            float64 `json:"connections"`
	RSSDeltaBytes          float64 `json:"rss_delta_bytes"`
	KiBPerConn             float64 `json:"kib_per_conn"`
	CPURampSeconds         float64 `json:"cpu_ramp_seconds"`
	CPURunSeconds          float64 `json:"cpu_run_seconds"`
	Deliveries             float64 `json:"deliveries"`
	DeliveriesPerCPUSecond float64 `json:"deliveries_per_cpu_second"`
	QueueOverflows         float64 `json:"queue_overflows"`
	Goroutines             float64 `json:"goroutines"`
	Missing                int     `json:"missing,omitempty"` // servers whose /metrics could not be read
}

func nodeFigures(url string, before, ready, after *ServerSample, errs []string) NodeFigures {
	f := NodeFigures{URL: url, Before: before, Ready: ready, After: after, Error: strings.Join(errs, "; ")}
	if before == nil || after == nil {
		return f
	}
	f.Connections = after.Connections - before.Connections
	f.RSSDeltaBytes = after.RSSBytes - before.RSSBytes
	if f.Connections > 0 {
		f.KiBPerConn = f.RSSDeltaBytes / 1024 / f.Connections
	}
	f.QueueOverflows = after.QueueOverflows - before.QueueOverflows
	f.Goroutines = after.Goroutines
	if ready != nil {
		f.CPURampSeconds = ready.CPUSeconds - before.CPUSeconds
		f.CPURunSeconds = after.CPUSeconds - ready.CPUSeconds
		f.Deliveries = after.Deliveries - ready.Deliveries
		if f.CPURunSeconds > 0 {
			f.DeliveriesPerCPUSecond = f.Deliveries / f.CPURunSeconds
		}
	}
	return f
}

func totals(nodes []NodeFigures) ServerTotals {
	var t ServerTotals
	for _, n := range nodes {
		if n.Before == nil || n.After == nil {
			t.Missing++
			continue
		}
		t.Connections += n.Connections
		t.RSSDeltaBytes += n.RSSDeltaBytes
		t.CPURampSeconds += n.CPURampSeconds
		t.CPURunSeconds += n.CPURunSeconds
		t.Deliveries += n.Deliveries
		t.QueueOverflows += n.QueueOverflows
		t.Goroutines += n.Goroutines
	}
	if t.Connections > 0 {
		t.KiBPerConn = t.RSSDeltaBytes / 1024 / t.Connections
	}
	if t.CPURunSeconds > 0 {
		t.DeliveriesPerCPUSecond = t.Deliveries / t.CPURunSeconds
	}
	return t
}

// WriteJSON writes r, indented, to path.
func WriteJSON(path string, r *Report) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ReadJSON reads a report written by WriteJSON.
func ReadJSON(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return &r, nil
}

// WriteText prints r for a person: a summary for capacity and fanout, a
// table with the paper's figures beside it for table.
func WriteText(w io.Writer, r *Report) error {
	var err error
	switch r.Scenario {
	case "table":
		err = writeTable(w, r)
	default:
		for i := range r.Steps {
			if err = writeStep(w, r, &r.Steps[i]); err != nil {
				break
			}
		}
	}
	if err == nil && r.Error != "" {
		_, err = fmt.Fprintf(w, "stopped early: %s\n", r.Error)
	}
	return err
}

func ms(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1:
		return fmt.Sprintf("%.3f", v)
	case v < 100:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func summaryLine(s Summary, p999 bool) string {
	if s.Count == 0 {
		return "no samples"
	}
	line := fmt.Sprintf("avg %s  p50 %s  p99 %s", ms(s.Avg), ms(s.P50), ms(s.P99))
	if p999 {
		line += "  p99.9 " + ms(s.P999)
	}
	return line + fmt.Sprintf("  max %s ms  (%d samples)", ms(s.Max), s.Count)
}

func writeStep(w io.Writer, r *Report, s *StepReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	switch {
	case r.Capacity != nil:
		c := r.Capacity
		fmt.Fprintf(tw, "capacity: %d connections × %d keys, ramp %g/s, hold %s\n", c.Connections, c.KeysPerConn, r.Options.RampRate, c.Hold)
	case r.Fanout != nil:
		f := r.Fanout
		fmt.Fprintf(tw, "fanout: %d subscribers on %d key(s), %g values/s for %s (%s frames)", f.Subscribers, f.Keys, f.Rate, f.Duration, r.Options.Format)
		if f.Source != SourceNone {
			fmt.Fprintf(tw, ", source %s", f.Source)
		}
		if f.Mode == proto.ModeNameLatest {
			fmt.Fprintf(tw, ", mode latest")
			if f.MaxRate > 0 {
				fmt.Fprintf(tw, " at most %g/s per key", f.MaxRate)
			}
		}
		fmt.Fprintln(tw)
	}
	if s.Skipped != "" {
		fmt.Fprintf(tw, "  skipped:\t%s\n", s.Skipped)
		return tw.Flush()
	}
	fmt.Fprintf(tw, "  setup:\t%d server node(s), %d worker(s), %d source address(es)\n", s.ServerNodes, s.Workers, s.SourceIPs)
	fmt.Fprintf(tw, "  connections:\t%d of %d up, %d connect errors, %d dropped, ramp %.1fs\n", s.Connected, s.Connections, s.ConnectErrors, s.Dropped, s.RampSeconds)
	for _, e := range s.ErrorSamples {
		fmt.Fprintf(tw, "  connect error:\t%s\n", e)
	}
	fmt.Fprintf(tw, "  handshake ms:\t%s\n", summaryLine(s.Handshake, false))
	fmt.Fprintf(tw, "  subscribe ms:\t%s\n", summaryLine(s.Subscribe, false))
	if r.Fanout != nil {
		fmt.Fprintf(tw, "  publications:\t%d accepted, %d failed, %d requests\n", s.Publications, s.PublishFailed, s.PublishRequests)
		fmt.Fprintf(tw, "  publisher lag ms:\t%s\n", summaryLine(s.PublishLag, false))
		for _, e := range s.PublishErrors {
			fmt.Fprintf(tw, "  publish error:\t%s\n", e)
		}
		if l := s.Latest; l != nil {
			writeLatest(tw, s, l)
		} else {
			fmt.Fprintf(tw, "  deliveries:\t%d expected, %d received, %.0f/s\n", s.Loss.Expected, s.Loss.Received, s.DeliveriesPerSec)
			fmt.Fprintf(tw, "  latency ms:\t%s\n", summaryLine(s.Latency, true))
			fmt.Fprintf(tw, "  loss:\t%d lost, %d duplicates, %d out of order, %d unexpected, %d stale, %d foreign\n",
				s.Loss.Lost, s.Loss.Duplicates, s.Loss.OutOfOrder, s.Loss.Unexpected, s.Stale, s.Foreign)
		}
	}
	fmt.Fprintf(tw, "  error rate:\t%.4f%%\n", s.ErrorRate*100)
	writeServer(tw, s)
	return tw.Flush()
}

// writeLatest prints the deliveries of a latest-mode fanout: values are
// skipped by design; what counts is that seqs rise, every key's last value
// arrives and no key gets more than its max_rate.
func writeLatest(w io.Writer, s *StepReport, l *LatestFigures) {
	fmt.Fprintf(w, "  deliveries:\t%d received, %.0f/s; delivered values/s per subscription %.2f on average, at most %d in one second",
		s.Loss.Received, s.DeliveriesPerSec, l.DeliveredPerSec, l.MaxPerSecond)
	if l.MaxRate > 0 {
		fmt.Fprintf(w, " (max_rate %g: %d subscriptions over %d)", l.MaxRate, l.RateViolations, uint32(math.Ceil(l.MaxRate))+1)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  age ms:\t%s\n", summaryLine(s.Latency, true))
	fmt.Fprintf(w, "  final values:\t%d of %d arrived, %d lost\n", s.Loss.Expected-s.Loss.Lost, s.Loss.Expected, s.Loss.Lost)
	fmt.Fprintf(w, "  loss:\t%d skipped by design, %d duplicates, %d out of order, %d unexpected, %d stale, %d foreign\n",
		l.Skipped, s.Loss.Duplicates, s.Loss.OutOfOrder, s.Loss.Unexpected, s.Stale, s.Foreign)
}

func writeServer(w io.Writer, s *StepReport) {
	t := s.Server
	if t.Missing == len(s.PerServer) {
		fmt.Fprintf(w, "  server:\t/metrics not readable\n")
		return
	}
	if t.KiBPerConn > 0 {
		fmt.Fprintf(w, "  server memory:\tRSS %+.1f MiB for %.0f connections = %.1f KiB/connection\n", t.RSSDeltaBytes/(1<<20), t.Connections, t.KiBPerConn)
	} else {
		fmt.Fprintf(w, "  server memory:\tRSS %+.1f MiB for %.0f connections: memory freed by earlier runs hides the growth (run capacity on a fresh server)\n", t.RSSDeltaBytes/(1<<20), t.Connections)
	}
	fmt.Fprintf(w, "  server CPU:\t%.2fs while connecting, %.2fs while running; %.0f goroutines\n", t.CPURampSeconds, t.CPURunSeconds, t.Goroutines)
	if t.Deliveries > 0 {
		fmt.Fprintf(w, "  server deliveries:\t%.0f, %.0f per CPU-second; %.0f queue overflows\n", t.Deliveries, t.DeliveriesPerCPUSecond, t.QueueOverflows)
	}
	fmt.Fprintf(w, "  load generator CPU:\t%.2fs\n", s.ClientCPUSeconds)
	for _, n := range s.PerServer {
		if n.Error != "" {
			fmt.Fprintf(w, "  server %s:\t%s\n", n.URL, n.Error)
		}
	}
}

// saturation says when a step's publisher fell behind its schedule by
// more than a second: the values went out slower than asked, and the
// machine's CPU figures tell who took it.
func saturation(s *StepReport, cpus int) string {
	if s.PublishMaxLagMs < 1000 {
		return ""
	}
	return fmt.Sprintf("the publisher fell up to %.1f s behind its schedule; server CPU %.1f s + load generator CPU %.1f s in %.1f s on %d CPUs",
		s.PublishMaxLagMs/1000, s.Server.CPURunSeconds+s.Server.CPURampSeconds, s.ClientCPUSeconds, s.RampSeconds+s.RunSeconds, cpus)
}

func writeTable(w io.Writer, r *Report) error {
	t := r.Table
	if t != nil {
		fmt.Fprintf(w, "table: every connection subscribes its own key, one value per key per second, source %s, %s per step (%s frames)\n", t.Source, t.Duration, r.Options.Format)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "connections\tconnected\tavg ms\tp99 ms\tmax ms\tvalues\tlost\tconn err\terror %\tKiB/conn\tdeliv/CPU-s\t")
	var notes []string
	for i := range r.Steps {
		s := &r.Steps[i]
		switch {
		case s.Skipped != "":
			fmt.Fprintf(tw, "%d\tskipped\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", s.Connections)
			notes = append(notes, fmt.Sprintf("%d connections: skipped: %s", s.Connections, s.Skipped))
		case s.Error != "":
			fmt.Fprintf(tw, "%d\tfailed\t-\t-\t-\t-\t-\t-\t-\t-\t-\t\n", s.Connections)
			notes = append(notes, fmt.Sprintf("%d connections: failed: %s", s.Connections, s.Error))
		default:
			if n := saturation(s, r.Options.CPUs); n != "" {
				notes = append(notes, fmt.Sprintf("%d connections: %s", s.Connections, n))
			}
			kib := "n/a" // the server gave memory back: GC noise beats the step's growth
			if s.Server.KiBPerConn > 0 {
				kib = fmt.Sprintf("%.1f", s.Server.KiBPerConn)
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%d\t%d\t%d\t%.3f\t%s\t%.0f\t\n",
				s.Connections, s.Connected, ms(s.Latency.Avg), ms(s.Latency.P99), ms(s.Latency.Max),
				s.Loss.Expected, s.Loss.Lost, s.ConnectErrors, s.ErrorRate*100, kib, s.Server.DeliveriesPerCPUSecond)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(w, n)
	}
	for _, p := range r.Reference {
		line := fmt.Sprintf("paper (Node.js + Redis + RabbitMQ) at %d connections: %.0f ms average", p.Connections, p.AvgMs)
		if p.ErrorPct > 0 {
			line += fmt.Sprintf(", %.2f%% errors", p.ErrorPct)
		}
		for _, s := range r.Steps {
			if s.Connections == p.Connections && s.Skipped == "" && s.Error == "" && s.Latency.Avg > 0 {
				line += fmt.Sprintf("; wspush: %s ms, %.0f× faster", ms(s.Latency.Avg), p.AvgMs/s.Latency.Avg)
			}
		}
		fmt.Fprintln(w, line)
	}
	fmt.Fprintln(w, "KiB/conn: the server's RSS growth over the step / its connections; a server reuses memory freed by earlier steps, so it is most accurate in a capacity run on a fresh server.")
	if t != nil && t.Source == SourcePoller {
		fmt.Fprintln(w, "note: with --source poller, latency is receive time minus the value's ts, which the simulator sets to the start of its 1s step in whole ms: it includes the wait until the poller's tick and is ±1 ms.")
		fmt.Fprintln(w, "      values are the seqs the server published in the window (a value unchanged since the last poll is not published again); a loss after the last value received is not seen.")
	}
	return nil
}
