package bench

import (
	"context"
	"fmt"
	"net"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/wspush/wspush/internal/retry"
	"github.com/wspush/wspush/proto"
)

// IngestExchange is where integrators publish to a wspush cluster (topic,
// durable; docs/PROTOCOL.md, "Ingest"). wspush declares it; wsbench only
// checks that it exists.
const IngestExchange = "wspush.ingest"

// amqpDialTimeout bounds the TCP connect and the AMQP handshake.
const amqpDialTimeout = 10 * time.Second

// amqpTransport publishes each value as one message to an exchange
// (IngestExchange) with routing key <app>.<key>, on channels in confirm
// mode: one channel per concurrent send. The broker feeds every server,
// so there is a single target.
type amqpTransport struct {
	conn     *amqp.Connection
	exchange string
	idle     chan *amqp.Channel // open channels between two sends
}

// dialAMQP connects to the broker at rawURL (loopback only, checked again
// at connect time) and checks that exchange exists. It keeps up to
// channels channels open between sends.
func dialAMQP(ctx context.Context, rawURL, exchange string, channels int) (*amqpTransport, error) {
	where := retry.RedactURL(rawURL)
	d := &net.Dialer{Control: loopbackOnly, Timeout: amqpDialTimeout}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("wsbench")
	conn, err := amqp.DialConfig(rawURL, amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the handshake, as amqp.DefaultDial does; the client
			// clears it once connected.
			if err := c.SetDeadline(time.Now().Add(amqpDialTimeout)); err != nil {
				_ = c.Close()
				return nil, err
			}
			return c, nil
		},
	})
	if err != nil {
		return nil, fmt.Errorf("AMQP %s: %w", where, err)
	}
	t := &amqpTransport{conn: conn, exchange: exchange, idle: make(chan *amqp.Channel, max(channels, 1))}
	if err := t.checkExchange(); err != nil {
		t.close()
		return nil, fmt.Errorf("AMQP %s: %w", where, err)
	}
	return t, nil
}

// checkExchange declares the exchange passively: an error if it is
// missing, never a change to the broker.
func (t *amqpTransport) checkExchange() error {
	ch, err := t.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer func() { _ = ch.Close() }() // already closed by a failed declaration
	if err := ch.ExchangeDeclarePassive(t.exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("exchange %s: %w (wspush declares it: start the servers with --amqp-url first)", t.exchange, err)
	}
	return nil
}

func (t *amqpTransport) targets() int { return 1 }

// close closes the connection and with it every channel. It does not wait
// more than a second for the broker.
func (t *amqpTransport) close() { _ = t.conn.CloseDeadline(time.Now().Add(time.Second)) }

// send publishes b's values and waits for the broker's confirms. An ack
// means the broker has the value, not yet that a server sequenced it.
// The broker does not tell the seqs: seqs is nil.
func (t *amqpTransport) send(ctx context.Context, _ int, b batch) (seqs []uint64, failed []bool, err error) {
	ch, err := t.channel()
	if err != nil {
		return nil, nil, err
	}
	defer t.release(ch)
	// A publish held up by the broker's flow control (a resource alarm)
	// does not watch ctx; closing the connection frees it.
	defer context.AfterFunc(ctx, t.close)()

	confirms := make([]*amqp.DeferredConfirmation, 0, len(b.keys))
	for i, k := range b.keys {
		dc, perr := ch.PublishWithDeferredConfirmWithContext(ctx, t.exchange, proto.RoutingKey(b.app, k), false, false, amqp.Publishing{
			ContentType:  "application/json",
			DeliveryMode: amqp.Transient,
			Body:         b.payloads[i],
		})
		if perr != nil {
			err = fmt.Errorf("AMQP: publish to %s: %w", t.exchange, perr)
			break
		}
		confirms = append(confirms, dc)
	}
	failed = make([]bool, len(b.keys))
	for i := range failed {
		failed[i] = true // until acked
	}
	nacks := 0
	for i, dc := range confirms {
		ack, werr := dc.WaitContext(ctx)
		if werr != nil {
			err = fmt.Errorf("AMQP: wait for confirms: %w", werr)
			break
		}
		if !ack {
			nacks++
			continue
		}
		failed[i] = false
	}
	switch {
	case err != nil:
		return nil, failed, err
	case nacks > 0:
		return nil, failed, fmt.Errorf("AMQP: the broker nacked %d of %d values", nacks, len(b.keys))
	}
	return nil, nil, nil
}

// channel takes an idle channel or opens one. The publisher bounds the
// concurrent sends, and so the open channels.
func (t *amqpTransport) channel() (*amqp.Channel, error) {
	for {
		select {
		case ch := <-t.idle:
			if ch.IsClosed() { // with the connection: drop it
				continue
			}
			return ch, nil
		default:
			return t.openChannel()
		}
	}
}

// openChannel opens a channel in confirm mode.
func (t *amqpTransport) openChannel() (*amqp.Channel, error) {
	ch, err := t.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("AMQP: open channel: %w", err)
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, fmt.Errorf("AMQP: confirm mode: %w", err)
	}
	return ch, nil
}

// release keeps ch for the next send, unless it is closed or enough are
// kept.
func (t *amqpTransport) release(ch *amqp.Channel) {
	if ch.IsClosed() {
		return
	}
	select {
	case t.idle <- ch:
	default:
		_ = ch.Close()
	}
}
