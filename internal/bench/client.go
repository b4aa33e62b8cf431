package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/proto"
)

// client is one load connection. Its goroutine (run) owns everything but
// the atomics; the worker reads the rest after that goroutine has ended.
type client struct {
	w    *worker
	idx  int // global connection number
	node int
	url  string
	keys []int32 // key indexes, sorted
	subs []SeqTracker
	// Latest mode only, per key as subs: the highest seq received, for
	// the worker's drain to read, and the values per second.
	tops    []atomic.Uint64
	seconds []secondCount

	lastReceive int64
	ready       atomic.Bool
	dropped     atomic.Bool
	closing     atomic.Bool
	buf         []byte
}

func newClient(w *worker, idx int) *client {
	p := &w.cfg.Plan
	c := &client{w: w, idx: idx, node: p.node(idx), url: p.URLs[p.node(idx)]}
	c.keys = make([]int32, p.KeysPerConn)
	for j := range c.keys {
		c.keys[j] = int32(p.keyOf(idx, j))
	}
	slices.Sort(c.keys)
	c.subs = make([]SeqTracker, len(c.keys))
	if p.latest() {
		c.tops = make([]atomic.Uint64, len(c.keys))
		c.seconds = make([]secondCount, len(c.keys))
	}
	return c
}

// slot is the index in c.subs of the key named key, -1 when c does not
// subscribe to it.
func (c *client) slot(key []byte) int {
	idx, ok := keyIndex(key, c.w.cfg.Plan.KeyPrefix)
	if !ok {
		return -1
	}
	if len(c.keys) == 1 {
		if int(c.keys[0]) == idx {
			return 0
		}
		return -1
	}
	i, found := slices.BinarySearch(c.keys, int32(idx))
	if !found {
		return -1
	}
	return i
}

// run dials, subscribes, then receives until the connection ends. It
// releases one slot of dialing once the connection is up or has failed,
// and calls the worker's resolved exactly once.
func (c *client) run(ctx context.Context, dialer *websocket.Dialer, dialing <-chan struct{}) {
	w := c.w
	resolved := false
	resolve := func(err error) {
		if resolved {
			return
		}
		resolved = true
		<-dialing
		w.resolved(c, err)
	}

	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, w.cfg.HandshakeTimeout)
	ws, resp, err := dialer.DialContext(dctx, c.url, nil)
	cancel()
	if resp != nil && resp.Body != nil {
		resp.Body.Close()
	}
	if err != nil {
		if resp != nil {
			err = fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		resolve(fmt.Errorf("dial: %w", err))
		return
	}
	w.handshake.Record(int64(time.Since(start)))
	defer ws.Close()
	stop := context.AfterFunc(ctx, func() {
		c.closing.Store(true)
		_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = ws.Close()
	})
	defer stop()

	ws.SetReadLimit(1 << 20)
	_ = ws.SetReadDeadline(time.Now().Add(w.cfg.HandshakeTimeout))
	subStart := time.Now()
	pending, err := c.subscribe(ws)
	if err != nil {
		resolve(err)
		return
	}
	c.buf = make([]byte, 0, 256)
	for {
		mt, r, err := ws.NextReader()
		if err == nil {
			c.buf, err = readAll(c.buf[:0], r)
		}
		if err != nil {
			switch {
			case !resolved:
				resolve(fmt.Errorf("subscribe: %w", err))
			case !c.closing.Load():
				c.dropped.Store(true)
				w.droppedConn(err)
			}
			return
		}
		now := time.Now().UnixNano()
		if mt == websocket.BinaryMessage {
			c.onBinary(c.buf, now)
			continue
		}
		m, err := proto.DecodeServerMessage(c.buf)
		if err != nil {
			w.foreign.Add(1)
			continue
		}
		switch m.Op {
		case proto.OpAck:
			if resolved || m.ID == 0 || m.ID > uint64(pending) {
				continue
			}
			if p := &w.cfg.Plan; p.latest() && (m.Mode != proto.ModeNameLatest || m.MaxRate != p.MaxRate) {
				// A server that does not know modes ignores the fields and
				// streams: every figure of the run would be wrong.
				resolve(fmt.Errorf("subscribe: ack with mode %q max_rate %g, want %q %g: the server does not know delivery modes", m.Mode, m.MaxRate, p.Mode, p.MaxRate))
				return
			}
			pending--
			if pending == 0 {
				w.subscribe.Record(int64(time.Since(subStart)))
				_ = ws.SetReadDeadline(time.Time{})
				c.ready.Store(true)
				resolve(nil)
			}
		case proto.OpError:
			if !resolved {
				resolve(fmt.Errorf("subscribe: %s: %s", m.Code, m.Message))
				return
			}
		case proto.OpData:
			c.onJSON(&m, now)
		}
	}
}

// subscribe sends the subscribe commands (at most maxKeysPerSubscribe keys
// each, the server's default limit) and returns how many acks are due.
func (c *client) subscribe(ws *websocket.Conn) (int, error) {
	p := &c.w.cfg.Plan
	n := 0
	for from := 0; from < len(c.keys); from += maxKeysPerSubscribe {
		to := min(from+maxKeysPerSubscribe, len(c.keys))
		keys := make([]string, 0, to-from)
		for _, k := range c.keys[from:to] {
			keys = append(keys, keyName(p.KeyPrefix, int(k)))
		}
		n++
		cmd := proto.Command{Op: proto.OpSubscribe, ID: uint64(n), App: p.App, Keys: keys, Format: p.Format}
		if p.latest() {
			cmd.Mode, cmd.MaxRate = p.Mode, p.MaxRate
		}
		b, err := proto.EncodeCommand(&cmd)
		if err != nil {
			return 0, err
		}
		_ = ws.SetWriteDeadline(time.Now().Add(c.w.cfg.HandshakeTimeout))
		if err := ws.WriteMessage(websocket.TextMessage, b); err != nil {
			return 0, fmt.Errorf("send subscribe: %w", err)
		}
	}
	return n, nil
}

// maxKeysPerSubscribe is wspush's default --max-keys-per-subscribe.
const maxKeysPerSubscribe = 100

// readAll reads r to its end into buf, growing it only when a message is
// larger than any before.
func readAll(buf []byte, r io.Reader) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, cap(buf))
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// onBinary handles a binary data frame; it does not allocate.
func (c *client) onBinary(b []byte, now int64) {
	v, err := proto.ParseDataBinary(b)
	if err != nil {
		c.w.foreign.Add(1)
		return
	}
	c.onValue(v.Key, v.Seq, v.TS, v.Data, now)
}

// onJSON handles a JSON data message (the format that allocates: the
// message is decoded by proto.DecodeServerMessage).
func (c *client) onJSON(m *proto.ServerMessage, now int64) {
	p := m.Publication()
	c.onValue([]byte(p.Key), p.Seq, p.TS, p.Data, now)
}

func (c *client) onValue(key []byte, seq uint64, ts int64, payload []byte, now int64) {
	w := c.w
	slot := c.slot(key)
	if slot < 0 {
		w.foreign.Add(1)
		return
	}
	var sent int64
	switch src := w.cfg.Plan.Source; {
	case src.FromWsbench():
		t, ok := parseSendTime(payload)
		if !ok {
			w.foreign.Add(1)
			return
		}
		sent = t
	case src == SourcePoller:
		sent = ts * int64(time.Millisecond)
	default:
		w.foreign.Add(1)
		return
	}
	start, end := w.windowStart.Load(), w.windowEnd.Load()
	if start == 0 || sent < start || end != 0 && sent >= end {
		w.stale.Add(1)
		return
	}
	c.subs[slot].Observe(seq)
	if c.tops != nil {
		_, hi := c.subs[slot].Range()
		c.tops[slot].Store(hi)
		c.seconds[slot].add((now - start) / int64(time.Second))
	}
	// For a latest key, this is the age of the newest value when it
	// arrived.
	w.latency.recordAt(c.idx, now-sent)
	c.lastReceive = now
	w.counted.Add(1)
}

// closeCode is the close code of a connection that ended with err.
func closeCode(err error) int {
	var ce *websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code
	}
	return proto.CloseAbnormal
}

// newDialers returns one WebSocket dialer per source address of p (one
// that lets the kernel choose when p has a single one). Every dialer
// refuses non-loopback addresses, uses no proxy and small buffers: a
// receiver reads small frames, and 100,000 of them must fit in memory.
func newDialers(p *Plan, handshakeTimeout time.Duration) []*websocket.Dialer {
	n := max(p.SourceIPs, 1)
	out := make([]*websocket.Dialer, n)
	for i := range out {
		nd := &net.Dialer{Control: loopbackOnly, Timeout: handshakeTimeout}
		if n > 1 {
			nd.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
			nd.Control = func(network, address string, c syscall.RawConn) error {
				if err := loopbackOnly(network, address, c); err != nil {
					return err
				}
				if err := bindNoPort(c); err != nil {
					return fmt.Errorf("dial %s: IP_BIND_ADDRESS_NO_PORT: %w", address, err)
				}
				return nil
			}
		}
		out[i] = &websocket.Dialer{
			NetDialContext:   nd.DialContext,
			HandshakeTimeout: handshakeTimeout,
			ReadBufferSize:   1024,
			WriteBufferSize:  1024,
		}
	}
	return out
}

// dialerFor picks connection idx's dialer among those of newDialers.
func dialerFor(p *Plan, dialers []*websocket.Dialer, idx int) *websocket.Dialer {
	ip := p.sourceIP(idx)
	if ip == nil {
		return dialers[0]
	}
	return dialers[int(ip.To4()[3])-1]
}
