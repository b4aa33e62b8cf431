package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"time"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/proto"
)

// Options are the settings every scenario shares. Zero fields take the
// defaults below.
type Options struct {
	Servers []ServerURL
	// Workers is the number of worker processes per step; 0 picks
	// ceil(connections / ConnsPerWorker). One worker runs inside this
	// process, more are processes (Spawner).
	Workers int
	// ConnsPerWorker is the share of one worker when Workers is 0
	// (default 15000).
	ConnsPerWorker int
	// MaxConnsPerWorker is the most one process can hold: its open-file
	// limit less some for everything else (default 19900). A step that
	// would need more per worker is skipped.
	MaxConnsPerWorker int
	// MaxConnsPerNode is the most one server holds (default 19900, its
	// open-file limit less some); a step needing more servers than
	// given is skipped.
	MaxConnsPerNode int
	// SourceIPs spreads connections over 127.0.0.1..127.0.0.N; 0 picks
	// one per PortsPerSourceIP connections.
	SourceIPs int
	// PortsPerSourceIP is how many connections one source address is
	// given when SourceIPs is 0 (default 20000, below Linux's 28,232
	// ephemeral ports).
	PortsPerSourceIP int
	Format           string  // "binary" (default) or "json"
	App              string  // default "bench"
	APIKey           string  // of POST /api/publish
	Cluster          bool    // the servers share Redis and RabbitMQ: publish each value once (SourceAMQP implies it)
	AMQPURL          string  // the broker the servers share, for SourceAMQP (default DefaultAMQPURL; loopback only)
	AMQPExchange     string  // the servers' ingest exchange (default IngestExchange; <prefix>.ingest for wspush --amqp-prefix)
	RampRate         float64 // connections per second, all workers together (default 1000)
	HandshakeTimeout time.Duration
	MaxDialing       int           // handshakes in flight per worker (default 500)
	Drain            time.Duration // wait for values in flight after publishing (default 5s)
	BatchInterval    time.Duration // publisher tick (default 10ms)
	MaxBatch         int           // items per POST or confirmed AMQP batch (default 1000, the server's limit)
	PublishConns     int           // concurrent POSTs or AMQP channels (default 8)
	// SettleTimeout bounds the wait, before a step, for the servers'
	// connections of the previous step to be gone (default 15s).
	SettleTimeout time.Duration
	// Spawner starts workers when there are more than one (default
	// ExecSpawner: this executable with "worker").
	Spawner Spawner
	// Progress receives the progress view (nil: none); ProgressTTY draws a
	// bar in place.
	Progress    io.Writer
	ProgressTTY bool
	// Deadline, when set, is passed to the workers so that they stop
	// whatever happens to the coordinator.
	Deadline time.Time

	// publishStall is the publisher's stall hook (tests only; see
	// publisher.stall).
	publishStall func(v int64)
}

// Defaults of Options.
const (
	DefaultConnsPerWorker   = 15000
	DefaultMaxConnsPerProc  = 19900
	DefaultPortsPerSourceIP = 20000
	DefaultRampRate         = 1000
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultMaxDialing       = 500
	DefaultDrain            = 5 * time.Second
	DefaultBatchInterval    = 10 * time.Millisecond
	DefaultMaxBatch         = 1000
	DefaultPublishConns     = 8
	DefaultSettleTimeout    = 15 * time.Second
	DefaultApp              = "bench"
	DefaultAMQPURL          = "amqp://guest:guest@127.0.0.1:5672"
)

func (o Options) withDefaults() Options {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.ConnsPerWorker, DefaultConnsPerWorker)
	def(&o.MaxConnsPerWorker, DefaultMaxConnsPerProc)
	def(&o.MaxConnsPerNode, DefaultMaxConnsPerProc)
	def(&o.PortsPerSourceIP, DefaultPortsPerSourceIP)
	def(&o.MaxDialing, DefaultMaxDialing)
	def(&o.MaxBatch, DefaultMaxBatch)
	def(&o.PublishConns, DefaultPublishConns)
	if o.Format == "" {
		o.Format = "binary"
	}
	if o.App == "" {
		o.App = DefaultApp
	}
	if o.AMQPURL == "" {
		o.AMQPURL = DefaultAMQPURL
	}
	if o.AMQPExchange == "" {
		o.AMQPExchange = IngestExchange
	}
	if o.RampRate <= 0 {
		o.RampRate = DefaultRampRate
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.Drain <= 0 {
		o.Drain = DefaultDrain
	}
	if o.BatchInterval <= 0 {
		o.BatchInterval = DefaultBatchInterval
	}
	if o.SettleTimeout <= 0 {
		o.SettleTimeout = DefaultSettleTimeout
	}
	return o
}

// Runner runs scenarios against a set of servers.
type Runner struct {
	o      Options
	client *http.Client
}

// NewRunner checks o and returns a runner.
func NewRunner(o Options) (*Runner, error) {
	o = o.withDefaults()
	if len(o.Servers) == 0 {
		return nil, errors.New("no server URL")
	}
	if o.Workers < 0 || o.SourceIPs < 0 || o.SourceIPs > 254 {
		return nil, fmt.Errorf("workers %d, source IPs %d: want workers ≥ 0 and 0 to 254 source IPs", o.Workers, o.SourceIPs)
	}
	if o.Format != "binary" && o.Format != "json" {
		return nil, fmt.Errorf("format %q: want binary or json", o.Format)
	}
	if o.MaxBatch > 1000 {
		return nil, fmt.Errorf("max batch %d: the server takes at most 1000 items per request", o.MaxBatch)
	}
	return &Runner{o: o, client: newHTTPClient(o.PublishConns + 2*len(o.Servers))}, nil
}

// cluster tells whether values from source are published with cluster
// semantics (Options.Cluster).
func (r *Runner) cluster(source Source) bool { return r.o.Cluster || source == SourceAMQP }

func (r *Runner) report(scenario string, source Source) *Report {
	rep := &Report{Scenario: scenario, Started: time.Now(), Options: ReportOptions{
		Workers: r.o.Workers, SourceIPs: r.o.SourceIPs, Format: r.o.Format, App: r.o.App, Cluster: r.cluster(source),
		RampRate: r.o.RampRate, DrainMs: float64(r.o.Drain) / 1e6, BatchMs: float64(r.o.BatchInterval) / 1e6,
		MaxBatch: r.o.MaxBatch, GoMaxProcs: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(),
	}}
	for _, s := range r.o.Servers {
		rep.Servers = append(rep.Servers, s.WS)
	}
	return rep
}

// CapacityConfig is the capacity scenario: open Connections, each
// subscribing to KeysPerConn keys among KeySpace, and hold them.
type CapacityConfig struct {
	Connections int           `json:"connections"`
	KeysPerConn int           `json:"keys_per_conn"`
	KeySpace    int           `json:"key_space"` // 0: every subscription its own key
	Hold        time.Duration `json:"hold"`
}

// Capacity runs the capacity scenario. The report is returned even with
// an error, holding what was measured.
func (r *Runner) Capacity(ctx context.Context, c CapacityConfig) (*Report, error) {
	if c.KeysPerConn <= 0 {
		c.KeysPerConn = 1
	}
	if c.KeySpace <= 0 {
		c.KeySpace = c.Connections * c.KeysPerConn
	}
	rep := r.report("capacity", SourceNone)
	rep.Capacity = &c
	err := r.runSteps(ctx, rep, []stepSpec{{
		label: "capacity", conns: c.Connections, keysPerConn: c.KeysPerConn, keySpace: c.KeySpace,
		prefix: "c", source: SourceNone, hold: c.Hold,
	}})
	return rep, err
}

// FanoutConfig is the fanout scenario: Subscribers connections spread
// over Keys keys; Rate values per second (all keys together) for
// Duration, published through Source.
type FanoutConfig struct {
	Subscribers int           `json:"subscribers"`
	Keys        int           `json:"keys"`
	Rate        float64       `json:"rate"`
	Duration    time.Duration `json:"duration"`
	// Source is SourceHTTP (the default) or SourceAMQP.
	Source Source `json:"source,omitempty"`
	// Mode is the subscriptions' delivery mode: "stream" (the default,
	// every value) or "latest" (the newest value; SourceHTTP only, whose
	// answers tell the seq of each key's last value). MaxRate is latest's
	// max_rate, values per second per key (0: none). See
	// docs/PROTOCOL.md, "Delivery modes".
	Mode    string  `json:"mode,omitempty"`
	MaxRate float64 `json:"max_rate,omitempty"`
}

// Fanout runs the fanout scenario.
func (r *Runner) Fanout(ctx context.Context, c FanoutConfig) (*Report, error) {
	if c.Keys <= 0 {
		c.Keys = 1
	}
	if c.Source == SourceNone {
		c.Source = SourceHTTP
	}
	rep := r.report("fanout", c.Source)
	rep.Fanout = &c
	var err error
	switch {
	case !c.Source.FromWsbench():
		err = fmt.Errorf("source %q: fanout publishes its own values, over http or amqp", c.Source)
	case c.Keys > c.Subscribers:
		err = fmt.Errorf("%d keys for %d subscribers: some keys would have nobody to deliver to", c.Keys, c.Subscribers)
	default:
		err = c.checkMode()
	}
	if err != nil {
		rep.Error = err.Error()
		return rep, err
	}
	mode := c.Mode
	if mode == proto.ModeNameStream {
		mode = "" // a stream subscribe is sent as before, without mode
	}
	err = r.runSteps(ctx, rep, []stepSpec{{
		label: "fanout", conns: c.Subscribers, keysPerConn: 1, keySpace: c.Keys, prefix: "f",
		source: c.Source, rate: c.Rate, total: int64(math.Round(c.Rate * c.Duration.Seconds())), window: c.Duration,
		mode: mode, maxRate: c.MaxRate,
	}})
	return rep, err
}

// checkMode checks Mode and MaxRate.
func (c *FanoutConfig) checkMode() error {
	mode, err := proto.ParseMode(c.Mode)
	switch {
	case err != nil:
		return err
	case c.MaxRate != 0:
		if err := proto.ValidateMaxRate(c.MaxRate, mode); err != nil {
			return err
		}
	}
	if mode == proto.ModeLatest && c.Source != SourceHTTP {
		return fmt.Errorf("mode latest needs source http: the seq of each key's last value, which must arrive, comes from the publish answers")
	}
	return nil
}

// TableConfig is the paper's experiment as a sweep: for each connection
// count, every connection subscribes to its own key and every key gets
// one value per second for Duration.
type TableConfig struct {
	Steps    []int         `json:"steps"`
	Source   Source        `json:"source"`
	Duration time.Duration `json:"duration"`
	// Warmup (SourcePoller) is the wait after the last subscribe before
	// the measured window opens, so that the poller has seen every key.
	Warmup time.Duration `json:"warmup"`
}

// Table runs the table scenario; onStep, when not nil, is called after
// each step.
func (r *Runner) Table(ctx context.Context, c TableConfig, onStep func(StepReport)) (*Report, error) {
	rep := r.report("table", c.Source)
	rep.Table = &c
	rep.Reference = PaperReference()
	secs := int64(c.Duration / time.Second)
	var specs []stepSpec
	for _, n := range c.Steps {
		s := stepSpec{label: fmt.Sprintf("table %d", n), conns: n, keysPerConn: 1, keySpace: n, prefix: "s", source: c.Source, window: c.Duration, onDone: onStep}
		if c.Source.FromWsbench() {
			s.rate, s.total = float64(n), int64(n)*secs
		} else {
			s.warmup = c.Warmup
		}
		specs = append(specs, s)
	}
	err := r.runSteps(ctx, rep, specs)
	return rep, err
}

// stepSpec is one step of a scenario.
type stepSpec struct {
	label       string
	conns       int
	keysPerConn int
	keySpace    int
	prefix      string
	source      Source
	hold        time.Duration // capacity
	rate        float64       // FromWsbench: values per second
	total       int64         // FromWsbench: values
	window      time.Duration // the measured time
	warmup      time.Duration // SourcePoller
	mode        string        // Plan.Mode
	maxRate     float64       // Plan.MaxRate
	onDone      func(StepReport)
}

// runSteps runs specs in order into rep. After a failed step the others
// are skipped.
func (r *Runner) runSteps(ctx context.Context, rep *Report, specs []stepSpec) error {
	defer func() {
		rep.Finished = time.Now()
		r.client.CloseIdleConnections() // their goroutines end with the run
	}()
	var baseline []float64 // the servers' connections before the first step
	var failed error
	for i, spec := range specs {
		var s StepReport
		switch {
		case ctx.Err() != nil:
			s = StepReport{Connections: spec.conns, Skipped: "stopped: " + context.Cause(ctx).Error()}
		case failed != nil:
			s = StepReport{Connections: spec.conns, Skipped: "an earlier step failed"}
		default:
			if i == 0 {
				baseline = r.connections(ctx)
			} else {
				r.settle(ctx, baseline)
			}
			var err error
			s, err = r.runStep(ctx, spec)
			if err != nil {
				s.Error = err.Error()
				failed = fmt.Errorf("%s: %w", spec.label, err)
			}
		}
		rep.Steps = append(rep.Steps, s)
		if spec.onDone != nil {
			spec.onDone(s)
		}
	}
	if failed != nil {
		rep.Error = failed.Error()
	}
	return failed
}

// connections reads every server's open connections (NaN: unknown).
func (r *Runner) connections(ctx context.Context) []float64 {
	out := make([]float64, len(r.o.Servers))
	for i, s := range r.o.Servers {
		out[i] = math.NaN()
		if smp, err := scrape(ctx, r.client, s.HTTP); err == nil {
			out[i] = smp.Connections
		}
	}
	return out
}

// settle waits until the servers have let go of the previous step's
// connections (back to baseline) or SettleTimeout passes, so that a
// step's memory and CPU are its own.
func (r *Runner) settle(ctx context.Context, baseline []float64) {
	deadline := time.Now().Add(r.o.SettleTimeout)
	for time.Now().Before(deadline) {
		now := r.connections(ctx)
		done := true
		for i := range now {
			if !math.IsNaN(now[i]) && !math.IsNaN(baseline[i]) && now[i] > baseline[i] {
				done = false
			}
		}
		if done || !retry.Sleep(ctx, 100*time.Millisecond) {
			return
		}
	}
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// layout decides a step's workers, servers and source addresses; a
// non-empty reason means the step cannot run here.
func (r *Runner) layout(conns int) (workers, nodes, sourceIPs int, reason string) {
	o := &r.o
	nodes = len(o.Servers)
	if need := ceilDiv(conns, o.MaxConnsPerNode); need > nodes {
		return 0, nodes, 0, fmt.Sprintf("needs %d server nodes at %d connections each, %d given (--url)", need, o.MaxConnsPerNode, nodes)
	}
	workers = o.Workers
	if workers == 0 {
		workers = ceilDiv(conns, o.ConnsPerWorker)
	}
	workers = max(min(workers, conns), 1)
	if per := ceilDiv(conns, workers); per > o.MaxConnsPerWorker {
		return 0, nodes, 0, fmt.Sprintf("needs %d workers at %d connections each (open-file limit), --workers is %d",
			ceilDiv(conns, o.MaxConnsPerWorker), o.MaxConnsPerWorker, workers)
	}
	sourceIPs = o.SourceIPs
	if sourceIPs == 0 {
		sourceIPs = ceilDiv(conns, o.PortsPerSourceIP)
	}
	if sourceIPs > 1 && !r.allIPv4() {
		return 0, nodes, 0, "spreading source addresses needs IPv4 loopback server URLs (127.x.x.x)"
	}
	if sourceIPs > 254 {
		return 0, nodes, 0, fmt.Sprintf("needs %d source addresses, at most 254", sourceIPs)
	}
	return workers, nodes, max(sourceIPs, 1), ""
}

// allIPv4 tells whether every server URL's host is an IPv4 address (or a
// name, which the dialer resolves to IPv4 when the source is IPv4).
func (r *Runner) allIPv4() bool {
	for _, s := range r.o.Servers {
		u, err := url.Parse(s.HTTP)
		if err != nil {
			return false
		}
		if ip := net.ParseIP(u.Hostname()); ip != nil && ip.To4() == nil {
			return false
		}
	}
	return true
}
