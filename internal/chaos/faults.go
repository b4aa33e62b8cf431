package chaos

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"
)

// Fault is one thing that goes wrong during a run.
type Fault struct {
	Name string
	// Loses: the fault destroys data, so resets (reason epoch or gap)
	// and the values they skip are expected around it.
	Loses bool
	// Inject applies the fault to c and returns once it is over; nil
	// leaves the cluster alone (no recovery time then).
	Inject func(ctx context.Context, c *Cluster) error
}

// NoFault leaves the cluster alone (the burst run).
var NoFault = Fault{Name: "none"}

// CloseAMQP closes, with rabbitmqctl, the broker connections of this run's
// nodes (their client-provided names contain the node ids); other runs'
// connections on the shared broker are left alone.
var CloseAMQP = Fault{Name: "amqp connections closed", Inject: func(ctx context.Context, c *Cluster) error {
	conns, err := BrokerConnections(ctx)
	if err != nil {
		return err
	}
	var pids []string
	for _, bc := range conns {
		if c.owns(bc.Name) {
			pids = append(pids, bc.PID)
		}
	}
	if len(pids) == 0 {
		return fmt.Errorf("no broker connection named after nodes %s among %v", c.nodeIDs(), conns)
	}
	return CloseBrokerConnections(ctx, pids)
}}

// BrokerConnection is one connection rabbitmqctl lists.
type BrokerConnection struct{ Name, PID string }

// connName finds the client-provided name in rabbitmqctl's rendering of
// client_properties.
var connName = regexp.MustCompile(`\{"connection_name","([^"]*)"\}`)

// BrokerConnections lists the broker's connections with their
// client-provided names (rabbitmqctl's name column is the peer address).
func BrokerConnections(ctx context.Context) ([]BrokerConnection, error) {
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "--no-table-headers", "list_connections", "pid", "client_properties").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl list_connections: %w: %s", err, out)
	}
	var conns []BrokerConnection
	for l := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(l), "\t")
		if m := connName.FindStringSubmatch(props); ok && m != nil {
			conns = append(conns, BrokerConnection{Name: m[1], PID: pid})
		}
	}
	return conns, nil
}

// CloseBrokerConnections closes connections by pid, in parallel
// (rabbitmqctl takes about a second to start).
func CloseBrokerConnections(ctx context.Context, pids []string) error {
	errc := make(chan error, len(pids))
	for _, pid := range pids {
		go func() {
			out, err := exec.CommandContext(ctx, "rabbitmqctl", "close_connection", pid, "chaos: fault").CombinedOutput()
			if err != nil {
				err = fmt.Errorf("rabbitmqctl close_connection %s: %w: %s", pid, err, out)
			}
			errc <- err
		}()
	}
	var errs []error
	for range pids {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func (c *Cluster) owns(name string) bool {
	for _, n := range c.Nodes {
		if strings.Contains(name, n.ID) {
			return true
		}
	}
	return false
}

func (c *Cluster) nodeIDs() string {
	var ids []string
	for _, n := range c.Nodes {
		ids = append(ids, n.ID)
	}
	return strings.Join(ids, ",")
}

// KillRedisClients kills (CLIENT KILL ID) the Redis connections of this
// run's nodes: those whose client name contains a node id, or that come
// from the run's proxy.
var KillRedisClients = Fault{Name: "redis clients killed", Inject: func(ctx context.Context, c *Cluster) error {
	list, err := c.Redis.ClientList(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLIENT LIST: %w", err)
	}
	var ids []string
	for l := range strings.Lines(list) {
		f := clientFields(l)
		if c.owns(f["name"]) || c.Proxy.Upstream(f["addr"]) {
			ids = append(ids, f["id"])
		}
	}
	if len(ids) == 0 {
		return fmt.Errorf("no Redis client of nodes %s", c.nodeIDs())
	}
	for _, id := range ids {
		if err := c.Redis.Do(ctx, "CLIENT", "KILL", "ID", id).Err(); err != nil {
			return fmt.Errorf("CLIENT KILL ID %s: %w", id, err)
		}
	}
	return nil
}}

// clientFields parses one CLIENT LIST line (k=v separated by spaces).
func clientFields(l string) map[string]string {
	f := map[string]string{}
	for kv := range strings.FieldsSeq(l) {
		if k, v, ok := strings.Cut(kv, "="); ok {
			f[k] = v
		}
	}
	return f
}

// StallRedis stops Redis for d: this run's proxy stops forwarding, or,
// global, CLIENT PAUSE d ALL stops the shared Redis for every client.
func StallRedis(d time.Duration, global bool) Fault {
	name := fmt.Sprintf("redis stalled %s", d)
	if global {
		name += " (CLIENT PAUSE)"
	}
	return Fault{Name: name, Inject: func(ctx context.Context, c *Cluster) error {
		if global {
			if err := c.Redis.Do(ctx, "CLIENT", "PAUSE", d.Milliseconds(), "ALL").Err(); err != nil {
				return fmt.Errorf("CLIENT PAUSE: %w", err)
			}
		} else {
			c.Proxy.Pause()
			defer c.Proxy.Resume()
		}
		return hold(ctx, d)
	}}
}

// hold lasts a fault for d (the fault's length, not a wait for a state).
func hold(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// DeleteStore unlinks every Redis key of the run while values flow: the
// store loses the streams (new epochs).
var DeleteStore = Fault{Name: "store keys deleted", Loses: true, Inject: func(ctx context.Context, c *Cluster) error {
	n, err := c.DeleteKeys(ctx)
	if err == nil && n == 0 {
		err = errors.New("no key to delete")
	}
	return err
}}

// KillNode is kill -9 of the last node.
var KillNode = Fault{Name: "kill -9 of a node", Inject: func(ctx context.Context, c *Cluster) error {
	c.Nodes[len(c.Nodes)-1].Kill()
	return nil
}}

// FreezeNode is kill -STOP of the last node for d, then kill -CONT.
func FreezeNode(d time.Duration) Fault {
	return Fault{Name: fmt.Sprintf("kill -STOP of a node for %s", d), Inject: func(ctx context.Context, c *Cluster) error {
		n := c.Nodes[len(c.Nodes)-1]
		if err := n.Freeze(); err != nil {
			return fmt.Errorf("SIGSTOP %s: %w", n.ID, err)
		}
		defer n.Thaw()
		return hold(ctx, d)
	}}
}
