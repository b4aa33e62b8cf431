// Package userservice owns WebSocket connections: the HTTP upgrade
// (gorilla/websocket), auth and origin checks, the read loop (parse,
// validate and rate-limit client commands), one bounded outgoing queue per
// connection and the writers, heartbeats, dead-connection reaping, and close
// codes. It knows nothing of Redis or AMQP: it hands subscriptions to a
// Router and receives ready-made frames through Enqueue. It also serves the
// same stream as Server-Sent Events (GET /sse, sse.go), for clients that
// cannot use the WebSocket: same admission, auth, origin and queue limits,
// with the frames turned into events whose ids carry the positions.
//
// gorilla/websocket performs the upgrade; after it, the connection is read
// and written without gorilla's Conn, whose buffers are dropped:
//
//   - Reads: a goroutine that has done nothing but start one socket read
//     into a small array waits for the client, so an idle connection holds
//     a 2 KiB stack; proto.ClientReader turns what arrives into messages,
//     on a goroutine that ends once they are handled (see readStep).
//   - Writes: every frame the server sends is already a complete WebSocket
//     frame (proto.Frame), so the writer drains the whole queue and hands
//     it to the kernel in one writev. Plain TCP connections are written by
//     a pool of a few goroutines with non-blocking writev (writer.go); a
//     socket that would block, and every TLS connection, by a goroutine of
//     the connection's own (writeLoop). One writer at a time writes.
package userservice
