package userservice_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// smallBufListener makes the server's send buffer of every accepted
// connection small, so that a client that stops reading fills it soon.
type smallBufListener struct{ net.Listener }

func (l smallBufListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(8 << 10)
	}
	return c, err
}

func startPoolServer(t *testing.T, cfg userservice.Config) (*middle.Node, *userservice.Server, *prometheus.Registry, string) {
	t.Helper()
	node, err := middle.NewNode(middle.Config{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	srv, err := userservice.NewServer(cfg, node)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(smallBufListener{ln})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = hs.Close()
	})
	return node, srv, reg, ln.Addr().String()
}

// wsClient is a raw WebSocket client socket subscribed to key k of app a.
type wsClient struct {
	c  net.Conn
	br *bufio.Reader
}

// dialSubscribed connects with a receive buffer of rcvbuf bytes (0: the
// system's), subscribes to key and reads the ack.
func dialSubscribed(t *testing.T, addr, key string, rcvbuf int) *wsClient {
	t.Helper()
	d := net.Dialer{}
	if rcvbuf > 0 {
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	payload := fmt.Appendf(nil, `{"op":"subscribe","id":1,"app":"a","keys":[%q]}`, key)
	frame := []byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0} // masked with a zero key
	if _, err := c.Write(append(frame, payload...)); err != nil {
		t.Fatal(err)
	}
	w := &wsClient{c: c, br: br}
	if op, msg, err := w.next(); err != nil || op != 1 || !strings.Contains(string(msg), `"ack"`) {
		t.Fatalf("ack: %d %s %v", op, msg, err)
	}
	return w
}

// next reads one server frame.
func (w *wsClient) next() (opcode byte, payload []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(w.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(w.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(w.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = int(binary.BigEndian.Uint64(ext[:]))
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(w.br, payload)
	return hdr[0] & 0x0f, payload, err
}

// seqs reads data frames until it has n of them, or a close frame, and
// returns their seqs and the close code (0: none).
func (w *wsClient) seqs(t *testing.T, n int) (seqs []uint64, closeCode int) {
	t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for len(seqs) < n {
		op, msg, err := w.next()
		if err != nil {
			t.Fatalf("after %d values: %v", len(seqs), err)
		}
		switch op {
		case 0x8:
			if len(msg) >= 2 {
				closeCode = int(binary.BigEndian.Uint16(msg))
			}
			return seqs, closeCode
		case 0x1:
			var d struct {
				Op  string `json:"op"`
				Seq uint64 `json:"seq"`
			}
			if err := json.Unmarshal(msg, &d); err != nil {
				t.Fatalf("frame %q: %v", msg, err)
			}
			if d.Op == "data" {
				seqs = append(seqs, d.Seq)
			}
		}
	}
	return seqs, 0
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

func publishN(t *testing.T, node *middle.Node, from, n, size int) {
	t.Helper()
	for i := range n {
		data := fmt.Appendf(nil, `{"i":%d,"pad":"%s"}`, from+i, strings.Repeat("x", size))
		if _, err := node.Publish(context.Background(), "test", []proto.Publication{{App: "a", Key: "k", Data: data, JSON: true}}); err != nil {
			t.Fatal(err)
		}
	}
}

func wantSeqs(t *testing.T, who string, got []uint64, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("%s: %d values, want %d", who, len(got), n)
	}
	for i, s := range got {
		if s != uint64(i+1) {
			t.Fatalf("%s: value %d has seq %d, want %d (in order, none missing)", who, i, s, i+1)
		}
	}
}

// A client that stops reading fills its socket: the pool's write would
// block, so the connection's own goroutine waits for it, and the others,
// written by the same single pool worker, go on getting values. Once it
// reads again it gets every value, in order.
func TestPoolSlowClientDoesNotHoldUpOthers(t *testing.T) {
	const writeTimeout = 3 * time.Second
	node, _, reg, addr := startPoolServer(t, userservice.Config{Writers: 1, QueueMaxBytes: 8 << 20, WriteTimeout: writeTimeout})
	slow := dialSubscribed(t, addr, "k", 4<<10)
	fast := []*wsClient{dialSubscribed(t, addr, "k", 0), dialSubscribed(t, addr, "k", 0)}

	const n, size = 400, 2 << 10 // 800 KiB: far more than both socket buffers
	var got atomic.Int64
	done := make(chan []uint64, len(fast))
	for _, c := range fast {
		go func() {
			seqs, _ := c.seqs(t, n)
			got.Add(int64(len(seqs)))
			done <- seqs
		}()
	}
	publishN(t, node, 0, n, size)
	for range fast {
		select {
		case seqs := <-done:
			wantSeqs(t, "reading client", seqs, n)
		case <-time.After(20 * time.Second):
			t.Fatalf("the reading clients got %d values while one client was not reading", got.Load())
		}
	}
	if v := counterValue(t, reg, "wspush_writes_would_block_total"); v < 1 {
		t.Fatalf("wspush_writes_would_block_total %v: the test did not fill the socket", v)
	}

	// More values while the slow client still does not read, then it reads.
	publishN(t, node, n, 10, size)
	seqs, code := slow.seqs(t, n+10)
	if code != 0 {
		t.Fatalf("closed with %d after %d values", code, len(seqs))
	}
	wantSeqs(t, "slow client", seqs, n+10)

	// Back to the pool, with no write deadline left once the blocking
	// writes' would have passed: a value reaches everyone again, and
	// without going the blocking way.
	time.Sleep(writeTimeout + 500*time.Millisecond)
	blocked := counterValue(t, reg, "wspush_writes_would_block_total")
	publishN(t, node, n+10, 1, 10)
	for _, c := range fast { // the ten values the slow client caught up with, and this one
		if seqs, _ := c.seqs(t, 11); len(seqs) != 11 || seqs[10] != n+11 {
			t.Fatalf("after the slow client caught up: %v", seqs)
		}
	}
	if seqs, _ := slow.seqs(t, 1); len(seqs) != 1 || seqs[0] != n+11 {
		t.Fatalf("slow client, after it caught up: %v", seqs)
	}
	if v := counterValue(t, reg, "wspush_writes_would_block_total"); v != blocked {
		t.Fatalf("wspush_writes_would_block_total went from %v to %v for a value to a reading client", blocked, v)
	}
	if v := counterValue(t, reg, "wspush_writer_pool_ready"); v != 0 {
		t.Fatalf("wspush_writer_pool_ready %v on an idle server", v)
	}
}

// A client that stops reading for good overflows its queue and is closed
// with 4008 after the values it was sent, in order; the others are not
// held up.
func TestPoolSlowClientOverflowCloses4008(t *testing.T) {
	node, _, _, addr := startPoolServer(t, userservice.Config{Writers: 1, QueueMaxBytes: 64 << 10})
	slow := dialSubscribed(t, addr, "k", 4<<10)
	fast := dialSubscribed(t, addr, "k", 0)

	const n, size = 400, 2 << 10
	var fastSeqs []uint64
	for i := range n { // in step with the reading client, whose queue stays short
		publishN(t, node, i, 1, size)
		seqs, code := fast.seqs(t, 1)
		if code != 0 {
			t.Fatalf("reading client closed with %d", code)
		}
		fastSeqs = append(fastSeqs, seqs...)
	}
	wantSeqs(t, "reading client", fastSeqs, n)
	seqs, code := slow.seqs(t, n)
	if code != proto.CloseTooSlow {
		t.Fatalf("slow client: close code %d after %d values, want %d", code, len(seqs), proto.CloseTooSlow)
	}
	if len(seqs) == 0 || len(seqs) >= n {
		t.Fatalf("slow client got %d values before 4008", len(seqs))
	}
	wantSeqs(t, "slow client", seqs, len(seqs))
}
