package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/time/rate"

	"github.com/wspush/wspush/proto"
)

// conn is one WebSocket connection: its reader and writer goroutines, its
// command pacing and its commands waiting for a reply.
type conn struct {
	c   *Client
	gen uint64
	ws  *websocket.Conn
	log *slog.Logger

	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc
	out    chan []byte   // commands for the writer
	done   chan struct{} // reader and writer ended
	opened time.Time

	lim    *rate.Limiter // docs/PROTOCOL.md, Commands: --command-rate, --command-burst
	sendMu sync.Mutex    // one command at a time, in the order its state was read

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*pendingCmd
	err     error // why the connection ended (first cause)
	code    int   // the server's close code, 0 when none came
	reason  string
	acked   bool // a subscribe was acked: the server works
	exp     time.Time
}

// pendingCmd is a command waiting for its reply.
type pendingCmd struct {
	op    string
	sub   *Subscription
	keys  []string
	since map[string]Position
	reply chan proto.ServerMessage // cap 1
	opens bool                     // the first ping: its pong makes the connection open
	timer *time.Timer
}

// dial makes one connection attempt with a token from the config.
func (c *Client) dial(gen uint64) (*conn, error) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	defer cancel()
	hdr := http.Header{}
	for k, v := range c.cfg.Header {
		hdr[k] = append([]string(nil), v...)
	}
	token := c.cfg.Token
	if c.cfg.TokenFunc != nil {
		t, err := c.cfg.TokenFunc(ctx)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		token = t
	}
	if token != "" {
		hdr.Set("Authorization", "Bearer "+token)
	}
	d := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: c.cfg.DialTimeout,
	}
	ws, resp, err := d.DialContext(ctx, c.cfg.URL, hdr)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
			if permanentStatus(resp.StatusCode) {
				return nil, &HandshakeError{StatusCode: resp.StatusCode, Status: resp.Status}
			}
			return nil, fmt.Errorf("upgrade refused: %s", resp.Status)
		}
		return nil, err
	}
	cctx, ccancel := context.WithCancel(c.ctx)
	cn := &conn{
		c:       c,
		gen:     gen,
		ws:      ws,
		log:     c.log.With("conn", gen),
		ctx:     cctx,
		cancel:  ccancel,
		out:     make(chan []byte, 16),
		done:    make(chan struct{}),
		opened:  time.Now(),
		lim:     rate.NewLimiter(rate.Limit(c.cfg.CommandRate), c.cfg.CommandBurst),
		pending: make(map[uint64]*pendingCmd),
		exp:     tokenExpiry(token),
	}
	ws.SetReadLimit(c.cfg.MaxMessageSize)
	ws.SetPingHandler(func(data string) error {
		ws.SetReadDeadline(time.Now().Add(c.cfg.ReadTimeout))
		err := ws.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); cn.read() }()
	go func() { defer wg.Done(); cn.write() }()
	go func() { wg.Wait(); close(cn.done) }()
	return cn, nil
}

// permanentStatus: an upgrade refused with a 4xx other than 408 and 429
// will be refused again (docs/PROTOCOL.md, Connecting: 403 origin).
func permanentStatus(code int) bool {
	return code >= 400 && code < 500 && code != http.StatusRequestTimeout && code != http.StatusTooManyRequests
}

// fail ends the connection for err (the first cause is kept). It sends a
// close frame with code when code is not 0, then closes the socket, which
// unblocks the reader.
func (cn *conn) fail(err error, code int) {
	cn.mu.Lock()
	first := cn.err == nil
	if first {
		cn.err = err
	}
	cn.mu.Unlock()
	if !first {
		return
	}
	if code != 0 {
		msg := websocket.FormatCloseMessage(code, closeText(err))
		_ = cn.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	}
	cn.cancel()
	cn.ws.Close()
}

func closeText(err error) string {
	s := err.Error()
	if len(s) > 120 {
		s = s[:120]
	}
	return s
}

// result returns why the connection ended, with the server's close code.
func (cn *conn) result() (err error, code int, reason string) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err, cn.code, cn.reason
}

// write is the connection's writer: the only goroutine that writes data
// frames (control frames go through WriteControl, which gorilla allows
// from any goroutine).
func (cn *conn) write() {
	for {
		select {
		case <-cn.ctx.Done():
			return
		case b := <-cn.out:
			cn.ws.SetWriteDeadline(time.Now().Add(cn.c.cfg.CommandTimeout))
			if err := cn.ws.WriteMessage(websocket.TextMessage, b); err != nil {
				cn.fail(fmt.Errorf("write: %w", err), 0)
				return
			}
		}
	}
}

// read is the connection's reader: it applies the client rule to every
// message and queues the Handlers' calls.
func (cn *conn) read() {
	c := cn.c
	for {
		cn.ws.SetReadDeadline(time.Now().Add(c.cfg.ReadTimeout))
		mt, b, err := cn.ws.ReadMessage()
		if err != nil {
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				cn.mu.Lock()
				cn.code, cn.reason = ce.Code, ce.Text
				cn.mu.Unlock()
			}
			cn.fail(fmt.Errorf("read: %w", err), 0)
			return
		}
		if mt == websocket.BinaryMessage {
			err = cn.binary(b)
		} else {
			err = cn.text(b)
		}
		if err != nil {
			cn.fail(err, websocket.CloseNormalClosure)
			return
		}
	}
}

// text handles one JSON server message (docs/PROTOCOL.md, Server messages).
func (cn *conn) text(b []byte) error {
	m, err := proto.DecodeServerMessage(b)
	if err != nil {
		cn.log.Warn("ignoring a server message that cannot be read", "error", err)
		return nil
	}
	switch m.Op {
	case proto.OpData:
		if m.Data == nil && m.B64 == nil {
			cn.log.Warn("ignoring a data message without data or b64", "app", m.App, "key", m.Key, "seq", m.Seq)
			return nil
		}
		p := m.Publication()
		return cn.data(&p)
	case proto.OpReset:
		return cn.reset(&m)
	case proto.OpAck, proto.OpError, proto.OpPong:
		return cn.reply(&m)
	}
	return nil
}

// binary handles one binary data frame (docs/PROTOCOL.md, Binary frames).
func (cn *conn) binary(b []byte) error {
	p, err := proto.DecodeDataBinary(b)
	if err != nil {
		// A frame of a version we do not know must be rejected: the
		// value is lost to us, so resume from the position instead.
		return fmt.Errorf("binary frame: %w", err)
	}
	return cn.data(&p)
}

// reply hands a reply to the command waiting for it.
func (cn *conn) reply(m *proto.ServerMessage) error {
	pc := cn.take(m.ID)
	if pc == nil {
		if m.Op == proto.OpError {
			cn.log.Warn("error reply to no command", "id", m.ID, "code", m.Code, "message", m.Message)
		}
		return nil
	}
	if pc.opens && m.Op == proto.OpPong {
		return cn.c.connected(cn)
	}
	if pc.op == proto.OpSubscribe {
		if err := cn.c.subscribed(cn, pc, m); err != nil {
			return err
		}
	}
	pc.reply <- *m // cap 1, one reply per command
	return nil
}

// issue sends one command: it waits for the rate limiter, then, holding
// sendMu so that commands leave in the order their state was read, calls
// build for the command (nil: nothing to send) and queues it for the
// writer. The returned pendingCmd receives the reply; no reply within
// CommandTimeout ends the connection.
func (cn *conn) issue(build func(id uint64) (*proto.Command, *pendingCmd)) (*pendingCmd, error) {
	cn.sendMu.Lock()
	defer cn.sendMu.Unlock()
	if err := cn.lim.Wait(cn.ctx); err != nil {
		return nil, fmt.Errorf("connection ended: %w", err)
	}
	cn.mu.Lock()
	cn.nextID++
	id := cn.nextID
	cn.mu.Unlock()
	cmd, pc := build(id)
	if cmd == nil {
		return nil, nil
	}
	b, err := proto.EncodeCommand(cmd)
	if err != nil {
		return nil, err
	}
	pc.op = cmd.Op
	pc.reply = make(chan proto.ServerMessage, 1)
	cn.mu.Lock()
	cn.pending[id] = pc
	pc.timer = time.AfterFunc(cn.c.cfg.CommandTimeout, func() {
		if cn.take(id) != nil {
			cn.fail(fmt.Errorf("no reply to %s command %d within %s", cmd.Op, id, cn.c.cfg.CommandTimeout), websocket.CloseGoingAway)
		}
	})
	cn.mu.Unlock()
	select {
	case cn.out <- b:
		return pc, nil
	case <-cn.ctx.Done():
		cn.take(id)
		return nil, errors.New("connection ended")
	}
}

// take removes the command waiting for reply id.
func (cn *conn) take(id uint64) *pendingCmd {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	pc := cn.pending[id]
	if pc != nil {
		delete(cn.pending, id)
		pc.timer.Stop()
	}
	return pc
}

// wait waits for pc's reply; ok is false when the connection ended first.
func (cn *conn) wait(ctx context.Context, pc *pendingCmd) (m proto.ServerMessage, ok bool, err error) {
	select {
	case m := <-pc.reply:
		return m, true, nil
	case <-cn.done:
		return m, false, nil
	case <-ctx.Done():
		return m, false, ctx.Err()
	}
}
