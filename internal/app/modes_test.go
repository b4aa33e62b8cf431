package app_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// Delivery modes end to end (docs/PROTOCOL.md, "Delivery modes"): latest
// keys with max_rate, conflation on a slow connection beside stream keys
// that keep their 4008 policy, max_bandwidth, and the same over SSE.

// subscribeLatest sends a latest subscribe and returns its ack.
func subscribeLatest(t *testing.T, c *wstest.Client, app string, rate float64, since map[string]proto.Position, keys ...string) wstest.Message {
	t.Helper()
	id := c.Send(proto.Command{Op: proto.OpSubscribe, App: app, Keys: keys, Mode: "latest", MaxRate: rate, Since: since})
	ack := c.ExpectAck(id)
	if ack.Mode != "latest" || ack.MaxRate != rate {
		t.Fatalf("ack of a latest subscribe: mode %q max_rate %v, want latest %v", ack.Mode, ack.MaxRate, rate)
	}
	return ack
}

// publishPaced publishes n values to app/key, one per interval, from a
// goroutine; the channel gets its error (nil when all went).
func publishPaced(base, app, key string, n int, interval time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= n; i++ {
			resp, err := http.Post(base+"/api/publish", "application/json",
				strings.NewReader(fmt.Sprintf(`{"app":%q,"key":%q,"data":%d}`, app, key, i)))
			if err != nil {
				done <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				done <- fmt.Errorf("publish %d: HTTP %d", i, resp.StatusCode)
				return
			}
			time.Sleep(interval)
		}
		done <- nil
	}()
	return done
}

// publishBig publishes n values of about size bytes each to every key,
// straight to the node (faster than the HTTP API): on a fresh app, the seq
// of every key's last one is n.
func publishBig(t *testing.T, a *app.App, appID string, keys []string, n, size int) {
	t.Helper()
	pad := strings.Repeat("x", size)
	for i := 1; i <= n; i++ {
		pubs := make([]proto.Publication, len(keys))
		for j, k := range keys {
			pubs[j] = proto.Publication{App: appID, Key: k, JSON: true, Data: []byte(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, pad))}
		}
		if _, err := a.Node().Publish(context.Background(), "test", pubs); err != nil {
			t.Fatal(err)
		}
	}
}

// A latest key with max_rate 2 on a key published 50 times a second gets
// at most 2 values a second (the first at once), in increasing seq, and
// ends with the last value published.
func TestLatestMaxRateOverWebSocket(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	mustPublish(t, base, "modes", "k", `0`)
	subscribed := time.Now()
	subscribeLatest(t, c, "modes", 2, nil, "k")

	const n = 150 // 3 s at 50/s
	done := publishPaced(base, "modes", "k", n, 20*time.Millisecond)
	var seqs []uint64
	for len(seqs) == 0 || seqs[len(seqs)-1] < n+1 {
		m := c.Next()
		if m.Op != proto.OpData || m.Key != "k" {
			t.Fatalf("want data of k, got %+v", m)
		}
		if len(seqs) > 0 && m.Seq <= seqs[len(seqs)-1] {
			t.Fatalf("seq %d after %d", m.Seq, seqs[len(seqs)-1])
		}
		seqs = append(seqs, m.Seq)
	}
	last := time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Deliveries are at least 1/2 s apart and all happened between the
	// subscribe and the last one's arrival.
	if limit := int(2*last.Sub(subscribed).Seconds()) + 1; len(seqs) > limit {
		t.Fatalf("%d values in %s: more than 2 a second (%v)", len(seqs), last.Sub(subscribed), seqs)
	}
	if len(seqs) >= n/2 {
		t.Fatalf("%d values of %d: max_rate skipped too few", len(seqs), n)
	}
	if v := metricLine(t, base, `wspush_values_skipped_total{reason="rate"}`); v <= 0 {
		t.Fatalf(`wspush_values_skipped_total{reason="rate"} = %v`, v)
	}
	c.ExpectSilence(700 * time.Millisecond) // nothing after the last value
	t.Logf("got %d of %d values: %v", len(seqs), n+1, seqs)
}

// smallBufferClient dials with a small socket receive buffer, so that a
// client that stops reading backs the server's queue up soon. (Not below
// the loopback MSS, 64 KiB: a window smaller than one segment stalls the
// sender on its persist timer.)
func smallBufferClient(t *testing.T, url string) *wstest.Client {
	t.Helper()
	d := &websocket.Dialer{
		HandshakeTimeout: wstest.Timeout,
		NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				_ = c.(*net.TCPConn).SetReadBuffer(256 << 10)
			}
			return c, err
		},
	}
	c, _, err := wstest.TryDialWith(t, d, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A client that stops reading, subscribed to latest keys only, is not
// closed however much is published: its queue holds one value per key.
// When it reads again, what the kernel buffered comes first, then the
// newest values.
func TestLatestSlowClientIsNotClosed(t *testing.T) {
	cfg := app.Config{Users: userservice.Config{QueueMaxBytes: 64 << 10, WriteTimeout: 30 * time.Second}}
	base, a := startApp(t, cfg)
	c := smallBufferClient(t, wstest.WSURL(base))
	keys := []string{"a", "b"}
	subscribeLatest(t, c, "slow", 0, nil, keys...)

	const n = 400 // 8 MiB per key: far more than the queue and the kernel buffers
	publishBig(t, a, "slow", keys, n, 20<<10)

	got := map[string]uint64{}
	count := 0
	for got["a"] < n || got["b"] < n {
		m := c.Next()
		if m.Op != proto.OpData {
			t.Fatalf("want data, got %+v", m)
		}
		if m.Seq <= got[m.Key] {
			t.Fatalf("key %s: seq %d after %d", m.Key, m.Seq, got[m.Key])
		}
		got[m.Key] = m.Seq
		count++
	}
	if count >= 2*n {
		t.Fatalf("got all %d values: nothing was conflated", count)
	}
	if v := metricLine(t, base, `wspush_values_skipped_total{reason="conflated"}`); v <= 0 {
		t.Fatalf(`wspush_values_skipped_total{reason="conflated"} = %v`, v)
	}
	if v := metricLine(t, base, `wspush_queue_overflows_total`); v != 0 {
		t.Fatalf("wspush_queue_overflows_total = %v", v)
	}
	// The connection is alive.
	id := c.Send(proto.Command{Op: proto.OpPing})
	if m := c.Next(); m.Op != proto.OpPong || m.ID != id {
		t.Fatalf("want pong %d, got %+v", id, m)
	}
	t.Logf("the slow client got %d of %d values", count, 2*n)
}

// On a connection with latest and stream keys, the stream key keeps its
// 4008 policy: its values overflow the queue and close the connection.
func TestStreamKeyBesideLatestStillOverflows(t *testing.T) {
	cfg := app.Config{Users: userservice.Config{QueueMaxBytes: 64 << 10}}
	base, a := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	subscribeLatest(t, c, "mixed", 0, nil, "l")
	c.Subscribe("mixed", "json", nil, "s")

	publishBig(t, a, "mixed", []string{"l"}, 50, 20<<10)
	publishBig(t, a, "mixed", []string{"l", "s"}, 400, 20<<10)
	c.ExpectClose(proto.CloseTooSlow)
	if v := metricLine(t, base, `wspush_queue_overflows_total`); v != 1 {
		t.Fatalf("wspush_queue_overflows_total = %v", v)
	}
}

// A bad mode or max_rate is a bad_request, and the connection stays.
func TestBadModeAndMaxRateAreBadRequests(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	for i, cmd := range []string{
		`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"newest"}`,
		`{"op":"subscribe","id":2,"app":"a","keys":["k"],"mode":"latest","max_rate":0}`,
		`{"op":"subscribe","id":3,"app":"a","keys":["k"],"mode":"latest","max_rate":-2}`,
		`{"op":"subscribe","id":4,"app":"a","keys":["k"],"mode":"latest","max_rate":1001}`,
		`{"op":"subscribe","id":5,"app":"a","keys":["k"],"max_rate":2}`,
		`{"op":"subscribe","id":6,"app":"a","keys":["k"],"mode":"stream","max_rate":2}`,
		`{"op":"unsubscribe","id":7,"app":"a","keys":["k"],"mode":"latest"}`,
	} {
		c.SendRaw(websocket.TextMessage, []byte(cmd))
		m := c.Next()
		if m.Op != proto.OpError || m.Code != proto.CodeBadRequest || m.ID != uint64(i+1) {
			t.Fatalf("%s: got %+v, want error bad_request", cmd, m)
		}
		t.Logf("%s: %s", cmd, m.Message)
	}
	ack := subscribeLatest(t, c, "a", 0.5, nil, "k")
	if ack.Positions["k"].Epoch == "" {
		t.Fatalf("ack %+v", ack)
	}
	// Subscribing again in stream mode: the ack has no mode.
	if ack := c.Subscribe("a", "json", nil, "k"); ack.Mode != "" || ack.MaxRate != 0 {
		t.Fatalf("stream ack %+v", ack)
	}
}

// A latest resume replays no history: the newest value only, recovered
// in the same epoch; a reset and the newest value from another one.
func TestLatestResume(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	for i := 1; i <= 10; i++ {
		mustPublish(t, base, "resume", "k", fmt.Sprint(i))
	}
	first := c.Subscribe("resume", "json", nil, "k")
	epoch := first.Positions["k"].Epoch
	c.Data(1)

	r := wstest.Dial(t, wstest.WSURL(base), nil)
	ack := subscribeLatest(t, r, "resume", 0, map[string]proto.Position{"k": {Seq: 3, Epoch: epoch}}, "k")
	if ack.Recovered == nil || !*ack.Recovered || ack.Positions["k"].Seq != 10 {
		t.Fatalf("latest resume ack %+v", ack)
	}
	if m := r.Data(1)[0]; m.Seq != 10 || string(m.Data) != "10" {
		t.Fatalf("latest resume: %+v, want seq 10", m)
	}
	r.ExpectSilence(300 * time.Millisecond)

	// Up to date: nothing.
	up := wstest.Dial(t, wstest.WSURL(base), nil)
	subscribeLatest(t, up, "resume", 0, map[string]proto.Position{"k": {Seq: 10, Epoch: epoch}}, "k")
	up.ExpectSilence(300 * time.Millisecond)

	// Another epoch: a reset, then the newest value.
	o := wstest.Dial(t, wstest.WSURL(base), nil)
	ack = subscribeLatest(t, o, "resume", 0, map[string]proto.Position{"k": {Seq: 3, Epoch: "other"}}, "k")
	if ack.Recovered == nil || *ack.Recovered {
		t.Fatalf("other epoch ack %+v", ack)
	}
	if m := o.Next(); m.Op != proto.OpReset || m.Seq != 9 || m.Epoch != epoch {
		t.Fatalf("want reset to 9, got %+v", m)
	}
	if m := o.Data(1)[0]; m.Seq != 10 {
		t.Fatalf("after the reset: %+v", m)
	}
}

// max_bandwidth paces the data of a connection: stream values wait for
// the budget (all of them come, in order, spread over the time the budget
// needs), latest values conflate meanwhile (fewer than published, and the
// last one comes). A bad value is refused before the upgrade.
func TestMaxBandwidth(t *testing.T) {
	base, a := startApp(t, app.Config{})
	for _, bad := range []string{"100", "abc", "1e9", "1000000001", "0", "-5"} {
		resp, err := http.Get(base + "/ws?max_bandwidth=" + bad)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "max_bandwidth") {
			t.Fatalf("max_bandwidth=%s: HTTP %d %s", bad, resp.StatusCode, b)
		}
	}

	const rate = 4096
	c := wstest.Dial(t, wstest.WSURL(base)+fmt.Sprintf("?max_bandwidth=%d", rate), nil)
	c.Subscribe("bw", "json", nil, "s")
	subscribeLatest(t, c, "bw", 0, nil, "l")

	// Stream: 12 values of about 1 KiB, three times the burst.
	const ns = 12
	start := time.Now()
	publishBig(t, a, "bw", []string{"s"}, ns, 1000)
	total := 0
	for i := 1; i <= ns; i++ {
		m := c.Next()
		if m.Op != proto.OpData || m.Key != "s" || m.Seq != uint64(i) {
			t.Fatalf("stream value %d: %+v", i, m)
		}
		total += len(m.Data) + 60
	}
	// The bucket lets the first second's worth through at once, then rate
	// bytes a second: a lower bound, which a slow machine only exceeds.
	if min := time.Duration(float64(total-rate) / rate * 0.8 * float64(time.Second)); time.Since(start) < min {
		t.Fatalf("%d bytes in %s: faster than %d bytes/s allow (%s)", total, time.Since(start), rate, min)
	}

	// Latest: 60 values of about 1 KiB at once.
	const nl = 60
	publishBig(t, a, "bw", []string{"l"}, nl, 1000)
	count := 0
	var last uint64
	for last < nl {
		m := c.Next()
		if m.Op != proto.OpData || m.Key != "l" || m.Seq <= last {
			t.Fatalf("latest value after %d: %+v", last, m)
		}
		last = m.Seq
		count++
	}
	if count >= nl/2 {
		t.Fatalf("%d of %d latest values at %d bytes/s: not conflated", count, nl, rate)
	}
	t.Logf("stream: %d values in %s; latest: %d of %d values", ns, time.Since(start), count, nl)
}

// Over SSE, mode=latest&max_rate=2 holds every key of the stream to 2
// values a second, ending with the last value; bad values are 400s.
func TestSSELatestMaxRate(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	for _, q := range []string{
		"app=a&keys=k&mode=newest",
		"app=a&keys=k&mode=latest&max_rate=0",
		"app=a&keys=k&mode=latest&max_rate=x",
		"app=a&keys=k&max_rate=2",
		"app=a&keys=k&max_bandwidth=10",
		"app=a&keys=k&mode=latest&mode=latest",
	} {
		if code, msg := sseOpen(t, base, q, nil).refused(http.StatusBadRequest); code != proto.CodeBadRequest {
			t.Fatalf("%s: %s %s", q, code, msg)
		}
	}

	subscribed := time.Now()
	s := sseStart(t, base, "app=ssel&keys=k&mode=latest&max_rate=2&max_bandwidth=65536", nil)
	if ack := s.ack(); ack.Mode != "latest" || ack.MaxRate != 2 {
		t.Fatalf("ack %+v", ack)
	}
	const n = 100
	done := publishPaced(base, "ssel", "k", n, 20*time.Millisecond)
	var seqs []uint64
	for len(seqs) == 0 || seqs[len(seqs)-1] < n {
		m := s.values(1)[0]
		if len(seqs) > 0 && m.Seq <= seqs[len(seqs)-1] {
			t.Fatalf("seq %d after %d", m.Seq, seqs[len(seqs)-1])
		}
		seqs = append(seqs, m.Seq)
	}
	last := time.Now()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if limit := int(2*last.Sub(subscribed).Seconds()) + 1; len(seqs) > limit {
		t.Fatalf("%d values in %s: more than 2 a second (%v)", len(seqs), last.Sub(subscribed), seqs)
	}
	if !strings.HasPrefix(s.lastID, fmt.Sprint(n)+":") {
		t.Fatalf("last id %q, want the position of seq %d", s.lastID, n)
	}
	t.Logf("SSE: %d of %d values: %v", len(seqs), n, seqs)
}
