package client

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/wspush/wspush/proto"
)

// keyState is one subscribed key: its Handler and the client rule's state
// (docs/PROTOCOL.md, The client rule). Guarded by Client.mu; the rule's
// fields are written by the reader of the current connection only.
type keyState struct {
	sub *Subscription
	key string

	pos    Position // the position the reader reached (queued messages included)
	hasPos bool     // false before the first ack, and for a server that sends no positions until the first data
	fresh  bool     // subscribed without since and nothing came since the ack

	gen     uint64 // the connection whose ack subscribed the key; 0 for none
	sentGen uint64 // the connection a subscribe of the key was last sent on
	acked   bool   // the first ack came (Subscribe waits for it)
	removed bool   // unsubscribed: its queued messages are dropped

	handled    Position // what the Handler has seen, for Positions
	hasHandled bool
}

// Subscription is the keys of one Subscribe, with their Handler.
type Subscription struct {
	c       *Client
	app     string
	format  Format
	mode    Mode    // ModeStream or ModeLatest; every (re)subscribe carries it
	maxRate float64 // ModeLatest only; 0 for none
	h       Handler

	// Guarded by c.mu.
	entries []*keyState
	waiting int           // keys whose first ack has not come
	ready   chan struct{} // closed when waiting is 0 or err is set
	isReady bool
	err     error // the error reply that failed Subscribe
	failed  bool
}

// App returns the subscription's app.
func (s *Subscription) App() string { return s.app }

// Keys returns the keys still subscribed.
func (s *Subscription) Keys() []string {
	s.c.mu.Lock()
	defer s.c.mu.Unlock()
	var keys []string
	for _, e := range s.entries {
		if !e.removed {
			keys = append(keys, e.key)
		}
	}
	return keys
}

// Unsubscribe unsubscribes the subscription's keys; see Client.Unsubscribe.
func (s *Subscription) Unsubscribe(ctx context.Context) error {
	return s.c.unsubscribe(ctx, s.app, s.Keys(), s)
}

// readyLocked closes s.ready once.
func (s *Subscription) readyLocked() {
	if !s.isReady {
		s.isReady = true
		close(s.ready)
	}
}

// Subscribe subscribes keys of app and returns after the server acked them
// all (in commands of at most MaxKeysPerSubscribe keys, paced), or the first
// error: a *CommandError for an error reply (nothing of this call stays
// subscribed), ctx's error, ErrClosed. A key may be held by one Subscription
// at a time. h is called for every message of these keys, from now on and
// across reconnects, until Unsubscribe or Close; its OnAck for this
// Subscribe runs on the Handlers' goroutine, before or after Subscribe
// returns. While the Client is not connected, Subscribe waits for the
// connection (bounded by ctx).
func (c *Client) Subscribe(ctx context.Context, app string, keys []string, opts SubscribeOptions, h Handler) (*Subscription, error) {
	if h == nil {
		return nil, errors.New("wspush subscribe: nil Handler")
	}
	if err := proto.ValidateName(app); err != nil {
		return nil, fmt.Errorf("wspush subscribe: app %q: %w", app, err)
	}
	keys = dedupe(keys)
	if len(keys) == 0 {
		return nil, errors.New("wspush subscribe: no keys")
	}
	for _, k := range keys {
		if err := proto.ValidateName(k); err != nil {
			return nil, fmt.Errorf("wspush subscribe: key %q: %w", k, err)
		}
	}
	switch opts.Format {
	case "":
		opts.Format = FormatJSON
	case FormatJSON, FormatBinary:
	default:
		return nil, fmt.Errorf("wspush subscribe: format %q: want %q or %q", opts.Format, FormatJSON, FormatBinary)
	}
	switch opts.Mode {
	case "":
		opts.Mode = ModeStream
	case ModeStream, ModeLatest:
	default:
		return nil, fmt.Errorf("wspush subscribe: mode %q: want %q or %q", opts.Mode, ModeStream, ModeLatest)
	}
	if opts.MaxRate != 0 {
		// docs/PROTOCOL.md, Delivery modes: max_rate.
		if opts.Mode != ModeLatest {
			return nil, fmt.Errorf("wspush subscribe: MaxRate needs Mode %q", ModeLatest)
		}
		if !(opts.MaxRate > 0 && opts.MaxRate <= rateMax) { // NaN fails too
			return nil, fmt.Errorf("wspush subscribe: MaxRate %v: want 0 < MaxRate <= %d", opts.MaxRate, rateMax)
		}
	}
	for k, p := range opts.Since {
		if !slices.Contains(keys, k) {
			return nil, fmt.Errorf("wspush subscribe: since %q: not among the keys", k)
		}
		if p.Epoch != "" {
			if err := proto.ValidateEpoch(p.Epoch); err != nil {
				return nil, fmt.Errorf("wspush subscribe: since %q: %w", k, err)
			}
		}
	}

	sub := &Subscription{c: c, app: app, format: opts.Format, mode: opts.Mode, maxRate: opts.MaxRate,
		h: h, waiting: len(keys), ready: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, ended(err)
	}
	for _, k := range keys {
		if _, ok := c.keys[appKey{app, k}]; ok {
			c.mu.Unlock()
			return nil, fmt.Errorf("wspush subscribe: %s/%s is subscribed already (Unsubscribe it first)", app, k)
		}
	}
	if n := len(c.keys) + len(keys); n > c.cfg.MaxSubscriptions {
		c.mu.Unlock()
		return nil, &CommandError{Op: "subscribe", Code: proto.CodeLimit,
			Message: fmt.Sprintf("%d subscriptions: the limit is %d (Config.MaxSubscriptions)", n, c.cfg.MaxSubscriptions)}
	}
	for _, k := range keys {
		e := &keyState{sub: sub, key: k}
		if p, ok := opts.Since[k]; ok {
			e.pos, e.hasPos = p, true
		}
		sub.entries = append(sub.entries, e)
		c.keys[appKey{app, k}] = e
	}
	c.mu.Unlock()

	select {
	case c.kick <- struct{}{}:
	default:
	}
	select {
	case <-sub.ready:
	case <-ctx.Done():
		c.drop(sub)
		return nil, fmt.Errorf("wspush subscribe %s: %w", app, ctx.Err())
	case <-c.done:
		return nil, ended(c.Err())
	}
	c.mu.Lock()
	err := sub.err
	c.mu.Unlock()
	if err != nil {
		c.drop(sub)
		return nil, err
	}
	return sub, nil
}

// drop unsubscribes what a failed Subscribe subscribed.
func (c *Client) drop(sub *Subscription) {
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.CommandTimeout)
	defer cancel()
	var keys []string
	for _, e := range sub.entries {
		keys = append(keys, e.key)
	}
	if err := c.unsubscribe(ctx, sub.app, keys, sub); err != nil {
		c.log.Warn("unsubscribe after a failed subscribe", "app", sub.app, "error", err)
	}
}

func ended(err error) error {
	if errors.Is(err, ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("wspush client ended: %w", err)
}

func dedupe(keys []string) []string {
	out := make([]string, 0, len(keys))
	seen := make(map[string]bool, len(keys))
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

// Unsubscribe stops keys of app: their Handler is not called for them
// once Unsubscribe has started (a call under way finishes). It returns
// after the server acked (in commands of at most MaxKeysPerSubscribe keys,
// paced), or at once when not connected: the server forgot the
// subscriptions with the connection. Keys not subscribed are ignored.
func (c *Client) Unsubscribe(ctx context.Context, app string, keys []string) error {
	return c.unsubscribe(ctx, app, keys, nil)
}

// unsubscribe removes keys of app (of only, when not nil) and sends the
// unsubscribes of those subscribed on the current connection.
func (c *Client) unsubscribe(ctx context.Context, app string, keys []string, only *Subscription) error {
	c.mu.Lock()
	cn := c.conn
	var send []string
	for _, k := range dedupe(keys) {
		ak := appKey{app, k}
		e := c.keys[ak]
		if e == nil || only != nil && e.sub != only {
			continue
		}
		e.removed = true
		delete(c.keys, ak)
		if !e.acked {
			e.acked = true
			if e.sub.waiting--; e.sub.waiting == 0 {
				e.sub.readyLocked()
			}
		}
		if cn != nil && e.sentGen == cn.gen {
			send = append(send, k)
		}
	}
	c.mu.Unlock()
	if cn == nil || len(send) == 0 {
		return nil
	}
	var pcs []*pendingCmd
	for chunk := range slices.Chunk(send, c.cfg.MaxKeysPerSubscribe) {
		pc, err := cn.issue(func(id uint64) (*proto.Command, *pendingCmd) {
			return &proto.Command{Op: proto.OpUnsubscribe, ID: id, App: app, Keys: chunk}, &pendingCmd{}
		})
		if err != nil {
			return nil // the connection ended, and the server's subscriptions with it
		}
		pcs = append(pcs, pc)
	}
	for _, pc := range pcs {
		m, ok, err := cn.wait(ctx, pc)
		if err != nil {
			return fmt.Errorf("wspush unsubscribe %s: %w", app, err)
		}
		if !ok {
			return nil
		}
		if m.Op == proto.OpError {
			return &CommandError{Op: proto.OpUnsubscribe, Code: m.Code, Message: m.Message}
		}
	}
	return nil
}

// sendPending subscribes on cn every key not subscribed on it yet, per
// Subscription in commands of at most MaxKeysPerSubscribe keys, with since
// per rule 4 of docs/PROTOCOL.md, The client rule, and the Subscription's
// mode and max_rate (so a resume keeps them). It does not wait for the
// acks: the reader handles them (subscribed).
func (c *Client) sendPending(cn *conn) error {
	c.mu.Lock()
	bySub := make(map[*Subscription][]*keyState)
	var subs []*Subscription
	for _, e := range c.keys {
		if e.sentGen == cn.gen || e.sub.failed {
			continue
		}
		if bySub[e.sub] == nil {
			subs = append(subs, e.sub)
		}
		bySub[e.sub] = append(bySub[e.sub], e)
	}
	c.mu.Unlock()
	for _, sub := range subs {
		entries := bySub[sub]
		slices.SortFunc(entries, func(a, b *keyState) int { return cmp.Compare(a.key, b.key) })
		for chunk := range slices.Chunk(entries, c.cfg.MaxKeysPerSubscribe) {
			_, err := cn.issue(func(id uint64) (*proto.Command, *pendingCmd) {
				c.mu.Lock()
				defer c.mu.Unlock()
				cmd := &proto.Command{Op: proto.OpSubscribe, ID: id, App: sub.app}
				if sub.format == FormatBinary {
					cmd.Format = string(FormatBinary)
				}
				if sub.mode == ModeLatest {
					// A stream subscribe carries no mode: byte for byte the
					// command of a client that knows no modes.
					cmd.Mode, cmd.MaxRate = string(ModeLatest), sub.maxRate
				}
				pc := &pendingCmd{sub: sub}
				for _, e := range chunk {
					if e.removed || e.sentGen == cn.gen || sub.failed {
						continue
					}
					e.sentGen = cn.gen
					cmd.Keys = append(cmd.Keys, e.key)
					if e.hasPos && !e.fresh {
						if cmd.Since == nil {
							cmd.Since = make(map[string]Position)
						}
						cmd.Since[e.key] = e.pos
					}
				}
				if len(cmd.Keys) == 0 {
					return nil, nil
				}
				pc.keys, pc.since = cmd.Keys, cmd.Since
				return cmd, pc
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// subscribed handles the reply to a subscribe, on the reader: rule 1 of
// docs/PROTOCOL.md, The client rule, for an ack. An error is returned when
// the connection must end.
func (c *Client) subscribed(cn *conn, pc *pendingCmd, m *proto.ServerMessage) error {
	sub := pc.sub
	if m.Op == proto.OpError {
		return c.subscribeFailed(cn, pc, &CommandError{Op: proto.OpSubscribe, Code: m.Code, Message: m.Message})
	}
	if m.Op != proto.OpAck {
		cn.log.Warn("unexpected reply to subscribe", "op", m.Op, "id", m.ID)
		return nil
	}
	type update struct {
		e      *keyState
		pos    Position
		hasPos bool
		fresh  bool
	}
	var ups []update
	c.mu.Lock()
	for _, k := range pc.keys {
		e := c.keys[appKey{sub.app, k}]
		if e == nil || e.sub != sub {
			continue // unsubscribed meanwhile
		}
		p, inAck := m.Positions[k]
		u := update{e: e}
		if since, ok := pc.since[k]; ok {
			u.pos, u.hasPos = since, true
			if inAck {
				u.pos.Epoch = p.Epoch // adopt the server's epoch
			}
		} else {
			// Without positions (an older server) the client tracks seq
			// alone from the first data.
			u.pos, u.hasPos, u.fresh = p, inAck, true
		}
		ups = append(ups, u)
	}
	c.mu.Unlock()

	ev := event{kind: evAck, sub: sub, ack: Ack{
		App:       sub.app,
		Positions: m.Positions,
		Resumed:   len(pc.since) > 0,
		Recovered: len(pc.since) > 0 && m.Recovered != nil && *m.Recovered,
	}}
	for _, u := range ups {
		ev.acked = append(ev.acked, ackedKey{entry: u.e, pos: u.pos, has: u.hasPos})
	}
	if len(ups) > 0 && !c.push(ev, c.cfg.StallTimeout, cn.ctx.Done()) {
		return errStall
	}
	if ev.ack.Resumed && !ev.ack.Recovered {
		cn.log.Info("resume not recovered: resets follow", "app", sub.app, "keys", len(pc.keys))
	}
	c.mu.Lock()
	for _, u := range ups {
		e := u.e
		if e.removed {
			continue
		}
		e.pos, e.hasPos, e.fresh = u.pos, u.hasPos, u.fresh
		e.gen = cn.gen
		if !e.acked {
			e.acked = true
			if sub.waiting--; sub.waiting == 0 {
				sub.readyLocked()
			}
		}
	}
	c.mu.Unlock()
	cn.mu.Lock()
	cn.acked = true
	cn.mu.Unlock()
	return nil
}

// subscribeFailed handles an error reply to a subscribe (docs/PROTOCOL.md,
// Error codes: its keys are not subscribed).
func (c *Client) subscribeFailed(cn *conn, pc *pendingCmd, cerr *CommandError) error {
	sub := pc.sub
	c.mu.Lock()
	if !sub.isReady {
		// Subscribe is waiting: it fails, and unsubscribes the rest.
		sub.err, sub.failed = cerr, true
		sub.readyLocked()
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	if cerr.Code == proto.CodeUnavailable || cerr.Code == proto.CodeInternal {
		// "Send it again later": reconnect after a backoff and resume.
		return fmt.Errorf("%w: %w", errRetryReply, cerr)
	}
	c.mu.Lock()
	for _, k := range pc.keys {
		ak := appKey{sub.app, k}
		if e := c.keys[ak]; e != nil && e.sub == sub {
			e.removed = true
			delete(c.keys, ak)
		}
	}
	c.mu.Unlock()
	cn.log.Error("resubscribe refused: keys dropped", "app", sub.app, "keys", pc.keys, "error", cerr)
	if !c.push(event{kind: evError, sub: sub, err: fmt.Errorf("keys %v dropped: %w", pc.keys, cerr)}, c.cfg.StallTimeout, cn.ctx.Done()) {
		return errStall
	}
	return nil
}

// entry returns the key's state when its messages on cn are to be handled.
func (cn *conn) entry(app, key string) (e *keyState, pos Position, hasPos, fresh bool) {
	c := cn.c
	c.mu.Lock()
	defer c.mu.Unlock()
	e = c.keys[appKey{app, key}]
	if e == nil || e.gen != cn.gen {
		return nil, Position{}, false, false // unsubscribed (or a server fault: data before the ack)
	}
	return e, e.pos, e.hasPos, e.fresh
}

// data handles one publication: rule 3 of docs/PROTOCOL.md, The client
// rule.
func (cn *conn) data(p *proto.Publication) error {
	c := cn.c
	e, pos, hasPos, fresh := cn.entry(p.App, p.Key)
	if e == nil {
		return nil
	}
	n := p.Seq
	switch {
	case !hasPos: // a server without positions: seq alone
	case n == pos.Seq+1:
	case fresh && n == pos.Seq: // the latest value the ack announced
	case e.sub.mode == ModeLatest:
		// docs/PROTOCOL.md, Delivery modes: a latest key's seq may jump
		// (the values between were skipped on purpose); an older or the
		// same seq is ignored, and neither is a server fault.
		if n <= pos.Seq {
			return nil
		}
	default:
		c.mu.Lock()
		e.fresh = false
		c.mu.Unlock()
		if n <= pos.Seq {
			cn.log.Warn("server fault: a seq already processed, dropped", "app", p.App, "key", p.Key, "seq", n, "position", pos.Seq)
			return nil
		}
		// A gap: the server is at fault. Resume from the position, which
		// asks for the missing values again.
		cn.log.Warn("server fault: a seq was skipped; resuming", "app", p.App, "key", p.Key, "seq", n, "position", pos.Seq)
		return fmt.Errorf("%w: %s/%s seq %d after %d", errSeqGap, p.App, p.Key, n, pos.Seq)
	}
	np := Position{Seq: n, Epoch: pos.Epoch}
	ev := event{kind: evData, sub: e.sub, entry: e, pos: np, data: Publication{
		App: p.App, Key: p.Key, Seq: n, Epoch: pos.Epoch,
		Time: time.UnixMilli(p.TS), Data: p.Data, JSON: p.JSON,
	}}
	if !c.push(ev, c.cfg.StallTimeout, cn.ctx.Done()) {
		return errStall
	}
	c.mu.Lock()
	e.pos, e.hasPos, e.fresh = np, true, false
	c.mu.Unlock()
	return nil
}

// reset handles a reset: rule 2 of docs/PROTOCOL.md, The client rule.
func (cn *conn) reset(m *proto.ServerMessage) error {
	c := cn.c
	e, _, _, _ := cn.entry(m.App, m.Key)
	if e == nil {
		return nil
	}
	np := Position{Seq: m.Seq, Epoch: m.Epoch}
	cn.log.Info("reset", "app", m.App, "key", m.Key, "seq", m.Seq, "epoch", m.Epoch, "reason", m.Reason)
	ev := event{kind: evReset, sub: e.sub, entry: e, pos: np, reset: Reset{
		App: m.App, Key: m.Key, Seq: m.Seq, Epoch: m.Epoch, Reason: m.Reason,
	}}
	if !c.push(ev, c.cfg.StallTimeout, cn.ctx.Done()) {
		return errStall
	}
	c.mu.Lock()
	e.pos, e.hasPos, e.fresh = np, true, false
	c.mu.Unlock()
	return nil
}
