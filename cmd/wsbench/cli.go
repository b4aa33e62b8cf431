package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wspush/wspush/internal/bench"
)

// Bounds on what one run may ask for: a load test must stop by itself.
const (
	maxConnections = 1_000_000
	maxRate        = 1_000_000
	maxDuration    = time.Hour
	maxSteps       = 32
)

const usage = `Usage: wsbench <scenario> [flags]

wsbench is wspush's load tester. It only ever connects to loopback
addresses (127.0.0.0/8, ::1).

Scenarios:
  capacity   open many connections, hold them; connect errors, handshake
             latency, server memory per connection and CPU
  fanout     many subscribers, values published over HTTP or AMQP;
             deliveries per second, end-to-end latency, loss by seq
  table      the paper's experiment as a sweep over connection counts, one
             key per connection and one value per key per second

Run "wsbench <scenario> --help" for a scenario's flags.

Examples:
  wsbench capacity --connections 5000 --ramp 2000 --hold 10s
  wsbench fanout --subscribers 1000 --rate 20 --duration 10s --svg fanout.svg
  wsbench fanout --source amqp --url ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws   # scripts/cluster.sh 2
  wsbench table --steps 500,1500,5000 --json table.json --svg table.svg
  wsbench table --source poller   # wspush --datacenter-url http://127.0.0.1:9090
`

// scenario is one subcommand.
type scenario struct {
	name, synopsis string
	flags          func(fs *flag.FlagSet) func() error // registers flags; returns their validation
	run            func(ctx context.Context, r *bench.Runner, stderr io.Writer) (*bench.Report, error)
}

func scenarios() []*scenario {
	return []*scenario{capacityScenario(), fanoutScenario(), tableScenario()}
}

func capacityScenario() *scenario {
	var c bench.CapacityConfig
	s := &scenario{name: "capacity", synopsis: `Opens --connections connections at --ramp per second, each subscribing to
--keys-per-conn keys (in --format), holds them for --hold, then closes
them. Reports connect errors, handshake and subscribe latency, and from
the servers' /metrics the memory (RSS growth / connections) and CPU.`}
	s.flags = func(fs *flag.FlagSet) func() error {
		fs.IntVar(&c.Connections, "connections", 1000, "connections to open")
		fs.IntVar(&c.KeysPerConn, "keys-per-conn", 1, "keys each connection subscribes to")
		fs.IntVar(&c.KeySpace, "key-space", 0, "distinct keys shared by all connections (0: every subscription its own key)")
		fs.DurationVar(&c.Hold, "hold", 10*time.Second, "how long to hold the connections open")
		return func() error {
			return errors.Join(
				intIn("--connections", c.Connections, 1, maxConnections),
				intIn("--keys-per-conn", c.KeysPerConn, 1, 1000),
				intIn("--key-space", c.KeySpace, 0, maxConnections*10),
				durationIn("--hold", c.Hold, 0, maxDuration))
		}
	}
	s.run = func(ctx context.Context, r *bench.Runner, _ io.Writer) (*bench.Report, error) {
		return r.Capacity(ctx, c)
	}
	return s
}

func fanoutScenario() *scenario {
	var (
		c      bench.FanoutConfig
		source string
	)
	s := &scenario{name: "fanout", synopsis: `Opens --subscribers connections spread over --keys keys, then publishes
--rate values per second (all keys together, round robin) for --duration,
in batches: over POST /api/publish (--source http), or to the RabbitMQ
exchange wspush.ingest that a cluster's servers share (--source amqp,
routing key <app>.<key>, publisher confirms; implies --cluster). Every
value carries the time the rate plan scheduled it for, and latency is
measured from then: a publisher that falls behind shows in the latency
(and in "publisher lag", how late each value went out) instead of
hiding it. Reports deliveries per second, end-to-end latency (avg, p50,
p99, p99.9, max) and loss by seq (lost, duplicates, out of order) per key
per connection. With amqp, a value counts as published once the broker
confirms it, and latency includes the servers' ingestion.

--mode latest subscribes with "mode":"latest" (and "max_rate" from
--max-rate): values may be skipped by design, so loss is not counted by
seq; instead every seq must be higher than the one before (a duplicate
or a lower seq is an error), the last value of every key must arrive (a
subscription without it counts as lost), and no subscription may get
more than ceil(max_rate)+1 values within one second of the run. Reports
delivered values/s per subscription and the age of the values delivered
(receive time - scheduled send time). Needs --source http.`}
	s.flags = func(fs *flag.FlagSet) func() error {
		fs.IntVar(&c.Subscribers, "subscribers", 1000, "subscriber connections")
		fs.IntVar(&c.Keys, "keys", 1, "keys the subscribers are spread over")
		fs.Float64Var(&c.Rate, "rate", 100, "values published per second, all keys together")
		fs.DurationVar(&c.Duration, "duration", 10*time.Second, "how long to publish")
		fs.StringVar(&source, "source", "http", "how wsbench publishes: http (POST /api/publish) or amqp (exchange wspush.ingest at --amqp-url)")
		fs.StringVar(&c.Mode, "mode", "stream", "delivery mode of the subscriptions: stream (every value) or latest (the newest value per key)")
		fs.Float64Var(&c.MaxRate, "max-rate", 0, "with --mode latest: at most this many values per second per key (0.01 to 1000, fractions allowed; 0: no limit)")
		return func() error {
			var err error
			if c.Source, err = bench.ParseSource(source); err == nil && !c.Source.FromWsbench() {
				err = fmt.Errorf("source %q: want http or amqp", source)
			}
			if err != nil {
				err = fmt.Errorf("--source: %w", err)
			}
			var modeErr error
			switch {
			case c.Mode != "stream" && c.Mode != "latest":
				modeErr = fmt.Errorf("--mode %q: want stream or latest", c.Mode)
			case c.MaxRate != 0 && c.Mode != "latest":
				modeErr = errors.New("--max-rate needs --mode latest")
			case c.MaxRate != 0:
				modeErr = floatIn("--max-rate", c.MaxRate, 0.01, 1000)
			}
			if modeErr == nil && c.Mode == "latest" && c.Source != bench.SourceHTTP {
				modeErr = errors.New("--mode latest needs --source http: the seq of each key's last value, which must arrive, comes from the publish answers")
			}
			return errors.Join(err, modeErr,
				intIn("--subscribers", c.Subscribers, 1, maxConnections),
				intIn("--keys", c.Keys, 1, c.Subscribers),
				floatIn("--rate", c.Rate, 0.1, maxRate),
				durationIn("--duration", c.Duration, time.Second, maxDuration))
		}
	}
	s.run = func(ctx context.Context, r *bench.Runner, _ io.Writer) (*bench.Report, error) {
		return r.Fanout(ctx, c)
	}
	return s
}

func tableScenario() *scenario {
	var (
		c      bench.TableConfig
		steps  string
		source string
	)
	s := &scenario{name: "table", synopsis: `The paper's experiment as a sweep. For each connection count in --steps,
every connection subscribes to its own key (s000001, s000002, ...) and
every key gets one value per second for --duration: published by wsbench
(--source http, or amqp as in fanout; latency from the send time in the
payload) or by the server's poller from the data center (--source poller: run wspush with
--datacenter-url pointing at cmd/datacenter; latency is receive time minus
the value's ts, which the simulator sets to the start of its 1s step in
whole milliseconds, so it includes the wait for the poller's tick and is
±1 ms). One row per step: connections, average and p99 response time,
error rate = (lost values, a failed connection losing all of its) /
(values expected). A step needing more server nodes than --url lists
(19,900 connections each) is reported as skipped.`}
	s.flags = func(fs *flag.FlagSet) func() error {
		fs.StringVar(&steps, "steps", "500,750,900,1200,1500,5000,10000,50000,100000", "comma-separated connection counts")
		fs.StringVar(&source, "source", "http", "who publishes: http or amqp (wsbench, as in fanout) or poller (the server polling the data center)")
		fs.DurationVar(&c.Duration, "duration", 10*time.Second, "measured time per step")
		fs.DurationVar(&c.Warmup, "warmup", 3*time.Second, "poller: wait after subscribing before measuring")
		return func() error {
			var errs []error
			var err error
			if c.Source, err = bench.ParseSource(source); err != nil {
				errs = append(errs, fmt.Errorf("--source: %w", err))
			}
			if c.Steps, err = parseSteps(steps); err != nil {
				errs = append(errs, fmt.Errorf("--steps: %w", err))
			}
			errs = append(errs,
				durationIn("--duration", c.Duration, time.Second, maxDuration),
				durationIn("--warmup", c.Warmup, 0, time.Minute))
			return errors.Join(errs...)
		}
	}
	s.run = func(ctx context.Context, r *bench.Runner, stderr io.Writer) (*bench.Report, error) {
		return r.Table(ctx, c, func(st bench.StepReport) {
			switch {
			case st.Skipped != "":
				fmt.Fprintf(stderr, "table %d: skipped: %s\n", st.Connections, st.Skipped)
			case st.Error != "":
				fmt.Fprintf(stderr, "table %d: failed: %s\n", st.Connections, st.Error)
			default:
				fmt.Fprintf(stderr, "table %d: avg %.3f ms, p99 %.3f ms, error rate %.3f%%\n", st.Connections, st.Latency.Avg, st.Latency.P99, st.ErrorRate*100)
			}
		})
	}
	return s
}

func parseSteps(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		if err := intIn("a step", n, 1, maxConnections); err != nil {
			return nil, err
		}
		out = append(out, n)
	}
	if len(out) == 0 || len(out) > maxSteps {
		return nil, fmt.Errorf("want 1 to %d steps, got %d", maxSteps, len(out))
	}
	return out, nil
}

func intIn(name string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s %d: want %d to %d", name, v, lo, hi)
	}
	return nil
}

func floatIn(name string, v, lo, hi float64) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s %g: want %g to %g", name, v, lo, hi)
	}
	return nil
}

func durationIn(name string, v, lo, hi time.Duration) error {
	if v < lo || v > hi {
		return fmt.Errorf("%s %s: want %s to %s", name, v, lo, hi)
	}
	return nil
}

// urlsFlag is --url: it may be repeated, and its first use replaces the
// default.
type urlsFlag struct {
	list []string
	set  bool
}

func (f *urlsFlag) String() string { return strings.Join(f.list, ",") }

func (f *urlsFlag) Set(v string) error {
	if !f.set {
		f.list, f.set = nil, true
	}
	f.list = append(f.list, v)
	return nil
}

// common holds the flags every scenario shares.
type common struct {
	urls     urlsFlag
	timeout  time.Duration
	jsonPath string
	svgPath  string
	quiet    bool
	o        bench.Options
}

func (c *common) register(fs *flag.FlagSet) func() error {
	o := &c.o
	c.urls = urlsFlag{list: []string{"ws://127.0.0.1:8080/ws"}}
	fs.Var(&c.urls, "url", "wspush WebSocket `URLs` (loopback only), comma-separated or with --url repeated; connections go round robin")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "stop the whole run after this long")
	fs.StringVar(&c.jsonPath, "json", "", "write every figure to this JSON file")
	fs.StringVar(&c.svgPath, "svg", "", "write a chart to this SVG file")
	fs.BoolVar(&c.quiet, "quiet", false, "no progress on stderr")
	fs.IntVar(&o.Workers, "workers", 0, "load processes per step (0: ceil(connections / --conns-per-worker))")
	fs.IntVar(&o.ConnsPerWorker, "conns-per-worker", bench.DefaultConnsPerWorker, "connections per worker when --workers is 0")
	fs.IntVar(&o.MaxConnsPerNode, "max-conns-per-node", bench.DefaultMaxConnsPerProc, "connections one server can hold (its open-file limit less some)")
	fs.IntVar(&o.SourceIPs, "source-ips", 0, "spread connections over source addresses 127.0.0.1..127.0.0.N (0: one per 20,000 connections)")
	fs.StringVar(&o.Format, "format", "binary", "subscription format: binary or json (json decodes every message: slower receivers)")
	fs.StringVar(&o.App, "app", bench.DefaultApp, "app ID of the keys")
	fs.StringVar(&o.APIKey, "api-key", "", "API key of POST /api/publish, when the servers have one")
	fs.BoolVar(&o.Cluster, "cluster", false, "the servers share Redis and RabbitMQ: publish each value to one of them (default: to every server with a subscriber of the key; implied by --source amqp)")
	fs.StringVar(&o.AMQPURL, "amqp-url", bench.DefaultAMQPURL, "the RabbitMQ the servers share, for --source amqp (loopback only)")
	fs.StringVar(&o.AMQPExchange, "amqp-exchange", bench.IngestExchange, "the servers' ingest exchange, for --source amqp (<prefix>.ingest when they run with --amqp-prefix)")
	fs.Float64Var(&o.RampRate, "ramp", bench.DefaultRampRate, "connections opened per second, all workers together")
	fs.DurationVar(&o.HandshakeTimeout, "handshake-timeout", bench.DefaultHandshakeTimeout, "limit of one connection's dial, upgrade and subscribe")
	fs.DurationVar(&o.Drain, "drain", bench.DefaultDrain, "after publishing, how long to wait for values in flight")
	fs.DurationVar(&o.BatchInterval, "batch-interval", bench.DefaultBatchInterval, "publisher tick: values due are sent as one batch per server (amqp: one batch) per tick")
	fs.IntVar(&o.PublishConns, "publish-conns", bench.DefaultPublishConns, "concurrent publish requests (amqp: channels)")
	return func() error {
		return errors.Join(
			durationIn("--timeout", c.timeout, time.Second, 24*time.Hour),
			intIn("--workers", o.Workers, 0, 256),
			intIn("--conns-per-worker", o.ConnsPerWorker, 1, maxConnections),
			intIn("--max-conns-per-node", o.MaxConnsPerNode, 1, maxConnections),
			intIn("--source-ips", o.SourceIPs, 0, 254),
			floatIn("--ramp", o.RampRate, 1, maxRate),
			durationIn("--handshake-timeout", o.HandshakeTimeout, 100*time.Millisecond, time.Minute),
			durationIn("--drain", o.Drain, 0, 10*time.Minute),
			durationIn("--batch-interval", o.BatchInterval, time.Millisecond, 10*time.Second),
			intIn("--publish-conns", o.PublishConns, 1, 1024))
	}
}

// run is the whole command; it returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "worker": // hidden: a worker process of a coordinator
		return runWorker(stdin, stdout, stderr)
	}
	for _, s := range scenarios() {
		if s.name == args[0] {
			return runScenario(s, args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "wsbench: unknown scenario %q\n\n%s", args[0], usage)
	return 2
}

func runWorker(stdin io.Reader, stdout, stderr io.Writer) int {
	if _, err := bench.RaiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "wsbench worker:", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := bench.RunWorker(ctx, stdin, stdout); err != nil {
		fmt.Fprintln(stderr, "wsbench worker:", err)
		return 1
	}
	return 0
}

func runScenario(s *scenario, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wsbench "+s.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	validate := s.flags(fs)
	own := make(map[string]bool)
	fs.VisitAll(func(f *flag.Flag) { own[f.Name] = true })
	var c common
	validateCommon := c.register(fs)
	fs.Usage = func() { printUsage(fs, s, own, stdout) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsbench %s: unexpected arguments %q (see --help)\n", s.name, fs.Args())
		return 2
	}
	if err := errors.Join(validate(), validateCommon()); err != nil {
		fmt.Fprintf(stderr, "wsbench %s: %v\n", s.name, err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeoutCause(ctx, c.timeout, fmt.Errorf("--timeout %s reached", c.timeout))
	defer cancel()

	hard, err := bench.RaiseFileLimit()
	if err != nil {
		fmt.Fprintf(stderr, "wsbench: %v\n", err)
	} else {
		c.o.MaxConnsPerWorker = int(min(hard, maxConnections)) - 100
	}
	if c.o.Servers, err = bench.ParseServerURLs(ctx, c.urls.String()); err != nil {
		fmt.Fprintf(stderr, "wsbench %s: --url: %v\n", s.name, err)
		return 2
	}
	if err := bench.CheckAMQPURL(ctx, c.o.AMQPURL); err != nil {
		fmt.Fprintf(stderr, "wsbench %s: --amqp-url: %v\n", s.name, err)
		return 2
	}
	c.o.Deadline = time.Now().Add(c.timeout + 30*time.Second)
	if !c.quiet {
		c.o.Progress = stderr
		c.o.ProgressTTY = isTerminal(stderr)
	}
	r, err := bench.NewRunner(c.o)
	if err != nil {
		fmt.Fprintf(stderr, "wsbench %s: %v\n", s.name, err)
		return 2
	}
	rep, runErr := s.run(ctx, r, stderr)
	code := 0
	if rep != nil {
		if err := bench.WriteText(stdout, rep); err != nil {
			fmt.Fprintf(stderr, "wsbench: %v\n", err)
			code = 1
		}
		if c.jsonPath != "" {
			if err := bench.WriteJSON(c.jsonPath, rep); err != nil {
				fmt.Fprintf(stderr, "wsbench: %v\n", err)
				code = 1
			}
		}
		if c.svgPath != "" {
			if err := bench.WriteSVG(c.svgPath, rep); err != nil {
				fmt.Fprintf(stderr, "wsbench: %v\n", err)
				code = 1
			}
		}
	}
	if runErr != nil {
		fmt.Fprintf(stderr, "wsbench %s: %v\n", s.name, runErr)
		return 1
	}
	return code
}

func printUsage(fs *flag.FlagSet, s *scenario, own map[string]bool, w io.Writer) {
	fmt.Fprintf(w, "Usage: wsbench %s [flags]\n\n%s\n", s.name, s.synopsis)
	for _, section := range []struct {
		title string
		own   bool
	}{{"Flags of " + s.name, true}, {"Flags of every scenario", false}} {
		fmt.Fprintf(w, "\n%s:\n", section.title)
		fs.VisitAll(func(f *flag.Flag) {
			if own[f.Name] != section.own {
				return
			}
			name, u := flag.UnquoteUsage(f)
			line := "  --" + f.Name
			if name != "" {
				line += " " + name
			}
			fmt.Fprintf(w, "%s\n    \t%s", line, u)
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "0s" && f.DefValue != "false" {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(w)
		})
	}
}

// isTerminal tells whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
