package client_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/userservice/client"
)

// Delivery modes against a real server (docs/PROTOCOL.md, Delivery modes).

// checkIncreasing fails unless seqs grow strictly (a latest key may skip,
// never repeat or go back).
func checkIncreasing(t *testing.T, key string, seqs []uint64) {
	t.Helper()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("%s: seq %d after %d (all: %s)", key, seqs[i], seqs[i-1], short(seqs))
		}
	}
}

// TestLatestMaxRateServer: a key published at 50/s, subscribed latest
// with MaxRate 2: at most 2 values a second (plus the first), always
// growing, ending with the last value published. A stream key of the same
// connection gets every value.
func TestLatestMaxRateServer(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	appName := uniqueName("lat-")
	mustPublish(t, s.base(), appName, "hot", `{"i":0}`)
	mustPublish(t, s.base(), appName, "all", `{"i":0}`)
	c := dial(t, client.Config{URL: s.wsURL()})
	lat, str := newRecorder(), newRecorder()
	subscribe(t, c, appName, []string{"hot"}, client.SubscribeOptions{Mode: client.ModeLatest, MaxRate: 2}, lat)
	subscribe(t, c, appName, []string{"all"}, client.SubscribeOptions{}, str)
	start := time.Now()

	const n = 150 // 3 s at 50/s
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last, lastAll uint64
	for i := 1; i <= n; i++ {
		<-tick.C
		last = mustPublish(t, s.base(), appName, "hot", fmt.Sprintf(`{"i":%d}`, i))
		if i%10 == 0 {
			lastAll = mustPublish(t, s.base(), appName, "all", fmt.Sprintf(`{"i":%d}`, i))
		}
	}
	lat.waitSeq(t, "hot", last) // the newest value is never held back for good
	elapsed := time.Since(start)
	got := lat.seqs("hot")
	checkIncreasing(t, "hot", got)
	if got[len(got)-1] != last {
		t.Fatalf("last value seq %d, want %d", got[len(got)-1], last)
	}
	// At most 2 a second over the whole run, the first value included:
	// 1 + 2·elapsed, and one more for the interval in progress.
	if limit := 2 + int(2*elapsed.Seconds()); len(got) > limit {
		t.Fatalf("%d values in %s at MaxRate 2 (at most %d): %s", len(got), elapsed.Round(time.Millisecond), limit, short(got))
	}
	t.Logf("%d publications in %s: %d values delivered: %s", n, elapsed.Round(time.Millisecond), len(got), short(got))
	str.waitSeq(t, "all", lastAll)
	checkSeqs(t, "all", str.seqs("all"), 1, lastAll)
	for _, r := range []*recorder{lat, str} {
		if _, resets, _ := r.snapshot(); len(resets) != 0 {
			t.Errorf("resets %v", resets)
		}
	}
	lat.waitAcks(t, 1)
	if acks, _, _ := lat.snapshot(); acks[0].Positions["hot"].Seq != 1 {
		t.Errorf("ack %+v", acks[0])
	}
}

// TestLatestResumeServer: connections cut while a latest key (no MaxRate)
// and a stream key are published to: every resume keeps the latest mode
// (its values keep growing, with nothing repeated) and recovers, the
// latest key ends with the last value, and the stream key gets every one.
func TestLatestResumeServer(t *testing.T) {
	s := startServer(t, app.Config{Middle: middle.Config{HistorySize: 10000}}, "127.0.0.1:0")
	px := newProxy(t, s.addr)
	st := &states{}
	c := dial(t, client.Config{URL: "ws://" + px.addr() + "/ws", OnState: st.on})
	appName := uniqueName("latcut-")
	lat, str := newRecorder(), newRecorder()
	subscribe(t, c, appName, []string{"x"}, client.SubscribeOptions{Mode: client.ModeLatest, Format: client.FormatBinary}, lat)
	subscribe(t, c, appName, []string{"y"}, client.SubscribeOptions{}, str)
	stop := make(chan struct{})
	done := stream(t, s.base, appName, []string{"x", "y"}, stop)
	cutThrice(t, px, st, func() int { return str.count("y") })
	close(stop)
	last := done()
	lat.waitSeq(t, "x", last["x"])
	str.waitSeq(t, "y", last["y"])
	checkIncreasing(t, "x", lat.seqs("x"))
	checkSeqs(t, "y", str.seqs("y"), 1, last["y"])
	if pos := c.Positions(appName)["x"]; pos.Seq != last["x"] {
		t.Errorf("position of x %v, want seq %d", pos, last["x"])
	}
	for _, r := range []*recorder{lat, str} {
		acks, resets, _ := r.snapshot()
		if len(resets) != 0 {
			t.Errorf("resets %v", resets)
		}
		resumed := 0
		for _, a := range acks {
			if a.Resumed {
				resumed++
				if !a.Recovered {
					t.Errorf("not recovered: %+v", a)
				}
			}
		}
		if resumed < 3 {
			t.Errorf("%d resumed acks, want 3", resumed)
		}
	}
	t.Logf("latest x: %d of %d values; stream y: %d", lat.count("x"), last["x"], str.count("y"))
}

// TestMaxBandwidthServer: the server takes the client's max_bandwidth
// (values flow), and refuses a bad one before the upgrade (400), which the
// client cannot send.
func TestMaxBandwidthServer(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	appName := uniqueName("bw-")
	c := dial(t, client.Config{URL: s.wsURL(), MaxBandwidth: 4096})
	rec := newRecorder()
	subscribe(t, c, appName, []string{"k"}, client.SubscribeOptions{Mode: client.ModeLatest}, rec)
	var last uint64
	for i := 1; i <= 20; i++ {
		last = mustPublish(t, s.base(), appName, "k", fmt.Sprintf(`{"i":%d,"pad":%q}`, i, strings.Repeat("x", 500)))
	}
	rec.waitSeq(t, "k", last)
	checkIncreasing(t, "k", rec.seqs("k"))

	ws, resp, err := websocket.DefaultDialer.Dial(s.wsURL()+"?max_bandwidth=10", nil)
	if err == nil {
		ws.Close()
		t.Fatal("max_bandwidth=10: upgraded")
	}
	if resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("max_bandwidth=10: %v %v, want 400", resp, err)
	}
	resp.Body.Close()
}
