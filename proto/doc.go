// Package proto owns the wspush wire format: the commands a client sends,
// the replies and data messages the server sends (JSON text or the binary
// frame layout of docs/PROTOCOL.md), the validation of app and key names, and the
// encoding of a server WebSocket frame so that a publication is framed once
// and the same bytes are written to every subscriber.
//
// It is pure code: no I/O, no goroutines, no global mutable state. Every
// decoder here has a fuzz target; the seed corpus lives in testdata/.
package proto
