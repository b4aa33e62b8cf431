package chaos

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// PublisherConfig is what a Publisher sends, where and how fast.
type PublisherConfig struct {
	URL      string
	Exchange string // <prefix>.ingest
	Name     string // AMQP connection name (never one of the nodes')
	App      string
	Keys     []string
	Rate     float64 // values per second, over all keys
}

// Publisher sends {"c":<counter>} to <app>.<key> round-robin over the
// keys, each key counting from 1, with publisher confirms and message-id =
// the counter. When its channel or connection fails it reconnects and
// republishes every unconfirmed message, in order, with the same
// message-id: the server sequences a message-id at most once (issue 8,
// "Idempotency"). It records which counters the broker confirmed.
type Publisher struct {
	cfg PublisherConfig

	mu         sync.Mutex
	next       []int64          // per key: the last counter sent
	confirmed  []map[int64]bool // per key
	returned   map[string]bool  // "<key index>/<counter>" the broker could not route
	nacked     int
	reconnects int

	// owned by Run's goroutine
	conn    *amqp091.Connection
	ch      *amqp091.Channel
	returns chan amqp091.Return
	fifo    []outMsg // sent, not settled, in send order
}

type outMsg struct {
	key     int
	counter int64
	dc      *amqp091.DeferredConfirmation
}

// NewPublisher returns a publisher that has sent nothing.
func NewPublisher(cfg PublisherConfig) *Publisher {
	p := &Publisher{cfg: cfg, next: make([]int64, len(cfg.Keys)), returned: map[string]bool{}}
	for range cfg.Keys {
		p.confirmed = append(p.confirmed, map[int64]bool{})
	}
	return p
}

// Run publishes until ctx ends, then waits up to flush for the confirms
// of what it sent (republishing after failures meanwhile).
func (p *Publisher) Run(ctx context.Context, flush time.Duration) error {
	defer func() {
		if p.conn != nil {
			p.conn.Close()
		}
	}()
	if err := p.connect(ctx); err != nil {
		return err
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	last, owed := time.Now(), 0.0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
			continue
		case now := <-tick.C:
			// after a stall, at most 100 ms of backlog: the rate is a rate
			owed = min(owed+p.cfg.Rate*now.Sub(last).Seconds(), p.cfg.Rate/10+1)
			last = now
		}
		broken := p.settle()
		for ; owed >= 1 && !broken; owed-- {
			broken = p.send(p.assign()) != nil
		}
		if broken {
			if err := p.recover(ctx); err != nil {
				return p.flush(flush)
			}
		}
	}
	return p.flush(flush)
}

// flush waits for the unsettled messages.
func (p *Publisher) flush(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if p.settle() {
			if err := p.recover(ctx); err != nil {
				return fmt.Errorf("flush: %d messages unconfirmed: %w", len(p.fifo), err)
			}
		}
		if len(p.fifo) == 0 {
			p.drainReturns()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush: %d messages unconfirmed after %s", len(p.fifo), d)
		case <-tick.C:
		}
	}
}

// assign takes the next counter of the next key.
func (p *Publisher) assign() outMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	var total int64
	for _, n := range p.next {
		total += n
	}
	k := int(total % int64(len(p.next)))
	p.next[k]++
	return outMsg{key: k, counter: p.next[k]}
}

// send publishes m on the current channel and queues it for its confirm.
func (p *Publisher) send(m outMsg) error {
	p.fifo = append(p.fifo, m)
	c := strconv.FormatInt(m.counter, 10)
	dc, err := p.ch.PublishWithDeferredConfirmWithContext(context.Background(), p.cfg.Exchange,
		p.cfg.App+"."+p.cfg.Keys[m.key], true, false, amqp091.Publishing{
			ContentType: "application/json", MessageId: c, Body: []byte(`{"c":` + c + `}`),
		})
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	p.fifo[len(p.fifo)-1].dc = dc
	return nil
}

// settle records the confirms that arrived, oldest first; true when the
// channel broke (what is left in fifo must be republished).
func (p *Publisher) settle() (broken bool) {
	p.drainReturns()
	for len(p.fifo) > 0 {
		m := p.fifo[0]
		if m.dc == nil {
			return true
		}
		select {
		case <-m.dc.Done():
		default:
			return p.ch.IsClosed()
		}
		acked := m.dc.Acked()
		if !acked && p.ch.IsClosed() {
			return true // nacked by the closing channel: unknown
		}
		p.mu.Lock()
		if acked {
			p.confirmed[m.key][m.counter] = true
		} else {
			p.nacked++
		}
		p.mu.Unlock()
		p.fifo = p.fifo[1:]
	}
	return p.ch.IsClosed()
}

func (p *Publisher) drainReturns() {
	for {
		select {
		case r, ok := <-p.returns:
			if !ok {
				return
			}
			p.mu.Lock()
			for k, key := range p.cfg.Keys {
				if r.RoutingKey == p.cfg.App+"."+key {
					p.returned[strconv.Itoa(k)+"/"+r.MessageId] = true
				}
			}
			p.mu.Unlock()
		default:
			return
		}
	}
}

// recover reconnects and republishes every unsettled message in order.
func (p *Publisher) recover(ctx context.Context) error {
	for {
		p.mu.Lock()
		p.reconnects++
		p.mu.Unlock()
		if err := p.connect(ctx); err != nil {
			return err
		}
		old := p.fifo
		p.fifo = nil
		var err error
		for i, m := range old {
			if err = p.send(outMsg{key: m.key, counter: m.counter}); err != nil {
				p.fifo = append(p.fifo, old[i+1:]...)
				break
			}
		}
		if err == nil {
			return nil
		}
	}
}

// connect dials until it has a channel in confirm mode or ctx ends.
func (p *Publisher) connect(ctx context.Context) error {
	if p.conn != nil {
		p.conn.Close()
	}
	props := amqp091.NewConnectionProperties()
	props.SetClientConnectionName(p.cfg.Name)
	var err error
	for {
		if err = p.dial(props); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-time.After(200 * time.Millisecond): // reconnect backoff
		}
	}
}

func (p *Publisher) dial(props amqp091.Table) error {
	conn, err := amqp091.DialConfig(p.cfg.URL, amqp091.Config{Properties: props, Heartbeat: 5 * time.Second})
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Confirm(false)
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("confirm channel: %w", err)
	}
	p.conn, p.ch = conn, ch
	p.returns = ch.NotifyReturn(make(chan amqp091.Return, 1<<16))
	return nil
}

// Next returns, per key, the counter the next value will carry.
func (p *Publisher) Next() []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int64, len(p.next))
	for i, n := range p.next {
		out[i] = n + 1
	}
	return out
}

// Confirmed returns the confirmed counters of key index k, ascending,
// without the ones the broker returned as unroutable.
func (p *Publisher) Confirmed(k int) []int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []int64
	for _, c := range slices.Sorted(maps.Keys(p.confirmed[k])) {
		if !p.returned[strconv.Itoa(k)+"/"+strconv.FormatInt(c, 10)] {
			out = append(out, c)
		}
	}
	return out
}

// Stats returns the counts of the run: nacked, returned, reconnections.
func (p *Publisher) Stats() (nacked, returned, reconnects int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nacked, len(p.returned), p.reconnects
}
