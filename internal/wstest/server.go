package wstest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/app"
)

// StartApp runs a whole wspush process (app.New + Run) on a loopback port
// and returns its base URL (http://127.0.0.1:port), the app, and stop, which
// shuts it down gracefully and reports a failed run. stop runs at the end of
// the test too; calling it earlier is how a test stops a node.
func StartApp(t testing.TB, cfg app.Config) (base string, a *app.App, stop func()) {
	t.Helper()
	return StartAppAt(t, cfg, "127.0.0.1:0")
}

// StartAppAt is StartApp on addr: the address of a node the test stopped,
// to start its successor where the clients reconnect. The old listener's
// port may take a moment to be free again, so the listen is retried for up
// to 5 s.
func StartAppAt(t testing.TB, cfg app.Config, addr string) (base string, a *app.App, stop func()) {
	t.Helper()
	a, err := app.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if ln, err = net.Listen("tcp", addr); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("wspush on %s: %v", ln.Addr(), err)
			}
		})
	}
	t.Cleanup(stop)
	return "http://" + ln.Addr().String(), a, stop
}
