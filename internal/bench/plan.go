package bench

import (
	"errors"
	"fmt"
	"math"
	"net"
	"time"

	"github.com/wspush/wspush/proto"
)

// Source is where the values of a run come from.
type Source string

// Sources.
const (
	// SourceNone: no values (capacity); any data received is foreign.
	SourceNone Source = ""
	// SourceHTTP: wsbench publishes over POST /api/publish; every payload
	// is {"t":<send time, Unix ns>}.
	SourceHTTP Source = "http"
	// SourceAMQP: wsbench publishes the same payloads to the RabbitMQ
	// exchange wspush.ingest that the servers share, which implies cluster
	// semantics (see Options.Cluster).
	SourceAMQP Source = "amqp"
	// SourcePoller: the server's poller publishes what it polls from the
	// data center; latency is measured from the value's ts (Unix ms, the
	// start of the simulator's step).
	SourcePoller Source = "poller"
)

// ParseSource maps a --source value to a Source.
func ParseSource(s string) (Source, error) {
	switch Source(s) {
	case SourceHTTP, SourceAMQP, SourcePoller:
		return Source(s), nil
	}
	return "", fmt.Errorf("source %q: want http, amqp or poller", s)
}

// FromWsbench tells whether wsbench publishes the values itself
// (SourceHTTP, SourceAMQP): their payload carries the send time and the
// expected counts come from the publisher.
func (s Source) FromWsbench() bool { return s == SourceHTTP || s == SourceAMQP }

// Plan is what every worker must know the same way about a step: which
// connection goes to which server and source address and subscribes to
// which keys. Connections are numbered 0..Conns-1 across all workers.
type Plan struct {
	App         string   `json:"app"`
	KeyPrefix   string   `json:"key_prefix"`
	Conns       int      `json:"conns"`
	KeysPerConn int      `json:"keys_per_conn"`
	KeySpace    int      `json:"key_space"` // distinct keys; connection c's j-th key is (c*KeysPerConn+j) mod KeySpace
	URLs        []string `json:"urls"`      // WebSocket URLs, connection c goes to URLs[c mod len]
	SourceIPs   int      `json:"source_ips"`
	Format      string   `json:"format"` // "binary" or "json"
	Source      Source   `json:"source"`
	// Mode is the subscriptions' delivery mode, "" (stream) or "latest",
	// and MaxRate a latest subscription's max_rate (0: none); see
	// docs/PROTOCOL.md, "Delivery modes".
	Mode    string  `json:"mode,omitempty"`
	MaxRate float64 `json:"max_rate,omitempty"`
}

// latest tells whether the subscriptions are of mode latest.
func (p *Plan) latest() bool { return p.Mode == proto.ModeNameLatest }

// rateLimit is the most values a latest subscription may get within one
// second of the window: a server that spaces them 1/max_rate apart puts
// at most ceil(max_rate) in a second, and one more is allowed for the
// jitter of the receiver. 0: no limit.
func (p *Plan) rateLimit() uint32 {
	if !p.latest() || p.MaxRate <= 0 {
		return 0
	}
	return uint32(math.Ceil(p.MaxRate)) + 1
}

// Validate checks the plan's shape.
func (p *Plan) Validate() error {
	var errs []error
	if err := proto.ValidateName(p.App); err != nil {
		errs = append(errs, fmt.Errorf("app %q: %w", p.App, err))
	}
	if err := proto.ValidateName(keyName(p.KeyPrefix, max(p.KeySpace-1, 0))); err != nil {
		errs = append(errs, fmt.Errorf("key prefix %q: %w", p.KeyPrefix, err))
	}
	if p.Conns <= 0 {
		errs = append(errs, errors.New("connections must be positive"))
	}
	if p.KeysPerConn <= 0 {
		errs = append(errs, errors.New("keys per connection must be positive"))
	}
	if p.KeySpace < p.KeysPerConn {
		errs = append(errs, fmt.Errorf("%d distinct keys cannot give each connection %d different keys", p.KeySpace, p.KeysPerConn))
	}
	if len(p.URLs) == 0 {
		errs = append(errs, errors.New("no server URL"))
	}
	if p.SourceIPs < 1 || p.SourceIPs > 254 {
		errs = append(errs, fmt.Errorf("source IPs %d: want 1 to 254", p.SourceIPs))
	}
	if _, err := proto.ParseFormat(p.Format); err != nil {
		errs = append(errs, err)
	}
	if mode, err := proto.ParseMode(p.Mode); err != nil {
		errs = append(errs, err)
	} else if p.MaxRate != 0 {
		if err := proto.ValidateMaxRate(p.MaxRate, mode); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keyOf is the index of connection c's j-th key.
func (p *Plan) keyOf(c, j int) int { return (c*p.KeysPerConn + j) % p.KeySpace }

// node is the index of the server connection c goes to.
func (p *Plan) node(c int) int { return c % len(p.URLs) }

// sourceIP is the local address connection c dials from, nil to let the
// kernel choose: with SourceIPs > 1, connections take 127.0.0.1 to
// 127.0.0.N in turn (all of 127.0.0.0/8 is loopback on Linux), so that
// every address has its own range of ephemeral ports.
func (p *Plan) sourceIP(c int) net.IP {
	if p.SourceIPs <= 1 {
		return nil
	}
	return net.IPv4(127, 0, 0, byte(1+(c/len(p.URLs))%p.SourceIPs))
}

// subscribers counts the planned subscriptions of every (node, key).
func (p *Plan) subscribers() [][]uint32 {
	subs := make([][]uint32, len(p.URLs))
	for n := range subs {
		subs[n] = make([]uint32, p.KeySpace)
	}
	for c := range p.Conns {
		n := p.node(c)
		for j := range p.KeysPerConn {
			subs[n][p.keyOf(c, j)]++
		}
	}
	return subs
}

// WorkerConfig is a worker's share of a step: connections First to
// First+Count-1 of Plan.
type WorkerConfig struct {
	ID    int  `json:"id"`
	Plan  Plan `json:"plan"`
	First int  `json:"first"`
	Count int  `json:"count"`
	// RampRate is how many connections per second this worker opens.
	RampRate float64 `json:"ramp_rate"`
	// MaxDialing bounds the handshakes in flight.
	MaxDialing int `json:"max_dialing"`
	// HandshakeTimeout bounds dialing, the upgrade and the subscribe acks
	// of one connection.
	HandshakeTimeout time.Duration `json:"handshake_timeout"`
	// Drain is how long, after finish, the worker waits for the values
	// still due (Source.FromWsbench).
	Drain time.Duration `json:"drain"`
	// ProgressEvery is the period of progress messages.
	ProgressEvery time.Duration `json:"progress_every"`
	// SilentExpect is how many values a subscription that received none
	// should have had (SourcePoller, whose expected counts come from the
	// seqs received).
	SilentExpect uint64 `json:"silent_expect"`
	// Deadline stops the worker whatever the coordinator does.
	Deadline time.Time `json:"deadline"`
}

// Validate checks the config.
func (c *WorkerConfig) Validate() error {
	if err := c.Plan.Validate(); err != nil {
		return err
	}
	switch {
	case c.First < 0 || c.Count <= 0 || c.First+c.Count > c.Plan.Conns:
		return fmt.Errorf("connections %d..%d: outside 0..%d", c.First, c.First+c.Count-1, c.Plan.Conns-1)
	case c.RampRate <= 0:
		return errors.New("ramp rate must be positive")
	case c.MaxDialing <= 0:
		return errors.New("max dialing must be positive")
	case c.HandshakeTimeout <= 0:
		return errors.New("handshake timeout must be positive")
	case c.ProgressEvery <= 0:
		return errors.New("progress period must be positive")
	}
	return nil
}
