package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
)

// scriptedServer is a WebSocket endpoint that answers one subscribe with
// ack (as ack, a JSON text), waits for go, then sends one JSON data
// message per seq of seqs, their payloads stamped with stamp.
type scriptedServer struct {
	ack   func(cmd proto.Command) string
	seqs  []uint64
	stamp func() int64
	goCh  chan struct{}
	cmds  chan proto.Command
}

func (s *scriptedServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{}
	ws, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	_, b, err := ws.ReadMessage()
	if err != nil {
		return
	}
	cmd, err := proto.DecodeCommand(b)
	if err != nil {
		return
	}
	s.cmds <- cmd
	if ws.WriteMessage(websocket.TextMessage, []byte(s.ack(cmd))) != nil {
		return
	}
	<-s.goCh
	for _, seq := range s.seqs {
		msg := fmt.Sprintf(`{"op":"data","app":%q,"key":%q,"seq":%d,"ts":1,"data":{"t":%d}}`, cmd.App, cmd.Keys[0], seq, s.stamp())
		if ws.WriteMessage(websocket.TextMessage, []byte(msg)) != nil {
			return
		}
	}
	for { // until the worker closes
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
	}
}

// runScriptedWorker runs one worker with one latest connection (max_rate
// 2) against srv through the coordinator protocol: the key's values
// published and its final seq are given in the finish message. It
// returns the worker's result, or the error of its connection.
func runScriptedWorker(t *testing.T, srv *scriptedServer, published, final uint64) (*WorkerResult, string) {
	t.Helper()
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() { // ends when inW is closed
		done <- RunWorker(t.Context(), inR, outW)
		outW.Close()
	}()
	t.Cleanup(func() {
		inW.Close()
		go io.Copy(io.Discard, outR) // progress the worker still sends
		<-done
	})
	enc, dec := json.NewEncoder(inW), json.NewDecoder(outR)
	next := func(typ string) wireMsg {
		t.Helper()
		for {
			var m wireMsg
			if err := dec.Decode(&m); err != nil {
				t.Fatalf("waiting for %s: %v", typ, err)
			}
			if m.Type == msgError {
				t.Fatalf("waiting for %s: worker error %s", typ, m.Error)
			}
			if m.Type == typ {
				return m
			}
		}
	}
	send := func(m wireMsg) {
		t.Helper()
		if err := enc.Encode(m); err != nil {
			t.Fatal(err)
		}
	}
	cfg := WorkerConfig{
		Plan: Plan{App: "a1", KeyPrefix: "f", Conns: 1, KeysPerConn: 1, KeySpace: 1, URLs: []string{wstest.WSURL(hs.URL)},
			SourceIPs: 1, Format: "json", Source: SourceHTTP, Mode: "latest", MaxRate: 2},
		Count: 1, RampRate: 100, MaxDialing: 1, HandshakeTimeout: 5 * time.Second, Drain: 300 * time.Millisecond,
		ProgressEvery: 50 * time.Millisecond, Deadline: time.Now().Add(time.Minute),
	}
	send(wireMsg{Type: msgConfig, Config: &cfg})
	ready := next(msgReady)
	if cmd := <-srv.cmds; cmd.Mode != "latest" || cmd.MaxRate != 2 {
		t.Errorf("subscribe with mode %q max_rate %g, want latest 2", cmd.Mode, cmd.MaxRate)
	}
	if ready.Progress.Connected != 1 {
		close(srv.goCh)
		send(wireMsg{Type: msgStop})
		res := next(msgResult).Result
		return nil, fmt.Sprint(res.Errors)
	}
	send(wireMsg{Type: msgStart, WindowStart: time.Now().UnixNano()})
	next(msgStarted)
	close(srv.goCh)
	send(wireMsg{Type: msgFinish, Expected: [][3]uint64{{0, 0, published}}, Finals: [][3]uint64{{0, 0, final}}})
	next(msgDrained)
	send(wireMsg{Type: msgStop})
	return next(msgResult).Result, ""
}

func newScripted(seqs ...uint64) *scriptedServer {
	return &scriptedServer{
		ack: func(cmd proto.Command) string {
			return fmt.Sprintf(`{"op":"ack","id":%d,"mode":"latest","max_rate":2}`, cmd.ID)
		},
		seqs:  seqs,
		stamp: func() int64 { return time.Now().UnixNano() },
		goCh:  make(chan struct{}),
		cmds:  make(chan proto.Command, 1),
	}
}

// TestLatestAccountingOfAGoodServer: seqs that jump (skipped values) are
// fine when they rise, the final one arrives and the rate holds.
func TestLatestAccountingOfAGoodServer(t *testing.T) {
	res, failed := runScriptedWorker(t, newScripted(3, 7, 10), 10, 10)
	if failed != "" {
		t.Fatal(failed)
	}
	want := Loss{Expected: 1, Received: 3, Distinct: 3}
	if res.Loss != want {
		t.Errorf("loss %+v, want %+v", res.Loss, want)
	}
	if l := res.Latest; l == nil || l.Skipped != 7 || l.MaxPerSecond != 3 || l.RateViolations != 0 || l.MaxRate != 2 {
		t.Errorf("latest figures %+v: want 7 skipped, 3 in one second (the limit, ceil(2)+1), no violation", l)
	}
	if res.Latency.Count() != 3 {
		t.Errorf("%d ages recorded, want 3", res.Latency.Count())
	}
}

// TestLatestAccountingOfABadServer: a duplicate, a seq going back, a
// final value that never comes and too many values in a second are all
// counted.
func TestLatestAccountingOfABadServer(t *testing.T) {
	res, failed := runScriptedWorker(t, newScripted(3, 5, 5, 4, 8), 10, 10)
	if failed != "" {
		t.Fatal(failed)
	}
	want := Loss{Expected: 1, Received: 5, Distinct: 4, Duplicates: 1, OutOfOrder: 1, Lost: 1}
	if res.Loss != want {
		t.Errorf("loss %+v, want %+v", res.Loss, want)
	}
	if l := res.Latest; l == nil || l.MaxPerSecond != 5 || l.RateViolations != 1 {
		t.Errorf("latest figures %+v: want 5 values in one second, over the limit of 3", l)
	}
}

// TestLatestNeedsAServerThatKnowsModes: a server that ignores "mode"
// acks without it and would stream every value; the connection fails
// instead of the figures being wrong.
func TestLatestNeedsAServerThatKnowsModes(t *testing.T) {
	srv := newScripted(1)
	srv.ack = func(cmd proto.Command) string { return fmt.Sprintf(`{"op":"ack","id":%d}`, cmd.ID) }
	res, failed := runScriptedWorker(t, srv, 1, 1)
	if !strings.Contains(failed, "the server does not know delivery modes") {
		t.Fatalf("connection: %+v %q, want it failed for the ack without mode", res, failed)
	}
}

func TestFanoutModeChecks(t *testing.T) {
	r := newTestRunner(t, Options{Servers: []ServerURL{{WS: "ws://127.0.0.1:1/ws", HTTP: "http://127.0.0.1:1"}}})
	for _, tc := range []struct {
		c    FanoutConfig
		want string
	}{
		{FanoutConfig{Subscribers: 1, Rate: 1, Duration: time.Second, Mode: "newest"}, "mode"},
		{FanoutConfig{Subscribers: 1, Rate: 1, Duration: time.Second, MaxRate: 2}, "max_rate"},
		{FanoutConfig{Subscribers: 1, Rate: 1, Duration: time.Second, Mode: "latest", MaxRate: 1001}, "max_rate"},
		{FanoutConfig{Subscribers: 1, Rate: 1, Duration: time.Second, Mode: "latest", Source: SourceAMQP}, "needs source http"},
	} {
		if _, err := r.Fanout(t.Context(), tc.c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want %q", tc.c, err, tc.want)
		}
	}
}
