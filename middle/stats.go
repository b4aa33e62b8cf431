package middle

// Stats is what the operator endpoint (docs/PROTOCOL.md, "HTTP server",
// GET /api/nodes) shows of a node's middle tier: two gauges and two counters
// since the node was created, which the caller turns into rates.
type Stats struct {
	// Keys is the number of keys with at least one local subscriber
	// (wspush_channels).
	Keys int
	// Subscriptions is the number of local subscriptions, connection × key
	// (wspush_subscriptions).
	Subscriptions int
	// Publications counts the publications this node sequenced, from every
	// source (wspush_publications_total).
	Publications uint64
	// Deliveries counts the publication frames enqueued to local
	// subscribers, replays included (wspush_deliveries_total).
	Deliveries uint64
}

// Stats returns the node's current Stats. It walks the hub's shards to count
// the keys, like the wspush_channels gauge does: call it every few seconds,
// not per request.
func (n *Node) Stats() Stats {
	keys, subs := n.hub.counts()
	return Stats{
		Keys:          keys,
		Subscriptions: subs,
		Publications:  n.metrics.publications.Load(),
		Deliveries:    n.metrics.delivered.Load(),
	}
}

func (m *metrics) countPublished(source string, n int) {
	m.published.WithLabelValues(source).Add(float64(n))
	m.publications.Add(uint64(n))
}

func (m *metrics) countDeliveries(n int) {
	m.deliveries.Add(float64(n))
	m.delivered.Add(uint64(n))
}
