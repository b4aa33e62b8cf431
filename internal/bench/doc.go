// Package bench is the engine of wsbench, the wspush load tester: the
// scenarios (capacity, fanout, table), the worker processes that hold the
// connections, the publisher (over HTTP or AMQP; each value stamped with
// its scheduled send time, so that a publisher falling behind shows in the
// latency), the statistics (HdrHistogram latency histograms that merge
// exactly across workers, loss counting by seq) and the reports (text,
// JSON, SVG).
//
// It speaks the wspush protocol through package proto and talks to
// servers only over the network, never in-process, and only to loopback
// addresses: a load test must never hit another machine. It must not
// import the server's packages (middle, userservice, dataservice); its
// tests do, to start a real server.
//
// A run is split between a coordinator (the wsbench process the user
// started) and workers: the coordinator plans which connection goes to
// which worker, server and source address, publishes values, scrapes the
// servers' /metrics and merges what the workers report; a worker dials
// its share of the connections, receives on them and counts. They speak
// JSON lines (one message per line) over the worker's stdin and stdout,
// whether the worker is a re-executed wsbench process or, for a single
// worker, a goroutine of the coordinator.
package bench
