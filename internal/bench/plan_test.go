package bench

import (
	"strings"
	"testing"
)

func testPlan() Plan {
	return Plan{App: "bench", KeyPrefix: "s", Conns: 12, KeysPerConn: 2, KeySpace: 6,
		URLs: []string{"ws://127.0.0.1:1/ws", "ws://127.0.0.1:2/ws"}, SourceIPs: 3, Format: "binary", Source: SourceHTTP}
}

func TestPlanSpreadsConnections(t *testing.T) {
	p := testPlan()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	subs := p.subscribers()
	var total uint32
	for n := range subs {
		for k := range subs[n] {
			total += subs[n][k]
		}
	}
	if total != uint32(p.Conns*p.KeysPerConn) {
		t.Fatalf("%d subscriptions, want %d", total, p.Conns*p.KeysPerConn)
	}
	ips := map[string]int{}
	for c := range p.Conns {
		if p.keyOf(c, 0) == p.keyOf(c, 1) {
			t.Fatalf("connection %d subscribes one key twice", c)
		}
		ip := p.sourceIP(c)
		if !ip.IsLoopback() || ip.To4() == nil {
			t.Fatalf("source %v", ip)
		}
		ips[ip.String()]++
	}
	if len(ips) != 3 || ips["127.0.0.1"] != 4 || ips["127.0.0.3"] != 4 {
		t.Fatalf("source addresses %v, want 4 each on 127.0.0.1-3", ips)
	}
	p.SourceIPs = 1
	if p.sourceIP(5) != nil {
		t.Fatal("one source address: let the kernel choose")
	}
	d := newDialers(&p, 1)
	if len(d) != 1 || dialerFor(&p, d, 7) != d[0] {
		t.Fatal("dialers")
	}
	p.SourceIPs = 4
	d = newDialers(&p, 1)
	for c := range p.Conns {
		want := p.sourceIP(c)
		nd := d[int(want.To4()[3])-1]
		if dialerFor(&p, d, c) != nd {
			t.Fatalf("connection %d: wrong dialer", c)
		}
	}
}

func TestPlanValidate(t *testing.T) {
	for name, mutate := range map[string]func(*Plan){
		"bad app":        func(p *Plan) { p.App = "a b" },
		"no conns":       func(p *Plan) { p.Conns = 0 },
		"key space":      func(p *Plan) { p.KeySpace = 1 },
		"no url":         func(p *Plan) { p.URLs = nil },
		"source ips":     func(p *Plan) { p.SourceIPs = 300 },
		"format":         func(p *Plan) { p.Format = "xml" },
		"bad key prefix": func(p *Plan) { p.KeyPrefix = "s." },
	} {
		p := testPlan()
		mutate(&p)
		if err := p.Validate(); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
	c := WorkerConfig{Plan: testPlan(), First: 10, Count: 5, RampRate: 1, MaxDialing: 1, HandshakeTimeout: 1, ProgressEvery: 1}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("range past the plan: %v", err)
	}
}
