package userservice

import (
	"errors"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/wspush/wspush/proto"
	"golang.org/x/sys/unix"
)

// iovMax is the most buffers one writev takes (IOV_MAX on Linux).
const iovMax = 1024

// writerPool writes to plain TCP connections from a few goroutines shared
// by all of them, instead of a writer goroutine started per connection
// whenever something is queued to it. A session with something queued
// waits in the ready list (at most once: its writing flag) until a worker
// takes its whole queue and writes it with one non-blocking writev. What
// is queued to a session while it waits goes out in the same writev, so
// writes batch by themselves when the workers are busy, and never wait
// when they are not. A socket that would block (its send buffer is full)
// is handed to a goroutine of its own that finishes with blocking writes
// (writeLoop, as for TLS connections), so a slow client never holds up a
// worker.
//
// The workers start with the server and end with its Shutdown (stop): an
// idle node holds their few parked goroutines, an idle connection nothing.
//
// With a WriteDelay, a session taken from the ready list less than the
// delay after its last write waits in the delayed list until then (one
// timer for the pool: the delay is the same for every session, so the
// list is in the order of its deadlines, give or take the clamp below).
type writerPool struct {
	delay   int64          // WriteDelay in nanoseconds; 0: none
	workers sync.WaitGroup // the running workers

	mu      sync.Mutex
	cond    sync.Cond // signalled when ready gets a session, or on stop
	ready   []*session
	head    int // ready[head:] wait
	idle    int // workers waiting on cond
	stopped bool

	delayed  []delayedSession
	dhead    int         // delayed[dhead:] wait
	timer    *time.Timer // runs release; armed while delayed waits
	timerSet bool
}

type delayedSession struct {
	s   *session
	due int64 // unix nanos
}

// newWriterPool starts a pool of workers goroutines.
func newWriterPool(workers int, delay time.Duration) *writerPool {
	p := &writerPool{delay: int64(delay)}
	p.cond.L = &p.mu
	for range workers {
		p.workers.Go(p.work)
	}
	return p
}

// push puts s, which has something queued and whose writing flag the
// caller set, on the ready list. It reports false once the pool is
// stopped: the caller then writes from a goroutine of the session's own.
func (p *writerPool) push(s *session) bool {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return false
	}
	p.ready = append(p.ready, s)
	p.wakeLocked()
	p.mu.Unlock()
	return true
}

// wakeLocked gets a worker to take a session just added to ready (if all
// are busy, one takes it when done).
func (p *writerPool) wakeLocked() {
	if p.idle > 0 {
		p.cond.Signal()
	}
}

// deferLocked puts s in the delayed list until due.
func (p *writerPool) deferLocked(s *session, due int64) {
	p.delayed = append(p.delayed, delayedSession{s, due})
	if !p.timerSet {
		p.armLocked(due)
	}
}

func (p *writerPool) armLocked(due int64) {
	d := time.Duration(due - time.Now().UnixNano())
	if p.timer == nil {
		p.timer = time.AfterFunc(d, p.release)
	} else {
		p.timer.Reset(d)
	}
	p.timerSet = true
}

// release moves the sessions whose delay is over (all of them once the
// pool is stopped) from the delayed list to the ready list.
func (p *writerPool) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timerSet = false
	now := time.Now().UnixNano()
	for p.dhead < len(p.delayed) && (p.delayed[p.dhead].due <= now || p.stopped) {
		p.ready = append(p.ready, p.delayed[p.dhead].s)
		p.delayed[p.dhead] = delayedSession{}
		p.dhead++
		p.wakeLocked()
	}
	if p.dhead < len(p.delayed) {
		p.armLocked(p.delayed[p.dhead].due)
		return
	}
	if cap(p.delayed) > 4096 {
		p.delayed = nil
	}
	p.delayed, p.dhead = p.delayed[:0], 0
}

// waiting is the number of sessions in the ready list.
func (p *writerPool) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ready) - p.head
}

// stop makes the workers end once the lists are empty, and waits for them
// (they never block); later pushes fail.
func (p *writerPool) stop() {
	p.mu.Lock()
	p.stopped = true
	if p.timer != nil {
		p.timer.Stop()
	}
	p.cond.Broadcast()
	p.mu.Unlock()
	p.release()
	p.workers.Wait()
}

func (p *writerPool) work() {
	w := newPoolWriter()
	p.mu.Lock()
	for {
		for p.head == len(p.ready) {
			if cap(p.ready) > 4096 {
				p.ready = nil // a burst's list is not kept
			}
			p.ready, p.head = p.ready[:0], 0
			if p.stopped {
				p.mu.Unlock()
				return
			}
			p.idle++
			p.cond.Wait()
			p.idle--
		}
		s := p.ready[p.head]
		p.ready[p.head] = nil
		p.head++
		if p.delay > 0 && !p.stopped {
			// s.lastWrite is the pool's while s is in its lists.
			now := time.Now().UnixNano()
			if due := min(s.lastWrite+p.delay, now+p.delay); due > now {
				p.deferLocked(s, due)
				continue
			}
		}
		p.mu.Unlock()
		s.writePooled(w)
		p.mu.Lock()
	}
}

// writePooled is one turn of a pool worker at s: it writes what is queued
// with one non-blocking writev (more only past iovMax frames), then puts s
// back on the ready list if more came meanwhile, hands it to a goroutine
// of its own if the socket would block or the connection is closing, or
// leaves it idle.
func (s *session) writePooled(w *poolWriter) {
	s.mu.Lock()
	if s.closeFrame != nil {
		// Closing or aborted: the close frame, writerDone and what is
		// still queued are writeLoop's, as on every connection.
		s.mu.Unlock()
		go s.writeLoop()
		return
	}
	batch, wait := s.out.take(w.batch[:0], time.Now(), true)
	if len(batch) == 0 {
		if wait > 0 {
			// Out of its max_bandwidth budget: the connection's own
			// goroutine waits for it (latest keys conflate meanwhile).
			s.mu.Unlock()
			go s.drain()
			return
		}
		// Only voided latest slots were queued.
		s.out.idle()
		s.writing = false
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()

	iov := w.iov[:0]
	for _, f := range batch {
		iov = append(iov, f.Bytes)
	}
	m := s.srv.metrics
	m.frames.Add(float64(len(batch)))
	if s.srv.cfg.WriteDelay > 0 {
		s.lastWrite = time.Now().UnixNano()
	}
	clear(batch)
	w.batch = batch[:0]
	rest := iov
	for len(rest) > 0 {
		chunk := rest[:min(len(rest), iovMax)]
		want := bufsLen(chunk)
		n, err := w.writeNow(s.raw, chunk)
		m.writes.Inc()
		m.writeBytes.Add(float64(n))
		// A deadline in the past (none of ours: the blocking writes clear
		// theirs) would fail every pooled write: the blocking path, which
		// sets its own, takes over as for a full socket.
		blocked := errors.Is(err, syscall.EAGAIN) || errors.Is(err, os.ErrDeadlineExceeded)
		if err != nil && !blocked {
			s.srv.log.Debug("write failed", "conn", s.id, "error", err)
			w.done(iov)
			s.abortWriter()
			return
		}
		rest = consume(rest, n)
		if err != nil || n < want {
			// The socket's send buffer is full: its own goroutine waits
			// for it, with the write timeout.
			m.wouldBlock.Inc()
			left := slices.Clone(rest)
			w.done(iov)
			go s.finishWrite(left)
			return
		}
	}
	w.done(iov)

	s.mu.Lock()
	switch {
	case s.closeFrame != nil:
		s.mu.Unlock()
		go s.writeLoop()
	case s.out.len() > 0:
		s.mu.Unlock()
		if !s.srv.pool.push(s) {
			go s.writeLoop()
		}
	default:
		s.out.idle()
		s.writing = false
		s.mu.Unlock()
	}
}

// poolWriter is a worker's scratch, reused by all its writes so that a
// write allocates nothing.
type poolWriter struct {
	batch  []*proto.Frame
	iov    [][]byte
	chunk  [][]byte
	n      int
	err    error
	writev func(fd uintptr) bool // w.doWritev, bound once
}

func newPoolWriter() *poolWriter {
	w := &poolWriter{}
	w.writev = w.doWritev
	return w
}

// writeNow writes iov to the socket with one writev that does not wait:
// it returns EAGAIN (with what was written, maybe nothing) where a blocking
// write would wait for the peer to read.
func (w *poolWriter) writeNow(raw syscall.RawConn, iov [][]byte) (n int, err error) {
	w.chunk, w.n, w.err = iov, 0, nil
	werr := raw.Write(w.writev)
	w.chunk = nil
	if werr != nil { // closed (abort)
		return 0, werr
	}
	return w.n, w.err
}

func (w *poolWriter) doWritev(fd uintptr) bool {
	for {
		w.n, w.err = unix.Writev(int(fd), w.chunk)
		if w.err != syscall.EINTR {
			break
		}
	}
	w.n = max(w.n, 0)
	return true // never wait in the pool
}

// done keeps iov, emptied, for the worker's next write.
func (w *poolWriter) done(iov [][]byte) {
	clear(iov)
	w.iov = iov[:0]
}

// finishWrite runs on a connection's own goroutine once its socket would
// block: it writes what the pool could not with blocking writes, then goes
// on as the connection's writer until the queue is empty (back to idle,
// and to the pool) or the connection is closed.
func (s *session) finishWrite(rest [][]byte) {
	if err := s.write(net.Buffers(rest), 0); err != nil {
		s.srv.log.Debug("write failed", "conn", s.id, "error", err)
		s.abortWriter()
		return
	}
	s.drain()
}

// consume drops the first n bytes of iov (a writev's count may end in the
// middle of a frame).
func consume(iov [][]byte, n int) [][]byte {
	for len(iov) > 0 && n >= len(iov[0]) {
		n -= len(iov[0])
		iov = iov[1:]
	}
	if n > 0 {
		iov[0] = iov[0][n:]
	}
	return iov
}

func bufsLen(iov [][]byte) int {
	n := 0
	for _, b := range iov {
		n += len(b)
	}
	return n
}

// clearWriteDeadline undoes the deadline of the blocking writes before a
// pooled connection goes back to the pool, whose writes do not wait: a
// deadline left in the past would fail them.
func (s *session) clearWriteDeadline() {
	if s.timedWrite {
		_ = s.conn.SetWriteDeadline(time.Time{})
		s.timedWrite = false
	}
}
