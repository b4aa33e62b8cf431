package userservice

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/middle"
)

type metrics struct {
	accepted   prometheus.Counter
	rejected   *prometheus.CounterVec // by reason
	closed     *prometheus.CounterVec // by close code
	overflows  prometheus.Counter
	commands   *prometheus.CounterVec // by op
	cmdErrors  *prometheus.CounterVec // by error code
	frames     prometheus.Counter
	writes     prometheus.Counter
	writeBytes prometheus.Counter
	// wouldBlock counts pooled writes handed to the connection's own
	// goroutine because its socket would block (writer.go).
	wouldBlock prometheus.Counter

	// messageTimeouts counts connections closed with 1008 because a
	// message did not complete within MessageTimeout.
	messageTimeouts prometheus.Counter

	// Values latest subscriptions did not get because a newer one replaced
	// them in a connection's queue (docs/PROTOCOL.md, "Delivery modes");
	// middle counts reason="rate".
	skippedConflated prometheus.Counter

	// GET /sse streams (docs/PROTOCOL.md, "Server-Sent Events").
	sseAccepted prometheus.Counter
	sseClosed   *prometheus.CounterVec // by reason
}

func newMetrics(reg prometheus.Registerer, s *Server) *metrics {
	m := &metrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_connections_accepted_total", Help: "WebSocket connections upgraded.",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_connections_rejected_total", Help: "Connection attempts refused, by reason.",
		}, []string{"reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_connections_closed_total", Help: "Connections closed, by the close code the server sent (or 1006 when the connection just broke).",
		}, []string{"code"}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_queue_overflows_total", Help: "Connections whose outgoing queue overflowed: WebSocket ones closed with 4008, SSE streams ended (close event 4008).",
		}),
		messageTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_message_timeouts_total", Help: "Connections closed with 1008 because a client message did not arrive whole within --message-timeout of its first byte.",
		}),
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_commands_total", Help: "Client commands received, by op.",
		}, []string{"op"}),
		cmdErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_command_errors_total", Help: "Error replies sent, by error code.",
		}, []string{"code"}),
		frames: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_frames_written_total", Help: "Frames written to clients.",
		}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_socket_writes_total", Help: "Batched socket writes (writev calls) to clients; frames/writes is the batching factor.",
		}),
		writeBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_written_bytes_total", Help: "Bytes written to clients.",
		}),
		skippedConflated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: middle.SkippedValuesName, Help: middle.SkippedValuesHelp, ConstLabels: prometheus.Labels{"reason": "conflated"},
		}),
		wouldBlock: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_writes_would_block_total", Help: "Writes of the writer pool that found the socket's send buffer full (a slow client): the rest was handed to a goroutine of the connection's own.",
		}),
		sseAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wspush_sse_accepted_total", Help: "SSE streams (GET /sse) started.",
		}),
		sseClosed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wspush_sse_closed_total", Help: "SSE streams ended, by reason: client (it went away), shutdown, too_slow (queue overflow), token_expired, write_error, resync (server fault).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.skippedConflated, m.accepted, m.rejected, m.closed, m.overflows, m.messageTimeouts, m.commands, m.cmdErrors, m.frames, m.writes, m.writeBytes, m.wouldBlock,
			m.sseAccepted, m.sseClosed,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_connections", Help: "Open client connections: WebSocket connections and SSE streams.",
			}, func() float64 { return float64(s.conns.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_sse_connections", Help: "Open SSE streams (GET /sse); they are counted in wspush_connections too.",
			}, func() float64 { return float64(s.streams.len()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_queued_bytes", Help: "Bytes waiting in the outgoing queues of all connections.",
			}, func() float64 { return float64(s.queuedBytes()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "wspush_writer_pool_ready", Help: "Connections with something queued waiting for a writer of the pool; frames queued to them meanwhile share their write.",
			}, func() float64 { return float64(s.pool.waiting()) }),
		)
	}
	return m
}
