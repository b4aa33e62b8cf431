package app_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// GET /sse end to end (docs/PROTOCOL.md, "Server-Sent Events"): each test
// reads the stream over a raw socket, parsing the events itself as an
// EventSource would.

// sseEvent is one dispatched event.
type sseEvent struct {
	ID    string // the last event id after this event
	Event string // "" for data messages (EventSource's "message")
	Data  string
}

// msg decodes the event's JSON.
func (e sseEvent) msg(t *testing.T) proto.ServerMessage {
	t.Helper()
	m, err := proto.DecodeServerMessage([]byte(e.Data))
	if err != nil {
		t.Fatalf("event %+v: %v", e, err)
	}
	return m
}

// sseStream is a GET /sse response read over its own TCP connection.
type sseStream struct {
	t    *testing.T
	conn net.Conn
	resp *http.Response
	r    *bufio.Reader
	// lastID is EventSource's "last event ID string": the id buffer as it
	// was when the last event was dispatched (an event cut short by the
	// end of the stream does not count).
	lastID string
	idBuf  string
	retry  string
}

// sseOpen sends GET /sse?query with the extra headers and returns the
// response; for a 200 the body is the stream.
func sseOpen(t *testing.T, base, query string, hdr http.Header) *sseStream {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var req strings.Builder
	host := u.Host
	if h := hdr.Get("Host"); h != "" {
		host = h
		hdr = hdr.Clone()
		hdr.Del("Host")
	}
	fmt.Fprintf(&req, "GET /sse?%s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n", query, host)
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, req.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("GET /sse?%s: %v", query, err)
	}
	return &sseStream{t: t, conn: conn, resp: resp, r: bufio.NewReader(resp.Body)}
}

// sseStart opens a stream and checks that it is one.
func sseStart(t *testing.T, base, query string, hdr http.Header) *sseStream {
	t.Helper()
	s := sseOpen(t, base, query, hdr)
	if s.resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(s.resp.Body)
		t.Fatalf("GET /sse?%s: HTTP %d %s", query, s.resp.StatusCode, b)
	}
	for k, want := range map[string]string{
		"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
	} {
		if got := s.resp.Header.Get(k); got != want {
			t.Fatalf("%s: %q, want %q", k, got, want)
		}
	}
	return s
}

// refused expects an HTTP error with a JSON body and returns its code.
func (s *sseStream) refused(status int) (code, message string) {
	s.t.Helper()
	defer s.resp.Body.Close()
	var body struct{ Error, Message string }
	if err := json.NewDecoder(s.resp.Body).Decode(&body); err != nil {
		s.t.Fatalf("HTTP %d: body: %v", s.resp.StatusCode, err)
	}
	if s.resp.StatusCode != status || s.resp.Header.Get("Content-Type") != "application/json" {
		s.t.Fatalf("HTTP %d %q %+v, want %d with JSON", s.resp.StatusCode, s.resp.Header.Get("Content-Type"), body, status)
	}
	return body.Error, body.Message
}

// next returns the next event, skipping comments and field-only blocks as
// EventSource does; io.EOF when the stream ended.
func (s *sseStream) next() (sseEvent, error) {
	s.t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var ev sseEvent
	var data []string
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return sseEvent{}, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			s.lastID = s.idBuf
			if data == nil {
				ev = sseEvent{}
				continue
			}
			ev.ID, ev.Data = s.lastID, strings.Join(data, "\n")
			return ev, nil
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			s.idBuf = value
		case "event":
			ev.Event = value
		case "data":
			data = append(data, value)
		case "retry":
			s.retry = value
		default:
			s.t.Fatalf("unknown field %q", line)
		}
	}
}

func (s *sseStream) mustNext() sseEvent {
	s.t.Helper()
	ev, err := s.next()
	if err != nil {
		s.t.Fatalf("reading the stream: %v", err)
	}
	return ev
}

// ack reads the first event: the subscribe's ack.
func (s *sseStream) ack() proto.ServerMessage {
	s.t.Helper()
	ev := s.mustNext()
	if ev.Event != "ack" {
		s.t.Fatalf("first event %+v, want the ack", ev)
	}
	return ev.msg(s.t)
}

// values reads n data events and returns their messages.
func (s *sseStream) values(n int) []proto.ServerMessage {
	s.t.Helper()
	out := make([]proto.ServerMessage, 0, n)
	for len(out) < n {
		ev := s.mustNext()
		if ev.Event != "" {
			s.t.Fatalf("event %+v, want data", ev)
		}
		out = append(out, ev.msg(s.t))
	}
	return out
}

// closed reads up to the close event, which must come with code, and the
// end of the stream after it.
func (s *sseStream) closed(code int) {
	s.t.Helper()
	for {
		ev := s.mustNext()
		if ev.Event != "close" {
			continue
		}
		var c struct {
			Op   string
			Code int
		}
		if err := json.Unmarshal([]byte(ev.Data), &c); err != nil || c.Op != "close" || c.Code != code {
			s.t.Fatalf("close event %+v, want code %d", ev, code)
		}
		break
	}
	if ev, err := s.next(); !errors.Is(err, io.EOF) {
		s.t.Fatalf("after the close event: %+v, %v; want the end of the stream", ev, err)
	}
}

func expectSeqs(t *testing.T, got []proto.ServerMessage, key string, from uint64) {
	t.Helper()
	for i, m := range got {
		if m.Key != key || m.Seq != from+uint64(i) || string(m.Data) != fmt.Sprint(from+uint64(i)) {
			t.Fatalf("value %d: %+v, want %s seq %d", i, m, key, from+uint64(i))
		}
	}
}

func TestSSEValuesInOrderWithTheLatestFirst(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	mustPublish(t, base, "sse", "a", "1")
	mustPublish(t, base, "sse", "a", "2")
	s := sseStart(t, base, "app=sse&keys=a,b", nil)
	ack := s.ack()
	if ack.Recovered != nil || ack.Positions["a"].Seq != 2 || ack.Positions["b"].Seq != 0 || ack.Positions["b"].Epoch == "" {
		t.Fatalf("ack %+v", ack)
	}
	if s.retry == "" {
		t.Fatal("no retry field")
	}
	expectSeqs(t, s.values(1), "a", 2) // the latest value
	for i := 3; i <= 10; i++ {
		mustPublish(t, base, "sse", "a", fmt.Sprint(i))
	}
	mustPublish(t, base, "sse", "b", "1")
	expectSeqs(t, s.values(8), "a", 3)
	expectSeqs(t, s.values(1), "b", 1)
	ea, eb := ack.Positions["a"].Epoch, ack.Positions["b"].Epoch
	if want := fmt.Sprintf("10:%s,1:%s", ea, eb); s.lastID != want {
		t.Fatalf("id %q, want %q", s.lastID, want)
	}

	// A payload with line breaks comes back whole; bytes come as b64.
	code, out := publish(t, base, `{"items":[{"app":"sse","key":"a","data":{"x":[1,
  2]}},{"app":"sse","key":"a","b64":"AAEC"}]}`)
	if code != http.StatusOK {
		t.Fatalf("publish: %d %v", code, out)
	}
	got := s.values(2)
	if string(got[0].Data) != "{\"x\":[1,\n  2]}" || got[0].Seq != 11 {
		t.Fatalf("multi-line JSON: %+v", got[0])
	}
	if string(got[1].B64) != "\x00\x01\x02" || got[1].Data != nil {
		t.Fatalf("bytes: %+v", got[1])
	}
}

// EventSource's reconnect: the Last-Event-ID it sends resumes with no gap
// and no duplicate, also for a key that had had nothing but its ack.
func TestSSELastEventIDResumesWithNoGapNoDuplicate(t *testing.T) {
	base, a := startApp(t, app.Config{})
	mustPublish(t, base, "sse", "a", "1")
	mustPublish(t, base, "sse", "b", "1")
	s := sseStart(t, base, "app=sse&keys=a,b,c", nil)
	s.ack()
	ackID := s.lastID
	s.values(2) // the latest of a and b
	for i := 2; i <= 4; i++ {
		mustPublish(t, base, "sse", "a", fmt.Sprint(i))
	}
	expectSeqs(t, s.values(3), "a", 2)
	lastID := s.lastID
	s.conn.Close()
	wstest.Eventually(t, 5*time.Second, func() error {
		if n := a.Users().Connections(); n != 0 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})

	// Missed while away: a 5..7, b 2, c 1.
	for i := 5; i <= 7; i++ {
		mustPublish(t, base, "sse", "a", fmt.Sprint(i))
	}
	mustPublish(t, base, "sse", "b", "2")
	mustPublish(t, base, "sse", "c", "1")

	s = sseStart(t, base, "app=sse&keys=a,b,c&since=0:ignored,,", http.Header{"Last-Event-ID": {lastID}})
	if ack := s.ack(); ack.Recovered == nil || !*ack.Recovered || ack.Positions["a"].Seq != 7 {
		t.Fatalf("ack %+v", ack)
	}
	got := map[string][]proto.ServerMessage{}
	for range 5 {
		m := s.values(1)[0]
		got[m.Key] = append(got[m.Key], m)
	}
	expectSeqs(t, got["a"], "a", 5)
	expectSeqs(t, got["b"], "b", 2)
	expectSeqs(t, got["c"], "c", 1)
	if len(got["a"]) != 3 {
		t.Fatalf("a: %+v", got["a"])
	}
	mustPublish(t, base, "sse", "a", "8") // then live values
	expectSeqs(t, s.values(1), "a", 8)
	s.conn.Close()

	// The ack's id, from before the latest values came: a reconnect gets
	// the latest value it announced and everything after it.
	s = sseStart(t, base, "app=sse&keys=a,b,c", http.Header{"Last-Event-ID": {ackID}})
	if ack := s.ack(); ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("ack %+v", ack)
	}
	got = map[string][]proto.ServerMessage{}
	for range 8 + 2 + 1 {
		m := s.values(1)[0]
		got[m.Key] = append(got[m.Key], m)
	}
	expectSeqs(t, got["a"], "a", 1)
	expectSeqs(t, got["b"], "b", 1)
	expectSeqs(t, got["c"], "c", 1)
	if len(got["a"]) != 8 || len(got["b"]) != 2 {
		t.Fatalf("got %v", got)
	}
}

// A Last-Event-ID from another epoch (here: the node restarted, an
// embedded one starts every key afresh) gets recovered:false, a reset and
// the current value.
func TestSSEOtherEpochGetsAReset(t *testing.T) {
	base, _, stop := wstest.StartApp(t, app.Config{})
	mustPublish(t, base, "sse", "a", "1")
	s := sseStart(t, base, "app=sse&keys=a", nil)
	s.ack()
	s.values(1)
	oldID := s.lastID
	stop()
	s.closed(proto.CloseGoingAway) // the shutdown ends the stream

	base2, _ := startApp(t, app.Config{})
	for i := 1; i <= 3; i++ {
		mustPublish(t, base2, "sse", "a", fmt.Sprint(i))
	}
	s = sseStart(t, base2, "app=sse&keys=a", http.Header{"Last-Event-ID": {oldID}})
	ack := s.ack()
	if ack.Recovered == nil || *ack.Recovered {
		t.Fatalf("ack %+v", ack)
	}
	ev := s.mustNext()
	r := ev.msg(t)
	if ev.Event != "reset" || r.Reason != proto.ResetEpoch || r.Seq != 2 || r.Epoch != ack.Positions["a"].Epoch {
		t.Fatalf("reset %+v", ev)
	}
	if want := "2:" + r.Epoch; s.lastID != want {
		t.Fatalf("id after the reset %q, want %q", s.lastID, want)
	}
	expectSeqs(t, s.values(1), "a", 3)
}

func TestSSEBadRequestsGetJSONErrors(t *testing.T) {
	base, a := startApp(t, app.Config{})
	for _, c := range []struct {
		query  string
		lastID string
		code   string
	}{
		{"keys=k", "", proto.CodeBadRequest},
		{"app=a", "", proto.CodeBadRequest},
		{"app=a&keys=k,k", "", proto.CodeBadRequest},
		{"app=a&keys=k&since=5", "", proto.CodeBadRequest},
		{"app=a&keys=k&sinse=5:e", "", proto.CodeBadRequest},
		{"app=a&keys=k", "5:e,6:f", proto.CodeBadRequest},
		{"app=a&keys=k", "05:e", proto.CodeBadRequest},
		{"app=a&keys=" + strings.TrimSuffix(strings.Repeat("k,", 101), ","), "", proto.CodeLimit},
	} {
		var hdr http.Header
		if c.lastID != "" {
			hdr = http.Header{"Last-Event-ID": {c.lastID}}
		}
		if code, msg := sseOpen(t, base, c.query, hdr).refused(http.StatusBadRequest); code != c.code || msg == "" {
			t.Errorf("%q: %s %q, want %s", c.query, code, msg, c.code)
		}
	}
	// 100 distinct keys are fine.
	keys := make([]string, 100)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%03d", i)
	}
	s := sseStart(t, base, "app=a&keys="+strings.Join(keys, ","), nil)
	if ack := s.ack(); len(ack.Positions) != 100 {
		t.Fatalf("ack of %d positions", len(ack.Positions))
	}
	if got := metricLine(t, base, `wspush_connections_rejected_total{reason="sse_bad_request"}`); got != 7 {
		t.Fatalf("sse_bad_request rejections: %v", got)
	}
	if n := a.Users().Connections(); n != 1 {
		t.Fatalf("%d connections counted, want the one stream", n)
	}
}

func TestSSEOriginPolicy(t *testing.T) {
	base, _ := startApp(t, app.Config{AllowedOrigins: []string{"https://dash.example"}})
	port := base[strings.LastIndex(base, ":")+1:]
	for _, o := range []string{"https://evil.example", "http://evil.example:" + port} {
		s := sseOpen(t, base, "app=a&keys=k", http.Header{"Origin": {o}, "Host": {"evil.example"}})
		if code, _ := s.refused(http.StatusForbidden); code != proto.CodeForbidden || s.resp.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Fatalf("%s: %s, CORS %q", o, code, s.resp.Header.Get("Access-Control-Allow-Origin"))
		}
	}
	for _, o := range []string{"https://dash.example", "http://127.0.0.1:" + port} {
		s := sseStart(t, base, "app=a&keys=k", http.Header{"Origin": {o}})
		if got := s.resp.Header.Get("Access-Control-Allow-Origin"); got != o {
			t.Fatalf("%s: Access-Control-Allow-Origin %q", o, got)
		}
		s.ack()
	}
	s := sseStart(t, base, "app=a&keys=k", nil) // a program: no Origin
	if got := s.resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Fatalf("no Origin: Access-Control-Allow-Origin %q", got)
	}
}

func TestSSEAuth(t *testing.T) {
	base, _ := startApp(t, authConfig())
	hour := time.Now().Add(time.Hour).Unix()

	s := sseOpen(t, base, "app=good&keys=k", nil)
	if code, _ := s.refused(http.StatusUnauthorized); code != proto.CodeUnauthorized || s.resp.Header.Get("WWW-Authenticate") != "Bearer" {
		t.Fatalf("no token: %s", code)
	}
	expired := hsToken(t, jwt.MapClaims{"sub": "x", "exp": time.Now().Add(-time.Minute).Unix()})
	if code, _ := sseOpen(t, base, "app=good&keys=k&token="+expired, nil).refused(http.StatusUnauthorized); code != proto.CodeUnauthorized {
		t.Fatalf("expired token: %s", code)
	}
	other := hsToken(t, jwt.MapClaims{"sub": "x", "apps": []string{"other"}, "exp": hour})
	if code, _ := sseOpen(t, base, "app=good&keys=k&token="+other, nil).refused(http.StatusForbidden); code != proto.CodeForbidden {
		t.Fatalf("app not in the token: %s", code)
	}

	sseStart(t, base, "app=good&keys=k&token="+hsToken(t, jwt.MapClaims{"sub": "q", "exp": hour}), nil).ack()
	hdr := http.Header{"Authorization": {"Bearer " + hsToken(t, jwt.MapClaims{"sub": "h", "apps": []string{"good"}, "exp": hour})}}
	sseStart(t, base, "app=good&keys=k", hdr).ack()

	// The stream lasts as long as its token: at exp it ends with 4003.
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	s = sseStart(t, base, "app=good&keys=k&token="+hsToken(t, jwt.MapClaims{"sub": "short", "exp": exp.Unix()}), nil)
	s.ack()
	mustPublish(t, base, "good", "k", "1")
	expectSeqs(t, s.values(1), "k", 1)
	s.closed(proto.CloseTokenExpired)
	if now := time.Now(); now.Before(exp) {
		t.Fatalf("ended at %s, before the token's exp %s", now, exp)
	}
	if got := metricLine(t, base, `wspush_sse_closed_total{reason="token_expired"}`); got != 1 {
		t.Fatalf("token_expired: %v", got)
	}
}

// Streams count toward --max-connections with the WebSocket connections,
// and the heartbeat comment keeps an idle stream alive.
func TestSSEConnectionLimitAndHeartbeat(t *testing.T) {
	cfg := app.Config{Users: userservice.Config{MaxConnections: 2, PingInterval: 50 * time.Millisecond, PingTimeout: time.Minute}}
	base, a := startApp(t, cfg)
	ws := wstest.Dial(t, wstest.WSURL(base), nil)
	s := sseStart(t, base, "app=a&keys=k", nil)
	s.ack()
	if code, _ := sseOpen(t, base, "app=a&keys=k", nil).refused(http.StatusServiceUnavailable); code != proto.CodeUnavailable {
		t.Fatalf("over --max-connections: %s", code)
	}
	if _, err := wstest.TryDial(t, wstest.WSURL(base), nil); err == nil {
		t.Fatal("a WebSocket upgrade over --max-connections got through")
	}
	if got := metricValue(t, base, "wspush_sse_connections"); got != 1 {
		t.Fatalf("wspush_sse_connections %v", got)
	}
	if got := metricValue(t, base, "wspush_connections"); got != 2 {
		t.Fatalf("wspush_connections %v", got)
	}
	// Heartbeats: comment lines, several per 200 ms.
	_ = s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	pings := 0
	for pings < 3 {
		line, err := s.r.ReadString('\n')
		if err != nil {
			t.Fatalf("heartbeat: %v", err)
		}
		if line == ": ping\n" {
			pings++
		} else if line != "\n" {
			t.Fatalf("idle stream sent %q", line)
		}
	}
	ws.Conn.Close()
	wstest.Eventually(t, 5*time.Second, func() error {
		if n := a.Users().Connections(); n != 1 {
			return fmt.Errorf("%d connections", n)
		}
		return nil
	})
	sseStart(t, base, "app=a&keys=k", nil).ack()
}

// A client that does not read: its queue overflows, the stream ends with
// a close event 4008 after what was already sent, while the publisher is
// not held up. The reconnect resumes from the last id it got, however
// much that replays (the replay is bounded by the history, not by the
// queue).
func TestSSESlowConsumerStreamEnds(t *testing.T) {
	cfg := app.Config{Users: userservice.Config{QueueMaxBytes: 256 << 10, WriteTimeout: time.Second}, Middle: middleHistory(1000)}
	base, _ := startApp(t, cfg)
	slow := sseStart(t, base, "app=sse&keys=a", nil)
	slow.ack()
	// 8 MiB in all, in batches smaller than the queue: more than the
	// kernel buffers between the node and the slow client hold.
	big := strings.Repeat("x", 8<<10)
	const n, batch = 1000, 25
	for i := 1; i <= n; i += batch {
		items := make([]string, batch)
		for j := range items {
			items[j] = fmt.Sprintf(`{"app":"sse","key":"a","data":{"i":%d,"pad":%q}}`, i+j, big)
		}
		code, out := publish(t, base, `{"items":[`+strings.Join(items, ",")+`]}`)
		if code != http.StatusOK {
			t.Fatalf("publish: %d %v", code, out)
		}
	}
	wstest.Eventually(t, 10*time.Second, func() error {
		if metricLine(t, base, `wspush_sse_closed_total{reason="too_slow"}`) == 1 ||
			metricLine(t, base, `wspush_sse_closed_total{reason="write_error"}`) == 1 {
			return nil
		}
		return errors.New("the slow stream is still open")
	})
	// What reached the slow client is in order; the stream then ended.
	var last uint64
	for {
		ev, err := slow.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, os.ErrDeadlineExceeded) && !isConnReset(err) {
				t.Fatalf("slow client: %v", err)
			}
			break
		}
		if ev.Event == "close" {
			if !strings.Contains(ev.Data, `"code":4008`) {
				t.Fatalf("close event %s", ev.Data)
			}
			continue
		}
		if m := ev.msg(t); m.Seq != last+1 {
			t.Fatalf("slow client: seq %d after %d", m.Seq, last)
		} else {
			last = m.Seq
		}
	}
	if last >= n {
		t.Fatalf("the slow client got all %d values: nothing overflowed", n)
	}
	t.Logf("the slow client got %d of %d values before its stream ended", last, n)
	// Its reconnect gets exactly the rest.
	s := sseStart(t, base, "app=sse&keys=a", http.Header{"Last-Event-ID": {slow.lastID}})
	if ack := s.ack(); ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("resume after the overflow: %+v", ack)
	}
	for i := last + 1; i <= n; i++ {
		if m := s.values(1)[0]; m.Seq != i {
			t.Fatalf("resumed: seq %d, want %d", m.Seq, i)
		}
	}
}

func isConnReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op)
}

// A graceful shutdown ends streams with a close event 1001 after what was
// queued to them; the node meanwhile refuses new ones with 503.
func TestSSEShutdownEndsStreams(t *testing.T) {
	base, a, stop := wstest.StartApp(t, app.Config{DrainDelay: 500 * time.Millisecond})
	s := sseStart(t, base, "app=sse&keys=a", nil)
	s.ack()
	mustPublish(t, base, "sse", "a", "1")
	expectSeqs(t, s.values(1), "a", 1)
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	wstest.Eventually(t, 5*time.Second, func() error {
		if !a.Users().Draining() {
			return errors.New("not draining yet")
		}
		return nil
	})
	if code, _ := sseOpen(t, base, "app=sse&keys=a", nil).refused(http.StatusServiceUnavailable); code != proto.CodeUnavailable {
		t.Fatalf("while draining: %s", code)
	}
	s.closed(proto.CloseGoingAway)
	<-stopped
}
