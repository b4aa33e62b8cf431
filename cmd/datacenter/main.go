// Command datacenter serves a simulated data center: the getRealTimeData
// API of docs/PROTOCOL.md ("Data-center API") with random-walk sensors, for demos, tests and
// benchmarks of wspush's poller. By default any app ID is accepted and any
// valid key returns a value such as {"temp":21.53,"humidity":40.1};
// --apps and --sensors limit it as wspush --demo does (app demo, s001..s100).
//
//	datacenter --addr :9090 --step 1s
//	datacenter --apps demo --sensors 100
//	curl -d '{"appID":"demo","ids":["s001","s002"]}' localhost:9090/getRealTimeData
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/proto"
)

// envPrefix makes every flag's environment twin: --max-ids is
// WSPUSH_DATACENTER_MAX_IDS.
const envPrefix = "WSPUSH_DATACENTER_"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "datacenter:", err)
		os.Exit(1)
	}
}

func envName(flagName string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func run(args []string) error {
	fs := flag.NewFlagSet("datacenter", flag.ExitOnError)
	addr := fs.String("addr", ":9090", "listen address")
	step := fs.Duration("step", simulator.DefaultStep, "how often each sensor value changes")
	maxIDs := fs.Int("max-ids", simulator.DefaultMaxIDs, "most IDs one request may ask for")
	seed := fs.Uint64("seed", 0, "seed of the sensors' walks (same seed, same values)")
	faultName := fs.String("fault", "none", "fault mode for testing clients: none, error500, garbage, slow or extra")
	appList := fs.String("apps", "", "comma-separated apps the data center knows; others get no values (empty: every app)")
	sensors := fs.Int("sensors", 0, "sensors per app, IDs s001..sNNN; other IDs are omitted (0: every valid ID)")
	fs.Usage = func() {
		out := fs.Output()
		fmt.Fprintf(out, "Usage: datacenter [flags]\n\n"+
			"Serves a simulated data center: POST /getRealTimeData with\n"+
			"{\"appID\":\"plant-7\",\"ids\":[\"001\"]} returns random-walk sensor values.\n"+
			"GET /healthz answers 200 once it listens.\n\n"+
			"Every flag can also be set by the environment variable named after it.\n\nFlags:\n")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(out, "  --%s (env %s, default %q)\n    \t%s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
		})
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	fault, err := simulator.ParseFault(*faultName)
	if err != nil {
		return fmt.Errorf("--fault: %w", err)
	}
	if *step < time.Millisecond {
		return fmt.Errorf("--step %s: must be at least 1ms", *step)
	}
	if *maxIDs <= 0 {
		return fmt.Errorf("--max-ids %d: must be positive", *maxIDs)
	}
	if *sensors < 0 {
		return fmt.Errorf("--sensors %d: must be 0 (every ID) or positive", *sensors)
	}
	var apps []string
	for _, a := range strings.Split(*appList, ",") {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if err := proto.ValidateName(a); err != nil {
			return fmt.Errorf("--apps: %q: %w", a, err)
		}
		apps = append(apps, a)
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	sim := simulator.New(simulator.Config{Step: *step, MaxIDs: *maxIDs, Seed: *seed, Fault: fault, Apps: apps, Sensors: *sensors})
	mux := http.NewServeMux()
	mux.Handle(simulator.Path, sim)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// Requests inherit ctx, so a request held by the slow fault ends
		// at shutdown instead of holding it up.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("data center simulator listening", "addr", ln.Addr().String(), "step", *step, "fault", fault.String(),
		"apps", *appList, "sensors", *sensors)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "requests", sim.Requests())
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// applyEnv sets every flag not given on the command line from its
// environment twin, through the flag's own parser so that bad values get
// the same errors.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q (--%s): %w", envName(f.Name), v, f.Name, e)
			}
		}
	})
	return err
}
