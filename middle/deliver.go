package middle

import (
	"context"
	"time"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/proto"
)

// enqueueDelivery hands p to the worker that owns its key; it blocks while
// that worker's queue is full (back-pressure on the Bus).
func (n *Node) enqueueDelivery(ctx context.Context, p *proto.Publication) {
	q := n.queues[n.hub.hash(p.App, p.Key)%uint64(len(n.queues))]
	select {
	case q <- *p:
	case <-ctx.Done():
	}
}

func (n *Node) deliveryWorker(ctx context.Context, q chan proto.Publication) {
	for {
		select {
		case <-ctx.Done():
			return
		case p := <-q:
			n.deliver(&p)
		}
	}
}

// deliver fans a sequenced publication out to this node's subscribers.
func (n *Node) deliver(p *proto.Publication) {
	ch := n.hub.get(p.App, p.Key)
	if ch == nil {
		return
	}
	ch.mu.Lock()
	n.deliverLocked(ch, p)
	ch.mu.Unlock()
}

// deliverLocked delivers p if it is the next seq of ch's epoch and drops it
// if it is an earlier one. Anything else (a gap, another epoch) parks it
// and starts a catch-up from the store; so does a channel whose store read
// is under way.
func (n *Node) deliverLocked(ch *channel, p *proto.Publication) {
	switch {
	case ch.dead:
		return
	case !ch.initialized || ch.syncing:
		ch.parkLocked(p)
		return
	case len(ch.parked) == 0 && p.Epoch == ch.pos.Epoch:
		if p.Seq <= ch.pos.Seq {
			n.metrics.duplicates.Inc()
			return
		}
		if p.Seq == ch.pos.Seq+1 {
			n.emitLocked(ch, p)
			return
		}
	}
	ch.parkLocked(p)
	n.startCatchUpLocked(ch)
}

// startCatchUpLocked marks ch as syncing and reads the store in the
// background until ch is in step with it again.
func (n *Node) startCatchUpLocked(ch *channel) {
	ch.syncing = true
	if ch.catchingUp {
		return // the running one reads again before it stops
	}
	ch.catchingUp = true
	n.catchUps.Add(1)
	go func() {
		defer n.catchUps.Done()
		n.catchUp(ch)
	}()
}

// catchUp brings ch in step with the store, retrying with backoff while
// the store fails; the publications that arrive meanwhile stay parked, so
// nothing is declared lost while it may merely be unreachable.
func (n *Node) catchUp(ch *channel) {
	bo := retry.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	for !n.syncOnce(ch) {
		if !retry.Sleep(n.ctx, bo.Next()) {
			return
		}
	}
}

// syncOnce reads the store once and applies it to ch with what was parked.
// It reports whether ch is in step (or gone), and then ends ch's catch-up
// in the same critical section; otherwise ch stays syncing and the caller
// tries again.
func (n *Node) syncOnce(ch *channel) (done bool) {
	select {
	case n.catchUpSlots <- struct{}{}:
		defer func() { <-n.catchUpSlots }()
	case <-n.ctx.Done():
		return true
	}
	ch.io.Lock()
	defer ch.io.Unlock()
	ch.mu.Lock()
	if ch.dead || !ch.initialized {
		ch.syncing, ch.parked, ch.lostParked, ch.catchingUp = false, nil, false, false
		ch.mu.Unlock()
		return true
	}
	ch.syncing = true
	pos, mark := ch.pos, ch.beginRead()
	ch.mu.Unlock()

	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.StoreTimeout)
	h, err := n.readSince(ctx, ch.app, ch.key, pos)
	cancel()
	n.metrics.catchUps.Inc()

	ch.mu.Lock()
	defer func() {
		if done {
			ch.catchingUp = false
		}
		ch.mu.Unlock()
	}()
	if err != nil {
		n.log.Warn("cannot catch a key up with the store; its live publications wait until it answers",
			"app", ch.app, "key", ch.key, "position", pos.Seq, "epoch", pos.Epoch, "parked", len(ch.parked), "error", err)
		return ch.dead
	}
	n.advanceLocked(ch, h)
	if n.drainLocked(ch, mark, nil) {
		ch.syncing = false
		return true
	}
	return false
}

// readSince reads what the store retains of (app, key) after pos: after
// pos.Seq in pos's epoch, or from the start of the stream when the store is
// in another epoch.
func (n *Node) readSince(ctx context.Context, app, key string, pos proto.Position) (History, error) {
	h, err := n.store.History(ctx, app, key, pos.Seq)
	if err == nil && h.Top.Epoch != pos.Epoch && pos.Seq > 0 {
		h, err = n.store.History(ctx, app, key, 0)
	}
	return h, err
}

// beginRead clears the parking's loss flag before a store read (the read
// covers what was dropped) and returns how many publications were parked
// before it: those of another epoch than the read's are stale.
func (ch *channel) beginRead() int {
	ch.lostParked = false
	return len(ch.parked)
}

// advanceLocked brings ch up to the store's view h, emitting what ch has
// not delivered yet: with a reset first when the store is in another epoch,
// and a reset for every run of publications it no longer retains.
func (n *Node) advanceLocked(ch *channel, h History) {
	if h.Top.Epoch != ch.pos.Epoch {
		start := h.Top
		if len(h.Pubs) > 0 {
			start.Seq = h.Pubs[0].Seq - 1
		}
		n.resetLocked(ch, start, proto.ResetEpoch)
	}
	for i := range h.Pubs {
		p := &h.Pubs[i]
		if p.Seq <= ch.pos.Seq {
			continue
		}
		if p.Seq > ch.pos.Seq+1 {
			n.resetLocked(ch, proto.Position{Seq: p.Seq - 1, Epoch: p.Epoch}, proto.ResetGap)
		}
		n.emitLocked(ch, p)
		n.metrics.gapsFilled.Inc()
	}
	if h.Top.Seq > ch.pos.Seq {
		// Sequenced, but no longer retained.
		n.resetLocked(ch, h.Top, proto.ResetGap)
	}
}

// drainLocked delivers what was parked, in order, after a store read; mark
// is how many were parked before the read. The delivered ones are appended
// to *out when out is not nil. It reports whether the parking is empty and
// complete; otherwise another read is needed (a gap, another epoch, or
// publications dropped from a full parking).
func (n *Node) drainLocked(ch *channel, mark int, out *[]proto.Publication) bool {
	i := 0
	for ; i < len(ch.parked); i++ {
		p := &ch.parked[i]
		if p.Epoch != ch.pos.Epoch {
			if i < mark {
				continue // of an epoch the read showed is over
			}
			break
		}
		if p.Seq <= ch.pos.Seq {
			n.metrics.duplicates.Inc()
			continue
		}
		if p.Seq > ch.pos.Seq+1 {
			break
		}
		n.emitLocked(ch, p)
		if out != nil {
			*out = append(*out, *p)
		}
	}
	if i == len(ch.parked) {
		ch.parked = nil
	} else {
		ch.parked = append(ch.parked[:0], ch.parked[i:]...)
	}
	return len(ch.parked) == 0 && !ch.lostParked
}

// emitLocked encodes p once per format in use and enqueues the frame to
// every subscriber of ch, and to every group whose interval has passed;
// a group still within it holds the value back for its timer
// (docs/PROTOCOL.md, "Delivery modes").
func (n *Node) emitLocked(ch *channel, p *proto.Publication) {
	ch.pos = p.Position()
	ch.latest, ch.hasLatest = *p, true
	ch.latestFrames = [proto.NumFormats]*proto.Frame{}
	delivered := 0
	for f := range ch.subs {
		list := ch.subs[f].list
		if len(list) == 0 {
			continue
		}
		frame := ch.latestFrameLocked(proto.Format(f))
		for _, s := range list {
			s.Enqueue(frame) // an overflowing subscriber closes itself
		}
		delivered += len(list)
	}
	if len(ch.groups) > 0 {
		now := time.Now()
		for _, g := range ch.groups {
			delivered += n.paceLocked(ch, g, now)
		}
	}
	n.metrics.countDeliveries(delivered)
}

// paceLocked takes ch's new latest value for group g at now: sent at once
// when g's interval has passed since its last value, held back for g's
// timer otherwise (replacing the one held, whose skip it counts). It
// returns how many frames it enqueued.
func (n *Node) paceLocked(ch *channel, g *rateGroup, now time.Time) int {
	if !g.held && now.Sub(g.last) >= g.interval {
		return n.sendGroupLocked(ch, g, now)
	}
	if g.held {
		// The held value is replaced: the members that did not get it
		// with their subscribe never will.
		n.metrics.skippedRate.Add(float64(len(g.subs.list) - len(g.joined)))
	}
	g.held, g.joined = true, nil
	if !g.armed {
		n.armGroupLocked(ch, g, g.last.Add(g.interval).Sub(now))
	}
	return 0
}

// sendGroupLocked enqueues ch's latest value to g's members at now but to
// those that got it with their subscribe, and starts g's next interval.
func (n *Node) sendGroupLocked(ch *channel, g *rateGroup, now time.Time) int {
	frame := ch.latestFrameLocked(g.key.format)
	sent := 0
	for _, s := range g.subs.list {
		if _, ok := g.joined[s]; ok {
			continue
		}
		s.Enqueue(frame)
		sent++
	}
	g.last, g.held, g.joined = now, false, nil
	return sent
}

// armGroupLocked starts g's timer to fire after d.
func (n *Node) armGroupLocked(ch *channel, g *rateGroup, d time.Duration) {
	g.armed = true
	if g.timer == nil {
		g.timer = time.AfterFunc(d, func() { n.groupDue(ch, g) })
	} else {
		g.timer.Reset(d)
	}
}

// groupDue runs on g's timer: the value g holds back is due, and goes out
// as ch's newest value.
func (n *Node) groupDue(ch *channel, g *rateGroup) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	if !g.armed {
		return // stopped, or re-armed by a Reset that raced this call
	}
	g.armed = false
	if ch.dead || !g.held || !ch.hasLatest || len(g.subs.list) == 0 {
		g.held, g.joined = false, nil
		return
	}
	now := time.Now()
	if d := g.last.Add(g.interval).Sub(now); d > 0 {
		// A value went out at once after this call was due (it waited
		// for mu): the interval restarted then.
		n.armGroupLocked(ch, g, d)
		return
	}
	n.metrics.countDeliveries(n.sendGroupLocked(ch, g, now))
}

// joinLocked notes that s, just added to g, got ch's newest value with its
// subscribe (sent), or was already at it: if g holds that value back, its
// timer must not send it to s again. When s is g's only member, the value
// it got starts g's interval, so that s gets at most max_rate values a
// second from its subscribe on; a member that joins others may get its
// subscribe's value and the group's next one less than 1/max_rate apart.
func (g *rateGroup) joinLocked(s Subscriber, sent bool) {
	if !g.held {
		if sent && len(g.subs.list) == 1 {
			g.last = time.Now()
		}
		return
	}
	if g.joined == nil {
		g.joined = make(map[Subscriber]struct{})
	}
	g.joined[s] = struct{}{}
}

// resetLocked moves ch to pos and tells every subscriber: the positions
// before it are void (docs/PROTOCOL.md, "Reset"), and so is a value a
// group holds back.
func (n *Node) resetLocked(ch *channel, pos proto.Position, reason string) {
	ch.pos = pos
	ch.hasLatest = false
	ch.latestFrames = [proto.NumFormats]*proto.Frame{}
	n.metrics.resets.WithLabelValues(reason).Inc()
	for _, g := range ch.groups {
		g.held, g.joined = false, nil
	}
	if ch.size.Load() == 0 {
		return
	}
	n.log.Info("stream reset sent to subscribers", "app", ch.app, "key", ch.key,
		"seq", pos.Seq, "epoch", pos.Epoch, "reason", reason, "subscribers", ch.size.Load())
	frame := ch.resetFrame(pos, reason)
	for f := range ch.subs {
		for _, s := range ch.subs[f].list {
			s.Enqueue(frame)
		}
	}
	for _, g := range ch.groups {
		for _, s := range g.subs.list {
			s.Enqueue(frame)
		}
	}
}

// positionCheckLoop compares every served key's position with the store's
// every PositionCheck, and catches up the keys that fell behind: a
// publication whose fan-out was lost reaches a quiet key's subscribers
// within one or two checks.
func (n *Node) positionCheckLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.PositionCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.checkPositions(ctx, false)
		}
	}
}

// positionCheckBatch bounds the keys of one Tops call.
const positionCheckBatch = 512

// checkPositions catches up every channel that is behind the store, or
// every channel when all is set (after a bus outage).
func (n *Node) checkPositions(ctx context.Context, all bool) {
	chans := n.hub.all()
	for start := 0; start < len(chans) && ctx.Err() == nil; start += positionCheckBatch {
		batch := chans[start:min(start+positionCheckBatch, len(chans))]
		var tops []proto.Position
		if !all {
			keys := make([]StreamKey, len(batch))
			for i, ch := range batch {
				keys[i] = StreamKey{ch.app, ch.key}
			}
			rctx, cancel := context.WithTimeout(ctx, n.cfg.StoreTimeout)
			var err error
			tops, err = n.store.Tops(rctx, keys)
			cancel()
			if err != nil {
				n.log.Warn("position check: store unreachable; retrying at the next check", "keys", len(keys), "error", err)
				return
			}
		}
		n.metrics.positionChecks.Add(float64(len(batch)))
		for i, ch := range batch {
			ch.mu.Lock()
			behind := all || tops[i].Epoch != ch.pos.Epoch || tops[i].Seq > ch.pos.Seq
			if behind && !ch.dead && ch.initialized && !ch.syncing {
				n.metrics.positionLags.Inc()
				n.startCatchUpLocked(ch)
			}
			ch.mu.Unlock()
		}
	}
}

// resync catches every served key up after the bus lost its connection.
func (n *Node) resync() {
	n.log.Info("bus reconnected: catching every served key up with the store", "keys", len(n.hub.all()))
	n.checkPositions(n.ctx, true)
}
