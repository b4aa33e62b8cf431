package client

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/proto"
)

// run is the connection loop: dial, serve the connection until it ends,
// wait a backoff, dial again; until Close or a terminal error.
func (c *Client) run() {
	defer c.runWG.Done()
	attempt := 0
	for c.ctx.Err() == nil {
		c.mu.Lock()
		c.gen++
		gen := c.gen
		c.mu.Unlock()
		cn, err := c.dial(gen)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			var he *HandshakeError
			if errors.As(err, &he) {
				c.end(StateEvent{State: StateClosed, Err: err})
				return
			}
			c.mu.Lock()
			c.lastErr = err
			c.mu.Unlock()
			attempt++
			c.log.Warn("connect failed", "attempt", attempt, "error", err)
			if !c.sleep(c.backoff(attempt)) {
				return
			}
			continue
		}
		c.mu.Lock()
		c.conn = cn
		c.mu.Unlock()

		err, code, reason := c.serve(cn)

		c.mu.Lock()
		c.conn = nil
		c.mu.Unlock()
		if c.ctx.Err() != nil {
			return
		}
		if terr := c.terminal(code, reason); terr != nil {
			c.end(StateEvent{State: StateClosed, Code: code, Reason: reason, Err: terr})
			return
		}
		c.log.Info("connection lost", "conn", gen, "code", code, "reason", reason, "error", err)
		c.setState(StateEvent{State: StateReconnecting, Code: code, Reason: reason, Err: err})
		if errors.Is(err, errStall) {
			c.waitRoom()
		}
		cn.mu.Lock()
		healthy := cn.acked || time.Since(cn.opened) > c.cfg.MaxBackoff
		cn.mu.Unlock()
		if healthy {
			attempt = 0
		}
		if !c.sleep(c.backoff(attempt)) {
			return
		}
		attempt++
	}
}

// terminal returns the error that ends the Client for a close code
// (docs/PROTOCOL.md, Close codes), nil when the client reconnects.
func (c *Client) terminal(code int, reason string) error {
	switch code {
	case proto.CloseProtocolError, proto.CloseInvalidData, proto.ClosePolicy, proto.CloseTooLarge, proto.CloseUnauthorized:
		return &CloseError{Code: code, Reason: reason}
	case proto.CloseTokenExpired:
		if c.cfg.TokenFunc == nil {
			return &CloseError{Code: code, Reason: reason}
		}
	}
	return nil
}

// backoff is the wait before reconnect attempt n: uniformly random in
// [0, min(MaxBackoff, MinBackoff·2^n)) ("full jitter").
func (c *Client) backoff(n int) time.Duration {
	ceil := c.cfg.MaxBackoff
	if n < 30 {
		if d := c.cfg.MinBackoff << n; d > 0 && d < ceil {
			ceil = d
		}
	}
	return rand.N(ceil)
}

// sleep waits d; false when the Client was closed meanwhile.
func (c *Client) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-c.ctx.Done():
		return false
	}
}

// serve resubscribes on cn, then sends what Subscribe adds and refreshes
// the token, until cn ends. It returns why cn ended, with the server's
// close code; cn's goroutines have ended.
//
// The connection counts as open once the server answered a ping: a server
// that refuses the token completes the upgrade and closes at once with 4001
// (docs/PROTOCOL.md, Connecting), so an upgrade alone proves nothing.
func (c *Client) serve(cn *conn) (err error, code int, reason string) {
	refresh := time.NewTimer(time.Hour)
	refresh.Stop()
	defer refresh.Stop()
	schedule := func(d time.Duration, ok bool) {
		if ok && c.cfg.TokenFunc != nil {
			refresh.Reset(d)
		}
	}
	cn.mu.Lock()
	exp := cn.exp
	cn.mu.Unlock()
	schedule(refreshDelay(exp))

	_, err = cn.issue(func(id uint64) (*proto.Command, *pendingCmd) {
		return &proto.Command{Op: proto.OpPing, ID: id}, &pendingCmd{opens: true}
	})
	if err == nil {
		// The subscribes follow the ping at once: the server answers in
		// order, so the pong (and StateOpen) still comes first.
		err = c.sendPending(cn)
	}
	if err != nil {
		cn.log.Debug("resubscribe stopped", "error", err)
	}
	for {
		select {
		case <-cn.done:
			return cn.result()
		case <-c.ctx.Done():
			cn.shutdown()
			return cn.result()
		case <-c.kick:
			if err := c.sendPending(cn); err != nil {
				cn.log.Debug("subscribe stopped", "error", err)
			}
		case <-refresh.C:
			schedule(c.refresh(cn))
		}
	}
}

// shutdown closes cn with 1000 and waits (a second at most) for the
// server's close before closing the socket.
func (cn *conn) shutdown() {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "client closed")
	_ = cn.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-cn.done:
	case <-t.C:
	}
	cn.fail(ErrClosed, 0)
	<-cn.done
}

// refresh sends a new token from TokenFunc (docs/PROTOCOL.md, Token expiry
// and refresh) and returns when to refresh next.
func (c *Client) refresh(cn *conn) (time.Duration, bool) {
	cn.mu.Lock()
	exp := cn.exp
	cn.mu.Unlock()
	retry := func() (time.Duration, bool) {
		// A refused refresh keeps the old token: try again while it lasts.
		left := time.Until(exp)
		if left <= time.Second {
			return 0, false
		}
		return min(5*time.Second, left/2), true
	}
	ctx, cancel := context.WithTimeout(cn.ctx, c.cfg.CommandTimeout)
	defer cancel()
	token, err := c.cfg.TokenFunc(ctx)
	if err != nil {
		cn.log.Warn("token refresh: TokenFunc failed", "error", err)
		return retry()
	}
	pc, err := cn.issue(func(id uint64) (*proto.Command, *pendingCmd) {
		return &proto.Command{Op: proto.OpRefresh, ID: id, Token: token}, &pendingCmd{}
	})
	if err != nil {
		return 0, false
	}
	m, ok, err := cn.wait(ctx, pc)
	if err != nil || !ok {
		return 0, false
	}
	if m.Op == proto.OpError {
		cn.log.Warn("token refresh refused", "code", m.Code, "message", m.Message)
		return retry()
	}
	exp = tokenExpiry(token)
	cn.mu.Lock()
	cn.exp = exp
	cn.mu.Unlock()
	cn.log.Debug("token refreshed", "exp", exp)
	return refreshDelay(exp)
}
