// Package amqp is the RabbitMQ side of a wspush cluster: the partitioned
// ingest that consumes integrators' publications (docs/PROTOCOL.md,
// "Ingest"). Conn keeps a node's connection up and declares the topology;
// Ingest divides the partition queues among the nodes through claims and
// sequences their messages with the claims' fencing tokens.
package amqp

import (
	"errors"
	"fmt"
	"strconv"
)

// Topology names the RabbitMQ objects of the ingest (docs/PROTOCOL.md,
// "Topology"). The zero value of a field means its default. Every node of a
// cluster must use the same Topology.
type Topology struct {
	// Prefix starts every exchange and queue name (default "wspush").
	Prefix string
	// Partitions is the number of partition queues (default 8, at most
	// 1024). Above 1 they are fed by an exchange of the consistent-hash
	// plugin; 1 needs no plugin.
	Partitions int
}

// Defaults and limits of Topology.
const (
	DefaultPrefix     = "wspush"
	DefaultPartitions = 8
	MaxPartitions     = 1024
)

// maxName is the longest exchange or queue name (an AMQP short string).
const maxName = 255

// WithDefaults returns t with its zero fields set to their defaults.
func (t Topology) WithDefaults() Topology {
	if t.Prefix == "" {
		t.Prefix = DefaultPrefix
	}
	if t.Partitions == 0 {
		t.Partitions = DefaultPartitions
	}
	return t
}

// Validate reports an invalid field (zero fields are valid: defaults).
func (t Topology) Validate() error {
	if t.Partitions < 0 || t.Partitions > MaxPartitions {
		return fmt.Errorf("partitions %d: must be 1 to %d", t.Partitions, MaxPartitions)
	}
	t = t.WithDefaults()
	// The longest name is the last partition queue's.
	if longest := t.Queue(t.Partitions - 1); len(longest) > maxName {
		return fmt.Errorf("prefix %q: too long (queue %q is over %d bytes)", t.Prefix, longest, maxName)
	}
	return nil
}

// Exchange is where integrators publish: "<prefix>.ingest" (topic, durable).
func (t Topology) Exchange() string { return t.Prefix + ".ingest" }

// HashExchange is "<prefix>.ingest.hash" (x-consistent-hash, durable),
// bound to Exchange with "#"; not used with one partition.
func (t Topology) HashExchange() string { return t.Prefix + ".ingest.hash" }

// Queue names partition n: "<prefix>.ingest.<n>".
func (t Topology) Queue(n int) string { return t.Prefix + ".ingest." + strconv.Itoa(n) }

// DeadLetterExchange is "<prefix>.dlx" (fanout, durable).
func (t Topology) DeadLetterExchange() string { return t.Prefix + ".dlx" }

// DeadQueue keeps the dead-lettered messages: "<prefix>.dead".
func (t Topology) DeadQueue() string { return t.Prefix + ".dead" }

// LegacyQueue is the single competing-consumer queue of earlier versions,
// "<prefix>.ingest" (a queue with the name of the exchange). Nothing
// consumes it any more; Conn warns when it still holds messages.
func (t Topology) LegacyQueue() string { return t.Prefix + ".ingest" }

// Exchanges lists the exchanges Conn declares.
func (t Topology) Exchanges() []string {
	if t.Partitions == 1 {
		return []string{t.Exchange(), t.DeadLetterExchange()}
	}
	return []string{t.Exchange(), t.HashExchange(), t.DeadLetterExchange()}
}

// Queues lists the queues Conn declares: the partitions, then the dead
// queue.
func (t Topology) Queues() []string {
	qs := make([]string, 0, t.Partitions+1)
	for n := range t.Partitions {
		qs = append(qs, t.Queue(n))
	}
	return append(qs, t.DeadQueue())
}

// ErrNoHashPlugin is a broker without the consistent-hash exchange type.
var ErrNoHashPlugin = errors.New("RabbitMQ lacks the consistent-hash exchange type needed by more than one ingest partition: " +
	"run `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on the broker (or use --ingest-partitions 1)")
