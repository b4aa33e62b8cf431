// Command wspushctl is the integrator's and operator's debugging tool for
// wspush: pub publishes values over HTTP or AMQP, sub prints a key's live
// values as JSON lines and resumes across reconnects, stats summarises a
// node's /metrics. See wspushctl --help.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
