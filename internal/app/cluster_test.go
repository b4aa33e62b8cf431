package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/amqp"
	"github.com/wspush/wspush/middle/redis"
	"github.com/wspush/wspush/proto"
)

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// testCluster is what the nodes of one test share: a Redis (single or
// Cluster), a Redis prefix and an AMQP prefix of their own, removed when the
// test ends.
type testCluster struct {
	redisURL   string
	redisPfx   string
	amqpPfx    string
	partitions int
	rdb        goredis.UniversalClient
}

func newTestCluster(t *testing.T, redisURL string, partitions int) *testCluster {
	t.Helper()
	wstest.RequireServices(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := redis.NewClient(ctx, redisURL, "wspush-test")
	if err != nil {
		t.Fatal(err)
	}
	tc := &testCluster{redisURL: redisURL, redisPfx: randomName("t-app-"), amqpPfx: randomName("t-app-"), partitions: partitions, rdb: rdb}
	t.Cleanup(func() {
		tc.cleanRedis(t)
		tc.cleanAMQP(t)
		_ = rdb.Close()
	})
	return tc
}

func (tc *testCluster) cleanRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	del := func(ctx context.Context, c *goredis.Client) error {
		it := c.Scan(ctx, 0, tc.redisPfx+":*", 1000).Iterator()
		for it.Next(ctx) {
			c.Del(ctx, it.Val())
		}
		return it.Err()
	}
	var err error
	if cc, ok := tc.rdb.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, del)
	} else {
		err = del(ctx, tc.rdb.(*goredis.Client))
	}
	if err != nil {
		t.Logf("removing %s:* from Redis: %v", tc.redisPfx, err)
	}
}

func (tc *testCluster) cleanAMQP(t *testing.T) {
	conn, err := amqp091.Dial(wstest.AMQPURL)
	if err != nil {
		t.Logf("removing %s.* from RabbitMQ: %v", tc.amqpPfx, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	for i := 0; i < tc.partitions; i++ {
		_, _ = ch.QueueDelete(fmt.Sprintf("%s.ingest.%d", tc.amqpPfx, i), false, false, false)
	}
	_, _ = ch.QueueDelete(tc.amqpPfx+".dead", false, false, false)
	for _, x := range []string{".ingest.hash", ".ingest", ".dlx"} {
		_ = ch.ExchangeDelete(tc.amqpPfx+x, false, false)
	}
}

// startNode runs one cluster node until stop (or the end of the test).
func (tc *testCluster) startNode(t *testing.T, id, datacenter string) (base string, stop func()) {
	t.Helper()
	base, a, stop := wstest.StartApp(t, app.Config{
		NodeID: id, RedisURL: tc.redisURL, AMQPURL: wstest.AMQPURL, DatacenterURL: datacenter,
		Redis: redis.StoreConfig{Prefix: tc.redisPfx},
		AMQP:  amqp.Topology{Prefix: tc.amqpPfx, Partitions: tc.partitions},
	})
	wstest.Eventually(t, 15*time.Second, func() error { return a.Ready() })
	return base, stop
}

func TestClusterTwoNodes(t *testing.T) {
	testClusterTwoNodes(t, newTestCluster(t, wstest.RedisURL, 2))
}

// TestClusterTwoNodesRedisCluster runs the same on a Redis Cluster
// (scripts/test.sh starts one and sets WSPUSH_REDIS_CLUSTER_URL).
func TestClusterTwoNodesRedisCluster(t *testing.T) {
	url := os.Getenv("WSPUSH_REDIS_CLUSTER_URL")
	if url == "" {
		if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
			t.Fatal("WSPUSH_REDIS_CLUSTER_URL is not set (scripts/test.sh starts a Redis Cluster)")
		}
		t.Skip("WSPUSH_REDIS_CLUSTER_URL is not set")
	}
	testClusterTwoNodes(t, newTestCluster(t, url, 1))
}

func testClusterTwoNodes(t *testing.T, tc *testCluster) {
	dc := httptest.NewServer(simulator.New(simulator.Config{}))
	defer dc.Close()
	ctx := context.Background()

	appID := randomName("ct")
	idA, idB := randomName("node-a-"), randomName("node-b-")
	baseA, stopA := tc.startNode(t, idA, dc.URL)
	baseB, stopB := tc.startNode(t, idB, dc.URL)

	c := wstest.Dial(t, wstest.WSURL(baseA), nil)
	ack := c.Subscribe(appID, "json", nil, "k1")
	pos, ok := ack.Positions["k1"]
	if !ok || pos.Epoch == "" {
		t.Fatalf("subscribe ack without a position for k1: %+v", ack)
	}

	// The index holds exactly this subscription.
	subKey := tc.redisPfx + ":{index}:sub:" + appID + ":k1"
	wstest.Eventually(t, 5*time.Second, func() error {
		m, err := tc.rdb.SMembers(ctx, subKey).Result()
		if err != nil || len(m) != 1 || !strings.HasPrefix(m[0], idA+"/") {
			return fmt.Errorf("members of %s: %v %v", subKey, m, err)
		}
		return nil
	})

	// Publish through HTTP on node B and through AMQP; the poller on
	// whichever node holds the app's lease adds sensor values.
	for i := 0; i < 3; i++ {
		mustPublish(t, baseB, appID, "k1", fmt.Sprintf(`{"http":%d}`, i))
	}
	conn, err := amqp091.Dial(wstest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := ch.PublishWithContext(ctx, tc.amqpPfx+".ingest", appID+".k1", false, false, amqp091.Publishing{
			ContentType: "application/json", Body: []byte(fmt.Sprintf(`{"amqp":%d}`, i)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	var amqpOrder []string
	for len(seen) < 7 {
		m := c.Next()
		if m.Op != "data" {
			t.Fatalf("got %+v", m)
		}
		if m.Seq != pos.Seq+1 {
			t.Fatalf("seq %d after %d", m.Seq, pos.Seq)
		}
		pos.Seq = m.Seq
		switch d := string(m.Data); {
		case strings.Contains(d, "temp"):
			seen["poller"] = true
		case strings.HasPrefix(d, `{"amqp"`):
			amqpOrder = append(amqpOrder, d)
			seen[d] = true
		default:
			seen[d] = true
		}
	}
	// The AMQP values got their seqs in the order published.
	if want := `[{"amqp":0} {"amqp":1} {"amqp":2}]`; fmt.Sprint(amqpOrder) != want {
		t.Fatalf("AMQP values in the order %v, want %s", amqpOrder, want)
	}

	// Resume on node B: no gap, no duplicate.
	c.Conn.Close()
	wstest.Eventually(t, 5*time.Second, func() error {
		if n, _ := tc.rdb.SCard(ctx, subKey).Result(); n != 0 {
			return fmt.Errorf("%d members left after disconnect", n)
		}
		return nil
	})
	mustPublish(t, baseB, appID, "k1", `{"missed":1}`)
	c2 := wstest.Dial(t, wstest.WSURL(baseB), nil)
	ack = c2.Subscribe(appID, "json", map[string]proto.Position{"k1": pos}, "k1")
	if ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("resume ack: %+v", ack)
	}
	for got := 0; got < 1; {
		m := c2.Next()
		if m.Op != "data" || m.Seq != pos.Seq+1 {
			t.Fatalf("resumed with %+v after seq %d", m, pos.Seq)
		}
		pos.Seq = m.Seq
		if string(m.Data) == `{"missed":1}` {
			got++
		}
	}

	// Exactly one node holds the poll lease; when it stops, the other
	// takes over.
	leaseKey := tc.redisPfx + ":poll:" + appID
	holder, err := tc.rdb.Get(ctx, leaseKey).Result()
	if err != nil || (holder != idA && holder != idB) {
		t.Fatalf("lease %s: %q %v", leaseKey, holder, err)
	}
	other := idB
	if holder == idA {
		stopA()
	} else {
		other = idA
		stopB()
	}
	// The client stays on node B; if B was stopped, re-subscribe on A.
	if holder == idB {
		c3 := wstest.Dial(t, wstest.WSURL(baseA), nil)
		c3.Subscribe(appID, "json", nil, "k1")
	}
	wstest.Eventually(t, 20*time.Second, func() error {
		h, err := tc.rdb.Get(ctx, leaseKey).Result()
		if h != other {
			return fmt.Errorf("lease held by %q (%v), want %q", h, err, other)
		}
		return nil
	})
}
