package chaos

import "encoding/json"

// The wire types are the suite's own, so that it checks what a client sees
// on the socket rather than what the server's proto package believes
// (docs/PROTOCOL.md, "Positions").

// Position names one publication of a key's stream: (seq, epoch).
type Position struct {
	Seq   uint64 `json:"seq"`
	Epoch string `json:"epoch"`
}

// subscribeCmd is the one client command the suite sends.
type subscribeCmd struct {
	Op     string              `json:"op"`
	ID     uint64              `json:"id"`
	App    string              `json:"app"`
	Keys   []string            `json:"keys"`
	Format string              `json:"format"`
	Since  map[string]Position `json:"since,omitempty"`
}

// serverMsg is any server message (ack, reset, data, error, pong).
type serverMsg struct {
	Op        string              `json:"op"`
	ID        uint64              `json:"id"`
	Recovered *bool               `json:"recovered"`
	Positions map[string]Position `json:"positions"`
	App       string              `json:"app"`
	Key       string              `json:"key"`
	Seq       uint64              `json:"seq"`
	Epoch     string              `json:"epoch"`
	Reason    string              `json:"reason"`
	Code      string              `json:"code"`
	Message   string              `json:"message"`
	Data      json.RawMessage     `json:"data"`
}

// payload is the body the publisher sends: {"c":<counter>}.
type payload struct {
	C int64 `json:"c"`
}
