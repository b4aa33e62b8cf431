package middle

import (
	"context"
	"fmt"

	"github.com/wspush/wspush/proto"
)

// SubscribeRequest is one subscribe command, validated by the caller.
type SubscribeRequest struct {
	ID     uint64
	App    string
	Keys   []string
	Format proto.Format
	// Since maps keys to the position to resume after; an empty Epoch
	// means the key's current one.
	Since map[string]proto.Position
	// Mode and MaxRate (values per second per key, 0: none; latest only)
	// are the delivery mode of the keys (docs/PROTOCOL.md, "Delivery
	// modes"). The node resumes a latest key without replaying history,
	// paces a latest key with a MaxRate (once per key, format and rate,
	// for all such subscribers), and tells a ModeSubscriber, whose is the
	// conflation of what waits in its queue.
	Mode    proto.Mode
	MaxRate float64
}

// ModeSubscriber is a Subscriber that applies delivery modes. Subscribe
// calls SetMode for every key of the request, with the key's channel
// locked, before it enqueues the ack: what the subscriber receives of the
// key before the call belongs to the earlier subscription, what comes
// after to this one. ref is the key's proto.Frame.Stream for as long as
// the subscriber holds the key. maxRate is the node's to apply (the
// subscriber gets at most that many values per second of the key); a
// ModeSubscriber conflates a latest key's values that wait in its queue.
// A Subscriber that is not a ModeSubscriber gets every value the node
// sends it, as in stream mode.
type ModeSubscriber interface {
	SetMode(ref *proto.StreamRef, mode proto.Mode, maxRate float64)
}

// subscribeRead is what Subscribe read from the store for one key.
type subscribeRead struct {
	ch   *channel
	mark int // publications parked before the read
	// top and latest: the key's position and newest publication, read for
	// a channel that was not initialized yet.
	top    proto.Position
	latest *proto.Publication
	// behind: the channel was catching up with the store already.
	behind bool
	// h is the history read for a resume or a catch-up, when read is set.
	h    History
	read bool
}

// Subscribe adds s to every key of req and enqueues to s, in this order:
// the ack with every key's position (and the recovery outcome when req has
// Since), then per key either the publications after since, or the latest
// value, or a reset and the latest value when since cannot be recovered
// (docs/PROTOCOL.md, "Subscribe and resume"). Subscribing again to a key
// replaces the earlier subscription (and its format). On error nothing was
// enqueued or added.
//
// The store is read with no channel's mu held: every key's io is held
// instead and its channel is syncing, so live publications are parked
// meanwhile and merged with what was read before s is added.
func (n *Node) Subscribe(ctx context.Context, s Subscriber, req SubscribeRequest) error {
	n.metrics.subscribes.Inc()
	keys := uniqueSorted(req.Keys)
	reads := make([]subscribeRead, len(keys))
	for i, k := range keys {
		reads[i].ch, reads[i].behind = n.acquireIO(req.App, k)
	}
	defer func() {
		for i := range reads {
			n.releaseIO(reads[i].ch)
		}
	}()
	for i := range reads {
		if err := n.readForSubscribe(ctx, &reads[i], req.Since, req.Mode == proto.ModeLatest); err != nil {
			for j := range reads {
				n.dropIfEmptyIOLocked(ctx, reads[j].ch)
			}
			return fmt.Errorf("subscribe %s.%s: %w: %w", req.App, reads[i].ch.key, ErrUnavailable, err)
		}
	}

	for i := range reads {
		reads[i].ch.mu.Lock()
	}
	defer func() {
		for i := range reads {
			reads[i].ch.mu.Unlock()
		}
	}()
	positions := make([]proto.KeyPosition, len(reads))
	frames := make([][]*proto.Frame, len(reads))
	recovery := proto.RecoveryNone
	for i := range reads {
		r := &reads[i]
		ch := r.ch
		known := n.settleLocked(r)
		positions[i] = proto.KeyPosition{Key: ch.key, Position: ch.pos}
		since, ok := req.Since[ch.key]
		if !ok {
			if f := ch.latestFrameLocked(req.Format); f != nil {
				frames[i] = []*proto.Frame{f}
			}
			continue
		}
		if req.Mode == proto.ModeLatest {
			var reason string
			frames[i], reason = n.latestResumeFrames(ch, since, req.Format)
			if reason != "" {
				recovery = proto.NotRecovered
			} else if recovery == proto.RecoveryNone {
				recovery = proto.Recovered
			}
			continue
		}
		replay, reason := resumeFrom(since, ch.pos, known)
		if reason != "" {
			recovery = proto.NotRecovered
			frames[i] = n.notRecoveredFrames(ch, req.Format, reason)
			continue
		}
		if recovery == proto.RecoveryNone {
			recovery = proto.Recovered
		}
		for j := range replay {
			frames[i] = append(frames[i], ch.dataFrame(&replay[j], req.Format))
		}
	}

	if ms, ok := s.(ModeSubscriber); ok {
		for i := range reads {
			ms.SetMode(&reads[i].ch.ref, req.Mode, req.MaxRate)
		}
	}
	s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendAckMode(nil, req.ID, recovery, req.Mode, req.MaxRate, positions)))
	delivered := 0
	for i := range reads {
		ch := reads[i].ch
		for _, f := range frames[i] {
			s.Enqueue(f)
		}
		delivered += len(frames[i])
		wasThere := ch.removeLocked(s)
		if g := ch.addLocked(s, req.Format, req.Mode, req.MaxRate); g != nil {
			g.joinLocked(s, len(frames[i]) > 0)
		}
		if !wasThere && n.index != nil {
			n.index.Add(ch.app, ch.key, s.ConnID())
		}
	}
	n.metrics.countDeliveries(delivered)
	return nil
}

// acquireIO returns the live channel of (app, key) with its io held and
// syncing set; behind reports that it was catching up already.
func (n *Node) acquireIO(app, key string) (ch *channel, behind bool) {
	for {
		ch := n.hub.getOrCreate(app, key)
		ch.io.Lock()
		ch.mu.Lock()
		if !ch.dead {
			behind = ch.syncing || len(ch.parked) > 0
			ch.syncing = true
			ch.mu.Unlock()
			return ch, behind
		}
		ch.mu.Unlock()
		ch.io.Unlock()
	}
}

// releaseIO lets go of ch's io. Publications still parked (a gap the
// subscribe's read did not cover) are left to a catch-up.
func (n *Node) releaseIO(ch *channel) {
	ch.mu.Lock()
	switch {
	case ch.dead || !ch.initialized:
		ch.syncing = false
	case len(ch.parked) == 0 && !ch.lostParked:
		ch.syncing = false
	default:
		n.startCatchUpLocked(ch)
	}
	ch.mu.Unlock()
	ch.io.Unlock()
}

// readForSubscribe makes the bus deliver r.ch's key to this node, then
// reads what the subscribe needs from the store. The order matters: a
// publication sequenced after the read arrives through the bus (and is
// parked); one sequenced before is in what was read.
// A latest resume replays no history: it reads none for since.
func (n *Node) readForSubscribe(ctx context.Context, r *subscribeRead, since map[string]proto.Position, latest bool) error {
	ch := r.ch
	if !ch.watched && n.bus != nil {
		if err := n.bus.Watch(ctx, ch.app, ch.key); err != nil {
			return fmt.Errorf("watch: %w", err)
		}
	}
	ch.watched = true
	ch.mu.Lock()
	initialized, pos := ch.initialized, ch.pos
	r.mark = ch.beginRead()
	ch.mu.Unlock()
	if !initialized {
		h, err := n.store.Latest(ctx, ch.app, ch.key)
		if err != nil {
			return fmt.Errorf("latest: %w", err)
		}
		r.top, pos = h.Top, h.Top
		if len(h.Pubs) > 0 && h.Pubs[0].Seq == h.Top.Seq {
			r.latest = &h.Pubs[0]
		}
	}
	sp, ok := since[ch.key]
	from := pos.Seq
	if ok && !latest && (sp.Epoch == "" || sp.Epoch == pos.Epoch) {
		from = min(from, sp.Seq)
	}
	if from < pos.Seq || initialized && (ok || r.behind) {
		// An initialized channel reads from where it stands, so that a
		// channel behind the store (its bus is late) is brought up to date
		// before a resume that reaches past it.
		h, err := n.readSince(ctx, ch.app, ch.key, proto.Position{Seq: from, Epoch: pos.Epoch})
		if err != nil {
			return fmt.Errorf("history: %w", err)
		}
		r.h, r.read = h, true
		n.metrics.catchUps.Inc()
	}
	return nil
}

// settleLocked applies what r read to its channel, then what was parked
// meanwhile, and returns every publication known to follow from the read:
// the material of a resume.
func (n *Node) settleLocked(r *subscribeRead) []proto.Publication {
	ch := r.ch
	if !ch.initialized {
		ch.pos, ch.initialized = r.top, true
		if r.latest != nil {
			ch.latest, ch.hasLatest = *r.latest, true
		}
	}
	known := r.h.Pubs
	if r.read {
		n.advanceLocked(ch, r.h)
	}
	n.drainLocked(ch, r.mark, &known)
	return known
}

// resumeFrom picks, from known (ascending publications of pos's epoch),
// what a subscriber resuming after since must be sent to reach pos. A
// non-empty reason says it cannot be recovered (and why, as a reset
// reason).
func resumeFrom(since, pos proto.Position, known []proto.Publication) ([]proto.Publication, string) {
	if since.Epoch != "" && since.Epoch != pos.Epoch {
		return nil, proto.ResetEpoch
	}
	switch {
	case since.Seq == pos.Seq:
		return nil, ""
	case since.Seq > pos.Seq:
		return nil, proto.ResetGap // a seq this epoch never had
	}
	var replay []proto.Publication
	next := since.Seq + 1
	for i := range known {
		p := &known[i]
		if p.Epoch != pos.Epoch || p.Seq < next || p.Seq > pos.Seq {
			continue
		}
		if p.Seq != next {
			return nil, proto.ResetGap // history no longer reaches back
		}
		replay = append(replay, *p)
		next++
	}
	if next != pos.Seq+1 {
		return nil, proto.ResetGap
	}
	return replay, ""
}

// latestResumeFrames are what a latest subscriber resuming after since
// gets (docs/PROTOCOL.md, "Delivery modes"): no history; in the same epoch
// the latest value when the key moved past since (nothing when it did
// not); otherwise, with a non-empty reason, what a failed resume gets.
func (n *Node) latestResumeFrames(ch *channel, since proto.Position, f proto.Format) ([]*proto.Frame, string) {
	reason := ""
	switch {
	case since.Epoch != "" && since.Epoch != ch.pos.Epoch:
		reason = proto.ResetEpoch
	case since.Seq > ch.pos.Seq:
		reason = proto.ResetGap // a seq this epoch never had
	case since.Seq == ch.pos.Seq:
		return nil, ""
	default:
		if latest := ch.latestFrameLocked(f); latest != nil {
			return []*proto.Frame{latest}, ""
		}
		reason = proto.ResetGap // the newest value is not retained
	}
	return n.notRecoveredFrames(ch, f, reason), reason
}

// notRecoveredFrames are what a subscriber whose since cannot be
// recovered gets: a reset to just before the latest value, then that value
// (or a reset to pos when none is retained).
func (n *Node) notRecoveredFrames(ch *channel, f proto.Format, reason string) []*proto.Frame {
	pos := ch.pos
	latest := ch.latestFrameLocked(f)
	if latest != nil {
		pos.Seq--
	}
	n.metrics.resets.WithLabelValues(reason).Inc()
	out := []*proto.Frame{ch.resetFrame(pos, reason)}
	if latest != nil {
		out = append(out, latest)
	}
	return out
}

// dropIfEmptyIOLocked removes a channel that has no subscriber left; the
// caller holds ch.io. The channel stays in the hub, dead, until the bus has
// stopped delivering its key, so that a new subscriber of the key (who
// waits for io) watches it again only after that.
func (n *Node) dropIfEmptyIOLocked(ctx context.Context, ch *channel) {
	ch.mu.Lock()
	if ch.size.Load() > 0 || ch.dead {
		ch.mu.Unlock()
		return
	}
	ch.dead = true
	ch.parked, ch.syncing = nil, false
	ch.stopGroupsLocked()
	ch.mu.Unlock()
	if ch.watched && n.bus != nil {
		if err := n.bus.Unwatch(ctx, ch.app, ch.key); err != nil {
			n.log.Warn("unwatch failed; the node keeps receiving the key until the bus reconnects",
				"app", ch.app, "key", ch.key, "error", err)
		}
	}
	ch.watched = false
	n.hub.remove(ch)
}

// Unsubscribe removes s from keys of app; keys it does not hold are ignored.
func (n *Node) Unsubscribe(ctx context.Context, s Subscriber, app string, keys []string) {
	for _, k := range keys {
		ch := n.hub.get(app, k)
		if ch == nil {
			continue
		}
		ch.mu.Lock()
		removed := !ch.dead && ch.removeLocked(s)
		ch.mu.Unlock()
		if !removed {
			continue
		}
		if n.index != nil {
			n.index.Remove(app, k, s.ConnID())
		}
		if ch.size.Load() == 0 {
			ch.io.Lock()
			n.dropIfEmptyIOLocked(ctx, ch)
			ch.io.Unlock()
		}
	}
}
