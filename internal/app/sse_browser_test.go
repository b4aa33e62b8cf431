package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
)

// ssePage subscribes with a plain EventSource and records what it gets.
const ssePage = `<!doctype html><meta charset="utf-8"><title>sse</title><script>
window.seqs = []; window.acks = []; window.resets = 0;
const es = new EventSource("/sse?app=browser&keys=a");
es.onmessage = e => window.seqs.push(JSON.parse(e.data).seq);
es.addEventListener("ack", e => window.acks.push(JSON.parse(e.data)));
es.addEventListener("reset", () => window.resets++);
</script>`

// cutProxy forwards TCP connections to target; cut breaks every one open.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A browser's own EventSource, its connection broken mid-stream while
// values are published: its automatic reconnect (Last-Event-ID) gets
// exactly the values it missed.
func TestSSEBrowserEventSourceReconnectResumes(t *testing.T) {
	var chrome string
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			chrome = p
			break
		}
	}
	if chrome == "" {
		t.Skip("no Chromium on this machine (scripts/ installs it for the browser test)")
	}
	base, _ := startApp(t, app.Config{AllowedOrigins: []string{"*"}, Dashboard: fstest.MapFS{"sse.html": {Data: []byte(ssePage)}}})
	proxy := newCutProxy(t, base[len("http://"):])

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-dev-shm-usage", true))
	defer cancelAlloc()
	bctx, cancelTab := chromedp.NewContext(allocCtx)
	defer cancelTab()
	if err := chromedp.Do(bctx, chromedp.Navigate("http://"+proxy.ln.Addr().String()+"/sse.html")); err != nil {
		t.Fatal(err)
	}
	var state struct {
		Seqs   []uint64
		Acks   []struct{ Recovered *bool }
		Resets int
	}
	read := func() {
		raw, err := chromedp.Run(bctx, chromedp.Evaluate[[]byte](`JSON.stringify({seqs: window.seqs, acks: window.acks, resets: window.resets})`))
		if err != nil {
			t.Fatal(err)
		}
		var s string // the script's value is a JSON string
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if err := json.Unmarshal([]byte(s), &state); err != nil {
			t.Fatal(err)
		}
	}
	want := func(acks int, n uint64) func() error {
		return func() error {
			read()
			if len(state.Acks) != acks || uint64(len(state.Seqs)) != n {
				return fmt.Errorf("%d acks, seqs %v", len(state.Acks), state.Seqs)
			}
			return nil
		}
	}
	wstest.Eventually(t, 20*time.Second, want(1, 0))
	for i := 1; i <= 5; i++ {
		mustPublish(t, base, "browser", "a", fmt.Sprint(i))
	}
	wstest.Eventually(t, 10*time.Second, want(1, 5))

	proxy.cut() // the network breaks; values go on meanwhile
	for i := 6; i <= 10; i++ {
		mustPublish(t, base, "browser", "a", fmt.Sprint(i))
	}
	wstest.Eventually(t, 20*time.Second, want(2, 10))
	if r := state.Acks[1].Recovered; r == nil || !*r || state.Resets != 0 {
		t.Fatalf("reconnect ack %+v, %d resets", state.Acks[1], state.Resets)
	}
	if !slices.Equal(state.Seqs, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}) {
		t.Fatalf("seqs %v", state.Seqs)
	}
	mustPublish(t, base, "browser", "a", "11") // live again
	wstest.Eventually(t, 10*time.Second, want(2, 11))
}
