package app_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// goodClient is the well-behaved client of a security test: subscribed to
// one key before the attack, it must receive every value published
// meanwhile.
type goodClient struct {
	t   *testing.T
	c   *wstest.Client
	app string
	key string
	n   int
}

func newGoodClient(t *testing.T, c *wstest.Client) *goodClient {
	t.Helper()
	g := &goodClient{t: t, c: c, app: "plant", key: "good"}
	g.c.Subscribe(g.app, "json", nil, g.key)
	return g
}

// publishAndReceive publishes the next value in process (the HTTP API may
// be what is under attack) and expects the client to get it.
func (g *goodClient) publishAndReceive(a *app.App) {
	g.t.Helper()
	g.n++
	want := strconv.Itoa(g.n)
	if _, err := a.Node().Publish(context.Background(), "test", []proto.Publication{{App: g.app, Key: g.key, Data: []byte(want), JSON: true}}); err != nil {
		g.t.Fatalf("publish: %v", err)
	}
	m := g.c.Data(1)[0]
	if string(m.Data) != want || m.Key != g.key {
		g.t.Fatalf("good client: got %s=%s, want %s=%s", m.Key, m.Data, g.key, want)
	}
}

// expectClosedByServer reads conn until the server closes it; it fails the
// test if that has not happened after the generous bound (a check of
// behaviour: without the timeouts the read would block forever).
func expectClosedByServer(t *testing.T, conn net.Conn, what string) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := io.Copy(io.Discard, conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: still open after 30s", what)
	}
}

func dialRaw(t *testing.T, base string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Row 5 of issue 9: idle keep-alive connections, silent ones and slow POST
// bodies are closed by the server within its timeouts.
func TestSecurityIdleAndSlowHTTPConnectionsAreClosed(t *testing.T) {
	base, a := startApp(t, app.Config{
		HTTPHeaderTimeout: time.Second, HTTPIdleTimeout: time.Second, HTTPBodyTimeout: time.Second,
	})
	good := newGoodClient(t, wstest.Dial(t, wstest.WSURL(base), nil))
	const n = 200
	var idle, slow, silent []net.Conn
	for range n {
		c := dialRaw(t, base)
		if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("healthz on a keep-alive connection: %v %v", resp, err)
		}
		idle = append(idle, c)
	}
	var drip sync.WaitGroup
	stopDrip := make(chan struct{})
	for range n {
		c := dialRaw(t, base)
		if _, err := io.WriteString(c, "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"app\":\"plant\",\"key\":\"x\",\"data\":"); err != nil {
			t.Fatal(err)
		}
		slow = append(slow, c)
		drip.Go(func() { // a byte of whitespace every 100 ms: valid JSON, forever
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-stopDrip:
					return
				case <-t.C:
					if _, err := c.Write([]byte(" ")); err != nil {
						return
					}
				}
			}
		})
	}
	defer func() { close(stopDrip); drip.Wait() }()
	for range n {
		silent = append(silent, dialRaw(t, base)) // connects, never sends a header
	}

	good.publishAndReceive(a)
	for i, c := range idle {
		expectClosedByServer(t, c, fmt.Sprintf("idle keep-alive connection %d", i))
	}
	for i, c := range slow {
		expectClosedByServer(t, c, fmt.Sprintf("slow POST %d", i))
	}
	for i, c := range silent {
		expectClosedByServer(t, c, fmt.Sprintf("silent connection %d", i))
	}
	good.publishAndReceive(a)
	if code, out := publish(t, base, `{"app":"plant","key":"good","data":99}`); code != http.StatusOK {
		t.Fatalf("publish after the attack: %d %v", code, out)
	}
	if m := good.c.Data(1)[0]; string(m.Data) != "99" {
		t.Fatalf("good client: %+v", m)
	}
}

// A publish whose body arrives in time, though over several writes, is not
// cut by the body deadline, and the connection stays usable.
func TestSecurityBodyTimeoutSparesPromptBodies(t *testing.T) {
	base, _ := startApp(t, app.Config{HTTPBodyTimeout: 2 * time.Second})
	c := dialRaw(t, base)
	br := bufio.NewReader(c)
	for i := range 3 {
		body := fmt.Sprintf(`{"app":"plant","key":"k","data":%d}`, i)
		if _, err := fmt.Fprintf(c, "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body[:10]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if _, err := io.WriteString(c, body[10:]); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("publish %d: HTTP %d", i, resp.StatusCode)
		}
	}
}

func httpMetric(t *testing.T, url, series string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", series, line)
			}
			return f
		}
	}
	return 0
}

func httpWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The limit of not-yet-upgraded connections: beyond it the server closes
// new connections at once, counts them, and WebSocket clients already
// connected are not affected (they are no longer plain HTTP).
func TestSecurityPlainHTTPConnectionLimit(t *testing.T) {
	const limit = 20
	base, a := startApp(t, app.Config{MaxHTTPConnections: limit, HTTPHeaderTimeout: time.Minute, AdminAddr: "127.0.0.1:0"})
	good := newGoodClient(t, wstest.Dial(t, wstest.WSURL(base), nil))
	metrics := "http://" + a.AdminAddr() + "/metrics"

	var held []net.Conn
	for range limit {
		held = append(held, dialRaw(t, base))
	}
	httpWaitFor(t, "the held connections to be counted", func() bool {
		return httpMetric(t, metrics, "wspush_http_connections") == limit
	})
	for i := range 5 {
		extra := dialRaw(t, base)
		_ = extra.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := extra.Read(make([]byte, 1)); err == nil || n > 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("extra connection %d: read %d, %v; want it closed", i, n, err)
		}
	}
	if got := httpMetric(t, metrics, `wspush_http_connections_rejected_total{reason="max_http_connections"}`); got != 5 {
		t.Fatalf("rejected: %v, want 5", got)
	}
	good.publishAndReceive(a)
	if _, err := wstest.TryDial(t, wstest.WSURL(base), nil); err == nil {
		t.Fatal("a WebSocket handshake got through while the plain HTTP connections are at the limit")
	}

	for _, c := range held {
		c.Close()
	}
	httpWaitFor(t, "the held connections to be forgotten", func() bool {
		return httpMetric(t, metrics, "wspush_http_connections") == 0
	})
	second := newGoodClient(t, wstest.Dial(t, wstest.WSURL(base), nil))
	second.c.Data(1) // the latest value
	if code, out := publish(t, base, `{"app":"plant","key":"good","data":7}`); code != http.StatusOK {
		t.Fatalf("publish after the flood: %d %v", code, out)
	}
	for _, g := range []*goodClient{good, second} {
		if m := g.c.Data(1)[0]; string(m.Data) != "7" {
			t.Fatalf("after the flood: %+v", m)
		}
	}
	// The publish's keep-alive connection is plain HTTP; the two upgraded
	// ones are not.
	http.DefaultClient.CloseIdleConnections()
	httpWaitFor(t, "only the upgraded connections to remain", func() bool {
		return httpMetric(t, metrics, "wspush_http_connections") == 0
	})
}

// dialFrom opens a WebSocket connection from a loopback source address;
// it returns the HTTP status of a refused handshake.
func dialFrom(t *testing.T, base, src string) (*wstest.Client, int) {
	t.Helper()
	nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, resp, err := wstest.TryDialWith(t, &websocket.Dialer{NetDialContext: nd.DialContext}, wstest.WSURL(base), nil)
	if err != nil {
		if resp == nil {
			t.Fatalf("dial from %s: %v", src, err)
		}
		return nil, resp.StatusCode
	}
	return c, http.StatusSwitchingProtocols
}

// --max-connections-per-ip: the address over its limit gets 429, others
// connect and receive as usual, and a closed connection frees its place.
func TestSecurityConnectionsPerIP(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs 127.0.0.2 and 127.0.0.3, loopback on Linux only")
	}
	const limit = 3
	base, a := startApp(t, app.Config{Users: userservice.Config{MaxConnectionsPerIP: limit}})
	gc, code := dialFrom(t, base, "127.0.0.2")
	if gc == nil {
		t.Fatalf("good client: HTTP %d", code)
	}
	good := newGoodClient(t, gc)

	var mine []*wstest.Client
	for i := range limit {
		c, code := dialFrom(t, base, "127.0.0.1")
		if c == nil {
			t.Fatalf("connection %d of %d from one address: HTTP %d", i+1, limit, code)
		}
		mine = append(mine, c)
	}
	for range 3 {
		if c, code := dialFrom(t, base, "127.0.0.1"); c != nil || code != http.StatusTooManyRequests {
			t.Fatalf("connection over the per-address limit: HTTP %d, want 429", code)
		}
		good.publishAndReceive(a)
	}
	if got := httpMetric(t, base+"/metrics", `wspush_connections_rejected_total{reason="per_ip"}`); got != 3 {
		t.Fatalf("per_ip rejections: %v, want 3", got)
	}
	if c, _ := dialFrom(t, base, "127.0.0.3"); c == nil {
		t.Fatal("another address refused")
	}
	mine[0].Conn.Close()
	httpWaitFor(t, "the closed connection to free its place", func() bool {
		c, _ := dialFrom(t, base, "127.0.0.1")
		if c != nil {
			c.Conn.Close()
		}
		return c != nil
	})
	good.publishAndReceive(a)
}

// Row 10 of issue 9: a draining node answers /readyz with 503 (while
// /healthz stays 200 and its clients are still served), refuses upgrades,
// then closes its clients with 1001.
func TestSecurityReadyzDuringGracefulShutdown(t *testing.T) {
	base, a, stop := wstest.StartApp(t, app.Config{DrainDelay: 2 * time.Second})
	good := newGoodClient(t, wstest.Dial(t, wstest.WSURL(base), nil))
	status := func(path string) int {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := status("/readyz"); code != http.StatusOK {
		t.Fatalf("readyz before the shutdown: %d", code)
	}
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	httpWaitFor(t, "/readyz to answer 503", func() bool { return status("/readyz") == http.StatusServiceUnavailable })
	if code := status("/healthz"); code != http.StatusOK {
		t.Fatalf("healthz while draining: %d", code)
	}
	if _, err := wstest.TryDial(t, wstest.WSURL(base), nil); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("upgrade while draining: %v, want HTTP 503", err)
	}
	good.publishAndReceive(a)
	if code, out := publish(t, base, `{"app":"plant","key":"good","data":5}`); code != http.StatusOK {
		t.Fatalf("publish while draining: %d %v", code, out)
	}
	if m := good.c.Data(1)[0]; string(m.Data) != "5" {
		t.Fatalf("good client while draining: %+v", m)
	}
	good.c.ExpectClose(websocket.CloseGoingAway)
	<-stopped
}

// --admin-addr: /metrics and pprof on the admin listener, not on the main
// one.
func TestSecurityAdminListener(t *testing.T) {
	base, a := startApp(t, app.Config{AdminAddr: "127.0.0.1:0"})
	good := newGoodClient(t, wstest.Dial(t, wstest.WSURL(base), nil))
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	admin := "http://" + a.AdminAddr()
	for _, path := range []string{"/metrics", "/debug/pprof/"} {
		if code, _ := get(base + path); code != http.StatusNotFound {
			t.Fatalf("main listener %s: %d, want 404", path, code)
		}
	}
	if code, body := get(admin + "/metrics"); code != 200 || !strings.Contains(body, "wspush_connections 1") {
		t.Fatalf("admin /metrics: %d", code)
	}
	if code, body := get(admin + "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Fatalf("admin pprof: %d", code)
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(admin + path); code != 200 {
			t.Fatalf("admin %s: %d", path, code)
		}
		if code, _ := get(base + path); code != 200 {
			t.Fatalf("main %s: %d", path, code)
		}
	}
	good.publishAndReceive(a)
}

// writeCert writes a self-signed certificate for 127.0.0.1 with common
// name cn to dir/cert.pem and dir/key.pem, dated mod.
func writeCert(t *testing.T, dir, cn string, mod time.Time) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for name, block := range map[string]*pem.Block{"cert.pem": {Type: "CERTIFICATE", Bytes: der}, "key.pem": {Type: "PRIVATE KEY", Bytes: kb}} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
}

// servedCN is the common name of the certificate a new TLS connection to
// addr is served.
func servedCN(t *testing.T, addr string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TLS: wss:// and https:// on the main listener, the certificate reloaded
// when its files change, a broken pair ignored.
func TestSecurityTLSReload(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "first", time.Now().Add(-time.Minute))
	base, a := startApp(t, app.Config{
		TLSCert: filepath.Join(dir, "cert.pem"), TLSKey: filepath.Join(dir, "key.pem"), TLSReloadInterval: 20 * time.Millisecond,
	})
	addr := strings.TrimPrefix(base, "http://")
	tlsCfg := &tls.Config{InsecureSkipVerify: true}
	gc, resp, err := wstest.TryDialWith(t, &websocket.Dialer{TLSClientConfig: tlsCfg}, "wss://"+addr+"/ws", nil)
	if err != nil {
		t.Fatalf("wss dial: %v %v", err, resp)
	}
	if cn := gc.Conn.NetConn().(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "first" {
		t.Fatalf("served %q", cn)
	}
	good := newGoodClient(t, gc)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer client.CloseIdleConnections()
	httpsPublish := func(v int) {
		t.Helper()
		resp, err := client.Post("https://"+addr+"/api/publish", "application/json", strings.NewReader(fmt.Sprintf(`{"app":"plant","key":"good","data":%d}`, v)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("https publish: %d", resp.StatusCode)
		}
		if m := good.c.Data(1)[0]; string(m.Data) != strconv.Itoa(v) {
			t.Fatalf("good client: %+v", m)
		}
	}
	httpsPublish(100)
	if resp, err := http.Get(base + "/healthz"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP on the TLS listener: HTTP %d, want 400", resp.StatusCode)
		}
	}

	writeCert(t, dir, "second", time.Now().Add(time.Minute))
	httpWaitFor(t, "the new certificate to be served", func() bool { return servedCN(t, addr) == "second" })
	good.publishAndReceive(a)

	// A broken pair (the key of another certificate) is refused: the last
	// good one stays in use.
	other := t.TempDir()
	writeCert(t, other, "third", time.Now())
	kb, err := os.ReadFile(filepath.Join(other, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyPath := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(keyPath, kb, 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.Chtimes(keyPath, time.Now().Add(2*time.Minute), time.Now().Add(2*time.Minute))
	httpWaitFor(t, "the broken pair to be tried", func() bool {
		resp, err := client.Get("https://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `wspush_tls_reloads_total{result="error"} 1`)
	})
	if cn := servedCN(t, addr); cn != "second" {
		t.Fatalf("after a broken pair: served %q, want the previous one", cn)
	}
	httpsPublish(101)
}
