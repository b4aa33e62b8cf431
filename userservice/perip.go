package userservice

import (
	"net/netip"
	"sync"
)

// perIP counts the open WebSocket connections of each client address
// (MaxConnectionsPerIP). The address is the TCP peer's, never a header a
// client could forge; IPv6 clients count by /64, the block one subscriber
// usually holds. A zero limit counts nothing.
type perIP struct {
	limit int
	mu    sync.Mutex
	n     map[netip.Addr]int
}

func newPerIP(limit int) *perIP {
	return &perIP{limit: limit, n: make(map[netip.Addr]int)}
}

// clientKey is the address a connection from remote (host:port) counts
// under; ok is false when remote is not an IP address.
func clientKey(remote string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Addr{}, false
	}
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		ip = p.Addr()
	}
	return ip, true
}

// acquire counts one more connection from remote and reports whether it is
// within the limit (when not, nothing is counted).
func (p *perIP) acquire(remote string) bool {
	if p.limit <= 0 {
		return true
	}
	ip, ok := clientKey(remote)
	if !ok {
		return true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[ip] >= p.limit {
		return false
	}
	p.n[ip]++
	return true
}

// release forgets one connection from remote.
func (p *perIP) release(remote string) {
	if p.limit <= 0 {
		return
	}
	ip, ok := clientKey(remote)
	if !ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[ip] <= 1 {
		delete(p.n, ip)
	} else {
		p.n[ip]--
	}
}
