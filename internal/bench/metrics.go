package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ServerSample is what wsbench reads of a server's /metrics at one moment.
type ServerSample struct {
	At             time.Time `json:"at"`
	RSSBytes       float64   `json:"rss_bytes"`
	CPUSeconds     float64   `json:"cpu_seconds"`
	Goroutines     float64   `json:"goroutines"`
	Connections    float64   `json:"connections"`
	Deliveries     float64   `json:"deliveries"`
	QueueOverflows float64   `json:"queue_overflows"`
}

// add adds a sample of metric name to s, when s keeps that metric; a
// metric with labels is summed over them.
func (s *ServerSample) add(name string, v float64) bool {
	switch name {
	case "process_resident_memory_bytes":
		s.RSSBytes += v
	case "process_cpu_seconds_total":
		s.CPUSeconds += v
	case "go_goroutines":
		s.Goroutines += v
	case "wspush_connections":
		s.Connections += v
	case "wspush_deliveries_total":
		s.Deliveries += v
	case "wspush_queue_overflows_total":
		s.QueueOverflows += v
	default:
		return false
	}
	return true
}

// scrape reads base/metrics.
func scrape(ctx context.Context, client *http.Client, base string) (ServerSample, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return ServerSample{}, fmt.Errorf("metrics of %s: %w", base, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return ServerSample{}, fmt.Errorf("metrics of %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ServerSample{}, fmt.Errorf("metrics of %s: HTTP %d", base, resp.StatusCode)
	}
	s, err := parseMetrics(resp.Body)
	if err != nil {
		return ServerSample{}, fmt.Errorf("metrics of %s: %w", base, err)
	}
	s.At = time.Now()
	return s, nil
}

// parseMetrics reads the Prometheus text format, keeping the metrics of
// ServerSample. Only what that format's writers emit is handled: comment
// lines, then `name{label="value",...} value [timestamp]`.
func parseMetrics(r io.Reader) (ServerSample, error) {
	var s ServerSample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		name, rest, err := splitSample(text)
		if err != nil {
			return s, fmt.Errorf("line %d: %w", line, err)
		}
		if !s.add(name, 0) {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return s, fmt.Errorf("line %d: %s has no value", line, name)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return s, fmt.Errorf("line %d: %s: %w", line, name, err)
		}
		s.add(name, v)
	}
	if err := sc.Err(); err != nil {
		return s, fmt.Errorf("read: %w", err)
	}
	return s, nil
}

// splitSample splits a sample line into the metric name and what follows
// its labels.
func splitSample(line string) (name, rest string, err error) {
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return "", "", fmt.Errorf("no value in %q", line)
	}
	name = line[:i]
	if line[i] != '{' {
		return name, line[i:], nil
	}
	inQuote := false
	for j := i + 1; j < len(line); j++ {
		switch c := line[j]; {
		case inQuote && c == '\\':
			j++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '}':
			return name, line[j+1:], nil
		}
	}
	return "", "", fmt.Errorf("unterminated labels in %q", line)
}
