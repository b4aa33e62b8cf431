package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
)

// The shared services of the suite (scripts/services.sh starts them).
const (
	RedisAddr = "127.0.0.1:6379"
	AMQPURL   = "amqp://guest:guest@127.0.0.1:5672"
)

// ClusterConfig describes the nodes of one run.
type ClusterConfig struct {
	Nodes      int      // default 2
	Partitions int      // --ingest-partitions, default 4
	Args       []string // more flags for every node
}

// Cluster is a run's nodes, their Redis proxy and the names that isolate
// the run on the shared Redis and RabbitMQ.
type Cluster struct {
	Prefix string // --redis-prefix and --amqp-prefix
	Nodes  []*Node
	Proxy  *Proxy
	Redis  *goredis.Client // direct, not through the proxy
	cfg    ClusterConfig
	t      testing.TB
}

// StartCluster starts the nodes and registers their teardown (processes,
// Redis keys, AMQP exchanges and queues) with t.Cleanup.
func StartCluster(ctx context.Context, t testing.TB, cfg ClusterConfig) *Cluster {
	t.Helper()
	cfg.Nodes, cfg.Partitions = orDefault(cfg.Nodes, 2), orDefault(cfg.Partitions, 4)
	bin, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{Prefix: "chaos-" + randomHex(4), cfg: cfg, t: t,
		Redis: goredis.NewClient(&goredis.Options{Addr: RedisAddr})}
	t.Cleanup(c.teardown)
	if c.Proxy, err = StartProxy(RedisAddr); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	startCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	for i := range cfg.Nodes {
		id := fmt.Sprintf("%s-n%d", c.Prefix, i)
		args := append([]string{
			"--addr", "127.0.0.1:0", "--node-id", id,
			"--redis-url", "redis://" + c.Proxy.Addr() + "/0", "--amqp-url", AMQPURL,
			"--redis-prefix", c.Prefix, "--amqp-prefix", c.Prefix,
			"--ingest-partitions", strconv.Itoa(cfg.Partitions), "--log-format", "json",
			"--shutdown-timeout", "2s",
		}, cfg.Args...)
		n, err := StartNode(startCtx, bin, id, filepath.Join(dir, id+".log"), args)
		if err != nil {
			t.Fatal(err)
		}
		c.Nodes = append(c.Nodes, n)
	}
	return c
}

func orDefault(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Live returns the index of a node that runs and is not frozen, starting
// the search at i.
func (c *Cluster) Live(i int) (int, error) {
	for d := range len(c.Nodes) {
		j := (i + d) % len(c.Nodes)
		if n := c.Nodes[j]; n.Alive() && !n.Frozen() {
			return j, nil
		}
	}
	return 0, errNoLiveNode
}

// LogTails writes every node's last log lines to the test log.
func (c *Cluster) LogTails(lines int) {
	for _, n := range c.Nodes {
		c.t.Logf("--- last %d log lines of node %s (%s):\n%s", lines, n.ID, n.LogPath, n.Tail(lines))
	}
}

// Unexpected returns an error for each node that exited on its own.
func (c *Cluster) Unexpected() []error {
	var errs []error
	for _, n := range c.Nodes {
		if err := n.Unexpected(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// AMQPNames are the exchanges and queues the nodes declare (issue 8,
// "AMQP adapter").
func (c *Cluster) AMQPNames() (exchanges, queues []string) {
	p := c.Prefix
	exchanges = []string{p + ".ingest", p + ".ingest.hash", p + ".dlx"}
	for i := range c.cfg.Partitions {
		queues = append(queues, fmt.Sprintf("%s.ingest.%d", p, i))
	}
	return exchanges, append(queues, p+".dead")
}

func (c *Cluster) teardown() {
	for _, n := range c.Nodes {
		n.Stop(5 * time.Second)
	}
	if c.Proxy != nil {
		c.Proxy.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := c.DeleteKeys(ctx); err != nil {
		c.t.Errorf("cleanup: Redis keys of %s (%d deleted): %v", c.Prefix, n, err)
	}
	c.Redis.Close()
	if err := c.deleteAMQP(); err != nil {
		c.t.Errorf("cleanup: AMQP names of %s: %v", c.Prefix, err)
	}
}

// DeleteKeys unlinks every Redis key that contains the run's prefix (SCAN,
// UNLINK) and returns how many it deleted.
func (c *Cluster) DeleteKeys(ctx context.Context) (int, error) {
	n := 0
	it := c.Redis.Scan(ctx, 0, "*"+c.Prefix+"*", 500).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := c.Redis.Unlink(ctx, batch...).Err()
		n += len(batch)
		batch = batch[:0]
		return err
	}
	for it.Next(ctx) {
		if batch = append(batch, it.Val()); len(batch) == 500 {
			if err := flush(); err != nil {
				return n, fmt.Errorf("unlink: %w", err)
			}
		}
	}
	if err := it.Err(); err != nil {
		return n, fmt.Errorf("scan: %w", err)
	}
	if err := flush(); err != nil {
		return n, fmt.Errorf("unlink: %w", err)
	}
	return n, nil
}

func (c *Cluster) deleteAMQP() error {
	conn, err := amqp091.Dial(AMQPURL)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	exchanges, queues := c.AMQPNames()
	del := func(kind, name string, f func(ch *amqp091.Channel) error) error {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("channel: %w", err)
		}
		defer ch.Close()
		if err := f(ch); err != nil {
			if e, ok := err.(*amqp091.Error); ok && e.Code == amqp091.NotFound {
				return nil
			}
			return fmt.Errorf("delete %s %s: %w", kind, name, err)
		}
		return nil
	}
	for _, q := range queues {
		if err := del("queue", q, func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err }); err != nil {
			return err
		}
	}
	for _, x := range exchanges {
		if err := del("exchange", x, func(ch *amqp091.Channel) error { return ch.ExchangeDelete(x, false, false) }); err != nil {
			return err
		}
	}
	return nil
}

// WaitIngest polls until the nodes have declared every exchange and queue
// of the ingest, so that no published value is unroutable.
func (c *Cluster) WaitIngest(ctx context.Context) error {
	conn, err := amqp091.Dial(AMQPURL)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	exchanges, queues := c.AMQPNames()
	declared := func() error { // a failed passive declare closes the channel
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		defer ch.Close()
		for _, x := range exchanges {
			if err := ch.ExchangeDeclarePassive(x, "", false, false, false, false, nil); err != nil {
				return err
			}
		}
		for _, q := range queues {
			if _, err := ch.QueueDeclarePassive(q, false, false, false, false, nil); err != nil {
				return err
			}
		}
		return nil
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := declared()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ingest topology of %s not declared: %w", c.Prefix, err)
		case <-tick.C:
		}
	}
}
