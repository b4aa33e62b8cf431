package client

import "time"

// The queue between the reader and the Handlers: see the package
// documentation, Slow handlers.

type eventKind uint8

const (
	evState eventKind = iota
	evAck
	evData
	evReset
	evError
)

// event is one call of a Handler or of OnState. For messages of keys, the
// entries are those the reader saw; an entry unsubscribed since is skipped.
type event struct {
	kind  eventKind
	state StateEvent
	sub   *Subscription
	entry *keyState // evData, evReset
	pos   Position  // evData, evReset: the key's position after it
	data  Publication
	reset Reset
	ack   Ack
	acked []ackedKey // evAck: the positions the rule gave the keys
	err   error
}

type ackedKey struct {
	entry *keyState
	pos   Position
	has   bool
}

// push queues ev for the Handlers, waiting for room at most stall (0: as
// long as it takes) or until stop ends. It reports whether ev was queued.
func (c *Client) push(ev event, stall time.Duration, stop <-chan struct{}) bool {
	select {
	case c.q <- ev:
		return true
	default:
	}
	var timeout <-chan time.Time
	if stall > 0 {
		t := time.NewTimer(stall)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case c.q <- ev:
		return true
	case <-timeout:
	case <-stop:
	case <-c.ctx.Done():
	}
	return false
}

func (c *Client) pushState(ev StateEvent) {
	c.push(event{kind: evState, state: ev}, 0, nil)
}

// waitRoom waits until the Handlers brought the queue down to half.
func (c *Client) waitRoom() {
	for len(c.q) > cap(c.q)/2 {
		select {
		case <-c.room:
		case <-c.ctx.Done():
			return
		}
	}
}

// dispatch is the one goroutine that calls the Handlers and OnState, in
// queue order, until Close or the terminal StateClosed.
func (c *Client) dispatch() {
	defer close(c.dispDone)
	for {
		select {
		case <-c.ctx.Done():
			return
		case ev := <-c.q:
			if c.ctx.Err() != nil {
				return
			}
			c.deliver(ev)
			if len(c.q) <= cap(c.q)/2 {
				select {
				case c.room <- struct{}{}:
				default:
				}
			}
			if ev.kind == evState && ev.state.State == StateClosed {
				return
			}
		}
	}
}

// current reports whether e is still subscribed: not unsubscribed since
// the reader queued its message, and not of a Subscribe that failed.
func (c *Client) current(e *keyState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !e.removed && !e.sub.failed
}

// handled records what the Handler has seen, for Positions.
func (c *Client) handled(e *keyState, p Position) {
	c.mu.Lock()
	e.handled, e.hasHandled = p, true
	c.mu.Unlock()
}

func (c *Client) deliver(ev event) {
	switch ev.kind {
	case evState:
		if c.cfg.OnState != nil {
			c.cfg.OnState(ev.state)
		}
	case evData:
		if c.current(ev.entry) {
			ev.sub.h.OnData(ev.data)
			c.handled(ev.entry, ev.pos)
		}
	case evReset:
		if c.current(ev.entry) {
			ev.sub.h.OnReset(ev.reset)
			c.handled(ev.entry, ev.pos)
		}
	case evAck:
		c.mu.Lock()
		live := false
		for _, k := range ev.acked {
			live = live || !k.entry.removed
		}
		c.mu.Unlock()
		if !live {
			return
		}
		ev.sub.h.OnAck(ev.ack)
		for _, k := range ev.acked {
			if k.has {
				c.handled(k.entry, k.pos)
			}
		}
	case evError:
		if eh, ok := ev.sub.h.(ErrorHandler); ok {
			eh.OnError(ev.err)
		}
	}
}
