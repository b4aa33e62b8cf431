package client

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/wspush/wspush/proto"
)

// Position is where a key's stream stands: the last publication processed,
// (seq, epoch). See docs/PROTOCOL.md, Positions. An empty Epoch in a
// SubscribeOptions.Since entry sends the bare form (seq of the key's current
// epoch, whatever it is), which cannot detect a lost stream.
type Position = proto.Position

// Config configures a Client. Only URL is required; zero values take the
// defaults named on each field.
type Config struct {
	// URL of the WebSocket endpoint, e.g. "ws://127.0.0.1:8080/ws". An
	// http:// or https:// URL means ws:// or wss://; without a path the
	// path is /ws.
	URL string
	// Token is the JWT sent on connect (Authorization: Bearer). Ignored
	// when TokenFunc is set.
	Token string
	// TokenFunc, when set, is called for the token of every connection and
	// ahead of the token's exp (a minute before it, or half its lifetime
	// when shorter), whose result is sent as a refresh command
	// (docs/PROTOCOL.md, Token expiry and refresh). After close 4003 the
	// client calls it and reconnects; without it, 4003 ends the Client.
	TokenFunc func(ctx context.Context) (string, error)
	// Header is sent with the upgrade request (Origin, User-Agent, ...).
	Header http.Header
	// MinBackoff and MaxBackoff bound the wait before a reconnect: attempt
	// n waits a uniformly random time in [0, min(MaxBackoff, MinBackoff*2^n))
	// ("full jitter"). Defaults 250ms and 10s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives what the client does (connects, resets, protocol
	// faults). Default: discard.
	Logger *slog.Logger
	// OnState is called on every state change, on the goroutine that calls
	// the Handlers, in order with them. It must not call Close.
	OnState func(StateEvent)

	// DialTimeout bounds one connection attempt (TCP, TLS and upgrade).
	// Default 10s.
	DialTimeout time.Duration
	// ReadTimeout: a connection on which nothing (message or ping) arrived
	// for this long is considered dead and replaced. The server pings every
	// 25s by default. Default 75s.
	ReadTimeout time.Duration
	// CommandTimeout bounds the wait for the reply of one command. Default 10s.
	CommandTimeout time.Duration
	// QueueSize is the number of messages waiting for the Handlers. Default
	// 4096. See the package documentation, Slow handlers.
	QueueSize int
	// StallTimeout is how long the reader waits for room in a full queue
	// before it closes the connection to resume later. Default 10s.
	StallTimeout time.Duration
	// CommandRate and CommandBurst pace the client's commands; defaults 16/s
	// and 32, under the server's --command-rate 20 and --command-burst 50.
	CommandRate  float64
	CommandBurst int
	// MaxKeysPerSubscribe is the number of keys sent in one subscribe or
	// unsubscribe command; default 100 (--max-keys-per-subscribe).
	MaxKeysPerSubscribe int
	// MaxSubscriptions is the number of keys the Client holds at most;
	// default 1000 (--max-subscriptions). Subscribe refuses beyond it.
	MaxSubscriptions int
	// MaxMessageSize is the largest server message read; a larger one
	// breaks the connection (and the client resumes). Default 1 MiB (the
	// server's publications are at most 64 KiB by default).
	MaxMessageSize int64
	// MaxBandwidth, when not 0, asks the server to write at most that many
	// bytes of values per second to the connection (1024 to 10^9), sent as
	// the query parameter max_bandwidth of the URL (docs/PROTOCOL.md,
	// Delivery modes). Keys subscribed with ModeLatest then skip values
	// rather than fall behind; ModeStream keys wait in the server's queue,
	// whose limit (close 4008, then a resume) still applies.
	MaxBandwidth int
}

// State is the connection state of a Client.
type State int

const (
	// StateConnecting: the first connection attempt is under way.
	StateConnecting State = iota
	// StateOpen: connected; the keys are (being) subscribed again.
	StateOpen
	// StateReconnecting: the connection was lost; waiting or dialing.
	StateReconnecting
	// StateClosed: the Client ended (Close, or a terminal error).
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateOpen:
		return "open"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return "unknown"
}

// StateEvent is one state change. Code and Reason are those of the close
// that caused it, when the server sent one; Err is why the previous state
// ended (nil on a first connect or a Close).
type StateEvent struct {
	State  State
	Code   int
	Reason string
	Err    error
}

// Publication is one value of a key.
type Publication struct {
	App, Key string
	Seq      uint64
	// Epoch is the epoch of the client's position for the key (a data
	// frame carries none; docs/PROTOCOL.md, Data).
	Epoch string
	// Time is the publication's ts (source time, else the server's).
	Time time.Time
	// Data is the payload: a JSON value when JSON is true, else raw bytes.
	// It is the Handler's to keep.
	Data []byte
	JSON bool
}

// Reset says that the values of a key up to and including its Seq will not
// come: the position is now (Seq, Epoch) and the next value has Seq+1.
// Reason is "epoch" (the stream was lost and restarted) or "gap" (the
// history does not reach back). See docs/PROTOCOL.md, Reset.
type Reset struct {
	App, Key string
	Seq      uint64
	Epoch    string
	Reason   string
}

// Ack is the reply to one subscribe command of a Subscription: after
// Subscribe and after every resubscribe on a new connection.
type Ack struct {
	App string
	// Positions holds each key's position on the server at the ack.
	Positions map[string]Position
	// Resumed is true when the command resumed at least one key with since.
	Resumed bool
	// Recovered is true when Resumed and every resumed key recovered every
	// value it missed; when false, those that did not get a Reset.
	Recovered bool
}

// Handler receives what a Subscription gets, per key in stream order.
// All calls of one Client are made on one goroutine, one at a time.
type Handler interface {
	OnData(Publication)
	OnReset(Reset)
	OnAck(Ack)
}

// ErrorHandler is implemented by a Handler that wants to know when keys of
// its Subscription were dropped after Subscribe had succeeded: a
// resubscribe on a new connection got an error reply that retrying will not
// change (a *CommandError "forbidden", "limit" or "bad_request"). The keys
// are then no longer subscribed. Replies "unavailable" and "internal" are
// retried (reconnect and resume) and not reported here.
type ErrorHandler interface {
	OnError(error)
}

// HandlerFuncs is a Handler (and an ErrorHandler) made of functions; a nil
// one ignores its messages.
type HandlerFuncs struct {
	Data  func(Publication)
	Reset func(Reset)
	Ack   func(Ack)
	Error func(error)
}

// OnError calls h.Error.
func (h HandlerFuncs) OnError(err error) {
	if h.Error != nil {
		h.Error(err)
	}
}

// OnData calls h.Data.
func (h HandlerFuncs) OnData(p Publication) {
	if h.Data != nil {
		h.Data(p)
	}
}

// OnReset calls h.Reset.
func (h HandlerFuncs) OnReset(r Reset) {
	if h.Reset != nil {
		h.Reset(r)
	}
}

// OnAck calls h.Ack.
func (h HandlerFuncs) OnAck(a Ack) {
	if h.Ack != nil {
		h.Ack(a)
	}
}

// Format is how a subscription's values travel (docs/PROTOCOL.md, Binary
// frames); the Publication the Handler gets is the same.
type Format string

const (
	FormatJSON   Format = "json"
	FormatBinary Format = "binary"
)

// Mode is how many of a key's values a subscription gets
// (docs/PROTOCOL.md, Delivery modes).
type Mode string

const (
	// ModeStream (the default): every value, in order, exactly once.
	ModeStream Mode = "stream"
	// ModeLatest: the newest value of the key; values in between may be
	// skipped (by SubscribeOptions.MaxRate, or when the connection is
	// slow). Publication.Seq still numbers the key's values: a jump of k
	// means k-1 values were skipped. Positions, epochs, Resets and resumes
	// work as for ModeStream, but a resume replays no history: it brings
	// the newest value only.
	ModeLatest Mode = "latest"
)

// SubscribeOptions are the options of one Subscribe.
type SubscribeOptions struct {
	// Format defaults to FormatJSON.
	Format Format
	// Since resumes keys from positions the caller kept (e.g. from
	// Positions before a restart); keys not in it start at their latest
	// value.
	Since map[string]Position
	// Mode defaults to ModeStream.
	Mode Mode
	// MaxRate, with ModeLatest only, is the most values per second each
	// key delivers (0 < MaxRate <= 1000; fractions such as 0.5 allowed; 0:
	// no limit): a value that comes sooner waits, replaced by any newer
	// one, so the newest value arrives at most 1/MaxRate late.
	MaxRate float64
}
