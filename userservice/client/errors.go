package client

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by calls on a Client that was closed.
var ErrClosed = errors.New("wspush client: closed")

// CloseError is a close of the connection by the server that ends the
// Client (docs/PROTOCOL.md, Close codes): 1002, 1007, 1008, 1009, 4001, or
// 4003 without a Config.TokenFunc.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("wspush: connection closed with %d %q: %s", e.Code, e.Reason, closeAdvice(e.Code))
}

// CommandError is an error reply to a command (docs/PROTOCOL.md, Error
// codes): Code is "bad_request", "forbidden", "limit", "unavailable", ...
type CommandError struct {
	Op      string
	Code    string
	Message string
}

func (e *CommandError) Error() string {
	return fmt.Sprintf("wspush %s: %s: %s", e.Op, e.Code, e.Message)
}

// HandshakeError is an upgrade refused with an HTTP status that retrying
// will not change (400, 401, 403, 404, ...); 429 and 5xx are retried.
type HandshakeError struct {
	StatusCode int
	Status     string
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("wspush: upgrade refused: %s", e.Status)
}

func closeAdvice(code int) string {
	switch code {
	case 1002:
		return "a frame broke RFC 6455"
	case 1007:
		return "a text message was not valid UTF-8"
	case 1008:
		return "policy: command rate exceeded, bad commands, or a slow message"
	case 1009:
		return "a message over the server's size limit"
	case 4001:
		return "unauthorized: no token or a bad one"
	case 4003:
		return "the token expired and no TokenFunc can renew it"
	}
	return "closed by the server"
}
