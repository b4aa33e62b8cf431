package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/ops"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/redis"
	"github.com/wspush/wspush/proto"
	"github.com/wspush/wspush/userservice"
)

// getNodes reads GET /api/nodes of base (http://host:port).
func getNodes(base string) (ops.Response, error) {
	var r ops.Response
	resp, err := http.Get(base + "/api/nodes")
	if err != nil {
		return r, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return r, fmt.Errorf("GET /api/nodes: %s", resp.Status)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		return r, fmt.Errorf("Cache-Control %q, want no-store", cc)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		return r, fmt.Errorf("Content-Type %q", ct)
	}
	return r, json.NewDecoder(resp.Body).Decode(&r)
}

// nodeOf returns the entry of id in r.
func nodeOf(r ops.Response, id string) (ops.Node, bool) {
	for _, n := range r.Nodes {
		if n.ID == id {
			return n, true
		}
	}
	return ops.Node{}, false
}

func nodeIDs(r ops.Response) []string {
	ids := make([]string, len(r.Nodes))
	for i, n := range r.Nodes {
		ids[i] = n.ID
	}
	return ids
}

// TestNodesEmbedded: an embedded node lists itself with the connections of
// real WebSocket clients and the rates of what was published, on the main
// and the admin listener.
func TestNodesEmbedded(t *testing.T) {
	id := randomName("ops-")
	base, a := startApp(t, app.Config{NodeID: id, AdminAddr: "127.0.0.1:0"})
	wstest.Eventually(t, 5*time.Second, func() error {
		if a.AdminAddr() == "" {
			return errors.New("admin listener not up")
		}
		return nil
	})
	clients := make([]*wstest.Client, 3)
	for i := range clients {
		clients[i] = wstest.Dial(t, wstest.WSURL(base), nil)
		clients[i].Subscribe("plant-7", "json", nil, "001", "002")
	}
	for i := range 5 {
		mustPublish(t, base, "plant-7", "001", fmt.Sprint(i))
	}
	for _, c := range clients {
		c.Data(5)
	}

	for _, url := range []string{base, "http://" + a.AdminAddr()} {
		wstest.Eventually(t, 10*time.Second, func() error {
			r, err := getNodes(url)
			if err != nil {
				return err
			}
			if r.Self != id || len(r.Nodes) != 1 || r.Error != "" {
				return fmt.Errorf("%s: self %q, nodes %v, error %q; want %s alone", url, r.Self, nodeIDs(r), r.Error, id)
			}
			n := r.Nodes[0]
			switch {
			case n.Connections != 3 || n.Subscriptions != 6 || n.Keys != 2:
				return fmt.Errorf("%s: %d connections, %d subscriptions, %d keys; want 3, 6, 2", url, n.Connections, n.Subscriptions, n.Keys)
			case n.PublicationsPerS <= 0 || n.DeliveriesPerS <= 0:
				return fmt.Errorf("%s: publications %v/s, deliveries %v/s; want both above 0", url, n.PublicationsPerS, n.DeliveriesPerS)
			case n.DroppedPerS != 0 || n.Poller.Enabled:
				return fmt.Errorf("%s: dropped %v/s, poller %+v; want none", url, n.DroppedPerS, n.Poller)
			case n.Started.IsZero() || n.Updated.Before(n.Started) || time.Since(n.Updated) > 5*time.Second:
				return fmt.Errorf("%s: started %s, updated %s", url, n.Started, n.Updated)
			}
			return nil
		})
	}

	// The connections closed show at the next sample.
	for _, c := range clients {
		_ = c.Conn.Close()
	}
	wstest.Eventually(t, 10*time.Second, func() error {
		r, err := getNodes(base)
		if err != nil {
			return err
		}
		if n := r.Nodes[0]; n.Connections != 0 || n.Subscriptions != 0 {
			return fmt.Errorf("%d connections, %d subscriptions after the clients left", n.Connections, n.Subscriptions)
		}
		return nil
	})
}

// TestNodesSlowConsumer: a client that reads nothing is closed with 4008
// and shows as a dropped connection per second.
func TestNodesSlowConsumer(t *testing.T) {
	base, a := startApp(t, app.Config{Users: userservice.Config{QueueMaxBytes: 64 << 10}})
	slow := wstest.Dial(t, wstest.WSURL(base), nil)
	slow.Subscribe("a", "json", nil, "k")
	payload := []byte(`"` + strings.Repeat("x", 32<<10) + `"`)
	// The socket buffers take a few MiB before the queue fills: 4,000
	// publications of 32 KiB (125 MiB) are far more than enough.
	for i := 0; a.Users().SlowClosed() == 0; i++ {
		if i == 4000 {
			t.Fatal("the client that reads nothing was never closed")
		}
		if _, err := a.Node().Publish(context.Background(), "test", []proto.Publication{{App: "a", Key: "k", Data: payload, JSON: true}}); err != nil {
			t.Fatal(err)
		}
	}
	wstest.Eventually(t, 10*time.Second, func() error {
		r, err := getNodes(base)
		if err != nil {
			return err
		}
		if n := r.Nodes[0]; n.DroppedPerS <= 0 || n.Connections != 0 {
			return fmt.Errorf("dropped %v/s, %d connections; want above 0 and 0", n.DroppedPerS, n.Connections)
		}
		return nil
	})
}

// startRedisNode runs a cluster node on tc's Redis prefix (no AMQP).
func startRedisNode(t *testing.T, tc *testCluster, id, datacenter string) (base string, stop func()) {
	t.Helper()
	base, a, stop := wstest.StartApp(t, app.Config{
		NodeID: id, RedisURL: tc.redisURL, DatacenterURL: datacenter,
		Redis: redis.StoreConfig{Prefix: tc.redisPfx},
	})
	wstest.Eventually(t, 15*time.Second, func() error { return a.Ready() })
	return base, stop
}

// TestNodesCluster: two nodes on one Redis prefix each list both, with the
// poller of the one that holds the app's lease polling the subscribed IDs;
// a node that stops is no longer listed; an entry whose node stopped
// writing leaves the list after the window and Redis after a minute.
func TestNodesCluster(t *testing.T) {
	testNodesCluster(t, newTestCluster(t, wstest.RedisURL, 1))
}

// TestNodesClusterRedisCluster runs the same on a Redis Cluster
// (scripts/test.sh starts one and sets WSPUSH_REDIS_CLUSTER_URL).
func TestNodesClusterRedisCluster(t *testing.T) {
	url := os.Getenv("WSPUSH_REDIS_CLUSTER_URL")
	if url == "" {
		if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatal("WSPUSH_REDIS_CLUSTER_URL is not set (scripts/test.sh starts a Redis Cluster)")
		}
		t.Skip("WSPUSH_REDIS_CLUSTER_URL is not set")
	}
	testNodesCluster(t, newTestCluster(t, url, 1))
}

func testNodesCluster(t *testing.T, tc *testCluster) {
	dc := httptest.NewServer(simulator.New(simulator.Config{}))
	defer dc.Close()
	idA, idB := randomName("node-a-"), randomName("node-b-")
	baseA, _ := startRedisNode(t, tc, idA, dc.URL)
	baseB, stopB := startRedisNode(t, tc, idB, dc.URL)

	c := wstest.Dial(t, wstest.WSURL(baseA), nil)
	c.Subscribe("demo", "json", nil, "s001", "s002")
	for _, base := range []string{baseA, baseB} {
		wstest.Eventually(t, 15*time.Second, func() error {
			r, err := getNodes(base)
			if err != nil {
				return err
			}
			a, okA := nodeOf(r, idA)
			b, okB := nodeOf(r, idB)
			if !okA || !okB || len(r.Nodes) != 2 || r.Error != "" {
				return fmt.Errorf("%s lists %v (error %q), want %s and %s", base, nodeIDs(r), r.Error, idA, idB)
			}
			if a.Connections != 1 || a.Subscriptions != 2 || b.Connections != 0 {
				return fmt.Errorf("%s: %s has %d connections, %d subscriptions; %s has %d connections",
					base, idA, a.Connections, a.Subscriptions, idB, b.Connections)
			}
			if !a.Poller.Enabled || !b.Poller.Enabled || !a.Poller.Healthy || !b.Poller.Healthy {
				return fmt.Errorf("%s: pollers %+v and %+v, want both enabled and healthy", base, a.Poller, b.Poller)
			}
			// One node holds the app's lease and polls both IDs.
			polling := a.Poller
			if b.Poller.IDs > 0 {
				polling = b.Poller
			}
			if a.Poller.IDs+b.Poller.IDs != 2 || polling.LastSuccess == nil {
				return fmt.Errorf("%s: pollers %+v and %+v, want one polling 2 IDs with a last success", base, a.Poller, b.Poller)
			}
			if a.PublicationsPerS+b.PublicationsPerS <= 0 || a.DeliveriesPerS <= 0 {
				return fmt.Errorf("%s: publications %v/s and %v/s, deliveries on %s %v/s; want above 0",
					base, a.PublicationsPerS, b.PublicationsPerS, idA, a.DeliveriesPerS)
			}
			return nil
		})
	}

	stopB()
	wstest.Eventually(t, 10*time.Second, func() error {
		r, err := getNodes(baseA)
		if err != nil {
			return err
		}
		if len(r.Nodes) != 1 || r.Nodes[0].ID != idA {
			return fmt.Errorf("%s lists %v after %s stopped", idA, nodeIDs(r), idB)
		}
		return nil
	})

	// A node that died: its entry stays in Redis, no longer rewritten.
	// Written 8 s ago it is listed for about 2 s more; written 2 minutes
	// ago it is not listed and is deleted.
	ctx := context.Background()
	key := tc.redisPfx + ":nodestats"
	ghost := func(id string, age time.Duration) string {
		at := time.Now().Add(-age).UTC()
		b, err := json.Marshal(ops.Node{ID: id, Started: at, Updated: at})
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.rdb.HSet(ctx, key, id, b).Err(); err != nil {
			t.Fatal(err)
		}
		return id
	}
	dying := ghost(randomName("node-dying-"), 7*time.Second)
	dead := ghost(randomName("node-dead-"), 2*time.Minute)
	wstest.Eventually(t, 5*time.Second, func() error {
		r, err := getNodes(baseA)
		if err != nil {
			return err
		}
		if _, ok := nodeOf(r, dying); !ok {
			return fmt.Errorf("%s lists %v, want %s too (updated 7 s ago)", idA, nodeIDs(r), dying)
		}
		if _, ok := nodeOf(r, dead); ok {
			return fmt.Errorf("%s lists %s, updated 2 minutes ago", idA, dead)
		}
		return nil
	})
	wstest.Eventually(t, 10*time.Second, func() error {
		r, err := getNodes(baseA)
		if err != nil {
			return err
		}
		if len(r.Nodes) != 1 {
			return fmt.Errorf("%s lists %v, want itself alone once %s is older than the window", idA, nodeIDs(r), dying)
		}
		if n, err := tc.rdb.HExists(ctx, key, dead).Result(); err != nil || n {
			return fmt.Errorf("%s still in %s (%v)", dead, key, err)
		}
		return nil
	})
	if n, err := tc.rdb.HExists(ctx, key, idB).Result(); err != nil || n {
		t.Errorf("%s, stopped, still in %s (%v)", idB, key, err)
	}
}
