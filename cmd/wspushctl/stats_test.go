package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
)

// stats scrapes a live demo node: a subscriber's connection and keys, the
// poller's calls and the deliveries it causes.
func TestStatsOfALiveNode(t *testing.T) {
	base, a, _ := wstest.StartApp(t, app.Config{Demo: true})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("demo", "json", nil, "s001", "s002")
	go func() { // keep reading, so that the queue stays empty
		for {
			if _, err := c.NextWithin(wstest.Timeout); err != nil {
				return
			}
		}
	}()

	r := ctl(t, "", "stats", "--url", base, "--interval", "1500ms", "--json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var s stats
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil {
		t.Fatalf("--json: %v\n%s", err, r.stdout)
	}
	switch {
	case s.Connections != 1, s.Subscriptions != 2, s.Channels != 2:
		t.Fatalf("connections %v, subscriptions %v, channels %v; want 1, 2, 2", s.Connections, s.Subscriptions, s.Channels)
	case s.Poller == nil || !s.Poller.Healthy || s.Poller.CallsPerS <= 0 || s.Poller.ValuesPerS <= 0:
		t.Fatalf("poller: %+v", s.Poller)
	case s.PublicationsBySrc["poller"] <= 0 || s.DeliveriesPerS <= 0:
		t.Fatalf("publications %v, deliveries %v/s", s.PublicationsBySrc, s.DeliveriesPerS)
	case s.AMQP != nil || s.Redis != nil:
		t.Fatalf("an embedded node shows AMQP %+v, Redis %+v", s.AMQP, s.Redis)
	case s.Ready != "ready" || !s.NodeReady || s.Process.RSSBytes <= 0:
		t.Fatalf("ready %q %v, RSS %v", s.Ready, s.NodeReady, s.Process.RSSBytes)
	}

	// GET /api/nodes (a node that serves it) lists this node alone.
	if s.Nodes != nil {
		var nr nodesReply
		if err := json.Unmarshal(s.Nodes, &nr); err != nil || nr.Self != a.NodeID() || len(nr.Nodes) != 1 || nr.Nodes[0].ID != a.NodeID() {
			t.Fatalf("nodes: %v %s", err, s.Nodes)
		}
	}

	r = ctl(t, "", "stats", "--url", base, "--interval", "200ms")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if s.Nodes != nil && !strings.Contains(r.stdout, a.NodeID()+" (this)") {
		t.Errorf("no line of this node in:\n%s", r.stdout)
	}
	for _, want := range []string{"connections     1 ", "subscriptions   2 on 2 keys", "poller          healthy", "amqp            off", "redis           off"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no %q in:\n%s", want, r.stdout)
		}
	}
}

// The cluster's nodes of GET /api/nodes are listed after the summary.
func TestStatsListsTheNodes(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{})
	mux := http.NewServeMux()
	for _, p := range []string{"/metrics", "/readyz"} {
		mux.HandleFunc("GET "+p, func(w http.ResponseWriter, r *http.Request) {
			resp, err := http.Get(base + p)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer resp.Body.Close()
			w.WriteHeader(resp.StatusCode)
			_, _ = io.Copy(w, resp.Body)
		})
	}
	mux.HandleFunc("GET /api/nodes", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"self":"node-a","nodes":[
 {"id":"node-a","started":"2026-12-02T03:00:00Z","updated":"2026-12-02T03:00:02Z","connections":12,"subscriptions":40,"keys":40,
  "publications_per_s":3.2,"deliveries_per_s":120.5,"dropped_connections_per_s":0,
  "poller":{"enabled":true,"healthy":true,"ids":40,"last_success":"2026-12-02T03:00:01Z","errors_per_s":0}},
 {"id":"node-b","started":"2026-12-02T03:00:00Z","updated":"2026-12-02T03:00:02Z","connections":7,"subscriptions":9,"keys":9,
  "publications_per_s":0,"deliveries_per_s":1,"dropped_connections_per_s":0.5,"poller":{"enabled":true,"healthy":false}}]}`)
	})
	proxy := startHTTP(t, mux)

	r := ctl(t, "", "stats", "--url", proxy, "--interval", "100ms")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"nodes (2):", "node-a (this)", "12", "120.5", "node-b", "FAILING"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("no %q in:\n%s", want, r.stdout)
		}
	}
	r = ctl(t, "", "stats", "--url", proxy, "--interval", "100ms", "--json")
	var s struct {
		Nodes struct {
			Self  string
			Nodes []struct{ ID string }
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &s); err != nil || s.Nodes.Self != "node-a" || len(s.Nodes.Nodes) != 2 {
		t.Fatalf("--json nodes: %v %+v\n%s", err, s, r.stdout)
	}
}

// A node with --admin-addr serves /metrics there only; stats says so when
// pointed at the main listener. Other failures exit 1 too.
func TestStatsRefusals(t *testing.T) {
	base, a, _ := wstest.StartApp(t, app.Config{AdminAddr: "127.0.0.1:0"})
	r := ctl(t, "", "stats", "--url", base, "--interval", "100ms")
	if r.code != 1 || !strings.Contains(r.stderr, "--admin-addr") {
		t.Fatalf("main listener of a node with --admin-addr: exit %d, stderr %q", r.code, r.stderr)
	}
	r = ctlEnv(t, map[string]string{"WSPUSH_URL": "http://" + a.AdminAddr()}, "", "stats", "--interval", "100ms")
	if r.code != 0 || !strings.Contains(r.stdout, "connections") {
		t.Fatalf("admin listener from WSPUSH_URL: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	notWspush := startHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "# TYPE up gauge\nup 1")
	}))
	if r := ctl(t, "", "stats", "--url", notWspush, "--interval", "100ms"); r.code != 1 || !strings.Contains(r.stderr, "not a wspush node") {
		t.Fatalf("not wspush: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := ctl(t, "", "stats", "--url", "http://127.0.0.1:1", "--interval", "100ms"); r.code != 1 || !strings.Contains(r.stderr, "connection refused") {
		t.Fatalf("nothing listening: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, args := range [][]string{{"stats", "--interval", "1ms"}, {"stats", "extra"}, {"stats", "--url", "127.0.0.1:8080"}} {
		if r := ctl(t, "", args...); r.code != 2 {
			t.Errorf("%q: exit %d, want 2: %s", args, r.code, r.stderr)
		}
	}
}
