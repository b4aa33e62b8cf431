// Package client is the Go client of wspush: it holds one WebSocket
// connection to a node, subscribes to keys, and hands every value of those
// keys to a Handler exactly once and in order, across reconnects (or, for
// keys subscribed with ModeLatest, their newest values; see Delivery modes).
//
// It owns the connection (one reader and one writer goroutine), the
// positions of the keys it subscribed (docs/PROTOCOL.md, Positions), the
// reconnect loop (exponential backoff with full jitter) and the pacing of its
// commands under the server's limits (docs/PROTOCOL.md, Commands). It
// imports only proto, gorilla/websocket and the standard library: it must
// not know the server's stores or brokers.
//
// # Resume
//
// The client applies "The client rule" of docs/PROTOCOL.md to every
// message: an ack sets each key's position (a key subscribed without since
// is fresh), a reset replaces it, a data advances it by one. After a lost
// connection it subscribes every key again, with since set to its full
// position (seq and epoch), except a key still fresh, which it subscribes
// without since so that it gets the latest value. The Handler sees, per key,
// every value in order exactly once, or a Reset saying which values will not
// come; each (re)subscribe ends in an Ack that says whether the resume
// recovered everything.
//
// # Delivery modes
//
// A Subscribe chooses how many of its keys' values it wants
// (docs/PROTOCOL.md, Delivery modes). ModeStream, the default, is every
// value as described above. ModeLatest is the newest value of each key:
// the server may skip values, at most SubscribeOptions.MaxRate deliveries
// per second per key when given, and conflates them when the connection
// is slow, so a slow connection is never closed for its latest keys. For
// such a key the client accepts any seq above the position (a jump of k
// means k-1 values were skipped on purpose, not a fault: no resume) and
// ignores a seq at or below it. Epochs and Resets work as for ModeStream;
// a resume keeps the mode and MaxRate and brings the newest value only.
// Config.MaxBandwidth caps the bytes per second of values the server
// writes to the connection.
//
//	c.Subscribe(ctx, "plant-7", keys, client.SubscribeOptions{
//		Mode: client.ModeLatest, MaxRate: 2, // at most 2 values/s per key, always the newest
//	}, h)
//
// # Slow handlers
//
// Messages go from the reader to the Handler through one bounded queue per
// Client (Config.QueueSize events). Positions advance as messages enter the
// queue, so a resume never asks for a value twice. When the queue is full
// the reader waits for room, up to Config.StallTimeout; if the Handler is
// still behind then, the client closes the connection itself, lets the
// Handler drain the queue to half, and resumes from the positions of what it
// queued. The value that did not fit is then sent again by the server's
// replay, so a slow Handler never loses or reorders a value (unless the
// server's history no longer reaches back, which arrives as a Reset with
// reason "gap"), and the reader never blocks without bound.
//
// The queue is bounded by its number of messages, so its memory is at most
// QueueSize times the largest message (64 KiB publications by default).
// Handlers may call Subscribe, Unsubscribe and Positions; a Subscribe from a
// Handler waits for its ack, which needs room in the queue, so with a full
// queue it waits for its ctx: prefer another goroutine for large work.
//
// # Closing
//
// The server closes with a code (docs/PROTOCOL.md, Close codes). The client
// reconnects after 1001, 1006, 1011 and the other transient ones; after
// 4003 (token expired) it gets a new token from Config.TokenFunc and
// reconnects. After 1002, 1007, 1008, 1009 and 4001 it does not reconnect:
// retrying would fail the same way. The Client then ends: Done is closed,
// Err returns a *CloseError with the code, and OnState gets StateClosed.
package client
