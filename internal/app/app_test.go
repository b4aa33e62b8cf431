package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
)

// startApp runs a whole wspush process on a loopback port and returns its
// base URL; it is shut down when the test ends.
func startApp(t *testing.T, cfg app.Config) (string, *app.App) {
	t.Helper()
	base, a, _ := wstest.StartApp(t, cfg)
	return base, a
}

func publish(t *testing.T, base string, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(base+"/api/publish", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatalf("publish response: %v", err)
	}
	return resp.StatusCode, out
}

func mustPublish(t *testing.T, base, app, key, data string) {
	t.Helper()
	code, out := publish(t, base, fmt.Sprintf(`{"app":%q,"key":%q,"data":%s}`, app, key, data))
	if code != http.StatusOK {
		t.Fatalf("publish: %d %v", code, out)
	}
}

func TestHTTPPublishReachesJSONAndBinarySubscribers(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	js := wstest.Dial(t, wstest.WSURL(base), nil)
	bin := wstest.Dial(t, wstest.WSURL(base), nil)
	js.Subscribe("plant-7", "json", nil, "001")
	bin.Subscribe("plant-7", "binary", nil, "001")

	for i := 1; i <= 5; i++ {
		mustPublish(t, base, "plant-7", "001", fmt.Sprintf(`{"temp":%d}`, 20+i))
	}
	for _, c := range []*wstest.Client{js, bin} {
		got := c.Data(5)
		for i, m := range got {
			if m.Seq != uint64(i+1) || m.App != "plant-7" || m.Key != "001" || m.TS == 0 {
				t.Fatalf("message %d: %+v", i, m)
			}
			if want := fmt.Sprintf(`{"temp":%d}`, 21+i); string(m.Data) != want {
				t.Fatalf("data %d: got %s, want %s", i, m.Data, want)
			}
			if m.Binary != (c == bin) {
				t.Fatalf("binary=%v on the %s client", m.Binary, map[bool]string{true: "binary", false: "json"}[c == bin])
			}
		}
	}
}

func TestNonJSONPayloadIsBase64(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "", nil, "k")
	code, out := publish(t, base, `{"app":"a","key":"k","b64":"AAEC/w=="}`)
	if code != 200 {
		t.Fatalf("publish: %d %v", code, out)
	}
	m := c.Data(1)[0]
	if !bytes.Equal(m.B64, []byte{0, 1, 2, 255}) || m.Data != nil {
		t.Fatalf("got %+v", m)
	}
}

func TestLatestValueAfterSubscribe(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	mustPublish(t, base, "a", "k", `1`)
	mustPublish(t, base, "a", "k", `2`)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	ack := c.Subscribe("a", "json", nil, "k", "never-published")
	if ack.Recovered != nil {
		t.Fatalf("ack without since carries recovered: %+v", ack)
	}
	if m := c.Data(1)[0]; m.Seq != 2 || string(m.Data) != "2" {
		t.Fatalf("latest: %+v", m)
	}
	c.ExpectSilence(100 * time.Millisecond)
}

func TestPolledValuesFromTheDemoDataCenter(t *testing.T) {
	base, _ := startApp(t, app.Config{Demo: true})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("demo", "binary", nil, "s001", "s002")
	got := map[string][]uint64{}
	for len(got["s001"]) < 2 || len(got["s002"]) < 2 {
		m := c.Next()
		if m.Op != proto.OpData {
			t.Fatalf("got %+v", m)
		}
		var v struct{ Temp, Humidity *float64 }
		if err := json.Unmarshal(m.Data, &v); err != nil || v.Temp == nil || v.Humidity == nil {
			t.Fatalf("sensor value %s: %v", m.Data, err)
		}
		got[m.Key] = append(got[m.Key], m.Seq)
	}
	for k, seqs := range got {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] != seqs[i-1]+1 {
				t.Fatalf("%s: seqs %v not consecutive", k, seqs)
			}
		}
	}
}

func TestUnsubscribeStopsOnlyThatKey(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant-7", "json", nil, "001", "002")
	c.Unsubscribe("plant-7", "002")
	mustPublish(t, base, "plant-7", "002", `"x"`)
	mustPublish(t, base, "plant-7", "001", `"y"`)
	if m := c.Data(1)[0]; m.Key != "001" {
		t.Fatalf("got %+v", m)
	}
	c.ExpectSilence(100 * time.Millisecond)
}

func TestSinceReturnsExactlyTheMissedSeqs(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	for i := 1; i <= 10; i++ {
		mustPublish(t, base, "a", "k", fmt.Sprint(i))
	}
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	ack := c.Subscribe("a", "json", map[string]proto.Position{"k": {Seq: 4}}, "k")
	if ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("ack: %+v", ack)
	}
	if got := wstest.Seqs(c.Data(6)); !slices.Equal(got, []uint64{5, 6, 7, 8, 9, 10}) {
		t.Fatalf("replayed %v", got)
	}
	mustPublish(t, base, "a", "k", "11")
	if m := c.Data(1)[0]; m.Seq != 11 {
		t.Fatalf("live after replay: %+v", m)
	}
	c.ExpectSilence(100 * time.Millisecond)
}

func TestSinceBeyondHistoryIsNotRecovered(t *testing.T) {
	base, _ := startApp(t, app.Config{Middle: middleHistory(3)})
	for i := 1; i <= 10; i++ {
		mustPublish(t, base, "a", "k", fmt.Sprint(i))
	}
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	ack := c.Subscribe("a", "json", map[string]proto.Position{"k": {Seq: 2}}, "k")
	if ack.Recovered == nil || *ack.Recovered {
		t.Fatalf("ack: %+v", ack)
	}
	// PROTOCOL.md "Subscribe and resume": a failed resume is a reset to
	// the seq before the latest value, then that latest value.
	if m := c.Next(); m.Op != proto.OpReset || m.Seq != 9 || m.Reason != proto.ResetGap || m.Epoch != ack.Positions["k"].Epoch {
		t.Fatalf("want reset to seq 9 (gap) in the ack's epoch, got %+v", m)
	}
	if m := c.Data(1)[0]; m.Seq != 10 {
		t.Fatalf("want the latest value, got %+v", m)
	}
}

func TestTwoClientsOnOneKeyGetEveryValue(t *testing.T) {
	base, a := startApp(t, app.Config{})
	c1 := wstest.Dial(t, wstest.WSURL(base), nil)
	c2 := wstest.Dial(t, wstest.WSURL(base), nil)
	c1.Subscribe("a", "json", nil, "k")
	c2.Subscribe("a", "binary", nil, "k")
	const n = 200
	go func() {
		for i := 0; i < n; i++ {
			_, _ = a.Node().Publish(context.Background(), "test", []proto.Publication{{App: "a", Key: "k", Data: []byte(fmt.Sprint(i)), JSON: true}})
		}
	}()
	for _, c := range []*wstest.Client{c1, c2} {
		for i, s := range wstest.Seqs(c.Data(n)) {
			if s != uint64(i+1) {
				t.Fatalf("message %d has seq %d", i, s)
			}
		}
	}
}

func TestSlowClientClosedWith4008WhileFastOneMissesNothing(t *testing.T) {
	base, a := startApp(t, app.Config{})
	slow := wstest.Dial(t, wstest.WSURL(base), nil)
	fast := wstest.Dial(t, wstest.WSURL(base), nil)
	slow.Subscribe("a", "json", nil, "k")
	fast.Subscribe("a", "json", nil, "k")

	// 64 KiB payloads: the slow client's socket buffers and then its 1 MiB
	// queue fill up within a few hundred publications.
	// The publisher keeps at most 8 values (480 KiB) ahead of the fast
	// client, which therefore never comes near its 1 MiB queue limit.
	payload := []byte(`"` + strings.Repeat("x", 60<<10) + `"`)
	const n, window = 400, 8
	received := make(chan struct{}, n)
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if i >= window {
				<-received
			}
			if _, err := a.Node().Publish(context.Background(), "test", []proto.Publication{{App: "a", Key: "k", Data: payload, JSON: true}}); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := 0; i < n; i++ {
		if m := fast.Data(1)[0]; m.Seq != uint64(i+1) {
			t.Fatalf("fast client: message %d has seq %d", i, m.Seq)
		}
		received <- struct{}{}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	slow.ExpectClose(proto.CloseTooSlow)
}

func TestBadInput(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	cases := []struct {
		name, frame, code, msg string
		binary                 bool
	}{
		{"malformed JSON", `{"op":"subscribe","id":7,`, proto.CodeBadRequest, "malformed JSON", false},
		{"unknown op", `{"op":"publish","id":8}`, proto.CodeBadRequest, "unknown op", false},
		{"invalid key", `{"op":"subscribe","id":9,"app":"a","keys":["a b"]}`, proto.CodeBadRequest, `key "a b"`, false},
		{"invalid app", `{"op":"subscribe","id":10,"app":"a.b","keys":["k"]}`, proto.CodeBadRequest, `app "a.b"`, false},
		{"bad format", `{"op":"subscribe","id":11,"app":"a","keys":["k"],"format":"xml"}`, proto.CodeBadRequest, "format", false},
		{"too many keys", tooManyKeys(12, 101), proto.CodeLimit, "limit is 100", false},
		{"binary frame", `{"op":"ping","id":13}`, proto.CodeBadRequest, "binary frames are not accepted", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mt := websocket.TextMessage
			if tc.binary {
				mt = websocket.BinaryMessage
			}
			c.SendRaw(mt, []byte(tc.frame))
			m := c.Next()
			if m.Op != proto.OpError || m.Code != tc.code || !strings.Contains(m.Message, tc.msg) {
				t.Fatalf("got %+v, want error %s containing %q", m, tc.code, tc.msg)
			}
		})
	}
	// The connection survived all of that.
	id := c.Send(proto.Command{Op: proto.OpPing})
	if m := c.Next(); m.Op != proto.OpPong || m.ID != id {
		t.Fatalf("ping after errors: %+v", m)
	}
}

func tooManyKeys(id, n int) string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%q", fmt.Sprintf("k%d", i))
	}
	return fmt.Sprintf(`{"op":"subscribe","id":%d,"app":"a","keys":[%s]}`, id, strings.Join(keys, ","))
}

func TestGarbageClosesWith1008(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	for i := 0; i < 10; i++ {
		c.SendRaw(websocket.TextMessage, []byte("garbage"))
	}
	c.ExpectClose(proto.ClosePolicy)
}

func TestFrameOverLimitClosesWith1009(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.SendRaw(websocket.TextMessage, bytes.Repeat([]byte("x"), 65<<10))
	c.ExpectClose(proto.CloseTooLarge)
}

// rawClientFrame frames payload as a client must, masked (with an all-zero
// key when unmasked is false, a legal key that leaves the bytes as they are),
// or not at all when unmasked is true.
func rawClientFrame(fin bool, opcode byte, payload string, unmasked bool) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	if unmasked {
		return append([]byte{b0, byte(len(payload))}, payload...)
	}
	return append([]byte{b0, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

func TestFragmentedCommandWithAPingInBetween(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	pong := make(chan string, 1)
	c.Conn.SetPongHandler(func(data string) error { pong <- data; return nil })
	cmd := `{"op":"subscribe","id":7,"app":"a","keys":["k"]}`
	var stream []byte
	stream = append(stream, rawClientFrame(false, proto.OpcodeText, cmd[:10], false)...)
	stream = append(stream, rawClientFrame(true, proto.OpcodePing, "hi", false)...)
	stream = append(stream, rawClientFrame(true, 0, cmd[10:], false)...)
	for _, b := range stream { // one byte per write: every read of the server is partial
		if _, err := c.Conn.UnderlyingConn().Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	c.ExpectAck(7)
	select {
	case data := <-pong:
		if data != "hi" {
			t.Fatalf("pong %q, want hi", data)
		}
	default:
		t.Fatal("no pong before the ack")
	}
}

func TestClientCloseIsEchoed(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "json", nil, "k")
	if err := c.Conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(4321, "bye"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	c.ExpectClose(4321)
	wstest.Eventually(t, 5*time.Second, func() error {
		if n := metricLine(t, base, `wspush_connections_closed_total{code="4321"}`); n != 1 {
			return fmt.Errorf("%v connections closed with 4321, want 1", n)
		}
		return nil
	})
}

func TestUnmaskedFrameClosesWith1002(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	if _, err := c.Conn.UnderlyingConn().Write(rawClientFrame(true, proto.OpcodeText, `{"op":"ping"}`, true)); err != nil {
		t.Fatal(err)
	}
	c.ExpectClose(proto.CloseProtocolError)
}

func TestCommandRateLimitClosesWith1008(t *testing.T) {
	cfg := app.Config{}
	cfg.Users.CommandRate, cfg.Users.CommandBurst = 1, 3
	base, _ := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	for i := 0; i < 6; i++ {
		c.Send(proto.Command{Op: proto.OpPing})
	}
	c.ExpectClose(proto.ClosePolicy)
}

func TestSubscriptionLimit(t *testing.T) {
	cfg := app.Config{}
	cfg.Users.MaxSubscriptions, cfg.Users.MaxKeysPerSubscribe = 3, 2
	base, _ := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "", nil, "k1", "k2")
	c.Subscribe("a", "", nil, "k2", "k3") // k2 again does not count twice
	id := c.Send(proto.Command{Op: proto.OpSubscribe, App: "a", Keys: []string{"k4"}})
	if m := c.Next(); m.Op != proto.OpError || m.ID != id || m.Code != proto.CodeLimit {
		t.Fatalf("got %+v", m)
	}
}

func TestConnectionLimit(t *testing.T) {
	cfg := app.Config{}
	cfg.Users.MaxConnections = 2
	base, _ := startApp(t, cfg)
	wstest.Dial(t, wstest.WSURL(base), nil)
	wstest.Dial(t, wstest.WSURL(base), nil)
	if _, err := wstest.TryDial(t, wstest.WSURL(base), nil); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("third connection: %v", err)
	}
}

func TestDeadConnectionIsReaped(t *testing.T) {
	cfg := app.Config{}
	cfg.Users.PingInterval, cfg.Users.PingTimeout = 20*time.Millisecond, 100*time.Millisecond
	base, a := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base), nil) // never reads, so never answers pings
	c.Subscribe("a", "", nil, "k")
	wstest.Eventually(t, 5*time.Second, func() error {
		if n := a.Users().Connections(); n != 0 {
			return fmt.Errorf("%d connections open", n)
		}
		return nil
	})
	// An answering client is kept.
	live := wstest.Dial(t, wstest.WSURL(base), nil)
	go func() {
		for {
			if _, _, err := live.Conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // several timeouts' worth: it must survive them
	if n := a.Users().Connections(); n != 1 {
		t.Fatalf("the answering client was reaped: %d connections", n)
	}
}

func TestShutdownClosesClientsWith1001(t *testing.T) {
	base, _, stop := wstest.StartApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "", nil, "k")
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }() // a failed Run fails the test
	c.ExpectClose(proto.CloseGoingAway)
	<-stopped
}

func TestJWTAuth(t *testing.T) {
	secret := []byte("s3cret")
	cfg := app.Config{}
	cfg.Users.JWTSecret = secret
	base, _ := startApp(t, cfg)

	anon := wstest.Dial(t, wstest.WSURL(base), nil)
	anon.ExpectClose(proto.CloseUnauthorized)

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "dash", "apps": []string{"plant-7"}, "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	c := wstest.Dial(t, wstest.WSURL(base)+"?token="+tok, nil)
	c.Subscribe("plant-7", "", nil, "001")
	id := c.Send(proto.Command{Op: proto.OpSubscribe, App: "other", Keys: []string{"001"}})
	if m := c.Next(); m.Op != proto.OpError || m.ID != id || m.Code != proto.CodeForbidden {
		t.Fatalf("got %+v", m)
	}

	bad, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x"}).SignedString([]byte("wrong"))
	wstest.Dial(t, wstest.WSURL(base), http.Header{"Authorization": {"Bearer " + bad}}).ExpectClose(proto.CloseUnauthorized)
}

func TestHTTPEndpoints(t *testing.T) {
	base, _ := startApp(t, app.Config{APIKey: "k", Dashboard: fstest.MapFS{"index.html": {Data: []byte("<h1>wspush</h1>")}}})
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if code, body := get("/"); code != 200 || !strings.Contains(body, "wspush") {
		t.Fatalf("dashboard: %d %q", code, body)
	}
	if code, out := publish(t, base, `{"app":"a","key":"k","data":1}`); code != 401 || out["error"] != proto.CodeUnauthorized {
		t.Fatalf("publish without key: %d %v", code, out)
	}
	code, body := get("/metrics")
	for _, m := range []string{"wspush_connections ", "wspush_http_publish_requests_total", "go_goroutines"} {
		if code != 200 || !strings.Contains(body, m) {
			t.Fatalf("metrics lack %s: %d", m, code)
		}
	}
}

// --write-delay: a value to a connection that did not write for the delay
// goes at once; what follows within the delay waits for the delay's end
// and shares one write.
func TestWriteDelayPutsQueuedFramesInOneWrite(t *testing.T) {
	const delay = 500 * time.Millisecond
	cfg := app.Config{}
	cfg.Users.WriteDelay = delay
	cfg.Users.PingInterval, cfg.Users.PingTimeout = time.Hour, 2*time.Hour // no ping frame in between
	base, a := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "json", nil, "k")
	// The counters move just after the write the client already saw.
	counters := func() (writes, frames float64) {
		return metricValue(t, base, "wspush_socket_writes_total"), metricValue(t, base, "wspush_frames_written_total")
	}
	wstest.Eventually(t, 5*time.Second, func() error {
		if w, f := counters(); w != 1 || f != 1 {
			return fmt.Errorf("%v frames in %v writes, want the ack alone", f, w)
		}
		return nil
	})
	time.Sleep(delay) // the connection is idle for the delay

	publish := func(from, n int) {
		pubs := make([]proto.Publication, n)
		for i := range pubs {
			pubs[i] = proto.Publication{App: "a", Key: "k", Data: []byte(fmt.Sprint(from + i)), JSON: true}
		}
		if _, err := a.Node().Publish(context.Background(), "test", pubs); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	publish(0, 1)
	if got := wstest.Seqs(c.Data(1)); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("seqs %v", got)
	}
	if took := time.Since(start); took >= delay {
		t.Fatalf("a value to an idle connection took %s: it waited for the delay", took)
	}

	// Ten publications within the delay after that write leave in one.
	const n = 10
	publish(1, n)
	if got := wstest.Seqs(c.Data(n)); !slices.Equal(got, []uint64{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}) {
		t.Fatalf("seqs %v", got)
	}
	wstest.Eventually(t, 5*time.Second, func() error {
		if w, f := counters(); w != 3 || f != 2+n {
			return fmt.Errorf("%v frames in %v writes, want %d in 3", f, w, 2+n)
		}
		return nil
	})
}

// metricValue reads an unlabelled counter or gauge from /metrics.
func metricValue(t *testing.T, base, name string) float64 {
	t.Helper()
	v := metricLine(t, base, name)
	if v < 0 {
		t.Fatalf("metric %s not found", name)
	}
	return v
}

// metricLine reads the value of the /metrics line that starts with series
// (a name, with its labels if any), -1 if there is none.
func metricLine(t *testing.T, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return -1
}
