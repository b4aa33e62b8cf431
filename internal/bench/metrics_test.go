package bench

import (
	"strings"
	"testing"
)

func TestParseMetrics(t *testing.T) {
	text := `# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 1.2345e+07
process_cpu_seconds_total 3.25
go_goroutines 42
wspush_connections 1000
wspush_deliveries_total 12345
wspush_queue_overflows_total 0
wspush_connections_closed_total{code="1000"} 7
wspush_http_publish_requests_total{code="200"} 5
wspush_odd{label="with } and \" and spaces"} 99
go_gc_duration_seconds{quantile="0.5"} 1.5e-05

`
	s, err := parseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := ServerSample{RSSBytes: 12345000, CPUSeconds: 3.25, Goroutines: 42, Connections: 1000, Deliveries: 12345}
	if s != want {
		t.Fatalf("got %+v\nwant %+v", s, want)
	}
}

func TestParseMetricsSumsLabels(t *testing.T) {
	s, err := parseMetrics(strings.NewReader("wspush_deliveries_total{shard=\"a\"} 2\nwspush_deliveries_total{shard=\"b\"} 3 1700000000000\n"))
	if err != nil || s.Deliveries != 5 {
		t.Fatalf("got %+v, %v; want 5 deliveries", s, err)
	}
}

func TestParseMetricsErrors(t *testing.T) {
	for _, bad := range []string{
		"wspush_connections\n",
		"wspush_connections{a=\"b\" 3\n",
		"go_goroutines many\n",
		"go_goroutines{}\n",
	} {
		if _, err := parseMetrics(strings.NewReader(bad)); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}
