// Package wstest is a WebSocket client of the wspush protocol for tests:
// it dials a real server, sends commands and decodes what comes back (JSON
// or binary), failing the test with a clear message on anything unexpected.
package wstest

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/proto"
)

// Timeout is how long Next waits for a message by default.
const Timeout = 5 * time.Second

// Client is one test connection.
type Client struct {
	t      testing.TB
	Conn   *websocket.Conn
	nextID uint64
}

// Message is a decoded server message; Binary tells a data message came as
// a binary frame.
type Message struct {
	proto.ServerMessage
	Binary bool
}

// WSURL turns an http:// base URL into the ws:// URL of its /ws endpoint.
func WSURL(base string) string {
	return "ws" + strings.TrimPrefix(base, "http") + "/ws"
}

// Dial connects to url (ws://host/ws) or fails the test.
func Dial(t testing.TB, url string, hdr http.Header) *Client {
	t.Helper()
	c, err := TryDial(t, url, hdr)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	return c
}

// TryDial connects to url and returns the error instead of failing.
func TryDial(t testing.TB, url string, hdr http.Header) (*Client, error) {
	d := websocket.Dialer{HandshakeTimeout: Timeout}
	conn, resp, err := d.Dial(url, hdr)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	c := &Client{t: t, Conn: conn}
	t.Cleanup(func() { conn.Close() })
	return c, nil
}

// Send sends cmd, giving it the next id when it has none, and returns the id.
func (c *Client) Send(cmd proto.Command) uint64 {
	c.t.Helper()
	if cmd.ID == 0 {
		c.nextID++
		cmd.ID = c.nextID
	}
	b, err := proto.EncodeCommand(&cmd)
	if err != nil {
		c.t.Fatal(err)
	}
	c.SendRaw(websocket.TextMessage, b)
	return cmd.ID
}

// SendRaw writes one frame as is.
func (c *Client) SendRaw(messageType int, b []byte) {
	c.t.Helper()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(Timeout))
	if err := c.Conn.WriteMessage(messageType, b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// Subscribe sends a subscribe and expects its ack; it returns the ack.
func (c *Client) Subscribe(app string, format string, since map[string]proto.Position, keys ...string) Message {
	c.t.Helper()
	id := c.Send(proto.Command{Op: proto.OpSubscribe, App: app, Keys: keys, Format: format, Since: since})
	m := c.Next()
	if m.Op != proto.OpAck || m.ID != id {
		c.t.Fatalf("subscribe %s %v: want ack %d, got %+v", app, keys, id, m)
	}
	return m
}

// Unsubscribe sends an unsubscribe and expects its ack.
func (c *Client) Unsubscribe(app string, keys ...string) {
	c.t.Helper()
	id := c.Send(proto.Command{Op: proto.OpUnsubscribe, App: app, Keys: keys})
	c.ExpectAck(id)
}

// ExpectAck reads messages, skipping data, until the ack of id.
func (c *Client) ExpectAck(id uint64) Message {
	c.t.Helper()
	for {
		m := c.Next()
		if m.Op == proto.OpData {
			continue
		}
		if m.Op != proto.OpAck || m.ID != id {
			c.t.Fatalf("want ack %d, got %+v", id, m)
		}
		return m
	}
}

// Next reads one message within Timeout or fails the test.
func (c *Client) Next() Message {
	c.t.Helper()
	m, err := c.NextWithin(Timeout)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

// NextWithin reads one message within d.
func (c *Client) NextWithin(d time.Duration) (Message, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(d))
	mt, b, err := c.Conn.ReadMessage()
	if err != nil {
		return Message{}, err
	}
	if mt == websocket.BinaryMessage {
		p, err := proto.DecodeDataBinary(b)
		if err != nil {
			return Message{}, fmt.Errorf("binary frame: %w", err)
		}
		m := Message{Binary: true}
		m.Op, m.App, m.Key, m.Seq, m.TS = proto.OpData, p.App, p.Key, p.Seq, p.TS
		if p.JSON {
			m.Data = append([]byte(nil), p.Data...)
		} else {
			m.B64 = append([]byte(nil), p.Data...)
		}
		return m, nil
	}
	sm, err := proto.DecodeServerMessage(b)
	if err != nil {
		return Message{}, err
	}
	return Message{ServerMessage: sm}, nil
}

// Data reads n data messages, failing on anything else.
func (c *Client) Data(n int) []Message {
	c.t.Helper()
	out := make([]Message, 0, n)
	for len(out) < n {
		m := c.Next()
		if m.Op != proto.OpData {
			c.t.Fatalf("want data message %d of %d, got %+v", len(out)+1, n, m)
		}
		out = append(out, m)
	}
	return out
}

// ExpectSilence fails if a message arrives within d.
func (c *Client) ExpectSilence(d time.Duration) {
	c.t.Helper()
	m, err := c.NextWithin(d)
	if err == nil {
		c.t.Fatalf("want no message for %s, got %+v", d, m)
	}
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		c.t.Fatalf("want a read timeout, got %v", err)
	}
}

// ExpectClose reads until the server closes the connection and checks the
// close code.
func (c *Client) ExpectClose(code int) {
	c.t.Helper()
	for {
		_ = c.Conn.SetReadDeadline(time.Now().Add(Timeout))
		_, _, err := c.Conn.ReadMessage()
		if err == nil {
			continue
		}
		var ce *websocket.CloseError
		if !errors.As(err, &ce) {
			c.t.Fatalf("want close %d, got %v", code, err)
		}
		if ce.Code != code {
			c.t.Fatalf("want close %d, got %d (%q)", code, ce.Code, ce.Text)
		}
		return
	}
}

// Seqs returns the seqs of data messages.
func Seqs(ms []Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

// Eventually polls cond every 10ms until it returns nil or d passes, then
// fails with its last error.
func Eventually(t testing.TB, d time.Duration, cond func() error) {
	t.Helper()
	testutil.Eventually(t, d, 10*time.Millisecond, cond)
}
