package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/amqp"
	"github.com/wspush/wspush/middle/redis"
)

// startCluster runs one cluster node (Redis and RabbitMQ) under a Redis
// prefix and an AMQP prefix of the test's own, removed at its end.
func startCluster(t *testing.T) (base, amqpPrefix string) {
	t.Helper()
	wstest.RequireServices(t)
	redisPfx, amqpPfx := randomName("t-ctl-"), randomName("t-ctl-")
	t.Cleanup(func() {
		cleanRedis(t, redisPfx)
		cleanAMQP(t, amqpPfx)
	})
	base, a, _ := wstest.StartAppAt(t, app.Config{
		NodeID: randomName("ctl-"), RedisURL: wstest.RedisURL, AMQPURL: wstest.AMQPURL,
		Redis: redis.StoreConfig{Prefix: redisPfx},
		AMQP:  amqp.Topology{Prefix: amqpPfx, Partitions: 1},
	}, "127.0.0.1:0")
	testutil.Eventually(t, 20*time.Second, 50*time.Millisecond, a.Ready)
	return base, amqpPfx
}

// cleanAMQP deletes the exchanges and queues of an AMQP prefix.
func cleanAMQP(t *testing.T, prefix string) {
	conn, err := amqp091.Dial(wstest.AMQPURL)
	if err != nil {
		t.Logf("removing %s.* from RabbitMQ: %v", prefix, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	defer ch.Close()
	top := amqp.Topology{Prefix: prefix, Partitions: 1}
	for _, q := range top.Queues() {
		_, _ = ch.QueueDelete(q, false, false, false)
	}
	for _, x := range top.Exchanges() {
		_ = ch.ExchangeDelete(x, false, false)
	}
}

// Values published over AMQP are confirmed by the broker, then sequenced
// in the order published; a repeated message-id is sequenced once.
func TestPubAMQPReachesASubscriber(t *testing.T) {
	base, pfx := startCluster(t)
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant-7", "json", nil, "001", "raw")

	in := `{"key":"001","data":{"temp":1},"id":"m-1"}
{"key":"001","data":{"temp":2},"id":"m-2"}
{"key":"001","data":{"temp":1},"id":"m-1"}
{"key":"raw","b64":"AAEC","ts":1700000000000}
`
	r := ctl(t, in, "pub", "--amqp-url", wstest.AMQPURL, "--exchange", pfx+".ingest", "--app", "plant-7")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := `{"app":"plant-7","key":"001","id":"m-1","confirmed":true}
{"app":"plant-7","key":"001","id":"m-2","confirmed":true}
{"app":"plant-7","key":"001","id":"m-1","confirmed":true}
{"app":"plant-7","key":"raw","confirmed":true}
`
	if r.stdout != want {
		t.Fatalf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	r = ctl(t, "", "pub", "--amqp-url", wstest.AMQPURL, "--exchange", pfx+".ingest", "--app", "plant-7", `001={"temp":3}`)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	got := map[string][]wstest.Message{}
	for n := 0; n < 4; n++ {
		m := c.Data(1)[0]
		got[m.Key] = append(got[m.Key], m)
	}
	for i, m := range got["001"] {
		if want := fmt.Sprintf(`{"temp":%d}`, i+1); m.Seq != uint64(i+1) || string(m.Data) != want {
			t.Fatalf("001 value %d: seq %d %s, want %s", i, m.Seq, m.Data, want)
		}
	}
	if raw := got["raw"]; len(raw) != 1 || string(raw[0].B64) != "\x00\x01\x02" || raw[0].TS != 1700000000000 {
		t.Fatalf("raw: %+v", raw)
	}
	c.ExpectSilence(200 * time.Millisecond) // the repeat of m-1 was not sequenced

	// stats sees the cluster: AMQP connected, Redis reachable, the
	// values ingested.
	r = ctl(t, "", "stats", "--url", base, "--interval", "200ms", "--json")
	if r.code != 0 {
		t.Fatalf("stats: exit %d: %s", r.code, r.stderr)
	}
	var s stats
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, r.stdout)
	}
	if s.AMQP == nil || !s.AMQP.Connected || s.AMQP.PartitionsHeld != 1 || s.Redis == nil || !s.Redis.Ready || s.Redis.WatchedKeys != 2 {
		t.Fatalf("stats of a cluster node: %s", r.stdout)
	}
}

// A refusal by the broker exits 1 and says why: no such exchange, or an
// exchange that routes the message nowhere.
func TestPubAMQPRefusals(t *testing.T) {
	wstest.RequireServices(t)
	missing := randomName("t-ctl-missing-")
	r := ctl(t, "", "pub", "--amqp-url", wstest.AMQPURL, "--exchange", missing, "--app", "a", "k=1")
	if r.code != 1 || !strings.Contains(r.stderr, "NOT_FOUND") || !strings.Contains(r.stderr, "--amqp-url") {
		t.Fatalf("missing exchange: exit %d, stderr %q", r.code, r.stderr)
	}

	// An exchange with no queue bound: the broker returns the message.
	lonely := randomName("t-ctl-lonely-")
	conn, err := amqp091.Dial(wstest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(lonely, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	defer func() { // before conn.Close
		if err := ch.ExchangeDelete(lonely, false, false); err != nil {
			t.Errorf("deleting exchange %s: %v", lonely, err)
		}
	}()
	r = ctl(t, "", "pub", "--amqp-url", wstest.AMQPURL, "--exchange", lonely, "--app", "a", "k=1", "k=2")
	if r.code != 1 || !strings.Contains(r.stderr, "could not route 2 of 2") || !strings.Contains(r.stderr, "NO_ROUTE") || r.stdout != "" {
		t.Fatalf("unroutable: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	r = ctl(t, "", "pub", "--amqp-url", "amqp://guest:wrong@127.0.0.1:5672", "--app", "a", "k=1")
	if r.code != 1 || strings.Contains(r.stderr, "wrong") || !strings.Contains(r.stderr, "xxxxx") {
		t.Fatalf("bad password: exit %d, stderr %q (the password must be redacted)", r.code, r.stderr)
	}
}
