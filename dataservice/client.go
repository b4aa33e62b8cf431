package dataservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/wspush/wspush/proto"
)

// Defaults of ClientConfig (and of the matching Config fields).
const (
	DefaultTimeout          = 5 * time.Second
	DefaultMaxResponseBytes = 16 << 20
)

// endpoint is the path of the API below the data center's base URL.
const endpoint = "getRealTimeData"

// snippetLen bounds how much of an error response body goes into a
// StatusError: enough to read the data center's message, not enough to flood
// a log line.
const snippetLen = 512

// ErrResponseTooLarge is returned (wrapped) when a response body exceeds
// ClientConfig.MaxResponseBytes.
var ErrResponseTooLarge = errors.New("response too large")

// StatusError is returned (wrapped) when the data center answers with a
// status other than 2xx.
type StatusError struct {
	Code int
	// Body is the start of the response body, for the log.
	Body string
}

func (e *StatusError) Error() string {
	if e.Body == "" {
		return fmt.Sprintf("status %d", e.Code)
	}
	return fmt.Sprintf("status %d: %q", e.Code, e.Body)
}

// ClientConfig configures a Client. The zero value of every field except URL
// means its default.
type ClientConfig struct {
	// URL is the data center's base URL; requests go to URL/getRealTimeData.
	// Required.
	URL string
	// Timeout bounds one request, response body included (default 5s).
	Timeout time.Duration
	// MaxResponseBytes is the largest response body accepted (default
	// 16 MiB), so that a broken data center cannot exhaust memory.
	MaxResponseBytes int64
	// HTTPClient sends the requests; nil means a client of this package with
	// enough idle connections for concurrent polls.
	HTTPClient *http.Client
}

func (c ClientConfig) withDefaults() ClientConfig {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxResponseBytes == 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	return c
}

// Validate reports the first invalid field.
func (c ClientConfig) Validate() error {
	switch {
	case c.URL == "":
		return errors.New("data center URL: required")
	case c.Timeout < 0:
		return fmt.Errorf("timeout %s: must be positive", c.Timeout)
	case c.MaxResponseBytes < 0:
		return fmt.Errorf("max response bytes %d: must be positive", c.MaxResponseBytes)
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return fmt.Errorf("data center URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("data center URL %q: want http(s)://host[:port][/path]", c.URL)
	}
	return nil
}

// Client calls the data center's getRealTimeData API. It is safe for
// concurrent use.
type Client struct {
	url     string
	timeout time.Duration
	max     int64
	http    *http.Client
}

// NewClient validates cfg and returns a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("data center client config: %w", err)
	}
	cfg = cfg.withDefaults()
	u, err := url.JoinPath(cfg.URL, endpoint)
	if err != nil {
		return nil, fmt.Errorf("data center URL: %w", err)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// The default of 2 idle connections per host would make concurrent
		// polls of one data center open and close a connection per request.
		t.MaxIdleConnsPerHost = 32
		// The context deadline already bounds every request; the client
		// timeout is the backstop for a body read that ignores it.
		hc = &http.Client{Transport: t, Timeout: cfg.Timeout + time.Second}
	}
	return &Client{url: u, timeout: cfg.Timeout, max: cfg.MaxResponseBytes, http: hc}, nil
}

// Value is one entry of a getRealTimeData response.
type Value struct {
	// ID is the key; it is one of the requested IDs (the same string).
	ID string
	// Value is the entry's JSON value, compacted so that equal values have
	// equal bytes. Each Value has its own memory, so keeping one does not
	// keep the rest of the response alive.
	Value json.RawMessage
	// TS is the time of the value in Unix milliseconds, 0 when the data
	// center did not say (the caller then uses the time it got it).
	TS int64
}

// Result is a decoded getRealTimeData response.
type Result struct {
	// Values holds the usable entries, in response order, at most one per
	// requested ID.
	Values []Value
	// Ignored counts the entries that were dropped because their id was
	// invalid, not requested or repeated, their value missing or not UTF-8,
	// or their ts invalid; one bad entry does not fail the whole batch.
	Ignored int
	// IgnoredErr describes the first ignored entry (nil when Ignored is 0).
	IgnoredErr error
}

// request is the body of a getRealTimeData call.
type request struct {
	AppID string   `json:"appID"`
	IDs   []string `json:"ids"`
}

// GetRealTimeData asks the data center for the current values of ids in app.
// The error wraps a *StatusError for a non-2xx answer, ErrResponseTooLarge
// for an oversized one, the context's error for a timeout, and otherwise
// says which step failed (transport, read, decode). Bad entries do not fail
// the call: they are counted in Result.Ignored.
func (c *Client) GetRealTimeData(ctx context.Context, app string, ids []string) (Result, error) {
	if err := proto.ValidateName(app); err != nil {
		return Result{}, fmt.Errorf("getRealTimeData: app %q: %w", app, err)
	}
	for _, id := range ids {
		if err := proto.ValidateName(id); err != nil {
			return Result{}, fmt.Errorf("getRealTimeData %s: id %q: %w", app, id, err)
		}
	}
	if len(ids) == 0 {
		return Result{}, nil
	}
	body, err := json.Marshal(request{AppID: app, IDs: ids})
	if err != nil {
		return Result{}, fmt.Errorf("getRealTimeData %s: encode request: %w", app, err)
	}

	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return Result{}, fmt.Errorf("getRealTimeData %s: %w", app, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return Result{}, fmt.Errorf("getRealTimeData %s (%d ids): %w", app, len(ids), err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, snippetLen))
		return Result{}, fmt.Errorf("getRealTimeData %s: %w", app,
			&StatusError{Code: resp.StatusCode, Body: string(bytes.TrimSpace(snippet))})
	}
	if resp.ContentLength > c.max {
		return Result{}, fmt.Errorf("getRealTimeData %s: %w: Content-Length %d > %d bytes",
			app, ErrResponseTooLarge, resp.ContentLength, c.max)
	}
	// One byte more than allowed tells "exactly at the limit" from "over it".
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.max+1))
	if err != nil {
		return Result{}, fmt.Errorf("getRealTimeData %s: read response: %w", app, err)
	}
	if int64(len(data)) > c.max {
		return Result{}, fmt.Errorf("getRealTimeData %s: %w: more than %d bytes", app, ErrResponseTooLarge, c.max)
	}
	res, err := decodeResponse(data, ids)
	if err != nil {
		return Result{}, fmt.Errorf("getRealTimeData %s: %w", app, err)
	}
	return res, nil
}

// closeIdle releases the idle connections once the poller stops.
func (c *Client) closeIdle() { c.http.CloseIdleConnections() }

// rawEntry is one element of "data". Every field has a type that accepts
// any JSON value, so that a wrong type in one entry drops that entry, not
// the batch.
type rawEntry struct {
	ID    json.RawMessage `json:"id"`
	Value compactValue    `json:"value"`
	TS    rawTS           `json:"ts"`
}

type rawResponse struct {
	Data *[]rawEntry `json:"data"`
}

// compactValue is a JSON value compacted while it is decoded, in one
// allocation of its own: a RawMessage would copy it once and Compact again.
type compactValue []byte

func (v *compactValue) UnmarshalJSON(b []byte) error {
	var buf bytes.Buffer
	buf.Grow(len(b))
	if err := json.Compact(&buf, b); err != nil {
		return err
	}
	*v = buf.Bytes()
	return nil
}

// rawTS is a ts parsed in place: a missing or null ts is 0, anything but a
// non-negative integer is recorded in err for the entry to be ignored.
type rawTS struct {
	ms  int64
	err error
}

func (t *rawTS) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	ms, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || ms < 0 {
		t.err = fmt.Errorf("%s: not a non-negative integer of Unix milliseconds", clip(b))
		return nil
	}
	t.ms = ms
	return nil
}

// decodeResponse parses a getRealTimeData response to a request for ids.
// Only a body that is not JSON, or has no "data" array of objects, fails as
// a whole; bad entries are ignored and counted.
func decodeResponse(data []byte, ids []string) (Result, error) {
	var raw rawResponse
	if err := json.Unmarshal(data, &raw); err != nil {
		return Result{}, fmt.Errorf("decode response: %w", err)
	}
	if raw.Data == nil {
		return Result{}, errors.New(`decode response: no "data" array`)
	}
	entries := *raw.Data

	// want maps each requested id to its index in ids, so that Value.ID can
	// be the caller's string instead of a new one per entry; -1 marks an id
	// already answered.
	want := make(map[string]int, len(ids))
	for i, id := range ids {
		want[id] = i
	}
	res := Result{Values: make([]Value, 0, len(entries))}
	ignore := func(i int, format string, args ...any) {
		if res.Ignored == 0 {
			res.IgnoredErr = fmt.Errorf("entry %d: %s", i, fmt.Sprintf(format, args...))
		}
		res.Ignored++
	}
	for i, e := range entries {
		name, err := decodeID(e.ID)
		if err != nil {
			ignore(i, "id %s: %v", clip(e.ID), err)
			continue
		}
		// Looking up string(name) does not allocate; every requested id is
		// a valid name, so only a miss needs validating.
		idx, ok := want[string(name)]
		switch {
		case !ok:
			if err := proto.ValidateName(string(name)); err != nil {
				ignore(i, "id %q: %v", clip(name), err)
			} else {
				ignore(i, "id %q was not requested", name)
			}
			continue
		case idx < 0:
			ignore(i, "id %q repeated", name)
			continue
		case e.Value == nil:
			ignore(i, "id %q: no value", name)
			continue
		case e.TS.err != nil:
			ignore(i, "id %q: ts %v", name, e.TS.err)
			continue
		case !utf8.Valid(e.Value):
			// The node would refuse it (middle.ErrInvalidUTF8), and with it
			// the whole poll's batch.
			ignore(i, "id %q: value is not valid UTF-8", name)
			continue
		}
		want[ids[idx]] = -1
		res.Values = append(res.Values, Value{ID: ids[idx], Value: json.RawMessage(e.Value), TS: e.TS.ms})
	}
	return res, nil
}

// decodeID returns the characters of a JSON string id. Valid names need no
// escapes, so the common case is a slice of raw; only an escaped string
// goes through the decoder.
func decodeID(raw json.RawMessage) ([]byte, error) {
	if len(raw) == 0 {
		return nil, errors.New("missing")
	}
	if len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && bytes.IndexByte(raw, '\\') < 0 {
		return raw[1 : len(raw)-1], nil
	}
	var id string
	if err := json.Unmarshal(raw, &id); err != nil {
		return nil, errors.New("not a string")
	}
	return []byte(id), nil
}

// clip shortens b for an error message: an entry can be as large as the
// whole response.
func clip(b []byte) []byte {
	const max = 80
	if len(b) <= max {
		return b
	}
	return append(b[:max:max], "..."...)
}
