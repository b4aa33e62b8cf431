// Package chaos is the fault suite of a wspush cluster (issue 8): it runs
// real node processes against Redis and RabbitMQ, publishes numbered values
// through the AMQP ingest with publisher confirms, reads them back with
// WebSocket subscribers on every node, injects one fault per run, and
// checks the client rule of docs/PROTOCOL.md ("Positions"): every confirmed
// value exactly once, in order, with consecutive seqs, or a reset where
// data was really lost.
//
//	go test ./internal/chaos/                      # the bounded form (CI)
//	go test -v ./internal/chaos/ -args -chaos.long # 25 s runs on 3 nodes (scripts/chaos.sh)
//
// -chaos.global stalls Redis with CLIENT PAUSE ALL instead of the run's
// own proxy (it stops every client of that Redis); -chaos.race builds the
// nodes with the race detector. Each run isolates itself on the shared
// services with a random --redis-prefix/--amqp-prefix and deletes what it
// created; the faults touch only its own nodes' connections.
package chaos
