package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice/client"
)

type subOptions struct {
	url, app, token, format, since string
	count                          int
	dialTimeout                    time.Duration
}

func subCommand() *command {
	var o subOptions
	return &command{
		name: "sub",
		synopsis: `Usage: wspushctl sub [flags] --app APP key...

Subscribes to keys of an app and prints, on stdout, one JSON line per value
and per reset, per key in order:
  {"app":"plant-7","key":"001","seq":12,"epoch":"k3J9aZ0qLm2x","ts":1764645000123,"data":{"temp":21.5}}
  {"app":"plant-7","key":"002","seq":3,"epoch":"k3J9aZ0qLm2x","ts":1764645000123,"b64":"AAEC"}
  {"app":"plant-7","key":"001","seq":40,"epoch":"Qw8r...","reset":"epoch"}
A value that is not JSON comes as "b64" (base64 bytes). A reset line says
that the key's values up to its seq will not come (reason "epoch": the
server lost the stream, "gap": its history no longer reaches back); the
next value has seq+1. ts is Unix milliseconds. See docs/PROTOCOL.md.

A key starts at its latest value (or at --since). When the connection is
lost, sub reconnects (backoff with jitter) and resumes every key from the
last value it printed, so that nothing is printed twice or skipped. Connection
changes go to stderr. On SIGINT, after --count values, or when the server
refuses for good (a bad token, a forbidden app), sub stops and writes the
keys' last positions to stderr as a JSON object, which --since takes back:
  positions: {"001":{"seq":12,"epoch":"k3J9aZ0qLm2x"}}`,
		examples: `  wspushctl sub --app demo s001 s002                # wspush --demo
  wspushctl sub --url wss://push.example/ws --token "$JWT" --app plant-7 001
  wspushctl sub --app plant-7 --format binary --count 10 001 | jq .data.temp
  wspushctl sub --app plant-7 --since '{"001":{"seq":12,"epoch":"k3J9aZ0qLm2x"}}' 001
`,
		env: []string{"url", "token"},
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.url, "url", "ws://127.0.0.1:8080/ws", "wspush WebSocket endpoint (http://host:port works too)")
			fs.StringVar(&o.app, "app", "", "app of the keys (required)")
			fs.StringVar(&o.token, "token", "", "JWT for a server with --jwt-secret or --jwt-public-key (sent as Authorization: Bearer)")
			fs.StringVar(&o.format, "format", "json", "how values travel: json or binary (the printed lines are the same)")
			fs.StringVar(&o.since, "since", "", `resume keys from positions: {"key":{"seq":N,"epoch":"E"},...}, as printed at exit`)
			fs.IntVar(&o.count, "count", 0, "stop after this many values (0: until interrupted)")
			fs.DurationVar(&o.dialTimeout, "dial-timeout", 10*time.Second, "limit of the first connection and subscribe; later reconnects never give up")
		},
		run: o.run,
	}
}

// subLine is sub's output line for a value or a reset.
type subLine struct {
	App   string          `json:"app"`
	Key   string          `json:"key"`
	Seq   uint64          `json:"seq"`
	Epoch string          `json:"epoch"`
	TS    int64           `json:"ts,omitempty"`
	Data  json.RawMessage `json:"data,omitempty"`
	B64   []byte          `json:"b64,omitempty"`
	Reset string          `json:"reset,omitempty"`
}

func (o *subOptions) run(ctx context.Context, keys []string, _ io.Reader, stdout, stderr io.Writer) error {
	if o.app == "" {
		return usagef("--app is required")
	}
	if len(keys) == 0 {
		return usagef("no keys: give the keys to subscribe to after the flags")
	}
	for _, name := range append([]string{o.app}, keys...) {
		if err := proto.ValidateName(name); err != nil {
			return usagef("%q: %v", name, err)
		}
	}
	if o.format != "json" && o.format != "binary" {
		return usagef("--format %q: want json or binary", o.format)
	}
	if o.count < 0 {
		return usagef("--count %d: want 0 or more", o.count)
	}
	if err := durationIn("--dial-timeout", o.dialTimeout, 100*time.Millisecond, time.Hour); err != nil {
		return err
	}
	var since map[string]client.Position
	if o.since != "" {
		if err := json.Unmarshal([]byte(o.since), &since); err != nil {
			return usagef(`--since: %v (want {"key":{"seq":N,"epoch":"E"},...})`, err)
		}
	}
	ws, err := wsURL(o.url)
	if err != nil {
		return err
	}

	out := &jsonLines{w: stdout}
	stop := make(chan error, 1) // the handler's reason to stop: --count reached, stdout failed, keys dropped
	stopWith := func(err error) {
		select {
		case stop <- err:
		default:
		}
	}
	values := 0
	h := client.HandlerFuncs{
		Data: func(p client.Publication) {
			if o.count > 0 && values >= o.count {
				return // Close is on its way
			}
			l := subLine{App: p.App, Key: p.Key, Seq: p.Seq, Epoch: p.Epoch, TS: p.Time.UnixMilli()}
			if p.JSON {
				l.Data = p.Data
			} else {
				l.B64 = p.Data
			}
			if err := out.write(l); err != nil {
				stopWith(err)
				return
			}
			if values++; o.count > 0 && values == o.count {
				stopWith(nil)
			}
		},
		Reset: func(r client.Reset) {
			if o.count > 0 && values >= o.count {
				return
			}
			if err := out.write(subLine{App: r.App, Key: r.Key, Seq: r.Seq, Epoch: r.Epoch, Reset: r.Reason}); err != nil {
				stopWith(err)
			}
		},
		Ack: func(a client.Ack) {
			if a.Resumed && !a.Recovered {
				fmt.Fprintf(stderr, "wspushctl sub: resumed %s, but not every value could be recovered: see the reset lines\n", a.App)
			}
		},
		Error: func(err error) {
			stopWith(fmt.Errorf("keys dropped by the server: %w", err))
		},
	}
	first := true
	cfg := client.Config{
		URL: ws, Token: o.token, DialTimeout: o.dialTimeout,
		Header: http.Header{"User-Agent": {"wspushctl"}},
		OnState: func(ev client.StateEvent) {
			switch ev.State {
			case client.StateOpen:
				if !first {
					fmt.Fprintf(stderr, "wspushctl sub: reconnected to %s\n", ws)
				}
				first = false
			case client.StateReconnecting:
				fmt.Fprintf(stderr, "wspushctl sub: connection lost (%s); reconnecting\n", lostReason(ev))
			}
		},
	}

	dctx, cancel := context.WithTimeout(ctx, o.dialTimeout)
	defer cancel()
	c, err := client.Dial(dctx, cfg)
	if err != nil {
		return subError(ctx, err)
	}
	defer c.Close()
	if _, err := c.Subscribe(dctx, o.app, keys, client.SubscribeOptions{Format: client.Format(o.format), Since: since}, h); err != nil {
		return subError(ctx, err)
	}
	cancel()

	select {
	case <-ctx.Done():
	case err = <-stop:
	case <-c.Done():
		err = c.Err()
	}
	c.Close() // no handler runs after it: the positions are final
	if b, merr := json.Marshal(c.Positions(o.app)); merr == nil {
		fmt.Fprintf(stderr, "positions: %s\n", b)
	}
	if err != nil && !errors.Is(err, client.ErrClosed) {
		return err
	}
	return out.err
}

// subError words a failed start: an interrupt is no error, a timeout says
// which limit.
func subError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return nil // interrupted before the first value: nothing to say
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w (--dial-timeout)", err)
	}
	var ce *client.CommandError
	if errors.As(err, &ce) {
		return fmt.Errorf("refused: %s: %s", ce.Code, ce.Message)
	}
	return err
}

// lostReason words why a connection ended, for stderr.
func lostReason(ev client.StateEvent) string {
	switch {
	case ev.Code != 0 && ev.Reason != "":
		return fmt.Sprintf("close %d %q", ev.Code, ev.Reason)
	case ev.Code != 0:
		return fmt.Sprintf("close %d", ev.Code)
	case ev.Err != nil:
		return ev.Err.Error()
	}
	return "closed"
}
