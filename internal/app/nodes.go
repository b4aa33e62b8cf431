package app

import (
	"time"

	"github.com/wspush/wspush/internal/ops"
	"github.com/wspush/wspush/middle/redis"
)

// newOps builds the sampler behind GET /api/nodes (docs/PROTOCOL.md, "HTTP
// server"); on a cluster it shares the snapshots through Redis ("Redis
// schema", <prefix>:nodestats).
func (a *App) newOps() error {
	cfg := ops.Config{
		NodeID: a.cfg.NodeID, Started: time.Now(), Sample: a.sampleOps,
		Logger: a.log.With("tier", "ops"), Registerer: a.reg,
	}
	if a.redis != nil {
		store, err := redis.NewNodeStats(redis.NodeStatsConfig{Client: a.redis, NodeID: a.cfg.NodeID, Prefix: a.cfg.Redis.Prefix})
		if err != nil {
			return err
		}
		cfg.Store = store
	}
	n, err := ops.New(cfg)
	if err != nil {
		return err
	}
	a.ops = n
	return nil
}

// sampleOps reads the counters of the node's components. It runs on the
// sampler's goroutine, which Run starts after it has set a.poller.
func (a *App) sampleOps() ops.Counters {
	st := a.node.Stats()
	c := ops.Counters{
		Connections: a.users.Connections(), Subscriptions: st.Subscriptions, Keys: st.Keys,
		Publications: st.Publications, Deliveries: st.Deliveries, SlowClosed: a.users.SlowClosed(),
	}
	if a.poller != nil {
		h := a.poller.Health()
		c.Poller = &ops.PollerCounters{Healthy: h.Healthy, IDs: h.IDs, LastSuccess: h.LastSuccess, Errors: h.Errors}
	}
	return c
}
