package bench

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sampleTable is a table report with measured, skipped and failed steps.
func sampleTable() *Report {
	step := func(conns int, avg, p99, errRate float64) StepReport {
		h := NewHistogram()
		for _, v := range latencies(uint64(conns), 200) {
			h.Record(v)
		}
		before := &ServerSample{RSSBytes: 10 << 20, CPUSeconds: 1, Connections: 0}
		ready := &ServerSample{RSSBytes: 20 << 20, CPUSeconds: 2, Connections: float64(conns)}
		after := &ServerSample{RSSBytes: 21 << 20, CPUSeconds: 3, Connections: float64(conns), Deliveries: float64(conns * 10)}
		nodes := []NodeFigures{nodeFigures("ws://127.0.0.1:8080/ws", before, ready, after, nil)}
		return StepReport{
			Connections: conns, Workers: 1, ServerNodes: 1, SourceIPs: 1, Connected: int64(conns),
			Latency:   Summary{Count: 200, Avg: avg, P50: avg, P99: p99, P999: p99, Max: p99 * 2},
			Loss:      Loss{Expected: uint64(conns * 10), Received: uint64(conns * 10), Distinct: uint64(conns * 10)},
			ErrorRate: errRate, PerServer: nodes, Server: totals(nodes), LatencyHistogram: h, HandshakeHistogram: h,
			CloseCodes: map[string]int{"1006": 1},
		}
	}
	return &Report{
		Scenario: "table", Started: time.Unix(1700000000, 0).UTC(), Finished: time.Unix(1700000100, 0).UTC(),
		Servers: []string{"ws://127.0.0.1:8080/ws"}, Options: ReportOptions{Format: "binary", App: "bench", RampRate: 1000},
		Table: &TableConfig{Steps: []int{500, 1500, 5000, 50000, 100000}, Source: SourceHTTP, Duration: 10 * time.Second},
		Steps: []StepReport{
			step(500, 0.8, 2.5, 0), step(1500, 1.1, 3.9, 0), step(5000, 2.3, 9.1, 0.0002),
			{Connections: 50000, Error: "connect: worker 1 exited"},
			{Connections: 100000, Skipped: "needs 6 server nodes at 19900 connections each, 1 given (--url)"},
		},
		Reference: PaperReference(),
	}
}

func TestReportJSONRoundTrip(t *testing.T) {
	r := sampleTable()
	path := filepath.Join(t.TempDir(), "r.json")
	if err := WriteJSON(path, r); err != nil {
		t.Fatal(err)
	}
	back, err := ReadJSON(path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(back)
	if !bytes.Equal(a, b) {
		t.Fatalf("round trip changed the report:\n%s\n%s", a, b)
	}
	if back.Steps[0].LatencyHistogram.Quantile(0.99) != r.Steps[0].LatencyHistogram.Quantile(0.99) {
		t.Fatal("histogram lost in the round trip")
	}
	if back.Steps[0].Server.KiBPerConn != 11<<20/1024/500.0 {
		t.Fatalf("KiB per connection %g", back.Steps[0].Server.KiBPerConn)
	}
}

func TestWriteTextTable(t *testing.T) {
	var b bytes.Buffer
	if err := WriteText(&b, sampleTable()); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"connections", "avg ms", "p99 ms", "error %",
		"1500", "3.90", "100000 connections: skipped: needs 6 server nodes", "50000 connections: failed: connect: worker 1 exited",
		"at 500 connections: 1047 ms average; wspush: 0.800 ms, 1309× faster",
		"at 1500 connections: 3242 ms average, 1.83% errors",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestWriteTextSummaries(t *testing.T) {
	r := sampleTable()
	r.Scenario, r.Table = "fanout", nil
	r.Fanout = &FanoutConfig{Subscribers: 500, Keys: 1, Rate: 20, Duration: 10 * time.Second}
	r.Steps = r.Steps[:1]
	var b bytes.Buffer
	if err := WriteText(&b, r); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"fanout: 500 subscribers on 1 key(s), 20 values/s", "latency ms:", "p99.9", "loss:", "per CPU-second", "KiB/connection"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}
