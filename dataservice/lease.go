package dataservice

import (
	"context"
	"fmt"
)

// Lease decides which node of a cluster polls an app, so that the data
// center is asked once per tick however many nodes run (redis.Lease in middle/redis
// implements it).
type Lease interface {
	// Acquire reports whether this node may poll app now: it holds the
	// app's lease, or just took it. It is called before every poll of the
	// app, which renews a held lease.
	Acquire(ctx context.Context, app string) (bool, error)
}

// holdsLease reports whether this poller may poll app now. An app whose
// lease another node holds is skipped; its last published values are
// forgotten, because the other node publishes meanwhile: when this node
// takes the app over, it publishes every value once so that none is held
// back as "unchanged" against a value that is no longer the latest. The
// caller holds st.busy.
func (p *Poller) holdsLease(ctx context.Context, app string, st *appState) (bool, error) {
	if p.cfg.Lease == nil {
		return true, nil
	}
	held, err := p.cfg.Lease.Acquire(ctx, app)
	if err != nil {
		return false, fmt.Errorf("acquire poll lease: %w", err)
	}
	switch {
	case held && !st.leased:
		p.log.Info("polling app: this node holds its lease", "app", app)
	case !held && st.leased:
		p.log.Info("not polling app any more: another node holds its lease", "app", app)
	}
	st.leased = held
	if !held && len(st.keys) > 0 {
		clear(st.keys)
	}
	return held, nil
}
