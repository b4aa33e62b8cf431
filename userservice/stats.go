package userservice

import dto "github.com/prometheus/client_model/go"

// SlowClosed counts the connections closed with 4008 since the server was
// created because their outgoing queue overflowed: the slow consumers the
// operator endpoint (docs/PROTOCOL.md, "HTTP server", GET /api/nodes) shows
// per second. It reads the server's own wspush_queue_overflows_total
// counter, not the registry.
func (s *Server) SlowClosed() uint64 {
	var m dto.Metric
	if err := s.metrics.overflows.Write(&m); err != nil {
		return 0
	}
	return uint64(m.GetCounter().GetValue())
}
