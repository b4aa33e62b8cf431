package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/wstest"
	wsamqp "github.com/wspush/wspush/middle/amqp"
)

// uniqueName is prefix and a random suffix, a valid app, key or node ID:
// tests running at the same time on the same Redis and RabbitMQ do not
// collide.
func uniqueName(prefix string) string {
	return prefix + strings.ToLower(rand.Text()[:10])
}

func TestIngestExchangeIsTheServers(t *testing.T) {
	if want := (wsamqp.Topology{}).WithDefaults().Exchange(); IngestExchange != want {
		t.Fatalf("wsbench publishes to %q, wspush consumes %q", IngestExchange, want)
	}
}

// TestAMQPTransport publishes to an exchange of the test's own, bound to
// a queue that takes 3 messages and has the broker nack the rest.
func TestAMQPTransport(t *testing.T) {
	wstest.RequireServices(t)
	admin, err := amqp.Dial(wstest.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ch, err := admin.Channel()
	if err != nil {
		t.Fatal(err)
	}
	exchange := uniqueName("wsbench-test-")
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, amqp.Table{"x-max-length": int64(3), "x-overflow": "reject-publish"})
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(q.Name, "#", exchange, false, nil); err != nil {
		t.Fatal(err)
	}

	tr, err := dialAMQP(t.Context(), wstest.AMQPURL, exchange, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.close()
	if tr.targets() != 1 {
		t.Fatalf("%d targets, want 1", tr.targets())
	}
	payloads := func(n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			out[i] = appendPayload(nil, int64(42+i))
		}
		return out
	}
	if _, failed, err := tr.send(t.Context(), 0, batch{app: "a1", keys: []string{"k1", "k2", "k1"}, payloads: payloads(3)}); err != nil || failed != nil {
		t.Fatalf("send: failed %v, %v", failed, err)
	}
	for i, want := range []string{"a1.k1", "a1.k2", "a1.k1"} {
		d, ok, err := ch.Get(q.Name, true)
		if err != nil || !ok {
			t.Fatalf("message %d: %v, %v", i, ok, err)
		}
		if d.RoutingKey != want || d.ContentType != "application/json" || string(d.Body) != fmt.Sprintf(`{"t":%d}`, 42+i) {
			t.Fatalf("message %d: routing key %q, content type %q, body %s", i, d.RoutingKey, d.ContentType, d.Body)
		}
	}

	// The queue takes 3 of 5: the last 2 fail.
	_, failed, err := tr.send(t.Context(), 0, batch{app: "a1", keys: []string{"k1", "k2", "k3", "k4", "k5"}, payloads: payloads(5)})
	if err == nil || !strings.Contains(err.Error(), "nacked 2 of 5") {
		t.Fatalf("err %v, want 2 of 5 nacked", err)
	}
	if want := []bool{false, false, false, true, true}; !slices.Equal(failed, want) {
		t.Fatalf("failed %v, want %v", failed, want)
	}

	// A cancelled send closes the connection; later sends fail at once.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, _, err := tr.send(ctx, 0, batch{app: "a1", keys: []string{"k1"}, payloads: payloads(1)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled send: %v", err)
	}
	wstest.Eventually(t, 5*time.Second, func() error {
		if !tr.conn.IsClosed() {
			return errors.New("the connection outlived a cancelled send")
		}
		return nil
	})
	if _, _, err := tr.send(t.Context(), 0, batch{app: "a1", keys: []string{"k1"}, payloads: payloads(1)}); err == nil {
		t.Fatal("send on a closed connection: no error")
	}
}

func TestAMQPTransportRefuses(t *testing.T) {
	ctx := t.Context()
	if _, err := dialAMQP(ctx, "amqp://u:pw@10.1.2.3:5672/", IngestExchange, 1); err == nil || !strings.Contains(err.Error(), "refusing") || strings.Contains(err.Error(), ":pw@") {
		t.Errorf("a non-loopback broker: %v", err)
	}
	wstest.RequireServices(t)
	missing := uniqueName("wsbench-missing-")
	start := time.Now()
	_, err := dialAMQP(ctx, wstest.AMQPURL, missing, 1)
	if err == nil || !strings.Contains(err.Error(), "exchange "+missing) || strings.Contains(err.Error(), ":guest@") {
		t.Errorf("a missing exchange: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s", d)
	}
}
