package app_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
)

// readerConn is an attacker's raw WebSocket connection: the handshake by
// hand, then frames written and read as bytes.
type readerConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func readerDial(t *testing.T, base string) *readerConn {
	t.Helper()
	addr := strings.TrimPrefix(base, "http://")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(wstest.Timeout))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return &readerConn{t: t, c: c, br: br}
}

func (r *readerConn) write(b []byte) {
	r.t.Helper()
	_ = r.c.SetWriteDeadline(time.Now().Add(wstest.Timeout))
	if _, err := r.c.Write(b); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// readFrame reads the next server frame (unmasked, unfragmented) other
// than the heartbeat's pings, which this client leaves unanswered (an
// answer could fall in the middle of its own partial frame).
func (r *readerConn) readFrame(d time.Duration) (opcode byte, payload []byte, err error) {
	_ = r.c.SetReadDeadline(time.Now().Add(d))
	for {
		opcode, payload, err = r.readAnyFrame()
		if err != nil || opcode != proto.OpcodePing {
			return opcode, payload, err
		}
	}
}

func (r *readerConn) readAnyFrame() (opcode byte, payload []byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r.br, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(r.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(r.br, ext[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(ext[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r.br, payload)
	return hdr[0] & 0x0f, payload, err
}

// expectClose reads until the server's close frame, fails on an error
// reply before it (the bad message must not be taken for a command), and
// returns the close code and reason.
func (r *readerConn) expectClose(within time.Duration) (int, string) {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		op, p, err := r.readFrame(time.Until(deadline))
		if err != nil {
			r.t.Fatalf("want a close frame, got %v", err)
		}
		switch {
		case op == proto.OpcodeClose && len(p) >= 2:
			return int(binary.BigEndian.Uint16(p)), string(p[2:])
		case op == proto.OpcodeText && strings.Contains(string(p), `"op":"error"`):
			r.t.Fatalf("the message was answered as a command: %s", p)
		}
	}
}

// readerFrame frames payload as a client: masked, with a key that changes
// the bytes, and any length.
func readerFrame(fin bool, opcode byte, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	var b []byte
	switch n := len(payload); {
	case n <= 125:
		b = []byte{b0, 0x80 | byte(n)}
	case n <= 0xFFFF:
		b = []byte{b0, 0x80 | 126, byte(n >> 8), byte(n)}
	default:
		b = binary.BigEndian.AppendUint64([]byte{b0, 0x80 | 127}, uint64(n))
	}
	mask := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i&3])
	}
	return b
}

// readerGoodClient is the well-behaved client of the node under attack: it
// must get every value published meanwhile.
type readerGoodClient struct {
	base string
	c    *wstest.Client
	seq  uint64
}

func newReaderGoodClient(t *testing.T, base string) *readerGoodClient {
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant", "json", nil, "good")
	return &readerGoodClient{base: base, c: c}
}

// check publishes a value and expects it, next in sequence.
func (g *readerGoodClient) check(t *testing.T) {
	t.Helper()
	g.seq++
	mustPublish(t, g.base, "plant", "good", fmt.Sprint(g.seq))
	m := g.c.Data(1)[0]
	if m.Seq != g.seq || string(m.Data) != fmt.Sprint(g.seq) {
		t.Fatalf("good client: got seq %d data %s, want seq %d", m.Seq, m.Data, g.seq)
	}
}

// TestSecurityReaderInvalidUTF8Closes1007: a text message that is not
// UTF-8 (issue 9: it was answered as a command) closes the connection with
// 1007, whether it comes in one frame or in fragments, and after valid
// commands; a character split between fragments is fine. A good client on
// the node keeps receiving values meanwhile.
func TestSecurityReaderInvalidUTF8Closes1007(t *testing.T) {
	base, _ := startApp(t, app.Config{})
	good := newReaderGoodClient(t, base)
	good.check(t)

	ping := readerFrame(true, proto.OpcodeText, []byte(`{"op":"ping","id":1}`))
	for name, stream := range map[string][]byte{
		"one frame":           readerFrame(true, proto.OpcodeText, []byte("{\"op\":\"ping\",\"id\":\"\xff\"}")),
		"surrogate":           readerFrame(true, proto.OpcodeText, []byte(`{"op":"ping","id":"`+"\xed\xa0\x80"+`"}`)),
		"in the 2nd fragment": append(readerFrame(false, proto.OpcodeText, []byte(`{"op":"ping",`)), readerFrame(true, proto.OpcodeContinuation, []byte("\"id\":\"\xc3\"}"))...),
		"after a command":     append(ping, readerFrame(true, proto.OpcodeText, []byte("\xc0\xaf"))...),
	} {
		t.Run(name, func(t *testing.T) {
			c := readerDial(t, base)
			c.write(stream)
			if code, reason := c.expectClose(wstest.Timeout); code != proto.CloseInvalidData {
				t.Fatalf("closed with %d %q, want %d", code, reason, proto.CloseInvalidData)
			}
			good.check(t)
		})
	}

	// A character split between fragments, with a ping between them, is
	// one valid message.
	c := readerDial(t, base)
	var stream []byte
	stream = append(stream, readerFrame(false, proto.OpcodeText, []byte(`{"op":"ping","id":3,"note":"caf`+"\xc3"))...)
	stream = append(stream, readerFrame(true, proto.OpcodePing, nil)...)
	stream = append(stream, readerFrame(true, proto.OpcodeContinuation, []byte("\xa9"+`"}`))...)
	c.write(stream)
	for {
		op, p, err := c.readFrame(wstest.Timeout)
		if err != nil {
			t.Fatalf("want the pong of a command with a split character: %v", err)
		}
		if op == proto.OpcodeText {
			m, err := proto.DecodeServerMessage(p)
			if err != nil || m.Op != proto.OpPong || m.ID != 3 {
				t.Fatalf("want the pong of id 3, got %s (%v)", p, err)
			}
			break
		}
	}
	good.check(t)
}

// TestSecurityReaderStalledMessageIsClosed: headers announcing 64 KiB, then
// nothing (issue 9: 65,543 bytes pinned per connection, and a byte every
// few seconds kept it alive forever). The node holds only what arrived
// (heap growth far below the 64 KiB each would pin), closes each such
// connection with 1008 once --message-timeout has passed since the
// message's first byte, dribbling or not; an honest client whose command
// arrives in pieces within the timeout, then stays idle longer than it,
// keeps its connection; a good client keeps receiving values throughout.
func TestSecurityReaderStalledMessageIsClosed(t *testing.T) {
	const attackers = 100
	const timeout = time.Second
	cfg := app.Config{}
	cfg.Users.MessageTimeout = timeout
	base, _ := startApp(t, cfg)
	good := newReaderGoodClient(t, base)
	good.check(t)

	honest := readerDial(t, base)
	conns := make([]*readerConn, attackers)
	for i := range conns {
		conns[i] = readerDial(t, base)
	}
	before := readerHeapInUse()
	// A ping, answered once the server has read it, then a header
	// announcing 64 KiB in the same write: after the pong the server has
	// read the header too (one write of 14 bytes, one read of the server).
	header := []byte{0x81, 0x80 | 126, 0xff, 0xff, 0x37, 0xfa, 0x21, 0x3d} // 65,535 bytes announced
	for _, c := range conns {
		c.write(append(readerFrame(true, proto.OpcodePing, []byte("sync")), header...))
	}
	for i, c := range conns {
		if op, p, err := c.readFrame(wstest.Timeout); err != nil || op != proto.OpcodePong || string(p) != "sync" {
			t.Fatalf("attacker %d: want the pong, got %d %q %v", i, op, p, err)
		}
	}
	grown := int64(readerHeapInUse()) - int64(before)
	t.Logf("heap growth with %d stalled 64 KiB headers: %d bytes (%d per connection)", attackers, grown, grown/attackers)
	if perConn := grown / attackers; perConn > 16<<10 {
		t.Fatalf("heap grew by %d bytes per stalled connection: the announced length is held in advance", perConn)
	}
	// An honest client, slow within the limit: half a command, a
	// publication and its delivery, then the rest.
	cmd := readerFrame(true, proto.OpcodeText, []byte(`{"op":"subscribe","id":1,"app":"plant","keys":["good"]}`))
	honest.write(cmd[:20])
	good.check(t)
	honest.write(cmd[20:])

	// One more attacker dribbles a byte of its message four times per
	// timeout: it is closed all the same.
	dribbler := readerDial(t, base)
	dribbler.write(header)
	stop := make(chan struct{})
	dribbled := make(chan int, 1)
	go func() {
		n := 0
		defer func() { dribbled <- n }()
		tick := time.NewTicker(timeout / 4)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = dribbler.c.SetWriteDeadline(time.Now().Add(wstest.Timeout))
				if _, err := dribbler.c.Write([]byte{'x'}); err != nil {
					return
				}
				n++
			}
		}
	}()

	for i, c := range conns {
		if code, reason := c.expectClose(10 * timeout); code != proto.ClosePolicy {
			t.Fatalf("attacker %d: closed with %d %q, want %d", i, code, reason, proto.ClosePolicy)
		}
	}
	good.check(t)
	code, reason := dribbler.expectClose(10 * timeout)
	close(stop)
	if n := <-dribbled; code != proto.ClosePolicy || n < 1 {
		t.Fatalf("dribbler (%d bytes sent): closed with %d %q, want %d after a byte at least", n, code, reason, proto.ClosePolicy)
	}
	good.check(t)

	// The honest client got its ack; idle for longer than the timeout
	// between messages, it keeps its connection.
	for {
		op, p, err := honest.readFrame(wstest.Timeout)
		if err != nil {
			t.Fatalf("honest client: want its ack, got %v", err)
		}
		if op == proto.OpcodeClose {
			t.Fatalf("honest client closed: %q", p)
		}
		if m, _ := proto.DecodeServerMessage(p); op == proto.OpcodeText && m.Op == proto.OpAck {
			break
		}
	}
	honest.write(readerFrame(true, proto.OpcodeText, []byte(`{"op":"ping","id":9}`)))
	for {
		op, p, err := honest.readFrame(wstest.Timeout)
		if err != nil || op == proto.OpcodeClose {
			t.Fatalf("honest client, after idling past the timeout: %d %q %v", op, p, err)
		}
		if m, _ := proto.DecodeServerMessage(p); op == proto.OpcodeText && m.Op == proto.OpPong && m.ID == 9 {
			break
		}
	}
	good.check(t)
}

func readerHeapInUse() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
