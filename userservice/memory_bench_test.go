package userservice_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// BenchmarkIdleConnectionMemory reports the server-side memory (heap in use
// plus goroutine stacks) of one idle connection subscribed to one key. The
// clients are raw sockets holding no goroutine and no buffer, so what grows
// is the server's share (plus about 0.3 KiB of client socket per conn).
func BenchmarkIdleConnectionMemory(b *testing.B) {
	const conns = 2000
	_, srv, addr := startBenchServer(b)

	for i := 0; i < b.N; i++ {
		before := memInUse()
		clients := make([]net.Conn, 0, conns)
		for c := 0; c < conns; c++ {
			clients = append(clients, rawSubscribe(b, addr, fmt.Sprintf("k%d", c%100)))
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

// startBenchServer runs an embedded node and the connection server on a
// loopback port until the benchmark ends.
func startBenchServer(b *testing.B) (*middle.Node, *userservice.Server, string) {
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
	b.Cleanup(func() {
		_ = srv.Shutdown(context.Background())
		_ = hs.Close()
	})
	return node, srv, ln.Addr().String()
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
	c, _ := rawSubscriber(b, addr, key)
	return c
}

// rawSubscriber is rawSubscribe that also returns the reader of the
// socket, positioned after the ack frame.
func rawSubscriber(b *testing.B, addr, key string) (net.Conn, *bufio.Reader) {
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
	if _, err := readFrame(br); err != nil { // the ack
		b.Fatal(err)
	}
	return c, br
}

// readFrame reads one unmasked server frame and returns its opcode; its
// payload is skipped.
func readFrame(br *bufio.Reader) (opcode byte, err error) {
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return 0, err
	}
	n := int(hdr[1] & 0x7f)
	switch n {
	case 126:
		var ext [2]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return 0, err
		}
		n = int(binary.BigEndian.Uint16(ext[:]))
	case 127:
		var ext [8]byte
		if _, err := io.ReadFull(br, ext[:]); err != nil {
			return 0, err
		}
		n = int(binary.BigEndian.Uint64(ext[:]))
	}
	_, err = br.Discard(n)
	return hdr[0] & 0x0f, err
}

// BenchmarkBroadcast measures what one delivery costs from Publish to the
// client's socket: a node, the userservice server and 1,000 raw-socket
// clients on loopback, all in this process, all subscribed to one key.
// Values are published in rounds of burst, the next round once every
// client has the last: burst=1 is a key that changes rarely (one frame per
// write); with burst=10 the writers batch what piles up.
func BenchmarkBroadcast(b *testing.B) {
	const conns = 1000
	for _, burst := range []int{1, 10} {
		b.Run(fmt.Sprintf("burst=%d", burst), func(b *testing.B) { benchmarkBroadcast(b, conns, burst) })
	}
}

func benchmarkBroadcast(b *testing.B, conns, burst int) {
	node, _, addr := startBenchServer(b)

	var delivered atomic.Int64
	var target atomic.Int64
	reached := make(chan struct{}, 1)
	for range conns {
		c, br := rawSubscriber(b, addr, "k")
		defer c.Close()
		go func() {
			for {
				op, err := readFrame(br)
				if err != nil {
					return
				}
				if op == 0x1 && delivered.Add(1) == target.Load() {
					reached <- struct{}{}
				}
			}
		}()
	}
	publish := func() {
		_, err := node.Publish(context.Background(), "bench", []proto.Publication{{App: "a", Key: "k", Data: []byte(`{"v":1}`), JSON: true}})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for i := 0; i < b.N; i += burst {
		n := min(burst, b.N-i)
		target.Store(int64(i+n) * int64(conns))
		for range n {
			publish()
		}
		<-reached
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*conns), "ns/delivery")
	// The process's CPU: the server's and the clients' reads (about half).
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N*conns), "cpu-ns/delivery")
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
