package wstest

import (
	"context"
	"net"
	"sync"
	"testing"

	"github.com/wspush/wspush/internal/app"
)

// StartApp runs a whole wspush process (app.New + Run) on a loopback port
// and returns its base URL (http://127.0.0.1:port), the app, and stop, which
// shuts it down gracefully and reports a failed run. stop runs at the end of
// the test too; calling it earlier is how a test stops a node.
func StartApp(t testing.TB, cfg app.Config) (base string, a *app.App, stop func()) {
	t.Helper()
	a, err := app.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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
