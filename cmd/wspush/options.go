package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/wspush/wspush/internal/app"
)

type options struct {
	addr      string
	logFormat string
	logLevel  string
	cfg       app.Config
}

// parseOptions reads flags, then fills every flag not given on the command
// line from its environment twin: --max-connections ↔ WSPUSH_MAX_CONNECTIONS.
func parseOptions(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	c := &o.cfg
	fs := flag.NewFlagSet("wspush", flag.ContinueOnError)
	fs.SetOutput(stderr)

	fs.StringVar(&o.addr, "addr", ":8080", "address to listen on")
	fs.BoolVar(&c.Demo, "demo", false, "start the simulated data center in-process and poll it (app demo, keys s001..s100)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&c.APIKey, "api-key", "", "API key required by POST /api/publish (Authorization: Bearer <key>); empty: loopback clients only")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 0, "graceful shutdown limit (default 10s)")
	fs.StringVar(&c.AdminAddr, "admin-addr", "", "private listener for /metrics, /debug/pprof/, /healthz and /readyz (keep it private); /metrics then leaves --addr; empty: /metrics on --addr, no pprof")
	var debugAddr string
	fs.StringVar(&debugAddr, "debug-addr", "", "deprecated: --admin-addr")
	fs.DurationVar(&c.DrainDelay, "drain-delay", 0, "on SIGTERM, answer /readyz with 503 this long, still serving clients, before closing them (time for a load balancer to stop sending new ones); 0: close at once")
	fs.DurationVar(&c.HTTPHeaderTimeout, "http-header-timeout", 0, "time to read a request's headers and the TLS handshake (default 10s)")
	fs.DurationVar(&c.HTTPIdleTimeout, "http-idle-timeout", 0, "keep-alive HTTP connections idle this long are closed (default 1m0s)")
	fs.DurationVar(&c.HTTPBodyTimeout, "http-body-timeout", 0, "time to read the body of POST /api/publish; a slower one fails and its connection closes (default 30s)")
	fs.IntVar(&c.MaxHTTPConnections, "max-http-connections", 0, "open plain HTTP connections (not upgraded to WebSocket: keep-alive, slow requests, handshakes in flight); more are closed at once (default 10000)")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "PEM certificate (chain) file: serve HTTPS and wss:// (with --tls-key); reloaded when the file changes")
	fs.StringVar(&c.TLSKey, "tls-key", "", "PEM private key file of --tls-cert")

	fs.StringVar(&c.RedisURL, "redis-url", "", "cluster: Redis for the sequencer, history, fan-out between nodes, index and leases (redis://host:6379/0; comma-separated seed URLs for a Redis Cluster)")
	fs.StringVar(&c.Redis.Prefix, "redis-prefix", "", `cluster: prefix of every Redis key, so that deployments can share one Redis (default "wspush")`)
	fs.DurationVar(&c.Redis.HistoryMinAge, "history-min-age", 0, "cluster: history entries younger than this are never trimmed by --history-size (default 30s)")
	fs.StringVar(&c.AMQPURL, "amqp-url", "", "cluster: RabbitMQ to consume integrators' publications from (amqp://guest:guest@host:5672, the default vhost; a trailing / would name the empty one); needs --redis-url")
	fs.StringVar(&c.AMQP.Prefix, "amqp-prefix", "", `cluster: prefix of the RabbitMQ exchanges and queues (default "wspush": wspush.ingest, ...)`)
	fs.IntVar(&c.AMQP.Partitions, "ingest-partitions", 0, "cluster: partition queues of the AMQP ingest, the same on every node; 1 needs no consistent-hash plugin (default 8)")
	fs.StringVar(&c.NodeID, "node-id", "", "cluster: this node's unique name (default: host name and a random suffix)")
	fs.StringVar(&c.DatacenterURL, "datacenter-url", "", "data center base URL to poll (POST <url>/getRealTimeData); empty: no poller")
	fs.StringVar(&c.Poller.Schedule, "poll-schedule", "", `cron spec of the poller (default "@every 1s")`)
	fs.IntVar(&c.Poller.ChunkSize, "poll-chunk", 0, "IDs per getRealTimeData call (default 500)")
	fs.DurationVar(&c.Poller.Timeout, "poll-timeout", 0, "timeout of one getRealTimeData call (default 5s)")

	fs.IntVar(&c.Middle.HistorySize, "history-size", 0, "publications kept per key for resume (default 32)")
	fs.DurationVar(&c.Middle.HistoryTTL, "history-ttl", 0, "age after which history is trimmed (default 5m embedded; with --redis-url, unset means never)")
	fs.IntVar(&c.Middle.MaxKeys, "max-keys", 0, "embedded mode: keys the memory store holds; beyond it the least recently published keys without local subscribers are evicted (default 100000)")
	fs.IntVar(&c.Middle.MaxPayload, "max-payload", 0, "largest publication payload in bytes (default 65536)")
	fs.DurationVar(&c.Middle.IdempotencyWindow, "idempotency-window", 0, "how long a publication's idempotency id (AMQP message-id, HTTP item id) is remembered (default 10m)")
	fs.DurationVar(&c.Middle.PositionCheck, "position-check", 0, "how often every served key's position is compared with the store's (default 5s)")

	u := &c.Users
	var origins, publicURLs, jwtSecret string
	fs.IntVar(&u.MaxConnections, "max-connections", 0, "open connections per node (default 100000)")
	fs.IntVar(&u.MaxConnectionsPerIP, "max-connections-per-ip", 0, "open WebSocket connections per client address (IPv6: per /64); more get 429; 0: no limit (clients behind one NAT or proxy share an address)")
	fs.Int64Var(&u.MaxMessageSize, "max-message-size", 0, "largest client message in bytes (its fragments together); larger closes with 1009 (default 65536)")
	fs.DurationVar(&u.MessageTimeout, "message-timeout", 0, "a client message must arrive whole within this time of its first byte, else the connection closes with 1008 (default 10s)")
	fs.IntVar(&u.MaxKeysPerSubscribe, "max-keys-per-subscribe", 0, "keys in one subscribe (default 100)")
	fs.IntVar(&u.MaxSubscriptions, "max-subscriptions", 0, "keys per connection (default 1000)")
	fs.Float64Var(&u.CommandRate, "command-rate", 0, "client commands per second per connection (default 20)")
	fs.IntVar(&u.CommandBurst, "command-burst", 0, "client command burst (default 50)")
	fs.IntVar(&u.MaxBadCommands, "max-bad-commands", 0, "consecutive bad commands before closing with 1008 (default 10)")
	fs.IntVar(&u.QueueMaxBytes, "queue-max-bytes", 0, "outgoing queue per connection; overflow closes with 4008 (default 1048576)")
	fs.DurationVar(&u.PingInterval, "ping-interval", 0, "heartbeat ping interval (default 25s)")
	fs.DurationVar(&u.PingTimeout, "ping-timeout", 0, "silence after which a connection is reaped (default 60s)")
	fs.DurationVar(&u.WriteTimeout, "write-timeout", 0, "timeout of one write to a client (default 10s)")
	fs.DurationVar(&u.WriteDelay, "write-delay", 0, "least time between two writes to a connection: what is queued within it after a write waits for its end and shares one write (fewer syscalls for keys that change many times a second, at up to that much latency); a connection that did not write for it writes at once; 0: no delay (the writer pool still batches what piles up while it is busy)")
	fs.StringVar(&origins, "allowed-origins", "", `comma-separated browser origins (https://dash.example) allowed to connect and publish besides --public-url's, "*" for any`)
	fs.StringVar(&publicURLs, "public-url", "", "comma-separated URLs browsers reach this server at (https://push.example); their origins are allowed; empty: the listener's loopback names (http://localhost:<port>, http://127.0.0.1:<port>)")
	fs.StringVar(&jwtSecret, "jwt-secret", "", "HS256 secret: when set, clients need a JWT (?token= or Authorization: Bearer)")
	fs.StringVar(&u.JWTPublicKeyFile, "jwt-public-key", "", "PEM public key file (RSA: RS256, ECDSA P-256: ES256, ...): when set, clients need a JWT signed by its private key (instead of --jwt-secret)")
	fs.StringVar(&u.JWTAudience, "jwt-audience", "", "when set, a client JWT's aud must contain it")
	fs.StringVar(&u.JWTIssuer, "jwt-issuer", "", "when set, a client JWT's iss must be it")
	fs.BoolVar(&u.JWTAllowNoExp, "jwt-allow-no-exp", false, "accept client JWTs without exp (they never expire); by default exp is required and a connection is closed with 4003 when its token expires unless refreshed")

	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: wspush [flags]\n\nEvery flag can also be set by its environment twin, e.g. --max-connections as WSPUSH_MAX_CONNECTIONS.\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			usage := f.Usage
			if !strings.Contains(usage, "(default") && f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
				usage += fmt.Sprintf(" (default %s)", f.DefValue)
			}
			fmt.Fprintf(fs.Output(), "  --%s (env %s)\n    \t%s\n", f.Name, envName(f.Name), usage)
		})
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, fmt.Errorf("flags: %w", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && !set[f.Name] && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return o, envErr
	}
	if debugAddr != "" {
		if c.AdminAddr != "" && c.AdminAddr != debugAddr {
			return o, fmt.Errorf("--debug-addr %s and --admin-addr %s: --debug-addr is the deprecated name of --admin-addr, give one", debugAddr, c.AdminAddr)
		}
		c.AdminAddr = debugAddr
		fmt.Fprintln(stderr, "wspush: --debug-addr is deprecated, use --admin-addr (it also moves /metrics off --addr)")
	}
	c.AllowedOrigins = splitList(origins)
	c.PublicURLs = splitList(publicURLs)
	if jwtSecret != "" {
		u.JWTSecret = []byte(jwtSecret)
	}
	return o, nil
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

func envName(flagName string) string {
	return "WSPUSH_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
