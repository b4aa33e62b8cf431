package app_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/dataservice/simulator"
	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
)

func randomName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// startNode runs one cluster node until stop (or the end of the test).
func startNode(t *testing.T, id, datacenter string) (base string, stop func()) {
	t.Helper()
	base, a, stop := wstest.StartApp(t, app.Config{NodeID: id, RedisURL: wstest.RedisURL, AMQPURL: wstest.AMQPURL, DatacenterURL: datacenter})
	wstest.Eventually(t, 15*time.Second, func() error { return a.Ready() })
	return base, stop
}

func TestClusterTwoNodes(t *testing.T) {
	wstest.RequireServices(t)
	dc := httptest.NewServer(simulator.New(simulator.Config{}))
	defer dc.Close()
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()

	appID := randomName("ct")
	idA, idB := randomName("node-a-"), randomName("node-b-")
	baseA, stopA := startNode(t, idA, dc.URL)
	baseB, stopB := startNode(t, idB, dc.URL)

	c := wstest.Dial(t, wstest.WSURL(baseA), nil)
	c.Subscribe(appID, "json", nil, "k1")

	// The index holds exactly this subscription.
	subKey := "wspush:sub:" + appID + ":k1"
	wstest.Eventually(t, 5*time.Second, func() error {
		m, err := rdb.SMembers(context.Background(), subKey).Result()
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
	conn, err := amqp.Dial(wstest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if err := ch.PublishWithContext(context.Background(), "wspush.ingest", appID+".k1", false, false, amqp.Publishing{
			ContentType: "application/json", Body: []byte(fmt.Sprintf(`{"amqp":%d}`, i)),
		}); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]bool{}
	var last uint64
	for len(seen) < 7 {
		m := c.Next()
		if m.Op != "data" {
			t.Fatalf("got %+v", m)
		}
		if last != 0 && m.Seq != last+1 {
			t.Fatalf("seq %d after %d", m.Seq, last)
		}
		last = m.Seq
		switch d := string(m.Data); {
		case strings.Contains(d, "temp"):
			seen["poller"] = true
		default:
			seen[d] = true
		}
	}

	// Resume on node B: no gap, no duplicate.
	c.Conn.Close()
	wstest.Eventually(t, 5*time.Second, func() error {
		if n, _ := rdb.SCard(context.Background(), subKey).Result(); n != 0 {
			return fmt.Errorf("%d members left after disconnect", n)
		}
		return nil
	})
	mustPublish(t, baseB, appID, "k1", `{"missed":1}`)
	c2 := wstest.Dial(t, wstest.WSURL(baseB), nil)
	ack := c2.Subscribe(appID, "json", map[string]proto.Position{"k1": {Seq: last}}, "k1")
	if ack.Recovered == nil || !*ack.Recovered {
		t.Fatalf("resume ack: %+v", ack)
	}
	for got := 0; got < 1; {
		m := c2.Next()
		if m.Seq != last+1 {
			t.Fatalf("resumed with seq %d after %d", m.Seq, last)
		}
		last = m.Seq
		if string(m.Data) == `{"missed":1}` {
			got++
		}
	}

	// Exactly one node holds the poll lease; when it stops, the other
	// takes over.
	leaseKey := "wspush:poll:" + appID
	holder, err := rdb.Get(context.Background(), leaseKey).Result()
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
		h, err := rdb.Get(context.Background(), leaseKey).Result()
		if h != other {
			return fmt.Errorf("lease held by %q (%v), want %q", h, err, other)
		}
		return nil
	})
}
