package userservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// GET /sse serves one subscription as Server-Sent Events, for clients that
// cannot use the WebSocket (docs/PROTOCOL.md, "Server-Sent Events"). A
// stream is a connection like a WebSocket one: it counts toward the
// connection limits, subscribes through the Router with the same since
// semantics, and its bounded queue ends it when it overflows. What differs
// is the writer: it turns each frame the Router queues (JSON text frames
// only: a stream subscribes in the JSON format) into an event, and applies
// the client rule on the client's behalf so that every event's id carries
// the position of every key. EventSource sends the last id back on
// reconnect (Last-Event-ID), so the resume needs nothing from the client.

// SSE parameters and their limits.
const (
	// maxSeqDigits is the longest decimal seq (a uint64).
	maxSeqDigits = 20
	// maxPositionLen is the longest entry of a position list: a seq, ':'
	// and an epoch.
	maxPositionLen = maxSeqDigits + 1 + proto.MaxNameLen
	// sseChunk is how many bytes of events the writer gathers before it
	// writes them: a long queue goes out in pieces of about this size.
	sseChunk = 32 << 10
	// sseRetryMin and sseRetrySpread bound the reconnect delay the stream
	// asks of EventSource (the retry field): random in [min, min+spread),
	// so that the clients of a node that shuts down do not all come back
	// at the same moment.
	sseRetryMin    = time.Second
	sseRetrySpread = 2 * time.Second
)

// sseParams are the query parameters GET /sse accepts; any other is
// refused, so that a misspelt one (sinse=) is not silently ignored.
var sseParams = []string{"app", "keys", "since", "token", "mode", "max_rate", "max_bandwidth"}

// errBadPositions is wrapped by every error of parsePositions.
var errBadPositions = errors.New("bad position list")

// parsePositions reads a position list of n keys (docs/PROTOCOL.md,
// "Server-Sent Events"): n comma-separated entries, each empty (no
// position) or "<seq>:<epoch>", seq in decimal without leading zeros. The
// result has one position per key; an empty Epoch means none. It is
// strict: every list it accepts is the one appendPositions writes for its
// result.
func parsePositions(s string, n int) ([]proto.Position, error) {
	if n <= 0 {
		return nil, fmt.Errorf("%w: no keys", errBadPositions)
	}
	if limit := n*maxPositionLen + n - 1; len(s) > limit {
		return nil, fmt.Errorf("%w: %d bytes, longer than the %d that %d keys can need", errBadPositions, len(s), limit, n)
	}
	out := make([]proto.Position, n)
	for i := range n {
		entry, rest, more := strings.Cut(s, ",")
		if more != (i < n-1) {
			return nil, fmt.Errorf("%w: want %d entries, one per key", errBadPositions, n)
		}
		s = rest
		if entry == "" {
			continue
		}
		seq, epoch, ok := strings.Cut(entry, ":")
		if !ok {
			return nil, fmt.Errorf("%w: entry %d %q: want <seq>:<epoch>", errBadPositions, i+1, entry)
		}
		if seq == "" || len(seq) > maxSeqDigits || seq[0] == '0' && len(seq) > 1 {
			return nil, fmt.Errorf("%w: entry %d: seq %q: want a decimal number without leading zeros", errBadPositions, i+1, seq)
		}
		for j := 0; j < len(seq); j++ {
			if seq[j] < '0' || seq[j] > '9' {
				return nil, fmt.Errorf("%w: entry %d: seq %q: want a decimal number", errBadPositions, i+1, seq)
			}
		}
		v, err := strconv.ParseUint(seq, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: seq %q out of range", errBadPositions, i+1, seq)
		}
		if err := proto.ValidateEpoch(epoch); err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", errBadPositions, i+1, err)
		}
		out[i] = proto.Position{Seq: v, Epoch: epoch}
	}
	return out, nil
}

// appendPositions appends the position list of pos (see parsePositions).
func appendPositions(dst []byte, pos []proto.Position) []byte {
	for i, p := range pos {
		if i > 0 {
			dst = append(dst, ',')
		}
		if p.Epoch == "" {
			continue
		}
		dst = strconv.AppendUint(dst, p.Seq, 10)
		dst = append(dst, ':')
		dst = append(dst, p.Epoch...)
	}
	return dst
}

// sseRequest is a GET /sse request, checked.
type sseRequest struct {
	app   string
	keys  []string
	since []proto.Position // one per key; Epoch "": none
	// mode and maxRate apply to every key; bandwidth is max_bandwidth, 0:
	// none (docs/PROTOCOL.md, "Delivery modes").
	mode      proto.Mode
	maxRate   float64
	bandwidth int
}

// sseRequestError is a request refused before the stream starts: the HTTP
// status and the error code of its JSON body (docs/PROTOCOL.md, "Error
// codes").
type sseRequestError struct {
	status int
	code   string
	msg    string
}

func (e *sseRequestError) Error() string { return e.msg }

func badSSERequest(format string, args ...any) *sseRequestError {
	return &sseRequestError{status: http.StatusBadRequest, code: proto.CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

// parseSSERequest checks the query and Last-Event-ID of a GET /sse. A
// Last-Event-ID (EventSource's reconnect) replaces since: since is where
// the client started, the id where it stands.
func parseSSERequest(rawQuery, lastEventID string, maxKeys int) (sseRequest, *sseRequestError) {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return sseRequest{}, badSSERequest("query: %v", err)
	}
	for name, vs := range q {
		if !slices.Contains(sseParams, name) {
			return sseRequest{}, badSSERequest("unknown parameter %q: want app, keys, since, mode, max_rate, max_bandwidth, token", name)
		}
		if len(vs) > 1 {
			return sseRequest{}, badSSERequest("parameter %q given %d times", name, len(vs))
		}
	}
	var req sseRequest
	req.app = q.Get("app")
	if err := proto.ValidateName(req.app); err != nil {
		return sseRequest{}, badSSERequest("app %q: %v", req.app, err)
	}
	keys := q.Get("keys")
	if keys == "" {
		return sseRequest{}, badSSERequest("keys: missing (keys=k1,k2,...)")
	}
	// Count before splitting, so that a huge list is refused without
	// building it.
	if n := strings.Count(keys, ",") + 1; n > maxKeys {
		return sseRequest{}, &sseRequestError{status: http.StatusBadRequest, code: proto.CodeLimit,
			msg: fmt.Sprintf("%d keys: the limit is %d", n, maxKeys)}
	}
	req.keys = strings.Split(keys, ",")
	for i, k := range req.keys {
		if err := proto.ValidateName(k); err != nil {
			return sseRequest{}, badSSERequest("key %q: %v", k, err)
		}
		if slices.Contains(req.keys[:i], k) {
			return sseRequest{}, badSSERequest("key %q given twice", k)
		}
	}
	if req.mode, err = proto.ParseMode(q.Get("mode")); err != nil {
		return sseRequest{}, badSSERequest("%v", err)
	}
	if q.Has("max_rate") {
		r := q.Get("max_rate")
		if req.maxRate, err = strconv.ParseFloat(r, 64); err != nil {
			return sseRequest{}, badSSERequest("max_rate %q: want a number, 0 < max_rate <= %d", r, proto.MaxRateLimit)
		}
		if err := proto.ValidateMaxRate(req.maxRate, req.mode); err != nil {
			return sseRequest{}, badSSERequest("%v", err)
		}
	}
	if req.bandwidth, err = parseBandwidth(q); err != nil {
		return sseRequest{}, badSSERequest("%v", err)
	}
	from, what := q.Get("since"), "since"
	if lastEventID != "" {
		from, what = lastEventID, "Last-Event-ID"
	}
	if from != "" {
		if req.since, err = parsePositions(from, len(req.keys)); err != nil {
			return sseRequest{}, badSSERequest("%s: %v", what, err)
		}
	}
	return req, nil
}

// sseStream is one GET /sse response: a middle.Subscriber whose queue the
// handler's goroutine (run) drains into events. Enqueue, end and abort may
// be called from any goroutine; everything else belongs to run.
type sseStream struct {
	srv    *Server
	id     uint64
	remote string
	req    sseRequest
	index  map[string]int // key -> its place in req.keys
	// dataPrefix is how every data message of this stream begins, up to
	// its key (proto.AppendDataJSON).
	dataPrefix []byte
	// pos is, per key, the client's position as the client rule keeps it
	// (docs/PROTOCOL.md, "The client rule"); fresh marks the keys that
	// have had nothing since the ack, for which the latest value may still
	// come.
	pos   []proto.Position
	fresh []bool
	buf   []byte // the events being written

	wake chan struct{} // capacity 1: something was queued or the stream ends

	mu  sync.Mutex
	out outbox // the queue, with the delivery modes (latest.go)
	// While subscribing is set (the Router's Subscribe runs), what is
	// queued is the ack and the resume's replay: bounded by the history
	// the node retains, not by QueueMaxBytes, else a resume of more than
	// the queue would overflow at every reconnect. allowance is its size,
	// added to the limit until the writer has taken it.
	subscribing bool
	allowance   int
	endCode     int // non-zero once the stream is to end (a close code)
	endMsg      string
	aborted     bool
	// rc is the response's controller while run may use it; abort sets
	// its write deadline to now so that a blocked write returns.
	rc *http.ResponseController
}

// ConnID implements middle.Subscriber.
func (st *sseStream) ConnID() uint64 { return st.id }

// Enqueue implements middle.Subscriber: it never blocks. A stream whose
// queue would exceed QueueMaxBytes ends (the close event says 4008); its
// client reconnects and resumes from the last event's id.
func (st *sseStream) Enqueue(f *proto.Frame) bool {
	st.mu.Lock()
	if st.endCode != 0 {
		st.mu.Unlock()
		return true // ending: the client resumes from its last id
	}
	if k := st.out.latestKeyOf(f); k != nil {
		// A latest key never overflows: it conflates (latest.go).
		grew := st.out.offer(k, f)
		st.mu.Unlock()
		if grew {
			st.signal()
		}
		return true
	}
	if st.subscribing {
		st.allowance += len(f.Bytes)
	} else if st.out.bytes+len(f.Bytes) > st.srv.cfg.QueueMaxBytes+st.allowance {
		st.endLocked(proto.CloseTooSlow, "too slow: outgoing queue overflowed")
		st.mu.Unlock()
		st.srv.metrics.overflows.Inc()
		st.srv.log.Warn("ending slow SSE stream: outgoing queue full", "conn", st.id, "limit_bytes", st.srv.cfg.QueueMaxBytes)
		return false
	}
	st.out.push(f)
	st.mu.Unlock()
	st.signal()
	return true
}

// SetMode implements middle.ModeSubscriber (docs/PROTOCOL.md, "Delivery
// modes"): a latest key conflates; its max_rate is the node's to apply.
func (st *sseStream) SetMode(ref *proto.StreamRef, mode proto.Mode, _ float64) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.out.setMode(ref, mode, st.srv.metrics)
}

func (st *sseStream) signal() {
	select {
	case st.wake <- struct{}{}:
	default:
	}
}

// end makes the stream send what is queued (nothing after an overflow),
// then a close event with code, and finish. Only the first call counts.
func (st *sseStream) end(code int, msg string) {
	st.mu.Lock()
	st.endLocked(code, msg)
	st.mu.Unlock()
}

func (st *sseStream) endLocked(code int, msg string) {
	if st.endCode != 0 {
		return
	}
	st.endCode, st.endMsg = code, msg
	if code == proto.CloseTooSlow {
		st.out.clear()
		st.allowance = 0
	}
	st.signal()
}

// abort ends the stream at once (forced shutdown): a write in progress
// fails, and nothing more is written.
func (st *sseStream) abort() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.aborted = true
	if st.endCode == 0 {
		st.endCode = proto.CloseGoingAway
	}
	if st.rc != nil {
		_ = st.rc.SetWriteDeadline(time.Now())
	}
	st.signal()
}

// take returns what is queued (what max_bandwidth allows now: wait says
// when to take the rest) and, once the stream is to end, how. An ending
// stream sends what is queued without waiting for its budget.
func (st *sseStream) take(batch []*proto.Frame) (_ []*proto.Frame, wait time.Duration, endCode int, endMsg string, aborted bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	batch, wait = st.out.take(batch[:0], time.Now(), st.endCode == 0)
	if st.out.len() == 0 {
		st.allowance = 0
		st.out.idle()
	}
	return batch, wait, st.endCode, st.endMsg, st.aborted
}

func (st *sseStream) queuedBytes() int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.out.bytes + st.out.latestBytes
}

// ServeSSE serves GET /sse (docs/PROTOCOL.md, "Server-Sent Events").
func (s *Server) ServeSSE(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		s.sseRefuse(w, r, &sseRequestError{status: http.StatusMethodNotAllowed, code: proto.CodeBadRequest, msg: "GET only"}, "bad_request")
		return
	}
	if s.draining.Load() {
		s.metrics.rejected.WithLabelValues("shutdown").Inc()
		s.sseRefuse(w, r, &sseRequestError{status: http.StatusServiceUnavailable, code: proto.CodeUnavailable, msg: "server shutting down"}, "")
		return
	}
	if origin := r.Header.Get("Origin"); origin != "" {
		if !s.checkOrigin(r) {
			s.sseRefuse(w, r, &sseRequestError{status: http.StatusForbidden, code: proto.CodeForbidden, msg: "origin not allowed"}, "origin")
			return
		}
		// Only an allowed origin may read the stream (CORS); every other
		// is refused above.
		w.Header().Set("Access-Control-Allow-Origin", origin)
	}
	w.Header().Add("Vary", "Origin")
	req, rerr := parseSSERequest(r.URL.RawQuery, r.Header.Get("Last-Event-ID"), s.cfg.MaxKeysPerSubscribe)
	if rerr != nil {
		s.sseRefuse(w, r, rerr, rerr.code)
		return
	}
	tok, err := s.authenticate(r)
	if err != nil {
		w.Header().Set("WWW-Authenticate", "Bearer")
		s.sseRefuse(w, r, &sseRequestError{status: http.StatusUnauthorized, code: proto.CodeUnauthorized, msg: "unauthorized: " + err.Error()}, "unauthorized")
		return
	}
	if tok.apps != nil && !slices.Contains(tok.apps, req.app) {
		s.sseRefuse(w, r, &sseRequestError{status: http.StatusForbidden, code: proto.CodeForbidden, msg: fmt.Sprintf("app %q is not allowed by the token", req.app)}, "forbidden")
		return
	}
	if status, reason, msg := s.admit(r.RemoteAddr); status != 0 {
		code := proto.CodeUnavailable
		if status == http.StatusTooManyRequests {
			code = proto.CodeLimit
		}
		s.metrics.rejected.WithLabelValues(reason).Inc()
		s.sseRefuse(w, r, &sseRequestError{status: status, code: code, msg: msg}, "")
		return
	}
	defer s.releaseAddr(r.RemoteAddr)

	st := s.newSSEStream(r.RemoteAddr, req)
	s.streams.add(st)
	defer s.streams.remove(st)
	if s.draining.Load() { // Shutdown began between the check above and add
		st.end(proto.CloseGoingAway, "server shutting down")
	}
	if err := st.subscribe(r.Context()); err != nil {
		s.log.Error("SSE subscribe failed", "conn", st.id, "app", req.app, "keys", len(req.keys), "error", err)
		rerr := &sseRequestError{status: http.StatusInternalServerError, code: proto.CodeInternal, msg: "subscribe failed: " + err.Error()}
		if errors.Is(err, middle.ErrUnavailable) {
			rerr.status, rerr.code = http.StatusServiceUnavailable, proto.CodeUnavailable
		}
		s.sseRefuse(w, r, rerr, "")
		return
	}
	defer st.unsubscribe()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	h.Set("X-Content-Type-Options", "nosniff")
	// The connection ends with the stream: its write deadline (set for
	// every write) must not outlive it on a keep-alive connection.
	h.Set("Connection", "close")
	w.WriteHeader(http.StatusOK)
	s.metrics.sseAccepted.Inc()
	s.log.Debug("SSE stream started", "conn", st.id, "remote", r.RemoteAddr, "app", req.app, "keys", len(req.keys))

	reason := st.run(r.Context(), w, tok.expires)
	s.metrics.sseClosed.WithLabelValues(reason).Inc()
	s.log.Debug("SSE stream ended", "conn", st.id, "reason", reason)
}

// sseRefuse answers a GET /sse that gets no stream with a JSON error
// (docs/PROTOCOL.md, "Error codes"); reason, when set, is counted in
// wspush_connections_rejected_total as "sse_<reason>".
func (s *Server) sseRefuse(w http.ResponseWriter, r *http.Request, e *sseRequestError, reason string) {
	if reason != "" {
		s.metrics.rejected.WithLabelValues("sse_" + reason).Inc()
	}
	s.log.Debug("SSE request refused", "remote", r.RemoteAddr, "status", e.status, "error", e.msg)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{e.code, e.msg})
}

func (s *Server) newSSEStream(remote string, req sseRequest) *sseStream {
	st := &sseStream{
		srv:    s,
		id:     s.nextID.Add(1),
		remote: remote,
		req:    req,
		index:  make(map[string]int, len(req.keys)),
		pos:    make([]proto.Position, len(req.keys)),
		fresh:  make([]bool, len(req.keys)),
		wake:   make(chan struct{}, 1),
	}
	for i, k := range req.keys {
		st.index[k] = i
	}
	st.out.setBandwidth(req.bandwidth, s.metrics)
	st.dataPrefix = append(append([]byte(`{"op":"data","app":"`), req.app...), `","key":"`...)
	return st
}

func (st *sseStream) subscribe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, st.srv.cfg.CommandTimeout)
	defer cancel()
	var since map[string]proto.Position
	for i, p := range st.req.since {
		if p.Epoch == "" {
			continue
		}
		if since == nil {
			since = make(map[string]proto.Position, len(st.req.keys))
		}
		since[st.req.keys[i]] = p
	}
	st.setSubscribing(true)
	defer st.setSubscribing(false)
	return st.srv.router.Subscribe(ctx, st, middle.SubscribeRequest{
		App: st.req.app, Keys: st.req.keys, Format: proto.FormatJSON, Since: since,
		Mode: st.req.mode, MaxRate: st.req.maxRate,
	})
}

func (st *sseStream) setSubscribing(on bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.subscribing = on
}

func (st *sseStream) unsubscribe() {
	ctx, cancel := context.WithTimeout(context.Background(), st.srv.cfg.CommandTimeout)
	defer cancel()
	st.srv.router.Unsubscribe(ctx, st, st.req.app, st.req.keys)
}

// Reasons a stream ended (wspush_sse_closed_total).
const (
	sseEndClient       = "client"        // the client went away
	sseEndShutdown     = "shutdown"      // the server is shutting down (1001)
	sseEndTooSlow      = "too_slow"      // the queue overflowed (4008)
	sseEndTokenExpired = "token_expired" // the token's exp passed (4003)
	sseEndWriteError   = "write_error"   // a write failed or timed out
	sseEndResync       = "resync"        // a message broke the client rule (1011)
)

func endReason(code int) string {
	switch code {
	case proto.CloseTooSlow:
		return sseEndTooSlow
	case proto.CloseTokenExpired:
		return sseEndTokenExpired
	case proto.CloseInternal:
		return sseEndResync
	default:
		return sseEndShutdown
	}
}

// run writes the stream until it ends and returns why.
func (st *sseStream) run(ctx context.Context, w http.ResponseWriter, expires time.Time) string {
	st.mu.Lock()
	st.rc = http.NewResponseController(w)
	st.mu.Unlock()
	defer func() {
		st.mu.Lock()
		st.rc = nil
		st.mu.Unlock()
	}()

	retry := sseRetryMin + rand.N(sseRetrySpread)
	st.buf = fmt.Appendf(st.buf[:0], "retry: %d\n\n", retry.Milliseconds())
	heartbeat := time.NewTicker(st.srv.cfg.PingInterval)
	defer heartbeat.Stop()
	var expiry <-chan time.Time
	if !expires.IsZero() {
		t := time.NewTimer(time.Until(expires))
		defer t.Stop()
		expiry = t.C
	}
	var batch []*proto.Frame
	// budget wakes the loop when data held back by max_bandwidth may go.
	var budget *time.Timer
	var budgetC <-chan time.Time
	defer func() {
		if budget != nil {
			budget.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return sseEndClient
		case <-st.wake:
		case <-budgetC:
			budgetC = nil
		case <-heartbeat.C:
			st.buf = append(st.buf, ": ping\n\n"...)
		case <-expiry:
			st.srv.log.Info("ending SSE stream: token expired", "conn", st.id)
			st.end(proto.CloseTokenExpired, "token expired")
		}
		var code int
		var msg string
		var aborted bool
		var wait time.Duration
		batch, wait, code, msg, aborted = st.take(batch)
		if aborted {
			return sseEndShutdown
		}
		if wait > 0 && budgetC == nil {
			if budget == nil {
				budget = time.NewTimer(wait)
			} else {
				budget.Reset(wait)
			}
			budgetC = budget.C
		}
		for i, f := range batch {
			if !st.appendEvent(f) {
				clear(batch[i:])
				code, msg = proto.CloseInternal, "server fault: the stream broke the client rule; resume from the last id"
				break
			}
			batch[i] = nil
			if len(st.buf) >= sseChunk {
				if err := st.write(w, false); err != nil {
					return sseEndWriteError
				}
			}
		}
		if code != 0 {
			st.buf = appendCloseEvent(st.buf, code, msg)
		}
		if err := st.write(w, true); err != nil {
			return sseEndWriteError
		}
		if code != 0 {
			return endReason(code)
		}
	}
}

// write sends st.buf, flushing the response when flush is set, within
// WriteTimeout.
func (st *sseStream) write(w http.ResponseWriter, flush bool) error {
	st.mu.Lock()
	rc, aborted := st.rc, st.aborted
	if !aborted {
		_ = rc.SetWriteDeadline(time.Now().Add(st.srv.cfg.WriteTimeout))
	}
	st.mu.Unlock()
	if aborted {
		return errors.New("aborted")
	}
	if len(st.buf) > 0 {
		if _, err := w.Write(st.buf); err != nil {
			return err
		}
		st.buf = st.buf[:0]
	}
	if flush {
		return rc.Flush()
	}
	return nil
}

// appendEvent appends the event of one queued frame to st.buf and moves
// the positions as the client rule says; it reports false when the frame
// breaks that rule (a server fault: the stream then ends, and the client's
// reconnect resumes from the last id it got).
func (st *sseStream) appendEvent(f *proto.Frame) bool {
	opcode, payload, ok := framePayload(f.Bytes)
	if !ok || opcode != proto.OpcodeText {
		st.srv.log.Error("SSE stream: unexpected frame", "conn", st.id, "opcode", opcode)
		return false
	}
	switch {
	case bytes.HasPrefix(payload, st.dataPrefix):
		rest := payload[len(st.dataPrefix):]
		end := bytes.IndexByte(rest, '"')
		i, known := -1, false
		if end >= 0 {
			i, known = st.index[string(rest[:end])]
		}
		if !known {
			st.srv.log.Error("SSE stream: data of a key not subscribed", "conn", st.id)
			return false
		}
		p, n := st.pos[i], f.Seq
		switch {
		case n == p.Seq+1:
			st.pos[i].Seq = n
		case st.fresh[i] && n == p.Seq:
			// The latest value the ack announced.
		case st.req.mode == proto.ModeLatest && n > p.Seq:
			// Latest: the values between were skipped on purpose.
			st.pos[i].Seq = n
		default:
			st.srv.log.Error("SSE stream: data out of order", "conn", st.id, "key", st.req.keys[i], "seq", n, "position", p.Seq, "fresh", st.fresh[i])
			return false
		}
		st.fresh[i] = false
		st.appendEventFields("", payload)
	case bytes.HasPrefix(payload, []byte(`{"op":"reset"`)):
		m, err := proto.DecodeServerMessage(payload)
		i, known := st.index[m.Key]
		if err != nil || !known || proto.ValidateEpoch(m.Epoch) != nil {
			st.srv.log.Error("SSE stream: bad reset", "conn", st.id, "error", err)
			return false
		}
		st.pos[i], st.fresh[i] = proto.Position{Seq: m.Seq, Epoch: m.Epoch}, false
		st.appendEventFields("reset", payload)
	case bytes.HasPrefix(payload, []byte(`{"op":"ack"`)):
		m, err := proto.DecodeServerMessage(payload)
		if err != nil {
			st.srv.log.Error("SSE stream: bad ack", "conn", st.id, "error", err)
			return false
		}
		for i, k := range st.req.keys {
			if st.req.since != nil && st.req.since[i].Epoch != "" {
				// Resuming: the since position, with its own epoch, until
				// a data or a reset moves it. (Adopting the ack's epoch
				// would make a reconnect before the reset resume in an
				// epoch the client never had.)
				st.pos[i], st.fresh[i] = st.req.since[i], false
				continue
			}
			p, ok := m.Positions[k]
			if !ok || proto.ValidateEpoch(p.Epoch) != nil {
				st.srv.log.Error("SSE stream: ack without the key's position", "conn", st.id, "key", k)
				return false
			}
			st.pos[i], st.fresh[i] = p, true
		}
		st.appendEventFields("ack", payload)
	default:
		st.srv.log.Error("SSE stream: unexpected message", "conn", st.id, "op", firstBytes(payload, 16))
		return false
	}
	return true
}

// appendEventFields appends one event: its id (the positions), its type
// unless it is a data message ("message" for EventSource), and the JSON
// message as data lines.
func (st *sseStream) appendEventFields(event string, payload []byte) {
	st.buf = append(st.buf, "id: "...)
	st.buf = st.appendID(st.buf)
	st.buf = append(st.buf, '\n')
	if event != "" {
		st.buf = append(st.buf, "event: "...)
		st.buf = append(st.buf, event...)
		st.buf = append(st.buf, '\n')
	}
	st.buf = appendDataLines(st.buf, payload)
	st.buf = append(st.buf, '\n')
}

// appendID appends the event id: the position list a reconnect resumes
// from. A fresh key's entry is the seq before the ack's, so that the latest
// value the ack announced comes after a reconnect too, whatever was
// published meanwhile (docs/PROTOCOL.md, "Server-Sent Events").
func (st *sseStream) appendID(dst []byte) []byte {
	for i, p := range st.pos {
		if i > 0 {
			dst = append(dst, ',')
		}
		seq := p.Seq
		if st.fresh[i] && seq > 0 {
			seq--
		}
		dst = strconv.AppendUint(dst, seq, 10)
		dst = append(dst, ':')
		dst = append(dst, p.Epoch...)
	}
	return dst
}

// appendDataLines appends payload as "data:" lines. A JSON payload may
// hold line breaks (whitespace between tokens, never inside a string), and
// a line break would end the field: each line gets its own, and
// EventSource joins them with "\n", which is the same JSON.
func appendDataLines(dst, payload []byte) []byte {
	for {
		i := bytes.IndexAny(payload, "\r\n")
		dst = append(dst, "data: "...)
		if i < 0 {
			dst = append(dst, payload...)
			return append(dst, '\n')
		}
		dst = append(dst, payload[:i]...)
		dst = append(dst, '\n')
		if payload[i] == '\r' && i+1 < len(payload) && payload[i+1] == '\n' {
			i++
		}
		payload = payload[i+1:]
	}
}

// appendCloseEvent appends the event that says why the server ends the
// stream; it carries no id, so the last one stays the resume point.
func appendCloseEvent(dst []byte, code int, msg string) []byte {
	b, _ := json.Marshal(struct {
		Op     string `json:"op"`
		Code   int    `json:"code"`
		Reason string `json:"reason"`
	}{"close", code, msg})
	dst = append(dst, "event: close\ndata: "...)
	dst = append(dst, b...)
	return append(dst, "\n\n"...)
}

// framePayload returns the opcode and payload of a server frame (see
// proto.AppendFrameHeader).
func framePayload(b []byte) (opcode byte, payload []byte, ok bool) {
	if len(b) < 2 {
		return 0, nil, false
	}
	h := proto.FrameHeaderLen(0)
	switch b[1] & 0x7f {
	case 126:
		h = proto.FrameHeaderLen(0xFFFF)
	case 127:
		h = proto.FrameHeaderLen(0x10000)
	}
	if len(b) < h {
		return 0, nil, false
	}
	return b[0] & 0x0f, b[h:], true
}

func firstBytes(b []byte, n int) string {
	return string(b[:min(n, len(b))])
}

// sseRegistry holds the open streams, for Shutdown and the metrics.
type sseRegistry struct {
	mu sync.Mutex
	m  map[uint64]*sseStream
}

func (r *sseRegistry) add(st *sseStream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = make(map[uint64]*sseStream)
	}
	r.m[st.id] = st
}

func (r *sseRegistry) remove(st *sseStream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.m, st.id)
}

func (r *sseRegistry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.m)
}

// each calls fn for every open stream, outside the lock.
func (r *sseRegistry) each(fn func(*sseStream)) {
	r.mu.Lock()
	list := make([]*sseStream, 0, len(r.m))
	for _, st := range r.m {
		list = append(list, st)
	}
	r.mu.Unlock()
	for _, st := range list {
		fn(st)
	}
}
