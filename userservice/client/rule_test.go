package client_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice/client"
)

// scripted is a fake server whose every connection the test drives by
// hand, to check the client rule message by message (docs/PROTOCOL.md, The
// client rule) where a real server would never misbehave.
type scripted struct {
	t     *testing.T
	srv   *httptest.Server
	conns chan *fakeConn
}

type fakeConn struct {
	t  *testing.T
	ws *websocket.Conn
}

func newScripted(t *testing.T) *scripted {
	s := &scripted{t: t, conns: make(chan *fakeConn, 4)}
	up := websocket.Upgrader{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		s.conns <- &fakeConn{t: t, ws: ws}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *scripted) url() string { return "ws" + strings.TrimPrefix(s.srv.URL, "http") + "/ws" }

// accept returns the next connection, having answered its first ping.
func (s *scripted) accept() *fakeConn {
	s.t.Helper()
	select {
	case fc := <-s.conns:
		s.t.Cleanup(func() { fc.ws.Close() })
		cmd := fc.command()
		if cmd.Op != proto.OpPing {
			s.t.Fatalf("first command %+v, want ping", cmd)
		}
		fc.send(string(proto.AppendPong(nil, cmd.ID)))
		return fc
	case <-time.After(10 * time.Second):
		s.t.Fatal("no connection")
		return nil
	}
}

func (fc *fakeConn) command() proto.Command {
	fc.t.Helper()
	fc.ws.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, b, err := fc.ws.ReadMessage()
	if err != nil {
		fc.t.Fatalf("reading a command: %v", err)
	}
	cmd, err := proto.DecodeCommand(b)
	if err != nil {
		fc.t.Fatalf("command %s: %v", b, err)
	}
	return cmd
}

func (fc *fakeConn) send(msg string) {
	fc.t.Helper()
	if err := fc.ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		fc.t.Fatal(err)
	}
}

func (fc *fakeConn) sendBinary(b []byte) {
	fc.t.Helper()
	if err := fc.ws.WriteMessage(websocket.BinaryMessage, b); err != nil {
		fc.t.Fatal(err)
	}
}

func (fc *fakeConn) ack(id uint64, recovered *bool, pos map[string]proto.Position) {
	fc.t.Helper()
	r := proto.RecoveryNone
	if recovered != nil {
		r = proto.NotRecovered
		if *recovered {
			r = proto.Recovered
		}
	}
	var kps []proto.KeyPosition
	for k, p := range pos {
		kps = append(kps, proto.KeyPosition{Key: k, Position: p})
	}
	fc.send(string(proto.AppendAck(nil, id, r, kps)))
}

func (fc *fakeConn) data(key string, seq uint64) {
	fc.t.Helper()
	p := proto.Publication{App: "a", Key: key, Seq: seq, TS: 1, Data: []byte("1"), JSON: true}
	fc.send(string(proto.AppendDataJSON(nil, &p)))
}

func (fc *fakeConn) close(code int) {
	fc.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, "test"), time.Now().Add(time.Second))
	fc.ws.Close()
}

func since(t *testing.T, cmd proto.Command) string {
	t.Helper()
	b, _ := json.Marshal(cmd.Since)
	return string(b)
}

var yes, no = true, false

// TestRuleFreshGapDuplicate: a fresh key accepts the announced seq; a
// duplicate is dropped; a gap makes the client resume from its position;
// a key still fresh resubscribes without since.
func TestRuleFreshGapDuplicate(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	rec := newRecorder()
	ready := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(context.Background(), "a", []string{"k", "q"}, client.SubscribeOptions{}, rec)
		ready <- err
	}()
	fc := s.accept()
	cmd := fc.command()
	if cmd.Op != proto.OpSubscribe || cmd.Since != nil || len(cmd.Keys) != 2 {
		t.Fatalf("subscribe %+v", cmd)
	}
	fc.ack(cmd.ID, nil, map[string]proto.Position{"k": {Seq: 5, Epoch: "E1"}, "q": {Seq: 9, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	fc.data("k", 5) // the latest value the ack announced
	fc.data("k", 6)
	fc.data("k", 6) // a duplicate: dropped
	fc.data("k", 8) // a gap: resume from 6
	fc2 := s.accept()
	cmd = fc2.command()
	if got := since(t, cmd); got != `{"k":{"seq":6,"epoch":"E1"}}` || len(cmd.Keys) != 2 {
		t.Fatalf("resubscribe keys %v since %s; want both keys, since k at 6 and q (fresh) without", cmd.Keys, got)
	}
	fc2.ack(cmd.ID, &yes, map[string]proto.Position{"k": {Seq: 8, Epoch: "E1"}, "q": {Seq: 9, Epoch: "E1"}})
	fc2.data("k", 7)
	fc2.data("k", 8)
	fc2.data("q", 9)
	rec.waitSeq(t, "k", 8)
	rec.waitSeq(t, "q", 9)
	checkSeqs(t, "k", rec.seqs("k"), 5, 8)
	acks, _, _ := rec.snapshot()
	if len(acks) != 2 || !acks[1].Resumed || !acks[1].Recovered {
		t.Fatalf("acks %+v", acks)
	}
}

// TestRuleSinceAdoptsEpoch: a bare since (no epoch) takes the ack's epoch,
// and the next resume sends the full form; a reset replaces the position.
func TestRuleSinceAdoptsEpoch(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	rec := newRecorder()
	ready := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(context.Background(), "a", []string{"k"}, client.SubscribeOptions{Since: map[string]client.Position{"k": {Seq: 3}}}, rec)
		ready <- err
	}()
	fc := s.accept()
	cmd := fc.command()
	if got := since(t, cmd); got != `{"k":{"seq":3,"epoch":""}}` {
		t.Fatalf("since %s", got)
	}
	fc.ack(cmd.ID, &yes, map[string]proto.Position{"k": {Seq: 5, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	fc.data("k", 4)
	fc.send(`{"op":"reset","app":"a","key":"k","seq":40,"epoch":"E2","reason":"epoch"}`)
	fc.data("k", 41)
	rec.waitSeq(t, "k", 41)
	if pos := c.Positions("a")["k"]; pos != (client.Position{Seq: 41, Epoch: "E2"}) {
		t.Fatalf("position %v", pos)
	}
	rec.mu.Lock()
	e4, e41 := rec.data["k"][0].Epoch, rec.data["k"][1].Epoch
	rec.mu.Unlock()
	if e4 != "E1" || e41 != "E2" {
		t.Fatalf("epochs of the values: %s %s", e4, e41)
	}
	fc.close(1001)
	fc2 := s.accept()
	if got := since(t, fc2.command()); got != `{"k":{"seq":41,"epoch":"E2"}}` {
		t.Fatalf("resume since %s", got)
	}
}

// TestRuleBadBinaryVersionResumes: a binary frame of an unknown version is
// rejected, and the client resumes from its position.
func TestRuleBadBinaryVersionResumes(t *testing.T) {
	s := newScripted(t)
	c := newClient(t, client.Config{URL: s.url()})
	rec := newRecorder()
	ready := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(context.Background(), "a", []string{"k"}, client.SubscribeOptions{Format: client.FormatBinary}, rec)
		ready <- err
	}()
	fc := s.accept()
	cmd := fc.command()
	if cmd.Format != "binary" {
		t.Fatalf("format %q", cmd.Format)
	}
	fc.ack(cmd.ID, nil, map[string]proto.Position{"k": {Seq: 0, Epoch: "E1"}})
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	p := proto.Publication{App: "a", Key: "k", Seq: 1, TS: 1, Data: []byte{1, 2}}
	fc.sendBinary(proto.AppendDataBinary(nil, &p))
	frame := proto.AppendDataBinary(nil, &proto.Publication{App: "a", Key: "k", Seq: 2, TS: 1})
	frame[0] = 9
	fc.sendBinary(frame)
	fc2 := s.accept()
	if got := since(t, fc2.command()); got != `{"k":{"seq":1,"epoch":"E1"}}` {
		t.Fatalf("resume since %s", got)
	}
	if got := rec.seqs("k"); len(got) != 1 {
		t.Fatalf("values %v", got)
	}
}

// TestCloseCodes: 1011 and 1001 reconnect; 1008, 1009, 1002, 1007 and
// 4003 without TokenFunc end the Client with the code.
func TestCloseCodes(t *testing.T) {
	for _, code := range []int{1008, 1009, 1002, 1007, 4003} {
		s := newScripted(t)
		c := newClient(t, client.Config{URL: s.url()})
		fc := s.accept()
		fc.close(code)
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%d: the client did not end", code)
		}
		var ce *client.CloseError
		if !errors.As(c.Err(), &ce) || ce.Code != code {
			t.Fatalf("%d: Err %v", code, c.Err())
		}
		select {
		case <-s.conns:
			t.Fatalf("%d: the client reconnected", code)
		case <-time.After(100 * time.Millisecond): // MinBackoff is 20ms in dial
		}
	}
	for _, code := range []int{1001, 1011, 4008} {
		s := newScripted(t)
		c := newClient(t, client.Config{URL: s.url()})
		s.accept().close(code)
		s.accept()
		if c.Err() != nil {
			t.Fatalf("%d: %v", code, c.Err())
		}
	}
}

// TestSubscribeWaitsForConnection: Subscribe on a client not yet connected
// is sent once the connection opens; a Subscribe cancelled by its context
// leaves nothing subscribed.
func TestSubscribeWaitsForConnection(t *testing.T) {
	s := newScripted(t)
	c, err := client.New(client.Config{URL: s.url()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(ctx, "a", []string{"k"}, client.SubscribeOptions{}, newRecorder())
		errc <- err
	}()
	// No ack comes: the context ends Subscribe, which unsubscribes.
	fc := s.accept()
	if cmd := fc.command(); cmd.Op != proto.OpSubscribe {
		t.Fatalf("%+v", cmd)
	}
	cmd := fc.command()
	if cmd.Op != proto.OpUnsubscribe || cmd.Keys[0] != "k" {
		t.Fatalf("after the cancelled subscribe: %+v", cmd)
	}
	fc.ack(cmd.ID, nil, nil)
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Subscribe: %v", err)
	}
	if pos := c.Positions("a"); len(pos) != 0 {
		t.Fatalf("positions %v", pos)
	}
}

// newClient is client.New (no wait for a connection) with short backoffs,
// closed at the end of the test.
func newClient(t *testing.T, cfg client.Config) *client.Client {
	t.Helper()
	cfg.MinBackoff, cfg.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
