package chaos

import (
	"context"
	"fmt"
	"net"
	"sync"
)

// Proxy forwards TCP connections from a loopback port to a target (the
// nodes' Redis), and can stop forwarding for a while without closing
// anything: a stall only this run's nodes see.
type Proxy struct {
	ln     net.Listener
	target string
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	resume   chan struct{} // non-nil while paused; closed by Resume
	conns    map[net.Conn]bool
	upstream map[string]bool // local addresses of the connections to target
}

// StartProxy listens on 127.0.0.1:0 and forwards to target.
func StartProxy(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("proxy listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{ln: ln, target: target, ctx: ctx, cancel: cancel, conns: map[net.Conn]bool{}, upstream: map[string]bool{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is where the proxy listens.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Pause stops forwarding: bytes already read wait, the rest waits in the
// kernel's buffers.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume == nil {
		p.resume = make(chan struct{})
	}
}

// Resume forwards again.
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resume != nil {
		close(p.resume)
		p.resume = nil
	}
}

// Upstream reports whether addr is the local address of one of the
// proxy's connections to the target: how Redis sees this run's nodes.
func (p *Proxy) Upstream(addr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.upstream[addr]
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() {
	p.cancel()
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.Resume()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		var d net.Dialer
		up, err := d.DialContext(p.ctx, "tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		if p.ctx.Err() != nil { // Close has already closed the others
			p.mu.Unlock()
			up.Close()
			down.Close()
			return
		}
		p.conns[down], p.conns[up] = true, true
		p.upstream[up.LocalAddr().String()] = true
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(up, down) })
	}
}

// serve forwards both ways until either side closes, then forgets the pair
// (a port Redis saw may be reused by another run's client later).
func (p *Proxy) serve(up, down net.Conn) {
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(up, down) })
	p.pipe(down, up)
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, up)
	delete(p.conns, down)
	delete(p.upstream, up.LocalAddr().String())
	p.mu.Unlock()
}

// pipe copies src to dst until either fails, then closes both.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer func() {
		dst.Close()
		src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// wait blocks while the proxy is paused; false when it is closed.
func (p *Proxy) wait() bool {
	p.mu.Lock()
	r := p.resume
	p.mu.Unlock()
	if r == nil {
		return p.ctx.Err() == nil
	}
	select {
	case <-r:
		return p.ctx.Err() == nil
	case <-p.ctx.Done():
		return false
	}
}
