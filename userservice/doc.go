// Package userservice owns WebSocket connections: the HTTP upgrade
// (gorilla/websocket), auth and origin checks, the read loop (parse,
// validate and rate-limit client commands), one bounded outgoing queue and
// one writer per connection, heartbeats, dead-connection reaping, and close
// codes. It knows nothing of Redis or AMQP: it hands subscriptions to a
// Router and receives ready-made frames through Enqueue.
//
// Writes bypass gorilla's per-message path: every frame the server sends is
// already a complete WebSocket frame (proto.Frame), so the writer drains the
// whole queue and hands it to the kernel in one writev. Only the writer
// goroutine writes, except for the close frame gorilla itself sends when a
// client exceeds the read limit (each Write on a net.Conn is atomic, so
// frames never interleave).
package userservice
