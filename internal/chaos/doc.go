// Package chaos is the fault suite of a wspush cluster (issue 8): it runs
// real node processes against Redis and RabbitMQ, publishes numbered values
// through the AMQP ingest with publisher confirms, reads them back with
// WebSocket subscribers on every node, injects one fault per run, and
// checks the client rule of docs/PROTOCOL.md ("Positions"): every confirmed
// value exactly once, in order, with consecutive seqs, or a reset where
// data was really lost.
package chaos
