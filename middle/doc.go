// Package middle owns routing: the subscription index ((app,key) → local
// sessions, and cluster-wide through an Index), the sequencer and history of
// each key (a Store), the transport that carries sequenced publications to
// every node that watches a key (a Bus), ingestion (HTTP publish; AMQP in
// cluster mode) and fan-out.
//
// Fan-out encodes each publication once per format as a complete WebSocket
// frame (proto.Frame) and enqueues the same bytes to every subscriber. Order
// is kept per key by one rule in one place (channel.deliver): a publication
// is delivered only if its seq is exactly the next one; a later seq first
// fills the gap from the Store, an earlier one is a duplicate and dropped.
// That rule makes the embedded mode (concurrent publishers racing between
// sequencing and delivery) and the cluster mode (several nodes sequencing
// the same key, AMQP redeliveries) correct by the same code.
//
// middle knows nothing of sockets: a session is a Subscriber that frames can
// be enqueued to without blocking.
package middle
