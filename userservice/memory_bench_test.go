package userservice_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/userservice"
)

// BenchmarkIdleConnectionMemory reports the server-side memory (heap in use
// plus goroutine stacks) of one idle connection subscribed to one key. The
// clients are raw sockets holding no goroutine and no buffer, so what grows
// is the server's share (plus about 0.3 KiB of client socket per conn).
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns = 2000
	node, err := middle.NewNode(middle.Config{})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := userservice.NewServer(userservice.Config{}, node)
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv}
	go hs.Serve(ln)
	defer hs.Close()
	defer srv.Shutdown(context.Background())

	for i := 0; i < b.N; i++ {
		before := memInUse()
		clients := make([]net.Conn, 0, conns)
		for c := 0; c < conns; c++ {
			clients = append(clients, rawSubscribe(b, ln.Addr().String(), fmt.Sprintf("k%d", c%100)))
		}
		after := memInUse()
		b.ReportMetric(float64(after-before)/conns/1024, "KiB/conn")
		for _, c := range clients {
			c.Close()
		}
		for srv.Connections() > 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func memInUse() uint64 {
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// rawSubscribe performs the WebSocket handshake and one subscribe by hand,
// reads the ack, and returns the bare socket.
func rawSubscribe(b *testing.B, addr, key string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatalf("handshake: %v %v", resp, err)
	}
	payload := []byte(fmt.Sprintf(`{"op":"subscribe","id":1,"app":"a","keys":[%q]}`, key))
	frame := []byte{0x81, 0x80 | byte(len(payload)), 0, 0, 0, 0} // masked with a zero key
	if _, err := c.Write(append(frame, payload...)); err != nil {
		b.Fatal(err)
	}
	hdr := make([]byte, 2)
	if _, err := br.Read(hdr); err != nil { // the ack's frame header; its body is left unread
		b.Fatal(err)
	}
	return c
}
