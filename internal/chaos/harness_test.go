package chaos

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/internal/wstest"
)

func TestProxyPause(t *testing.T) {
	wstest.RequireServices(t)
	p, err := StartProxy(RedisAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	ping := func(d time.Duration) error {
		c.SetDeadline(time.Now().Add(d))
		if _, err := c.Write([]byte("PING\r\n")); err != nil {
			return err
		}
		l, err := r.ReadString('\n')
		if err == nil && l != "+PONG\r\n" {
			t.Fatalf("reply %q", l)
		}
		return err
	}
	if err := ping(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	p.Pause()
	if err := ping(300 * time.Millisecond); err == nil {
		t.Fatal("a paused proxy forwarded a PING")
	}
	p.Resume()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if l, err := r.ReadString('\n'); err != nil || l != "+PONG\r\n" { // the stalled one
		t.Fatalf("after resume: %q, %v", l, err)
	}
	if !p.Upstream(upstreamOf(t, p)) {
		t.Error("the proxy does not know its connection to Redis")
	}
}

func upstreamOf(t *testing.T, p *Proxy) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a := range p.upstream {
		return a
	}
	t.Fatal("no upstream connection")
	return ""
}

// TestPublisherRepublishes closes the publisher's connection with
// rabbitmqctl while it publishes: every value is confirmed in the end, and
// each message-id reaches the queue (republished ones maybe twice).
func TestPublisherRepublishes(t *testing.T) {
	wstest.RequireServices(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		t.Skip("rabbitmqctl not installed")
	}
	name := "chaos-pubtest-" + randomHex(4)
	conn, err := amqp091.Dial(AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(name, "topic", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(name, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(name, "#", name, false, nil); err != nil {
		t.Fatal(err)
	}
	defer ch.QueueDelete(name, false, false, false)

	keys := []string{"a", "b"}
	pub := NewPublisher(PublisherConfig{URL: AMQPURL, Exchange: name, Name: name + " publisher", App: "app", Keys: keys, Rate: 200})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- pub.Run(ctx, 20*time.Second) }()
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		if len(pub.Confirmed(0)) < 50 {
			return context.DeadlineExceeded
		}
		return nil
	})
	conns, err := BrokerConnections(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var pids []string
	for _, bc := range conns {
		if bc.Name == name+" publisher" {
			pids = append(pids, bc.PID)
		}
	}
	if len(pids) != 1 {
		t.Fatalf("%d connections named %q among %v", len(pids), name+" publisher", conns)
	}
	if err := CloseBrokerConnections(context.Background(), pids); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		if _, _, r := pub.Stats(); r == 0 {
			return context.DeadlineExceeded
		}
		return nil
	})
	next := pub.Next()
	testutil.Eventually(t, 10*time.Second, 50*time.Millisecond, func() error {
		if pub.Next()[0] < next[0]+20 {
			return context.DeadlineExceeded
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	msgs, err := ch.Consume(name, "", true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for k := range keys {
		total += len(pub.Confirmed(k))
	}
	for len(seen) < total {
		select {
		case d := <-msgs:
			seen[d.RoutingKey+"/"+d.MessageId] = true
		case <-time.After(5 * time.Second):
			t.Fatalf("%d distinct messages in the queue, %d confirmed", len(seen), total)
		}
	}
	for k, key := range keys {
		cs := pub.Confirmed(k)
		if int64(len(cs)) != pub.Next()[k]-1 {
			t.Errorf("key %s: %d confirmed of %d sent", key, len(cs), pub.Next()[k]-1)
		}
		for _, c := range cs {
			if !seen["app."+key+"/"+strconv.FormatInt(c, 10)] {
				t.Errorf("key %s: confirmed counter %d not in the queue", key, c)
			}
		}
	}
	nacked, returned, reconnects := pub.Stats()
	t.Logf("%d confirmed, %d nacked, %d returned, %d reconnections", total, nacked, returned, reconnects)
}

func TestParsers(t *testing.T) {
	f := clientFields("id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 name=wspush-x flags=N\n")
	if f["id"] != "7" || f["addr"] != "127.0.0.1:5000" || f["name"] != "wspush-x" {
		t.Errorf("clientFields: %v", f)
	}
	l := `[{"platform","golang"},{"connection_name","wspush chaos-1-n0"},{"product","AMQP 0.9.1 Client"}]`
	if m := connName.FindStringSubmatch(l); m == nil || m[1] != "wspush chaos-1-n0" {
		t.Errorf("connection name: %q", m)
	}
}
