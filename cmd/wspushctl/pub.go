package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/wspush/wspush/proto"
)

// Limits of POST /api/publish (docs/PROTOCOL.md, "HTTP publish API"): at
// most 1000 items and 8 MiB per request. A batch is sent before it would
// cross either; maxBatchBody leaves room for the envelope.
const (
	maxBatchItems = 1000
	maxBatchBody  = 7 << 20
	// maxLine bounds one line of stdin (a value over the server's
	// --max-payload is refused by the server anyway).
	maxLine = 8 << 20
)

type pubOptions struct {
	url, amqpURL, exchange, apiKey, app string
	batch                               int
	timeout                             time.Duration
}

func pubCommand() *command {
	var o pubOptions
	return &command{
		name: "pub",
		synopsis: `Usage: wspushctl pub [flags] --app APP [key=JSON ...]

Publishes values to a wspush server, over HTTP (POST /api/publish on --url,
the default) or over AMQP (the exchange wspush.ingest of a cluster's
RabbitMQ, with --amqp-url).

Values come from the arguments, key=JSON each (the JSON is the value: quote
a string as '"on"'), or, without arguments, from stdin as JSON lines:
  {"key":"001","data":{"temp":21.5},"id":"dev7-1001"}
with "app" (default --app), "key", "data" (any JSON value) or "b64" (bytes,
base64), and optionally "id" (an idempotency id: a retry with the same id
is not published twice) and "ts" (Unix milliseconds; over AMQP it is sent
in the timestamp property, whole seconds). Lines are sent in batches of up
to --batch items (and 7 MiB); a batch goes as soon as stdin has no further
line ready, so a live stream is published line by line.

Output, one JSON line per value in the order given:
  HTTP: {"app":"plant-7","key":"001","seq":12}      the seq the server assigned
  AMQP: {"app":"plant-7","key":"001","confirmed":true}  the broker has it (sequenced
        by a node soon after; its seq is not known to the publisher)
Any refusal (the server's error code and message, a broker nack, an
unroutable message) stops pub with exit status 1 after printing what went
through.`,
		examples: `  wspushctl pub --app plant-7 001='{"temp":21.5}' 002=17
  printf '%s\n' '{"key":"001","data":1,"id":"a-1"}' '{"key":"002","b64":"AAEC"}' | wspushctl pub --app plant-7
  wspushctl pub --url https://push.example --api-key "$KEY" --app plant-7 001=true
  wspushctl pub --amqp-url amqp://guest:guest@127.0.0.1:5672 --app plant-7 001='{"temp":21.5}'
`,
		env: []string{"url", "api-key"},
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&o.url, "url", "http://127.0.0.1:8080", "wspush server to publish to over HTTP")
			fs.StringVar(&o.amqpURL, "amqp-url", "", "publish over AMQP to this RabbitMQ instead of HTTP (amqp://user:pass@host:5672; --url is then unused)")
			fs.StringVar(&o.exchange, "exchange", "wspush.ingest", "AMQP exchange of the cluster's ingest (<--amqp-prefix>.ingest)")
			fs.StringVar(&o.apiKey, "api-key", "", "the server's --api-key (HTTP: Authorization: Bearer); not needed from loopback when the server has none")
			fs.StringVar(&o.app, "app", "", "app of the values (stdin lines may name their own)")
			fs.IntVar(&o.batch, "batch", maxBatchItems, "values per HTTP request or per wait for AMQP confirms (1 to 1000)")
			fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "limit of one batch: the HTTP request, or the AMQP publishes and their confirms")
		},
		run: o.run,
	}
}

// pubItem is one value to publish; its JSON form is an item of
// POST /api/publish.
type pubItem struct {
	App  string          `json:"app"`
	Key  string          `json:"key"`
	Data json.RawMessage `json:"data,omitempty"`
	B64  []byte          `json:"b64,omitempty"`
	TS   int64           `json:"ts,omitempty"`
	ID   string          `json:"id,omitempty"`
}

// publisher sends one batch and prints a line per value that went
// through, in order; it returns an error for a refusal, after printing
// what went through before it.
type publisher interface {
	publish(ctx context.Context, items []pubItem) error
	close()
}

func (o *pubOptions) run(ctx context.Context, args []string, stdin io.Reader, stdout, _ io.Writer) error {
	if o.batch < 1 || o.batch > maxBatchItems {
		return usagef("--batch %d: want 1 to %d", o.batch, maxBatchItems)
	}
	if err := durationIn("--timeout", o.timeout, time.Second, time.Hour); err != nil {
		return err
	}
	if o.app != "" {
		if err := proto.ValidateName(o.app); err != nil {
			return usagef("--app %q: %v", o.app, err)
		}
	}
	var items []pubItem
	if len(args) > 0 {
		if o.app == "" {
			return usagef("--app is required with key=JSON arguments")
		}
		for _, a := range args {
			it, err := parseArg(o.app, a)
			if err != nil {
				return err
			}
			items = append(items, it)
		}
	}
	out := &jsonLines{w: stdout}
	var p publisher
	var err error
	if o.amqpURL != "" {
		p, err = dialAMQP(ctx, o.amqpURL, o.exchange, o.batch, o.timeout, out)
	} else {
		p, err = newHTTPPublisher(o.url, o.apiKey, o.timeout, out)
	}
	if err != nil {
		return err
	}
	defer p.close()
	if items != nil {
		for len(items) > 0 {
			n := min(len(items), o.batch)
			if err := p.publish(ctx, items[:n]); err != nil {
				return err
			}
			items = items[n:]
		}
		return out.err
	}
	return publishLines(ctx, stdin, o.app, o.batch, p)
}

// parseArg parses a key=JSON argument.
func parseArg(app, arg string) (pubItem, error) {
	key, val, ok := strings.Cut(arg, "=")
	if !ok {
		return pubItem{}, usagef("argument %q: want key=JSON", arg)
	}
	if err := proto.ValidateName(key); err != nil {
		return pubItem{}, usagef("argument %q: key %q: %v", arg, key, err)
	}
	if !json.Valid([]byte(val)) {
		return pubItem{}, usagef("argument %q: the value is not JSON (quote a string: %s='\"%s\"')", arg, key, val)
	}
	return pubItem{App: app, Key: key, Data: json.RawMessage(val)}, nil
}

// parseLine parses a JSON line of stdin (n is its line number, for errors).
func parseLine(app string, n int, line []byte) (pubItem, error) {
	var it pubItem
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&it); err != nil {
		return it, fmt.Errorf(`stdin line %d: %v (want {"key":..,"data":..} or {"key":..,"b64":..}, with optional "app", "id", "ts")`, n, err)
	}
	if dec.More() {
		return it, fmt.Errorf("stdin line %d: more than one JSON value", n)
	}
	if it.App == "" {
		it.App = app
	}
	switch {
	case it.App == "":
		return it, fmt.Errorf(`stdin line %d: no "app", and no --app`, n)
	case it.Key == "":
		return it, fmt.Errorf(`stdin line %d: no "key"`, n)
	case (it.Data == nil) == (it.B64 == nil):
		return it, fmt.Errorf(`stdin line %d: give "data" (JSON) or "b64" (base64 bytes), one of them`, n)
	case it.TS < 0:
		return it, fmt.Errorf(`stdin line %d: "ts" must be Unix milliseconds`, n)
	}
	if err := proto.ValidateName(it.App); err != nil {
		return it, fmt.Errorf("stdin line %d: app %q: %w", n, it.App, err)
	}
	if err := proto.ValidateName(it.Key); err != nil {
		return it, fmt.Errorf("stdin line %d: key %q: %w", n, it.Key, err)
	}
	if it.ID != "" {
		if err := proto.ValidateIdempotencyID(it.ID); err != nil {
			return it, fmt.Errorf("stdin line %d: id %q: %w", n, it.ID, err)
		}
	}
	return it, nil
}

// lineOrErr is what the stdin reader hands over: a parsed line, or the
// error that ends the input.
type lineOrErr struct {
	item pubItem
	err  error
}

// publishLines publishes stdin's JSON lines in batches. A goroutine reads
// stdin, so that a batch is sent as soon as no further line is ready (a
// live stream is not held back waiting for a full batch); it stops at the
// end of stdin, or at its next line once ctx ends.
func publishLines(ctx context.Context, stdin io.Reader, app string, batch int, p publisher) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lines := make(chan lineOrErr, batch)
	go func() {
		defer close(lines)
		br := bufio.NewReaderSize(stdin, 64<<10)
		for n := 1; ; n++ {
			line, err := readLine(br)
			if len(bytes.TrimSpace(line)) > 0 {
				it, perr := parseLine(app, n, line)
				select {
				case lines <- lineOrErr{it, perr}:
				case <-ctx.Done():
					return
				}
				if perr != nil {
					return
				}
			}
			if err == io.EOF {
				return
			}
			if err != nil {
				select {
				case lines <- lineOrErr{err: fmt.Errorf("stdin line %d: %w", n, err)}:
				case <-ctx.Done():
				}
				return
			}
		}
	}()

	var pending []pubItem
	size := 0
	flush := func() error {
		if len(pending) == 0 {
			return nil
		}
		err := p.publish(ctx, pending)
		pending, size = pending[:0], 0
		return err
	}
	for {
		var l lineOrErr
		var ok bool
		select {
		case l, ok = <-lines:
		default: // nothing ready: send what is pending, then wait
			if err := flush(); err != nil {
				return err
			}
			select {
			case l, ok = <-lines:
			case <-ctx.Done():
				return nil // everything read so far is published
			}
		}
		if !ok {
			return flush()
		}
		if l.err != nil {
			if err := flush(); err != nil {
				return err
			}
			return l.err
		}
		n := itemSize(l.item)
		if len(pending) == batch || size+n > maxBatchBody {
			if err := flush(); err != nil {
				return err
			}
		}
		pending = append(pending, l.item)
		size += n
	}
}

// readLine reads one line of at most maxLine bytes, without its newline.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("line over %d bytes", maxLine)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return bytes.TrimSuffix(line, []byte("\n")), err
	}
}

// itemSize is about the bytes of it in a request body.
func itemSize(it pubItem) int {
	return len(it.App) + len(it.Key) + len(it.Data) + len(it.B64)*4/3 + len(it.ID) + 64
}

// jsonLines writes one JSON line per value; err keeps the first write
// error (stdout closed), which ends pub.
type jsonLines struct {
	w   io.Writer
	err error
}

func (j *jsonLines) write(v any) error {
	if j.err != nil {
		return j.err
	}
	b, err := json.Marshal(v)
	if err != nil {
		j.err = err
		return err
	}
	if _, err := j.w.Write(append(b, '\n')); err != nil {
		j.err = fmt.Errorf("stdout: %w", err)
	}
	return j.err
}

// published is pub's output line for a value.
type published struct {
	App       string  `json:"app"`
	Key       string  `json:"key"`
	ID        string  `json:"id,omitempty"`
	Seq       *uint64 `json:"seq,omitempty"`
	Confirmed bool    `json:"confirmed,omitempty"`
}
