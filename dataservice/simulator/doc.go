// Package simulator owns the simulated data center: an http.Handler that
// implements the upstream getRealTimeData API of docs/PROTOCOL.md ("Data-center
// API") with sensors that wander like random walks, for demos, tests and
// benchmarks. cmd/datacenter serves it on its own; wspush --demo and the
// dataservice tests run it in-process.
//
// Every value is computed from (seed, app, id, step index) alone, so the
// simulator keeps no per-sensor state: memory does not grow with the number
// of apps and IDs asked for, and two simulators with the same seed agree.
//
// It has fault modes (SetFault, Config.FailEvery) so that a client's
// timeout, backoff and validation paths can be tested against a real HTTP
// server. It must not depend on the rest of wspush other than proto.
package simulator
