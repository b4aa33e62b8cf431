package proto

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Ops a client may send.
const (
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPing        = "ping"
	// OpRefresh renews the connection's token (docs/PROTOCOL.md, "Token
	// expiry and refresh").
	OpRefresh = "refresh"
)

// Ops the server sends.
const (
	OpAck   = "ack"
	OpError = "error"
	OpPong  = "pong"
	OpData  = "data"
	OpReset = "reset"
)

// Reasons of a reset (docs/PROTOCOL.md, "Reset").
const (
	// ResetEpoch: the store lost the key's stream; a new epoch began.
	ResetEpoch = "epoch"
	// ResetGap: publications were lost beyond what history retains.
	ResetGap = "gap"
)

// Format is how a subscription's publications are delivered.
type Format uint8

const (
	// FormatJSON delivers data messages as JSON text frames (the default).
	FormatJSON Format = iota
	// FormatBinary delivers data messages as binary frames (see binary.go).
	FormatBinary
	numFormats
)

// NumFormats is the number of delivery formats.
const NumFormats = int(numFormats)

func (f Format) String() string {
	if f == FormatBinary {
		return "binary"
	}
	return "json"
}

// ParseFormat maps the "format" field of a subscribe command to a Format.
// The empty string means JSON.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "", "json":
		return FormatJSON, nil
	case "binary":
		return FormatBinary, nil
	}
	return 0, fmt.Errorf("format %q: want \"json\" or \"binary\"", s)
}

// Mode is a subscription's delivery mode (docs/PROTOCOL.md, "Delivery
// modes").
type Mode uint8

const (
	// ModeStream delivers every value, in order (the default).
	ModeStream Mode = iota
	// ModeLatest delivers the newest value of a key; values in between may
	// be skipped.
	ModeLatest
)

// Names of the modes in the "mode" field.
const (
	ModeNameStream = "stream"
	ModeNameLatest = "latest"
)

func (m Mode) String() string {
	if m == ModeLatest {
		return ModeNameLatest
	}
	return ModeNameStream
}

// ParseMode maps the "mode" field of a subscribe command to a Mode. The
// empty string means stream.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", ModeNameStream:
		return ModeStream, nil
	case ModeNameLatest:
		return ModeLatest, nil
	}
	return 0, fmt.Errorf("mode %q: want \"stream\" or \"latest\"", s)
}

// MaxRateLimit is the highest max_rate (values per second per key).
const MaxRateLimit = 1000

// ValidateMaxRate checks a max_rate given with mode (docs/PROTOCOL.md,
// "Delivery modes"): 0 < rate <= MaxRateLimit, and only for latest.
func ValidateMaxRate(rate float64, mode Mode) error {
	if mode != ModeLatest {
		return errors.New("max_rate needs \"mode\":\"latest\"")
	}
	if !(rate > 0 && rate <= MaxRateLimit) { // NaN fails too
		return fmt.Errorf("max_rate %s: want 0 < max_rate <= %d", strconv.FormatFloat(rate, 'g', -1, 64), MaxRateLimit)
	}
	return nil
}

// Command is one client command. Fields that an op does not use are zero.
type Command struct {
	Op     string   `json:"op"`
	ID     uint64   `json:"id,omitempty"`
	App    string   `json:"app,omitempty"`
	Keys   []string `json:"keys,omitempty"`
	Format string   `json:"format,omitempty"`
	// Since maps keys to the position to resume after (docs/PROTOCOL.md,
	// "Resuming").
	Since map[string]Position `json:"since,omitempty"`
	// Mode is "stream" (or empty) or "latest"; MaxRate, values per second
	// per key, only with latest; 0: none (docs/PROTOCOL.md, "Delivery
	// modes").
	Mode    string  `json:"mode,omitempty"`
	MaxRate float64 `json:"max_rate,omitempty"`
	// Token is the new JWT of a refresh.
	Token string `json:"token,omitempty"`
}

// MaxTokenLen is the longest token a refresh may carry.
const MaxTokenLen = 8 << 10

// CommandError is a command that could not be decoded or is invalid. ID is
// the command's id when it could be read, so the error reply can carry it.
type CommandError struct {
	ID  uint64
	Err error
}

func (e *CommandError) Error() string { return e.Err.Error() }
func (e *CommandError) Unwrap() error { return e.Err }

// ErrEmptyCommand is returned for an empty frame.
var ErrEmptyCommand = errors.New("empty command")

// DecodeCommand parses and validates one client command. Limits that are
// configuration (keys per subscribe and the like) are the caller's to check;
// DecodeCommand checks the shape: a known op, valid names, a known format,
// since entries only for keys being subscribed. Errors are *CommandError.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if len(b) == 0 {
		return c, &CommandError{Err: ErrEmptyCommand}
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return Command{}, &CommandError{ID: peekID(b), Err: fmt.Errorf("malformed JSON: %w", err)}
	}
	if c.MaxRate == 0 && hasMaxRate(b) {
		// 0 decodes as "no max_rate"; given, it is out of range.
		return c, &CommandError{ID: c.ID, Err: fmt.Errorf("max_rate 0: want 0 < max_rate <= %d", MaxRateLimit)}
	}
	if err := c.Validate(); err != nil {
		return c, &CommandError{ID: c.ID, Err: err}
	}
	return c, nil
}

// peekID recovers the id of a command whose other fields did not decode, so
// that the error reply can still be matched to its request.
func peekID(b []byte) uint64 {
	var p struct {
		ID uint64 `json:"id"`
	}
	if json.Unmarshal(b, &p) != nil {
		return 0
	}
	return p.ID
}

// hasMaxRate reports whether b, a JSON object, has a max_rate field: one
// with the value 0 decodes as none, and must be refused. It decodes again
// only when b may name the field at all.
func hasMaxRate(b []byte) bool {
	if !containsRate(b) && !bytes.Contains(b, []byte(`\u`)) {
		return false
	}
	var p struct {
		MaxRate *float64 `json:"max_rate"`
	}
	return json.Unmarshal(b, &p) == nil && p.MaxRate != nil
}

// containsRate reports whether b holds "rate" in any case (encoding/json
// matches field names case-insensitively).
func containsRate(b []byte) bool {
	for i := 0; i+4 <= len(b); i++ {
		if b[i]|0x20 == 'r' && b[i+1]|0x20 == 'a' && b[i+2]|0x20 == 't' && b[i+3]|0x20 == 'e' {
			return true
		}
	}
	return false
}

// Validate checks the command's shape (see DecodeCommand).
func (c *Command) Validate() error {
	if c.Token != "" && c.Op != OpRefresh {
		return fmt.Errorf("%s takes no token", c.Op)
	}
	switch c.Op {
	case OpPing:
		return nil
	case OpRefresh:
		return c.validateRefresh()
	case OpSubscribe, OpUnsubscribe:
	case "":
		return errors.New("missing op")
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	if err := ValidateName(c.App); err != nil {
		return fmt.Errorf("app %q: %w", c.App, err)
	}
	if len(c.Keys) == 0 {
		return errors.New("no keys")
	}
	for _, k := range c.Keys {
		if err := ValidateName(k); err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
	}
	if c.Op == OpUnsubscribe {
		if c.Format != "" || c.Since != nil {
			return errors.New("unsubscribe takes no format or since")
		}
		if c.Mode != "" || c.MaxRate != 0 {
			return errors.New("unsubscribe takes no mode or max_rate")
		}
		return nil
	}
	if _, err := ParseFormat(c.Format); err != nil {
		return err
	}
	mode, err := ParseMode(c.Mode)
	if err != nil {
		return err
	}
	if c.MaxRate != 0 {
		if err := ValidateMaxRate(c.MaxRate, mode); err != nil {
			return err
		}
	}
	for k, p := range c.Since {
		if !contains(c.Keys, k) {
			return fmt.Errorf("since %q: not among the keys being subscribed", k)
		}
		if p.Epoch != "" {
			if err := ValidateEpoch(p.Epoch); err != nil {
				return fmt.Errorf("since %q: %w", k, err)
			}
		}
	}
	return nil
}

// validateRefresh checks a refresh: a token of the JWT alphabet (three
// base64url segments separated by dots) and no other field. Whether the
// token is valid is the server's to decide.
func (c *Command) validateRefresh() error {
	if c.App != "" || c.Keys != nil || c.Format != "" || c.Since != nil || c.Mode != "" || c.MaxRate != 0 {
		return errors.New("refresh takes only a token")
	}
	if c.Token == "" {
		return errors.New("refresh without a token")
	}
	if len(c.Token) > MaxTokenLen {
		return fmt.Errorf("token of %d bytes: the limit is %d", len(c.Token), MaxTokenLen)
	}
	dots := 0
	for i := 0; i < len(c.Token); i++ {
		switch b := c.Token[i]; {
		case b == '.':
			dots++
		case b >= 'A' && b <= 'Z', b >= 'a' && b <= 'z', b >= '0' && b <= '9', b == '-', b == '_':
		default:
			return fmt.Errorf("token: invalid character %q at %d", b, i)
		}
	}
	if dots != 2 {
		return errors.New("token: not a JWT (want three dot-separated parts)")
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// EncodeCommand encodes c as JSON, for clients (wsbench, tests, tools).
func EncodeCommand(c *Command) ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", c.Op, err)
	}
	return b, nil
}
