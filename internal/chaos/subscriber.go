package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// Subscriber is one WebSocket client subscribed to every key of an app.
// It follows each key's position by the client rule of docs/PROTOCOL.md
// ("Positions") and, when its connection drops, reconnects (to its node,
// or the next live one) and resumes with since = its positions.
type Subscriber struct {
	Name    string
	app     string
	keys    []string
	cluster *Cluster

	mu      sync.Mutex
	node    int // index of the node it uses now
	streams map[string]*Stream
	acked   bool                // the current connection's subscribe was acked
	since   map[string]Position // what the pending subscribe carried
	subID   uint64
	events  []string // connection history, for failure reports
	errs    []string // protocol errors not tied to a key
}

// NewSubscriber returns a subscriber of app's keys that starts on node.
func NewSubscriber(c *Cluster, name string, node int, app string, keys []string) *Subscriber {
	s := &Subscriber{Name: name, app: app, keys: keys, cluster: c, node: node, streams: map[string]*Stream{}}
	for _, k := range keys {
		s.streams[k] = NewStream()
	}
	return s
}

// Run keeps the subscriber connected until ctx ends.
func (s *Subscriber) Run(ctx context.Context) {
	for ctx.Err() == nil {
		s.mu.Lock()
		i, err := s.cluster.Live(s.node)
		s.node = i
		s.mu.Unlock()
		if err == nil {
			err = s.session(ctx, s.cluster.Nodes[i])
		}
		if ctx.Err() != nil {
			return
		}
		s.event("disconnected: %v", err)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // reconnect backoff
		}
	}
}

func (s *Subscriber) event(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) < 40 {
		s.events = append(s.events, time.Now().Format("15:04:05.000 ")+fmt.Sprintf(format, args...))
	}
}

// session is one connection: subscribe (with since when it has
// positions), then read until it fails.
func (s *Subscriber) session(ctx context.Context, n *Node) error {
	d := websocket.Dialer{HandshakeTimeout: 3 * time.Second}
	conn, _, err := d.DialContext(ctx, "ws://"+n.Addr+"/ws", nil)
	if err != nil {
		return fmt.Errorf("dial %s: %w", n.ID, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	cmd := s.subscribe()
	s.event("connected to %s, subscribe since %v", n.ID, cmd.Since)
	b, _ := json.Marshal(cmd)
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return fmt.Errorf("subscribe on %s: %w", n.ID, err)
	}
	for {
		typ, b, err := conn.ReadMessage()
		if err != nil {
			return fmt.Errorf("read from %s: %w", n.ID, err)
		}
		if typ != websocket.TextMessage {
			s.fail("binary frame from %s, asked for JSON", n.ID)
			continue
		}
		s.handle(n, b, time.Now())
	}
}

// subscribe builds the subscribe command of a new connection.
func (s *Subscriber) subscribe() subscribeCmd {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subID++
	s.acked = false
	s.since = map[string]Position{}
	for k, st := range s.streams {
		if p, ok := st.Position(); ok {
			s.since[k] = p
		}
	}
	cmd := subscribeCmd{Op: "subscribe", ID: s.subID, App: s.app, Keys: s.keys, Format: "json"}
	if len(s.since) > 0 {
		cmd.Since = s.since
	}
	return cmd
}

func (s *Subscriber) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.errs) < maxViolations {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
}

func (s *Subscriber) handle(n *Node, b []byte, at time.Time) {
	var m serverMsg
	if err := json.Unmarshal(b, &m); err != nil {
		s.fail("bad JSON from %s: %v: %.200s", n.ID, err, b)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[m.Key]
	switch {
	case m.Op == "ack" && m.ID == s.subID:
		s.acked = true
		for _, k := range s.keys {
			p, ok := m.Positions[k]
			if !ok {
				s.errs = append(s.errs, fmt.Sprintf("ack from %s without a position for %q: %.300s", n.ID, k, b))
				continue
			}
			_, had := s.since[k]
			s.streams[k].Ack(p, had)
		}
	case m.Op == "reset" && st != nil && m.App == s.app:
		st.Reset(Position{Seq: m.Seq, Epoch: m.Epoch}, m.Reason, at)
	case m.Op == "data" && st != nil && m.App == s.app:
		var p payload
		if err := json.Unmarshal(m.Data, &p); err != nil || p.C <= 0 {
			s.errs = append(s.errs, fmt.Sprintf("data from %s without a counter: %.200s", n.ID, b))
			return
		}
		if !s.acked {
			st.violate("data seq %d (counter %d) from %s before the ack of the subscribe", m.Seq, p.C, n.ID)
		}
		st.Data(m.Seq, p.C, at)
	case m.Op == "error":
		s.errs = append(s.errs, fmt.Sprintf("error from %s: %.300s", n.ID, b))
	}
}

// Ready reports whether the current connection's subscribe was acked.
func (s *Subscriber) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// Has reports whether key's stream delivered counter.
func (s *Subscriber) Has(key string, counter int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[key].Has(counter)
}

// Mark starts key's recovery clock at counter from.
func (s *Subscriber) Mark(key string, from int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[key].Mark(from)
}

// Check judges key's stream; the subscriber's own protocol errors go with
// its first key.
func (s *Subscriber) Check(key string, confirmed []int64, p Policy) Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.streams[key].Check(confirmed, p)
	if key == s.keys[0] {
		r.Violations = append(r.Violations, s.errs...)
	}
	return r
}

// Events returns the subscriber's connection history.
func (s *Subscriber) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}
