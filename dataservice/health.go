package dataservice

import "time"

// Health is what the operator endpoint (docs/PROTOCOL.md, "HTTP server",
// GET /api/nodes) shows of a poller.
type Health struct {
	// Healthy is false while the subscribed apps cannot be listed or an
	// app's last poll failed (it is backing off).
	Healthy bool
	// FailingApps is the number of apps whose last poll failed.
	FailingApps int
	// IDs is the number of IDs this node asks the data center for: the
	// subscribed keys of the apps it polls, as of each app's last poll. On
	// a cluster the apps whose lease another node holds count 0.
	IDs int
	// LastSuccess is when the last poll that asked for IDs ended without
	// error; zero before the first.
	LastSuccess time.Time
	// Errors counts failed polls of an app and failed listings of the
	// subscribed apps since the poller was created: a backing-off app adds
	// one per retry, not one per tick.
	Errors uint64
}

// Health returns the poller's current Health. It is safe to call while Run
// runs; it takes the poller's lock once and walks the app states (as many as
// subscribed apps).
func (p *Poller) Health() Health {
	h := Health{Errors: p.errors.Load()}
	if ns := p.lastSuccess.Load(); ns != 0 {
		h.LastSuccess = time.Unix(0, ns)
	}
	p.mu.Lock()
	for _, st := range p.states {
		h.IDs += st.ids
		if st.failures > 0 {
			h.FailingApps++
		}
	}
	p.mu.Unlock()
	h.Healthy = h.FailingApps == 0 && !p.listFailing.Load()
	return h
}

// setIDs records how many IDs the poll holding st.busy asks for.
func (p *Poller) setIDs(st *appState, n int) {
	p.mu.Lock()
	st.ids = n
	p.mu.Unlock()
}
