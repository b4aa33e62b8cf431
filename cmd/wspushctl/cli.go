package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
)

// Exit codes: 0 done (or stopped while only waiting: sub, pub at the end
// of what stdin gave), 1 refused or failed (the message says which and
// why), 2 a usage error, 130 interrupted in the middle of a request.
const (
	exitOK          = 0
	exitFail        = 1
	exitUsage       = 2
	exitInterrupted = 130
)

const usage = `Usage: wspushctl <command> [flags] [args]

wspushctl publishes to, subscribes to and summarises a wspush server.

Commands:
  pub     publish values over HTTP (POST /api/publish) or AMQP (exchange wspush.ingest)
  sub     print the live values of keys as JSON lines, resuming across reconnects
  stats   summarise a node's /metrics (connections, rates, queues, poller, AMQP, Redis)

Run "wspushctl <command> --help" for a command's flags and examples.

Examples:
  wspushctl pub --app plant-7 001='{"temp":21.5}' 002=17
  wspushctl sub --app plant-7 001 002
  wspushctl stats --url http://127.0.0.1:9100
`

// command is one subcommand: its flags are registered on fs, and run gets
// the arguments left after them.
type command struct {
	name, synopsis, examples string
	// env lists the flags that have a WSPUSH_* environment twin.
	env   []string
	flags func(fs *flag.FlagSet)
	run   func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

func commands() []*command { return []*command{pubCommand(), subCommand(), statsCommand()} }

// usageError is an error in the command line: it exits with 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// run runs the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.main(ctx, args[1:], stdin, stdout, stderr, getenv)
		}
	}
	fmt.Fprintf(stderr, "wspushctl: unknown command %q\n\n%s", args[0], usage)
	return exitUsage
}

func (c *command) main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("wspushctl "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.flags(fs)
	fs.Usage = func() {} // --help goes to stdout, below; an error gets a hint
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			c.printUsage(fs)
			return exitOK
		}
		// The flag package has said what is wrong.
		fmt.Fprintf(stderr, "Run \"wspushctl %s --help\" for usage.\n", c.name)
		return exitUsage
	}
	if err := applyEnv(fs, c.env, getenv); err != nil {
		fmt.Fprintf(stderr, "wspushctl %s: %v\n", c.name, err)
		return exitUsage
	}
	err := c.run(ctx, fs.Args(), stdin, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "wspushctl %s: %v\nRun \"wspushctl %s --help\" for usage.\n", c.name, err, c.name)
		return exitUsage
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// Interrupted in the middle of something (a command that was only
		// waiting returns nil): say what.
		fmt.Fprintf(stderr, "wspushctl %s: interrupted: %v\n", c.name, err)
		return exitInterrupted
	}
	fmt.Fprintf(stderr, "wspushctl %s: %v\n", c.name, err)
	return exitFail
}

func (c *command) printUsage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintf(w, "%s\n\nFlags:\n", c.synopsis)
	env := make(map[string]bool, len(c.env))
	for _, n := range c.env {
		env[n] = true
	}
	fs.VisitAll(func(f *flag.Flag) {
		u := f.Usage
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
			u += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		name := "--" + f.Name
		if env[f.Name] {
			name += " (env " + envName(f.Name) + ")"
		}
		fmt.Fprintf(w, "  %s\n    \t%s\n", name, u)
	})
	fmt.Fprintf(w, "\nExamples:\n%s", c.examples)
}

// applyEnv fills each flag of names that the command line did not set
// from its environment twin: --api-key ↔ WSPUSH_API_KEY.
func applyEnv(fs *flag.FlagSet, names []string, getenv func(string) string) error {
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range names {
		if v := getenv(envName(n)); v != "" && !set[n] {
			if err := fs.Set(n, v); err != nil {
				return fmt.Errorf("%s=%q: %w", envName(n), v, err)
			}
		}
	}
	return nil
}

func envName(flagName string) string {
	return "WSPUSH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// httpBase turns a server URL into the base of its HTTP endpoints:
// http(s)://host[:port] stays, ws(s)://host/ws becomes http(s)://host, so
// that one WSPUSH_URL serves every command. A path is kept (a server
// behind a reverse proxy's prefix), without an endpoint's own path (/ws,
// /metrics, /api/publish) pasted from elsewhere.
func httpBase(raw string) (string, error) {
	u, err := parseServerURL(raw)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	for _, endpoint := range []string{"/ws", "/metrics", "/api/publish"} {
		u.Path = strings.TrimSuffix(u.Path, endpoint)
	}
	u.RawPath = ""
	return u.String(), nil
}

// wsURL turns a server URL into its WebSocket endpoint: ws(s)://host/ws
// stays, http(s)://host[:port] becomes ws(s)://host[:port]/ws.
func wsURL(raw string) (string, error) {
	u, err := parseServerURL(raw)
	if err != nil {
		return "", err
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	if !strings.HasSuffix(u.Path, "/ws") {
		u.Path = strings.TrimSuffix(u.Path, "/")
		for _, endpoint := range []string{"/metrics", "/api/publish"} {
			u.Path = strings.TrimSuffix(u.Path, endpoint)
		}
		u.Path += "/ws"
		u.RawPath = ""
	}
	return u.String(), nil
}

func parseServerURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, usagef("--url %q: %v", raw, err)
	}
	switch u.Scheme {
	case "http", "https", "ws", "wss":
	default:
		return nil, usagef("--url %q: want http://host:port (or ws://host:port/ws)", raw)
	}
	if u.Host == "" {
		return nil, usagef("--url %q: no host", raw)
	}
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// durationIn checks a duration flag's bounds.
func durationIn(name string, v, lo, hi time.Duration) error {
	if v < lo || v > hi {
		return usagef("%s %s: want %s to %s", name, v, lo, hi)
	}
	return nil
}
