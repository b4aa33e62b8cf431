package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/amqp"
	"github.com/wspush/wspush/proto"
)

// publishGoodClient is the well-behaved client of a security test: subscribed to
// plant.good on the node, it must get every value published there while
// the node is attacked. It watches the attacked keys too: a value of one
// of them arriving before the next good value fails check.
type publishGoodClient struct {
	t    *testing.T
	base string
	c    *wstest.Client
	next int
}

func newPublishGoodClient(t *testing.T, base string, watched ...string) *publishGoodClient {
	t.Helper()
	g := &publishGoodClient{t: t, base: base, c: wstest.Dial(t, wstest.WSURL(base), nil)}
	g.c.Subscribe("plant", "json", nil, append([]string{"good"}, watched...)...)
	return g
}

// check publishes the next value of plant.good and expects it, in order.
func (g *publishGoodClient) check() {
	g.t.Helper()
	g.next++
	mustPublish(g.t, g.base, "plant", "good", fmt.Sprint(g.next))
	m := g.c.Data(1)[0]
	if m.Key != "good" || m.Seq != uint64(g.next) || string(m.Data) != fmt.Sprint(g.next) {
		g.t.Fatalf("good client: got %s seq %d data %s, want good seq %d data %d", m.Key, m.Seq, m.Data, g.next, g.next)
	}
}

// topSeq is the seq of app.key's latest value on the node at base (0:
// never published), as a new subscriber's ack gives it.
func topSeq(t *testing.T, base, appID, key string) uint64 {
	t.Helper()
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	defer c.Conn.Close()
	return c.Subscribe(appID, "json", nil, key).Positions[key].Seq
}

// rawPost sends body to /api/publish with the given headers and decodes
// the JSON reply.
func rawPost(t *testing.T, base string, hdr map[string]string, body []byte) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/api/publish", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("publish reply (%d): %v", resp.StatusCode, err)
	}
	return resp.StatusCode, out
}

// TestSecurityPublishCSRF: a web page posting text/plain or a form (what
// it can send cross-origin without a preflight) from a foreign origin, as
// in issue 9 (`curl -H 'Origin: https://evil.example' -H 'Content-Type:
// text/plain' ...` → 200), is refused: 403 for the origin, 415 for the
// content type. Nothing reaches the attacked key; the good client keeps
// receiving.
func TestSecurityPublishCSRF(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	good := newPublishGoodClient(t, base, "valve")
	good.check()

	valve := []byte(`{"app":"plant","key":"valve","data":"open"}`)
	for _, tt := range []struct {
		name         string
		origin, ct   string
		status       int
		code         string
		body         []byte
		wantMentions string
	}{
		{"issue 9: text/plain from evil origin", "https://evil.example", "text/plain", http.StatusForbidden, proto.CodeForbidden, valve, "--allowed-origins"},
		{"JSON from evil origin", "https://evil.example", "application/json", http.StatusForbidden, proto.CodeForbidden, valve, "--allowed-origins"},
		{"text/plain, no origin", "", "text/plain", http.StatusUnsupportedMediaType, proto.CodeBadRequest, valve, "application/json"},
		{"form, no origin", "", "application/x-www-form-urlencoded", http.StatusUnsupportedMediaType, proto.CodeBadRequest, valve, "application/json"},
		{"no content type", "", "", http.StatusUnsupportedMediaType, proto.CodeBadRequest, valve, "application/json"},
		{"text/plain from the node's own origin", base, "text/plain", http.StatusUnsupportedMediaType, proto.CodeBadRequest, valve, "application/json"},
	} {
		hdr := map[string]string{}
		if tt.origin != "" {
			hdr["Origin"] = tt.origin
		}
		if tt.ct != "" {
			hdr["Content-Type"] = tt.ct
		}
		code, out := rawPost(t, base, hdr, tt.body)
		msg, _ := out["message"].(string)
		if code != tt.status || out["error"] != tt.code || !strings.Contains(msg, tt.wantMentions) || out["seqs"] != nil {
			t.Errorf("%s: %d %v, want %d %q with a message naming %s", tt.name, code, out, tt.status, tt.code, tt.wantMentions)
		}
		good.check()
	}
	if top := topSeq(t, base, "plant", "valve"); top != 0 {
		t.Fatalf("refused requests published plant.valve up to seq %d", top)
	}

	// The node's own origin (its dashboard) with JSON publishes.
	code, out := rawPost(t, base, map[string]string{"Origin": base, "Content-Type": "application/json; charset=utf-8"}, valve)
	if code != http.StatusOK {
		t.Fatalf("JSON from the node's own origin: %d %v", code, out)
	}
	if m := good.c.Data(1)[0]; m.Key != "valve" || m.Seq != 1 || string(m.Data) != `"open"` {
		t.Fatalf("watcher of plant.valve: %+v, want seq 1 \"open\"", m)
	}
	good.check()
	if v := metricLine(t, base, `wspush_http_publish_requests_total{code="415"}`); v != 4 {
		t.Errorf(`wspush_http_publish_requests_total{code="415"} = %v, want 4`, v)
	}
}

// TestSecurityPublishLoopbackOnly: without --api-key the API answers
// loopback peers only (the node says so at start-up). A test cannot dial
// from another address, so the non-loopback peer goes through the node's
// handler with its RemoteAddr set; the loopback path goes over a real
// socket. With --api-key, any peer that sends the key publishes.
func TestSecurityPublishLoopbackOnly(t *testing.T) {
	var logs testutil.SyncBuffer
	base, a := startApp(t, app.Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	good := newPublishGoodClient(t, base, "valve")
	wstest.Eventually(t, 5*time.Second, func() error {
		if !strings.Contains(logs.String(), "POST /api/publish answers loopback clients only; set --api-key to publish from elsewhere") {
			return fmt.Errorf("no start-up line about the loopback-only API in %q", logs.String())
		}
		return nil
	})

	for _, remote := range []string{"203.0.113.7:40000", "[2001:db8::7]:40000", "10.1.2.3:40000"} {
		w := serveAs(a.Handler(), remote, "")
		var out map[string]any
		_ = json.Unmarshal(w.Body.Bytes(), &out)
		if msg, _ := out["message"].(string); w.Code != http.StatusForbidden || out["error"] != proto.CodeForbidden || !strings.Contains(msg, "--api-key") {
			t.Errorf("peer %s without a key: %d %s, want 403 naming --api-key", remote, w.Code, w.Body.Bytes())
		}
		good.check() // over a real loopback socket, without a key
	}
	if top := topSeq(t, base, "plant", "valve"); top != 0 {
		t.Fatalf("refused peers published plant.valve up to seq %d", top)
	}

	// With --api-key the same peer publishes with the key, and a loopback
	// one without it is refused.
	const key = "s3cret-for-the-test"
	keyedBase, keyed := startApp(t, app.Config{APIKey: key})
	keyedGood := wstest.Dial(t, wstest.WSURL(keyedBase), nil)
	keyedGood.Subscribe("plant", "json", nil, "valve")
	if w := serveAs(keyed.Handler(), "203.0.113.7:40000", key); w.Code != http.StatusOK {
		t.Fatalf("peer with the key: %d %s, want 200", w.Code, w.Body.Bytes())
	}
	if m := keyedGood.Data(1)[0]; m.Seq != 1 {
		t.Fatalf("published with the key: %+v", m)
	}
	if code, out := publish(t, keyedBase, `{"app":"plant","key":"valve","data":"open"}`); code != http.StatusUnauthorized {
		t.Fatalf("loopback without the key on a node with --api-key: %d %v, want 401", code, out)
	}
	good.check()
}

// serveAs sends a publication of plant.valve to h as a peer at remote,
// with API key key ("" for none).
func serveAs(h http.Handler, remote, key string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/api/publish", strings.NewReader(`{"app":"plant","key":"valve","data":"open"}`))
	req.RemoteAddr = remote
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// TestSecurityPublishInvalidUTF8HTTP: a JSON publication with invalid
// UTF-8 in a string (json.Valid accepts it) is refused with 400, alone or
// in a batch (nothing of the batch is published); the browser-like
// subscriber of that key is never sent it and stays connected, and the good
// client keeps receiving. The same bytes as b64 are a binary payload and
// go through.
func TestSecurityPublishInvalidUTF8HTTP(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	good := newPublishGoodClient(t, base, "text")
	good.check()

	jsonHdr := map[string]string{"Content-Type": "application/json"}
	for _, body := range [][]byte{
		[]byte("{\"app\":\"plant\",\"key\":\"text\",\"data\":\"\xff\xfe\"}"),
		[]byte("{\"app\":\"plant\",\"key\":\"text\",\"data\":{\"name\":\"caf\xe9\"}}"),
		[]byte("{\"items\":[{\"app\":\"plant\",\"key\":\"text\",\"data\":1},{\"app\":\"plant\",\"key\":\"text\",\"data\":\"\xed\xa0\x80\"}]}"),
	} {
		if !json.Valid(body) {
			t.Fatalf("%q: not valid for json.Valid, the test is wrong", body)
		}
		code, out := rawPost(t, base, jsonHdr, body)
		if msg, _ := out["message"].(string); code != http.StatusBadRequest || out["error"] != proto.CodeBadRequest || !strings.Contains(msg, "UTF-8") {
			t.Errorf("%q: %d %v, want 400 naming UTF-8", body, code, out)
		}
		good.check()
	}
	if top := topSeq(t, base, "plant", "text"); top != 0 {
		t.Fatalf("refused publications moved plant.text to seq %d", top)
	}

	// Valid UTF-8, and the invalid bytes sent as bytes, are published; the
	// subscriber is still connected and gets them.
	code, out := rawPost(t, base, jsonHdr, []byte(`{"items":[{"app":"plant","key":"text","data":"café"},{"app":"plant","key":"text","b64":"//4="}]}`))
	if code != http.StatusOK {
		t.Fatalf("valid batch: %d %v", code, out)
	}
	got := good.c.Data(2)
	if got[0].Seq != 1 || string(got[0].Data) != `"café"` || got[1].Seq != 2 || !bytes.Equal(got[1].B64, []byte{0xff, 0xfe}) {
		t.Fatalf("subscriber got %+v, want seq 1 \"café\" and seq 2 b64 fffe", got)
	}
	good.check()
}

// TestSecurityPublishInvalidUTF8AMQP: over AMQP (real RabbitMQ and Redis),
// a JSON message with invalid UTF-8 is dead-lettered with reason
// invalid_utf8; the message after it is sequenced; the subscriber of the
// key gets only that one, and the good client keeps receiving.
func TestSecurityPublishInvalidUTF8AMQP(t *testing.T) {
	tc := newTestCluster(t, wstest.RedisURL, 1)
	base, stop := tc.startNode(t, "n1", "")
	defer stop()
	good := newPublishGoodClient(t, base, "text")
	good.check()

	conn, err := amqp091.Dial(wstest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, body := range []string{"\"\xff\xfe\"", "{\"name\":\"caf\xe9\"}", `"after"`} {
		if err := ch.PublishWithContext(ctx, tc.amqpPfx+".ingest", "plant.text", false, false, amqp091.Publishing{
			ContentType: "application/json", Body: []byte(body),
		}); err != nil {
			t.Fatal(err)
		}
	}
	if m := good.c.Data(1)[0]; m.Key != "text" || m.Seq != 1 || string(m.Data) != `"after"` {
		t.Fatalf("subscriber: %+v, want seq 1 \"after\"", m)
	}
	good.check()
	wstest.Eventually(t, 10*time.Second, func() error {
		if v := metricLine(t, base, `wspush_amqp_dead_lettered_total{reason="`+amqp.DeadReasonInvalidUTF8+`"}`); v != 2 {
			return fmt.Errorf("dead-lettered invalid_utf8: %v, want 2", v)
		}
		q, err := ch.QueueDeclarePassive(tc.amqpPfx+".dead", true, false, false, false, nil)
		if err != nil {
			return err
		}
		if q.Messages != 2 {
			return fmt.Errorf("dead queue holds %d messages, want 2", q.Messages)
		}
		return nil
	})
	good.check()
	if top := topSeq(t, base, "plant", "text"); top != 1 {
		t.Fatalf("plant.text at seq %d, want 1 (\"after\" only)", top)
	}
}

// TestSecurityPublishHugeBatch: a 200,000-item batch (issue 9: decoded
// whole, +50 MiB, before the 413) is refused with 413 at item 1001, before
// the node reads the rest of the body; nothing of it is published, and the
// good client keeps receiving while it is sent.
func TestSecurityPublishHugeBatch(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	good := newPublishGoodClient(t, base)
	good.check()

	const items = 200_000
	item := `{"app":"spam","key":"k","data":1},`
	body := `{"items":[` + strings.Repeat(item, items-1) + strings.TrimSuffix(item, ",") + `]}`
	if len(body) >= 8<<20 {
		t.Fatalf("body of %d bytes: over the 8 MiB body limit, the test would not test the item limit", len(body))
	}

	// Over a raw connection: the node answers and closes before the body
	// is all sent, which an http.Client may report as a write error.
	nc, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	sent := make(chan int, 1)
	go func() {
		w := &publishCountingWriter{w: nc}
		_, _ = fmt.Fprintf(w, "POST /api/publish HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n",
			strings.TrimPrefix(base, "http://"), len(body))
		for i := 0; i < len(body); i += 64 << 10 {
			if _, err := io.WriteString(w, body[i:min(i+64<<10, len(body))]); err != nil {
				break
			}
		}
		sent <- w.n
	}()
	_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(nc), nil)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if msg, _ := out["message"].(string); resp.StatusCode != http.StatusRequestEntityTooLarge || out["error"] != proto.CodeLimit || !strings.Contains(msg, "1000") {
		t.Fatalf("200,000-item batch: %d %v, want 413 %q naming the limit of 1000", resp.StatusCode, out, proto.CodeLimit)
	}
	good.check()
	_ = nc.Close()
	t.Logf("413 while sending %d bytes; %d sent before the node closed", len(body), <-sent)
	if top := topSeq(t, base, "spam", "k"); top != 0 {
		t.Fatalf("the refused batch moved spam.k to seq %d", top)
	}
	good.check()
}

type publishCountingWriter struct {
	w io.Writer
	n int
}

func (c *publishCountingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += n
	return n, err
}
