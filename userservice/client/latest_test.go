package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice/client"
)

// Delivery modes in the client (docs/PROTOCOL.md, Delivery modes), against
// the scripted server of rule_test.go.

// rawCommand reads the next command as bytes, with its fields by name
// (proto.Command has no mode or max_rate to decode them into).
func (fc *fakeConn) rawCommand() (b []byte, fields map[string]json.RawMessage) {
	fc.t.Helper()
	fc.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := fc.ws.ReadMessage()
	if err != nil {
		fc.t.Fatalf("reading a command: %v", err)
	}
	if err := json.Unmarshal(b, &fields); err != nil {
		fc.t.Fatalf("command %s: %v", b, err)
	}
	return b, fields
}

func cmdID(t *testing.T, fields map[string]json.RawMessage) uint64 {
	t.Helper()
	var id uint64
	if err := json.Unmarshal(fields["id"], &id); err != nil {
		t.Fatalf("id %s: %v", fields["id"], err)
	}
	return id
}

// subscribeAsync runs Subscribe on its own goroutine: the scripted server
// has to answer before it returns.
func subscribeAsync(c *client.Client, app string, keys []string, opts client.SubscribeOptions, h client.Handler) <-chan error {
	ready := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(context.Background(), app, keys, opts, h)
		ready <- err
	}()
	return ready
}

// TestLatestRuleAcceptsJumps: a latest subscribe carries mode and
// max_rate; its key accepts any seq above the position (a jump is no gap:
// no reconnect, no resubscribe) and silently ignores an older or the same
// seq; the ack's mode and max_rate are understood.
func TestLatestRuleAcceptsJumps(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	rec := newRecorder()
	ready := subscribeAsync(c, "a", []string{"k"}, client.SubscribeOptions{Mode: client.ModeLatest, MaxRate: 2}, rec)
	fc := s.accept()
	b, f := fc.rawCommand()
	if want := `{"op":"subscribe","id":2,"app":"a","keys":["k"],"mode":"latest","max_rate":2}`; string(b) != want {
		t.Fatalf("subscribe %s, want %s", b, want)
	}
	fc.send(`{"op":"ack","id":` + string(f["id"]) + `,"mode":"latest","max_rate":2,"positions":{"k":{"seq":5,"epoch":"E1"}}}`)
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	fc.data("k", 5)  // the latest value the ack announced
	fc.data("k", 9)  // a jump: 6..8 skipped on purpose
	fc.data("k", 7)  // older: ignored
	fc.data("k", 9)  // the same: ignored
	fc.data("k", 10) // the next one
	fc.data("k", 40) // a long jump
	rec.waitSeq(t, "k", 40)
	if got, want := short(rec.seqs("k")), "[5 9 10 40]"; got != want {
		t.Fatalf("seqs %s, want %s", got, want)
	}
	if pos := c.Positions("a")["k"]; pos != (client.Position{Seq: 40, Epoch: "E1"}) {
		t.Fatalf("position %v", pos)
	}
	// Still the same connection, with nothing sent since: the next command
	// on it is the subscribe that follows, not a resume of k.
	ready = subscribeAsync(c, "a", []string{"z"}, client.SubscribeOptions{}, newRecorder())
	b, f = fc.rawCommand()
	if want := `{"op":"subscribe","id":3,"app":"a","keys":["z"]}`; string(b) != want {
		t.Fatalf("after the jumps: %s, want %s (no resume of k)", b, want)
	}
	fc.ack(cmdID(t, f), nil, map[string]proto.Position{"z": {Seq: 0, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.conns:
		t.Fatal("the client reconnected after a jump of a latest key")
	default:
	}
	if st := c.State(); st != client.StateOpen {
		t.Fatalf("state %v", st)
	}
}

// TestLatestResetAndFresh: a latest key takes a reset as a stream key does,
// and a fresh latest key ignores a seq below the ack's position.
func TestLatestResetAndFresh(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	rec := newRecorder()
	ready := subscribeAsync(c, "a", []string{"k"}, client.SubscribeOptions{Mode: client.ModeLatest}, rec)
	fc := s.accept()
	b, f := fc.rawCommand()
	if want := `{"op":"subscribe","id":2,"app":"a","keys":["k"],"mode":"latest"}`; string(b) != want {
		t.Fatalf("subscribe %s, want %s", b, want)
	}
	fc.send(`{"op":"ack","id":` + string(f["id"]) + `,"mode":"latest","positions":{"k":{"seq":5,"epoch":"E1"}}}`)
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	fc.data("k", 3) // below the announced position: ignored
	fc.data("k", 6)
	fc.send(`{"op":"reset","app":"a","key":"k","seq":2,"epoch":"E2","reason":"epoch"}`)
	fc.data("k", 2) // at the reset's position: ignored
	fc.data("k", 4)
	eventually(t, 10*time.Second, func() error {
		if n := rec.count("k"); n < 2 {
			return fmt.Errorf("%d values", n)
		}
		return nil
	})
	_, resets, log := rec.snapshot()
	if got, want := strings.Join(log, ","), "ack resumed=false recovered=false,data k 6,reset k 2 epoch,data k 4"; got != want {
		t.Fatalf("log %s, want %s", got, want)
	}
	if len(resets["k"]) != 1 {
		t.Fatalf("resets %v", resets)
	}
	if pos := c.Positions("a")["k"]; pos != (client.Position{Seq: 4, Epoch: "E2"}) {
		t.Fatalf("position %v", pos)
	}
}

// TestLatestResumeKeepsMode: after a lost connection, a latest key is
// subscribed again with its mode, max_rate, format and since; a stream key
// of the same client with neither.
func TestLatestResumeKeepsMode(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	lat, str := newRecorder(), newRecorder()
	ready := subscribeAsync(c, "a", []string{"k"}, client.SubscribeOptions{Mode: client.ModeLatest, MaxRate: 0.5, Format: client.FormatBinary}, lat)
	fc := s.accept()
	b, f := fc.rawCommand()
	if want := `{"op":"subscribe","id":2,"app":"a","keys":["k"],"format":"binary","mode":"latest","max_rate":0.5}`; string(b) != want {
		t.Fatalf("subscribe %s, want %s", b, want)
	}
	fc.ack(cmdID(t, f), nil, map[string]proto.Position{"k": {Seq: 5, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	ready = subscribeAsync(c, "a", []string{"q"}, client.SubscribeOptions{}, str)
	b, f = fc.rawCommand()
	if want := `{"op":"subscribe","id":3,"app":"a","keys":["q"]}`; string(b) != want {
		t.Fatalf("stream subscribe %s, want %s", b, want)
	}
	fc.ack(cmdID(t, f), nil, map[string]proto.Position{"q": {Seq: 1, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	fc.sendBinary(proto.AppendDataBinary(nil, &proto.Publication{App: "a", Key: "k", Seq: 12, TS: 1, Data: []byte("x")}))
	fc.data("q", 2)
	lat.waitSeq(t, "k", 12)
	str.waitSeq(t, "q", 2)
	fc.close(1001)

	fc2 := s.accept()
	got := map[string]string{}
	for range 2 {
		b, f := fc2.rawCommand()
		var keys []string
		_ = json.Unmarshal(f["keys"], &keys)
		got[strings.Join(keys, ",")] = string(b)
		var since map[string]proto.Position
		_ = json.Unmarshal(f["since"], &since)
		fc2.ack(cmdID(t, f), &yes, map[string]proto.Position{keys[0]: since[keys[0]]})
	}
	// The two subscribes come in either order: ids 2 and 3.
	anyID := regexp.MustCompile(`"id":[23],`)
	if want := `{"op":"subscribe","id":N,"app":"a","keys":["k"],"format":"binary","since":{"k":{"seq":12,"epoch":"E1"}},"mode":"latest","max_rate":0.5}`; anyID.ReplaceAllString(got["k"], `"id":N,`) != want {
		t.Fatalf("resume of the latest key: %s, want %s", got["k"], want)
	}
	if want := `{"op":"subscribe","id":N,"app":"a","keys":["q"],"since":{"q":{"seq":2,"epoch":"E1"}}}`; anyID.ReplaceAllString(got["q"], `"id":N,`) != want {
		t.Fatalf("resume of the stream key: %s, want %s", got["q"], want)
	}
	lat.waitAcks(t, 2)
	str.waitAcks(t, 2)
}

// TestSubscribeModeOptions: Mode and MaxRate are checked before anything
// is sent.
func TestSubscribeModeOptions(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	bad := []client.SubscribeOptions{
		{Mode: "newest"},
		{MaxRate: 2}, // stream by default
		{Mode: client.ModeStream, MaxRate: 2},
		{Mode: client.ModeLatest, MaxRate: -1},
		{Mode: client.ModeLatest, MaxRate: 1000.5},
		{Mode: client.ModeLatest, MaxRate: math.NaN()},
		{Mode: client.ModeLatest, MaxRate: math.Inf(1)},
	}
	for _, o := range bad {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Subscribe(ctx, "a", []string{"k"}, o, newRecorder())
		cancel()
		if err == nil || !strings.Contains(err.Error(), "wspush subscribe: mode") && !strings.Contains(err.Error(), "wspush subscribe: MaxRate") {
			t.Errorf("%+v: %v, want an error about the mode or MaxRate", o, err)
		}
	}
	// Nothing of those was sent; the bounds themselves are valid.
	fc := s.accept()
	for i, o := range []client.SubscribeOptions{
		{Mode: client.ModeLatest, MaxRate: 1000},
		{Mode: client.ModeLatest, MaxRate: 0.001},
		{Mode: client.ModeStream},
	} {
		key := string(rune('a' + i))
		ready := subscribeAsync(c, "a", []string{key}, o, newRecorder())
		b, f := fc.rawCommand()
		if !strings.Contains(string(b), `"keys":["`+key+`"]`) {
			t.Fatalf("%+v: sent %s", o, b)
		}
		fc.ack(cmdID(t, f), nil, map[string]proto.Position{key: {Seq: 0, Epoch: "E"}})
		if err := <-ready; err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
	}
}

// TestMaxBandwidthURL: Config.MaxBandwidth is the max_bandwidth query
// parameter of the WebSocket URL, beside the URL's own; out of bounds, New
// refuses it.
func TestMaxBandwidthURL(t *testing.T) {
	queries := make(chan string, 4)
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		queries <- r.URL.Path + "?" + r.URL.RawQuery
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		for {
			_, b, err := ws.ReadMessage()
			if err != nil {
				return
			}
			if cmd, err := proto.DecodeCommand(b); err == nil && cmd.Op == proto.OpPing {
				ws.WriteMessage(websocket.TextMessage, proto.AppendPong(nil, cmd.ID))
			}
		}
	}))
	t.Cleanup(srv.Close)
	base := "ws" + strings.TrimPrefix(srv.URL, "http")
	for _, tc := range []struct {
		url  string
		bw   int
		want string
	}{
		{base, 65536, "/ws?max_bandwidth=65536"},
		{base + "/ws?x=1", 1024, "/ws?max_bandwidth=1024&x=1"},
		{base + "/ws", 0, "/ws?"},
	} {
		c := dial(t, client.Config{URL: tc.url, MaxBandwidth: tc.bw})
		if got := <-queries; got != tc.want {
			t.Errorf("MaxBandwidth %d on %s: request %s, want %s", tc.bw, tc.url, got, tc.want)
		}
		c.Close()
	}
	for _, bw := range []int{1023, -1, 1_000_000_001} {
		if _, err := client.New(client.Config{URL: base, MaxBandwidth: bw}); err == nil || !strings.Contains(err.Error(), "MaxBandwidth") {
			t.Errorf("MaxBandwidth %d: %v, want an error", bw, err)
		}
	}
}
