package userservice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
)

// readChunk is the most one socket read takes: a command of a few keys
// arrives whole, longer ones in several reads.
const readChunk = 128

// errPeerClosed ends reading when the client's close frame arrives.
var errPeerClosed = errors.New("client closed the connection")

// errMessageTimeout ends reading when a message did not arrive whole
// within MessageTimeout of its first byte.
var errMessageTimeout = errors.New("message not completed in time")

// maxBudgetSleep bounds one wait of a writer out of its max_bandwidth
// budget, so that a close is not held up long.
const maxBudgetSleep = 100 * time.Millisecond

// closeGrace is how long a closing connection waits for the client's close
// frame (or EOF) before the socket is closed anyway.
const closeGrace = 2 * time.Second

// session is one WebSocket connection. The reader (readStep, one goroutine
// at a time) owns subs, the limiter and the read side; the queue is shared
// with Enqueue callers under mu; only the write loop writes to conn.
type session struct {
	srv     *Server
	id      uint64
	conn    net.Conn
	apps    []string // apps the token allows; nil: any
	subject string   // the token's sub; a refresh must name the same
	limiter *rate.Limiter
	subs    map[subKey]struct{}
	// badCommands counts consecutive invalid commands.
	badCommands int

	// The read side, owned by the reader goroutine of the moment (see
	// readStep): in receives one socket read, frames turns the bytes into
	// messages, draining drops commands after a policy close, readEnd is
	// why reading stopped at a message, and timing is true while the read
	// deadline is the one of a partial message (see timeMessage).
	in       [readChunk]byte
	frames   proto.ClientReader
	draining bool
	timing   bool
	readEnd  error

	lastRead atomic.Int64 // unix nanos of the last bytes read
	expires  atomic.Int64 // unix nanos of the token's exp; 0: none (see auth.go)

	mu         sync.Mutex
	out        outbox       // the queue, with the delivery modes (latest.go)
	closeFrame *proto.Frame // set once: the writer sends it and stops for good
	closeCode  int
	// writing is true while the connection has a writer: the writer pool
	// (its ready list or one of its workers, writer.go) or a writer
	// goroutine of its own. The writer is taken by the first frame queued
	// to an idle connection and let go when the queue is drained, so that
	// an idle connection holds no writer stack.
	writing    bool
	writerDone chan struct{} // closed when the writer has handled closeFrame

	// raw is the socket of a plain TCP connection, written by the
	// server's writer pool (writer.go); nil: the connection's own writer
	// goroutine writes (TLS). The writer of the moment owns timedWrite,
	// true while a blocking write's deadline is set on conn, and
	// lastWrite, the unix nanos of the last write (WriteDelay).
	raw        syscall.RawConn
	timedWrite bool
	lastWrite  int64
}

type subKey struct{ app, key string }

func newSession(srv *Server, id uint64, conn net.Conn, apps []string) *session {
	s := &session{
		srv:        srv,
		id:         id,
		conn:       conn,
		apps:       apps,
		limiter:    rate.NewLimiter(rate.Limit(srv.cfg.CommandRate), srv.cfg.CommandBurst),
		frames:     proto.ClientReader{MaxMessage: int(srv.cfg.MaxMessageSize)},
		writerDone: make(chan struct{}),
	}
	s.lastRead.Store(time.Now().UnixNano())
	if tc, ok := conn.(*net.TCPConn); ok && srv.pool != nil {
		if raw, err := tc.SyscallConn(); err == nil {
			s.raw = raw
		}
	}
	return s
}

// ConnID implements middle.Subscriber.
func (s *session) ConnID() uint64 { return s.id }

// Enqueue implements middle.Subscriber: it never blocks. A connection whose
// queue would exceed QueueMaxBytes is closed with 4008, so that one slow
// client never holds up the others or grows the server's memory.
func (s *session) Enqueue(f *proto.Frame) bool {
	s.mu.Lock()
	if s.closeFrame != nil {
		s.mu.Unlock()
		return true // closing: the client resumes with since on reconnect
	}
	if k := s.out.latestKeyOf(f); k != nil {
		// A latest key never overflows: it conflates (latest.go).
		start := s.out.offer(k, f) && s.startWriterLocked()
		s.mu.Unlock()
		if start {
			s.startWriter()
		}
		return true
	}
	if s.out.bytes+len(f.Bytes) > s.srv.cfg.QueueMaxBytes {
		s.mu.Unlock()
		s.srv.metrics.overflows.Inc()
		s.srv.log.Warn("closing slow connection: outgoing queue full", "conn", s.id, "limit_bytes", s.srv.cfg.QueueMaxBytes)
		s.closeWith(proto.CloseTooSlow, "too slow: outgoing queue overflowed")
		return false
	}
	s.out.push(f)
	start := s.startWriterLocked()
	s.mu.Unlock()
	if start {
		s.startWriter()
	}
	return true
}

// startWriter hands a connection that has something to write, and whose
// writer the caller just took (startWriterLocked), to the writer pool, or
// to a writer goroutine of its own (TLS, or a stopped pool).
func (s *session) startWriter() {
	if s.raw == nil || !s.srv.pool.push(s) {
		go s.writeLoop()
	}
}

// startWriterLocked reports whether the caller must start a writer.
func (s *session) startWriterLocked() bool {
	if s.writing {
		return false
	}
	s.writing = true
	return true
}

func (s *session) queuedBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.bytes + s.out.latestBytes
}

// SetMode implements middle.ModeSubscriber (docs/PROTOCOL.md, "Delivery
// modes"): a latest key conflates; its max_rate is the node's to apply.
func (s *session) SetMode(ref *proto.StreamRef, mode proto.Mode, _ float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.out.setMode(ref, mode, s.srv.metrics)
}

// closeWith makes the writer send a close frame with code (after what is
// queued, unless the queue is what overflowed) and stop. Only the first
// call counts.
func (s *session) closeWith(code int, reason string) {
	s.mu.Lock()
	if s.closeFrame != nil {
		s.mu.Unlock()
		return
	}
	s.closeFrame = proto.NewFrame(proto.OpcodeClose, proto.CloseFramePayload(code, reason))
	s.closeCode = code
	if code == proto.CloseTooSlow {
		s.out.clear()
	}
	start := s.startWriterLocked()
	s.mu.Unlock()
	if start {
		go s.writeLoop()
	}
}

// abort closes the socket at once (dead peer, forced shutdown); the read
// loop then ends and cleans up.
func (s *session) abort(code int) {
	s.mu.Lock()
	if s.closeFrame == nil {
		s.closeFrame = &proto.Frame{} // nothing to send
		s.closeCode = code
	}
	start := s.startWriterLocked()
	s.mu.Unlock()
	s.conn.Close()
	if start {
		go s.writeLoop()
	}
}

// writeLoop is a connection's own writer: it drains the queue, one writev
// per round, until the queue is empty (then it ends) or the close frame
// has been sent (then it ends for good). The batch buffers live on its
// stack's frame only while it runs. It writes TLS connections, closing
// ones, and plain TCP ones whose socket would block (finishWrite); other
// writes are the writer pool's (writer.go).
func (s *session) writeLoop() {
	s.delayWrite()
	s.drain()
}

func (s *session) drain() {
	var batch []*proto.Frame
	var iov net.Buffers
	for {
		s.mu.Lock()
		closing := s.closeFrame
		// A closing connection sends what is queued without waiting for
		// its max_bandwidth budget.
		var wait time.Duration
		batch, wait = s.out.take(batch[:0], time.Now(), closing == nil)
		if len(batch) == 0 && closing == nil {
			if wait > 0 {
				// Out of budget: what waits goes on conflating meanwhile.
				s.mu.Unlock()
				time.Sleep(min(wait, maxBudgetSleep))
				continue
			}
			if s.timedWrite && s.raw != nil {
				// Back to the pool, whose writes do not wait: no deadline.
				s.mu.Unlock()
				s.clearWriteDeadline()
				continue
			}
			s.out.idle() // an idle connection keeps no burst-sized array
			s.writing = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()

		if len(batch) > 0 {
			iov = iov[:0]
			for _, f := range batch {
				iov = append(iov, f.Bytes)
			}
			err := s.write(iov, len(batch))
			clear(batch)
			clear(iov)
			if err != nil {
				s.srv.log.Debug("write failed", "conn", s.id, "error", err)
				s.abortWriter()
				return
			}
			continue // drain what came meanwhile before closing
		}
		if len(closing.Bytes) > 0 {
			_ = s.write(net.Buffers{closing.Bytes}, 1)
			// Let the client answer the close; the read loop closes the
			// socket when it does, or when this deadline passes.
			_ = s.conn.SetReadDeadline(time.Now().Add(closeGrace))
		}
		close(s.writerDone)
		return
	}
}

// delayWrite waits, before a writer's first write, until WriteDelay after
// the connection's last write, so that what is queued meanwhile shares it
// (see Config.WriteDelay); a closing connection does not wait.
func (s *session) delayWrite() {
	d := s.srv.cfg.WriteDelay
	if d <= 0 {
		return
	}
	wait := min(time.Duration(s.lastWrite+int64(d)-time.Now().UnixNano()), d)
	if wait <= 0 {
		return
	}
	s.mu.Lock()
	closing := s.closeFrame != nil
	s.mu.Unlock()
	if !closing {
		time.Sleep(wait)
	}
}

// abortWriter ends the writer after a failed write: the socket is closed,
// nothing more will be sent, and writing stays true so no writer restarts.
func (s *session) abortWriter() {
	s.mu.Lock()
	if s.closeFrame == nil {
		s.closeFrame, s.closeCode = &proto.Frame{}, proto.CloseAbnormal
	}
	s.out.clear()
	s.mu.Unlock()
	s.conn.Close()
	close(s.writerDone)
}

func (s *session) write(iov net.Buffers, frames int) error {
	now := time.Now()
	_ = s.conn.SetWriteDeadline(now.Add(s.srv.cfg.WriteTimeout))
	s.timedWrite = true
	s.lastWrite = now.UnixNano()
	n, err := iov.WriteTo(s.conn)
	m := s.srv.metrics
	m.writes.Inc()
	m.frames.Add(float64(frames))
	m.writeBytes.Add(float64(n))
	return err
}

// readStep is the whole life of a reader goroutine: one socket read, then
// the work it brought, after which a new goroutine takes the next read. So
// the goroutine that waits for an idle client has done nothing but start
// that read, and holds the 2 KiB stack every goroutine starts with: one
// that ever grew (net/http's, or one that decoded a command) keeps at least
// 4 KiB while it waits, which is most of an idle connection's memory.
func (s *session) readStep() {
	n, err := s.conn.Read(s.in[:])
	if s.onRead(n, err) {
		go s.readStep()
	}
}

// onRead handles what one read returned and reports whether to read on;
// when the connection is over, it cleans up. It must not be inlined into
// readStep, whose frame must stay small.
//
//go:noinline
func (s *session) onRead(n int, err error) bool {
	if n > 0 {
		now := time.Now()
		s.lastRead.Store(now.UnixNano())
		finished := s.frames.Finished()
		if ferr := s.frames.Feed(s.in[:n], s.onClientMessage); ferr != nil {
			err = ferr
		} else if s.readEnd != nil {
			err = s.readEnd
		} else {
			s.timeMessage(now, finished)
		}
	}
	if err == nil {
		return true
	}
	if s.timing && errors.Is(err, os.ErrDeadlineExceeded) && !s.closing() {
		err = errMessageTimeout
	}
	s.finish(err)
	s.srv.release(s)
	return false
}

// timeMessage keeps the read deadline of a partial message: a message
// that began with this read (the reader went back between messages during
// it, finished being its count before) must complete by now plus
// MessageTimeout; one that goes on keeps its deadline, however slowly its
// bytes come; once the reader is between messages there is no deadline.
// An idle connection thus holds no timer, and a timed one only the
// runtime's timer of its socket. Once closing, the deadline is the
// writer's (closeGrace).
func (s *session) timeMessage(now time.Time, finished uint64) {
	partial := !s.frames.Idle()
	var deadline time.Time
	switch {
	case partial && (!s.timing || s.frames.Finished() != finished):
		deadline = now.Add(s.srv.cfg.MessageTimeout)
	case !partial && s.timing:
		// deadline stays zero: none
	default:
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closeFrame != nil {
		return
	}
	_ = s.conn.SetReadDeadline(deadline)
	s.timing = partial
}

// closing reports whether the connection is being closed.
func (s *session) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closeFrame != nil
}

// onClientMessage handles one message of the client and reports whether to
// go on reading.
func (s *session) onClientMessage(m proto.ClientMessage) bool {
	switch m.Opcode {
	case proto.OpcodePing:
		s.Enqueue(proto.NewFrame(proto.OpcodePong, m.Payload))
	case proto.OpcodePong:
		// A sign of life, counted with every read.
	case proto.OpcodeClose:
		code, _, err := proto.ParseClosePayload(m.Payload)
		if err != nil {
			s.readEnd = err
			return false
		}
		if code == proto.CloseNoStatus {
			code = proto.CloseNormal
		}
		// Our reply goes through the writer, after what is queued; if we
		// closed first, this is the client's answer and changes nothing.
		s.closeWith(code, "")
		s.readEnd = errPeerClosed
		return false
	default:
		if !s.draining && s.onMessage(m.Opcode, m.Payload) {
			// Closing for policy: read on, dropping commands, until the
			// client answers our close or closeGrace passes.
			s.draining = true
		}
	}
	return true
}

// onMessage handles one client message; it reports whether the connection
// is being closed for policy reasons.
func (s *session) onMessage(opcode byte, msg []byte) (closing bool) {
	if s.tokenExpired(time.Now()) { // not refreshed in time: no more commands
		s.expire()
		return true
	}
	if !s.limiter.Allow() {
		s.srv.log.Warn("closing connection: command rate limit exceeded", "conn", s.id, "rate", s.srv.cfg.CommandRate, "burst", s.srv.cfg.CommandBurst)
		s.closeWith(proto.ClosePolicy, "command rate limit exceeded")
		return true
	}
	if s.handle(opcode, msg) {
		s.badCommands = 0
		return false
	}
	if s.badCommands++; s.badCommands >= s.srv.cfg.MaxBadCommands {
		s.srv.log.Warn("closing connection: too many bad commands", "conn", s.id, "count", s.badCommands)
		s.closeWith(proto.ClosePolicy, "too many bad commands")
		return true
	}
	return false
}

// handle executes one client frame and reports whether it was a valid
// command.
func (s *session) handle(opcode byte, msg []byte) bool {
	m := s.srv.metrics
	if opcode != proto.OpcodeText {
		s.replyError(0, proto.CodeBadRequest, "binary frames are not accepted: send commands as JSON text frames")
		return false
	}
	cmd, err := proto.DecodeCommand(msg)
	if err != nil {
		m.commands.WithLabelValues("invalid").Inc()
		var cerr *proto.CommandError
		id := uint64(0)
		if errors.As(err, &cerr) {
			id = cerr.ID
		}
		s.replyError(id, proto.CodeBadRequest, err.Error())
		return false
	}
	m.commands.WithLabelValues(cmd.Op).Inc()
	switch cmd.Op {
	case proto.OpPing:
		s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendPong(nil, cmd.ID)))
	case proto.OpSubscribe:
		s.subscribe(&cmd)
	case proto.OpUnsubscribe:
		s.unsubscribe(&cmd)
	case proto.OpRefresh:
		s.refresh(&cmd)
	}
	return true
}

func (s *session) subscribe(cmd *proto.Command) {
	cfg := &s.srv.cfg
	if s.apps != nil && !slices.Contains(s.apps, cmd.App) {
		s.replyError(cmd.ID, proto.CodeForbidden, fmt.Sprintf("app %q is not allowed by the token", cmd.App))
		return
	}
	if len(cmd.Keys) > cfg.MaxKeysPerSubscribe {
		s.replyError(cmd.ID, proto.CodeLimit, fmt.Sprintf("%d keys in one subscribe: the limit is %d", len(cmd.Keys), cfg.MaxKeysPerSubscribe))
		return
	}
	added := 0
	for i, k := range cmd.Keys {
		if _, ok := s.subs[subKey{cmd.App, k}]; !ok && !slices.Contains(cmd.Keys[:i], k) {
			added++
		}
	}
	if len(s.subs)+added > cfg.MaxSubscriptions {
		s.replyError(cmd.ID, proto.CodeLimit, fmt.Sprintf("%d subscriptions on this connection: the limit is %d", len(s.subs)+added, cfg.MaxSubscriptions))
		return
	}
	format, _ := proto.ParseFormat(cmd.Format) // validated by DecodeCommand
	mode, _ := proto.ParseMode(cmd.Mode)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.CommandTimeout)
	defer cancel()
	err := s.srv.router.Subscribe(ctx, s, middle.SubscribeRequest{
		ID: cmd.ID, App: cmd.App, Keys: cmd.Keys, Format: format, Since: cmd.Since,
		Mode: mode, MaxRate: cmd.MaxRate,
	})
	if err != nil {
		s.srv.log.Error("subscribe failed", "conn", s.id, "app", cmd.App, "keys", len(cmd.Keys), "error", err)
		code := proto.CodeInternal
		if errors.Is(err, middle.ErrUnavailable) {
			code = proto.CodeUnavailable
		}
		s.replyError(cmd.ID, code, "subscribe failed: "+err.Error())
		return
	}
	if s.subs == nil {
		s.subs = make(map[subKey]struct{}, len(cmd.Keys))
	}
	for _, k := range cmd.Keys {
		s.subs[subKey{cmd.App, k}] = struct{}{}
	}
}

func (s *session) unsubscribe(cmd *proto.Command) {
	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.CommandTimeout)
	defer cancel()
	s.srv.router.Unsubscribe(ctx, s, cmd.App, cmd.Keys)
	for _, k := range cmd.Keys {
		delete(s.subs, subKey{cmd.App, k})
	}
	s.mu.Lock()
	s.out.forgetNames(cmd.App, cmd.Keys)
	s.mu.Unlock()
	s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendAck(nil, cmd.ID, proto.RecoveryNone, nil)))
}

func (s *session) replyError(id uint64, code, message string) {
	s.srv.metrics.cmdErrors.WithLabelValues(code).Inc()
	s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendError(nil, id, code, message)))
}

// finish runs once the read loop ended with err: it unsubscribes
// everything, lets the writer finish, and closes the socket.
func (s *session) finish(err error) {
	var fe *proto.FrameError
	linger := false
	switch {
	case errors.Is(err, errPeerClosed):
		// The client closed; our reply is queued.
	case errors.As(err, &fe):
		// A frame that breaks the protocol, a text message that is not
		// UTF-8, or a message over the limit: say why, then let the
		// client's remaining bytes drain.
		s.srv.log.Info("closing connection: bad frame", "conn", s.id, "code", fe.Code, "reason", fe.Reason)
		s.closeWith(fe.Code, fe.Reason)
		linger = true
	case errors.Is(err, errMessageTimeout):
		// A client that starts a message and does not finish it holds
		// its partial bytes: a policy close.
		s.srv.metrics.messageTimeouts.Inc()
		s.srv.log.Info("closing connection: message not completed in time", "conn", s.id, "timeout", s.srv.cfg.MessageTimeout)
		s.closeWith(proto.ClosePolicy, fmt.Sprintf("message not completed within %s", s.srv.cfg.MessageTimeout))
		linger = true
	default:
		// The connection broke, or a close we sent was not answered in
		// time: nothing more can be sent.
		s.abort(proto.CloseAbnormal)
	}

	ctx, cancel := context.WithTimeout(context.Background(), s.srv.cfg.CommandTimeout)
	defer cancel()
	byApp := make(map[string][]string)
	for k := range s.subs {
		byApp[k.app] = append(byApp[k.app], k.key)
	}
	for app, keys := range byApp {
		s.srv.router.Unsubscribe(ctx, s, app, keys)
	}
	s.subs = nil

	s.closeWith(proto.CloseNormal, "") // makes sure a writer finishes; no-op if closing
	select {
	case <-s.writerDone:
	case <-time.After(s.srv.cfg.WriteTimeout + time.Second):
		s.conn.Close()
		<-s.writerDone
	}
	if linger {
		s.lingerClose()
	}
	s.conn.Close()
	s.mu.Lock()
	code := s.closeCode
	s.mu.Unlock()
	s.srv.metrics.closed.WithLabelValues(closeCodeLabel(code)).Inc()
	s.srv.log.Debug("connection closed", "conn", s.id, "code", code, "reason", err)
}

// lingerClose half-closes the socket and discards what the client still
// sends for a moment, so that our close frame is not lost to a TCP reset
// for unread data.
func (s *session) lingerClose() {
	if tc, ok := s.conn.(interface{ CloseWrite() error }); ok {
		_ = tc.CloseWrite()
	}
	_ = s.conn.SetReadDeadline(time.Now().Add(closeGrace))
	_, _ = io.Copy(io.Discard, io.LimitReader(s.conn, 1<<20))
}

func closeCodeLabel(code int) string {
	if code == 0 {
		return "1006"
	}
	return fmt.Sprint(code)
}
