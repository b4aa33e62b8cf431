// Command wsbench is wspush's load tester: it opens many WebSocket
// connections to wspush servers on this machine, publishes values and
// measures what arrives (latency, loss) and what the servers spend
// (memory per connection, CPU per delivery). See wsbench --help; the
// engine is internal/bench.
package main

import (
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
