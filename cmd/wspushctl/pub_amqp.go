package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/proto"
)

// amqpPublisher publishes to a cluster's ingest exchange (docs/PROTOCOL.md,
// "Ingest", "Publishing"): routing key <app>.<key>, persistent, on a
// channel in confirm mode, mandatory so that a message no queue takes is
// returned instead of dropped.
type amqpPublisher struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	returns  chan amqp.Return
	exchange string
	timeout  time.Duration
	out      *jsonLines
}

func dialAMQP(ctx context.Context, rawURL, exchange string, batch int, timeout time.Duration, out *jsonLines) (*amqpPublisher, error) {
	where := retry.RedactURL(rawURL)
	d := &net.Dialer{Timeout: 10 * time.Second}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("wspushctl")
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the handshake; the client clears it once connected.
			if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("AMQP %s: %w", where, err)
	}
	p := &amqpPublisher{conn: conn, exchange: exchange, timeout: timeout, out: out}
	if err := p.setup(batch); err != nil {
		p.close()
		return nil, fmt.Errorf("AMQP %s: %w", where, err)
	}
	return p, nil
}

// setup checks that the exchange exists (passively: pub never changes the
// broker's topology) and opens the confirm channel.
func (p *amqpPublisher) setup(batch int) error {
	check, err := p.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	err = check.ExchangeDeclarePassive(p.exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	_ = check.Close() // already closed by a failed declaration
	if err != nil {
		return fmt.Errorf("exchange %s: %w (the wspush nodes declare it: is a node running with --amqp-url, and is --exchange <its --amqp-prefix>.ingest?)", p.exchange, err)
	}
	if p.ch, err = p.conn.Channel(); err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	if err := p.ch.Confirm(false); err != nil {
		return fmt.Errorf("confirm mode: %w", err)
	}
	// The broker returns an unroutable message before it acks it, and the
	// client hands the return over before the ack: after a batch's
	// confirms, its returns are all in this buffer (a batch's size).
	p.returns = p.ch.NotifyReturn(make(chan amqp.Return, batch))
	return nil
}

func (p *amqpPublisher) close() { _ = p.conn.CloseDeadline(time.Now().Add(time.Second)) }

func (p *amqpPublisher) publish(ctx context.Context, items []pubItem) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	// A publish held up by the broker's flow control does not watch ctx;
	// closing the connection frees it.
	defer context.AfterFunc(ctx, p.close)()

	confirms := make([]*amqp.DeferredConfirmation, 0, len(items))
	for _, it := range items {
		msg := amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: it.Data, MessageId: it.ID}
		if it.B64 != nil {
			msg.ContentType, msg.Body = "application/octet-stream", it.B64
		}
		if it.TS > 0 {
			msg.Timestamp = time.UnixMilli(it.TS)
		}
		dc, err := p.ch.PublishWithDeferredConfirmWithContext(ctx, p.exchange, proto.RoutingKey(it.App, it.Key), true, false, msg)
		if err != nil {
			return p.failed(ctx, fmt.Errorf("AMQP publish to %s: %w", p.exchange, err))
		}
		confirms = append(confirms, dc)
	}
	acked := make([]bool, len(confirms))
	nacks := 0
	for i, dc := range confirms {
		ack, err := dc.WaitContext(ctx)
		if err != nil {
			return p.failed(ctx, fmt.Errorf("AMQP: waiting for the broker's confirms: %w", err))
		}
		acked[i] = ack
		if !ack {
			nacks++
		}
	}
	var returned []amqp.Return
	for len(p.returns) > 0 {
		returned = append(returned, <-p.returns)
	}
	if len(returned) > 0 {
		r := returned[0]
		return fmt.Errorf("refused: the broker could not route %d of %d messages (%d %s, first: routing key %s): no queue is bound to exchange %s; the wspush nodes bind their partition queues when they start with --amqp-url",
			len(returned), len(items), r.ReplyCode, r.ReplyText, r.RoutingKey, p.exchange)
	}
	for i, it := range items {
		if !acked[i] {
			continue
		}
		if err := p.out.write(published{App: it.App, Key: it.Key, ID: it.ID, Confirmed: true}); err != nil {
			return err
		}
	}
	if nacks > 0 {
		return fmt.Errorf("refused: the broker nacked %d of %d messages (the confirmed ones are printed): publish them again, with ids to be safe", nacks, len(items))
	}
	return nil
}

// failed explains a publish that failed with the connection: the timeout,
// or the broker's reason.
func (p *amqpPublisher) failed(ctx context.Context, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w (no confirms within --timeout %s; the broker may be under a resource alarm): the unconfirmed values may or may not have been published; publish them again, with ids to be safe", err, p.timeout)
	case ctx.Err() != nil:
		return fmt.Errorf("%w: the unconfirmed values may or may not have been published; publish them again, with ids to be safe", err)
	}
	return err
}
