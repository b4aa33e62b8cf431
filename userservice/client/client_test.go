package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/middle"
	"github.com/wspush/wspush/userservice"
	"github.com/wspush/wspush/userservice/client"
)

// TestValuesInOrder: a fresh subscribe gets the latest value, then every
// value of each key in order, with the ack's epoch.
func TestValuesInOrder(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	keys := []string{"k1", "k2", "k3"}
	for _, k := range keys {
		for i := 1; i <= 5; i++ {
			mustPublish(t, s.base(), "order", k, fmt.Sprintf(`{"n":%d}`, i))
		}
	}
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on})
	rec := newRecorder()
	sub := subscribe(t, c, "order", keys, client.SubscribeOptions{}, rec)
	if got := sub.Keys(); len(got) != 3 {
		t.Fatalf("Keys() = %v", got)
	}
	rec.waitAcks(t, 1)
	acks, _, _ := rec.snapshot()
	if len(acks) != 1 || acks[0].Resumed || len(acks[0].Positions) != 3 || acks[0].Positions["k1"].Seq != 5 {
		t.Fatalf("acks = %+v, want one, not resumed, k1 at seq 5", acks)
	}
	epoch := acks[0].Positions["k1"].Epoch

	const n = 50
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 6; i <= 5+n; i++ {
				if _, ok := publish(s.base(), "order", k, fmt.Sprintf(`{"n":%d}`, i)); !ok {
					t.Errorf("publish %s %d refused", k, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	eventually(t, 10*time.Second, func() error {
		for _, k := range keys {
			if rec.count(k) < n+1 {
				return fmt.Errorf("%s: %d values", k, rec.count(k))
			}
		}
		return nil
	})
	for _, k := range keys {
		checkSeqs(t, k, rec.seqs(k), 5, 5+n)
	}
	rec.mu.Lock()
	for i, p := range rec.data["k1"] {
		want := fmt.Sprintf(`{"n":%d}`, 5+i)
		if string(p.Data) != want || !p.JSON || p.App != "order" || p.Epoch != epoch || p.Time.IsZero() {
			t.Errorf("value %d: %+v, want data %s, JSON, epoch %s", i, p, want, epoch)
		}
	}
	rec.mu.Unlock()
	if pos := c.Positions("order"); pos["k2"] != (client.Position{Seq: 5 + n, Epoch: acks[0].Positions["k2"].Epoch}) {
		t.Errorf("Positions = %v", pos)
	}
	if c.State() != client.StateOpen || st.count(client.StateReconnecting) != 0 {
		t.Errorf("state %v, events %v", c.State(), st.list())
	}
	if ev := st.list(); len(ev) < 2 || ev[0].State != client.StateConnecting || ev[1].State != client.StateOpen {
		t.Errorf("state events %v, want connecting then open", ev)
	}
}

// stream publishes to keys of appName until stop, one value after the
// other per key, retrying a refused value (the server is restarting) until
// it is taken. It returns, per key, the highest seq the server gave.
func stream(t *testing.T, base func() string, appName string, keys []string, stop <-chan struct{}) func() map[string]uint64 {
	var mu sync.Mutex
	last := map[string]uint64{}
	var wg sync.WaitGroup
	for _, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; ; i++ {
				for {
					select {
					case <-stop:
						return
					default:
					}
					seq, ok := publish(base(), appName, k, fmt.Sprintf(`{"i":%d}`, i))
					if ok {
						mu.Lock()
						last[k] = max(last[k], seq)
						mu.Unlock()
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
				time.Sleep(3 * time.Millisecond)
			}
		}()
	}
	return func() map[string]uint64 {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return last
	}
}

func (r *recorder) waitSeq(t *testing.T, key string, seq uint64) {
	t.Helper()
	eventually(t, 20*time.Second, func() error {
		got := r.seqs(key)
		if len(got) == 0 || got[len(got)-1] < seq {
			return fmt.Errorf("%s: last of %d values is not seq %d", key, len(got), seq)
		}
		return nil
	})
}

func (s *server) waitReady(t *testing.T) {
	t.Helper()
	eventually(t, 15*time.Second, func() error { return s.app.Ready() })
}

// TestServerRestartRedisRecovers: the server stops mid-stream and starts
// again on the same address with the same Redis: the client resumes, the
// ack says recovered, and every value arrives exactly once, in order.
func TestServerRestartRedisRecovers(t *testing.T) {
	rs := newRedisStore(t)
	cfg := app.Config{NodeID: uniqueName("n-"), RedisURL: rs.url, Redis: rs.cfg}
	s := startServer(t, cfg, "127.0.0.1:0")
	s.waitReady(t)

	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on})
	rec := newRecorder()
	keys := []string{"a", "b"}
	subscribe(t, c, "restart", keys, client.SubscribeOptions{}, rec)

	stop := make(chan struct{})
	var addr atomic.Value
	addr.Store(s.base())
	done := stream(t, func() string { return addr.Load().(string) }, "restart", keys, stop)
	eventually(t, 10*time.Second, func() error {
		if rec.count("a") < 20 {
			return errors.New("waiting for 20 values")
		}
		return nil
	})
	s.restart()
	s.waitReady(t)
	eventually(t, 20*time.Second, func() error {
		if st.count(client.StateOpen) < 2 {
			return errors.New("not reconnected")
		}
		return nil
	})
	n := rec.count("a")
	eventually(t, 10*time.Second, func() error {
		if rec.count("a") < n+20 {
			return errors.New("waiting for 20 more values")
		}
		return nil
	})
	close(stop)
	last := done()
	for _, k := range keys {
		rec.waitSeq(t, k, last[k])
		checkSeqs(t, k, rec.seqs(k), 1, last[k])
	}
	acks, resets, log := rec.snapshot()
	if len(resets) != 0 {
		t.Errorf("resets %v", resets)
	}
	recovered := false
	for _, a := range acks {
		recovered = recovered || a.Resumed && a.Recovered
		if a.Resumed && !a.Recovered {
			t.Errorf("an ack resumed without recovering: %+v", a)
		}
	}
	if !recovered {
		t.Errorf("no recovered ack; log %v", log[:min(len(log), 10)])
	}
	if st.count(client.StateReconnecting) == 0 {
		t.Errorf("no reconnect seen: %v", st.list())
	}
}

// TestEmbeddedRestartSurfacesReset: an embedded server that restarts has
// lost every stream: the client gets an ack that did not recover, a reset
// with reason epoch, then the new epoch's values.
func TestEmbeddedRestartSurfacesReset(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on})
	rec := newRecorder()
	subscribe(t, c, "emb", []string{"k"}, client.SubscribeOptions{}, rec)
	for i := 1; i <= 10; i++ {
		mustPublish(t, s.base(), "emb", "k", strconv.Itoa(i))
	}
	rec.waitSeq(t, "k", 10)
	rec.waitAcks(t, 1)
	acks, _, _ := rec.snapshot()
	oldEpoch := acks[0].Positions["k"].Epoch

	s.restart()
	eventually(t, 20*time.Second, func() error {
		acks, _, _ := rec.snapshot()
		if len(acks) < 2 {
			return errors.New("no resubscribe yet")
		}
		return nil
	})
	for i := 1; i <= 5; i++ {
		mustPublish(t, s.base(), "emb", "k", strconv.Itoa(100+i))
	}
	eventually(t, 10*time.Second, func() error {
		if rec.count("k") < 15 {
			return fmt.Errorf("%d values", rec.count("k"))
		}
		return nil
	})
	acks, resets, log := rec.snapshot()
	if a := acks[1]; !a.Resumed || a.Recovered {
		t.Errorf("resubscribe ack %+v, want resumed and not recovered", a)
	}
	r := resets["k"]
	if len(r) != 1 || r[0].Reason != "epoch" || r[0].Epoch == oldEpoch || r[0].Seq != 0 {
		t.Fatalf("resets %+v, want one of reason epoch at seq 0 of a new epoch", r)
	}
	rec.mu.Lock()
	got := rec.data["k"]
	rec.mu.Unlock()
	for i, p := range got[10:] {
		if p.Seq != uint64(i+1) || p.Epoch != r[0].Epoch || string(p.Data) != strconv.Itoa(101+i) {
			t.Errorf("after the reset, value %d: seq %d epoch %s data %s", i, p.Seq, p.Epoch, p.Data)
		}
	}
	if want := []string{"data k 10", "ack resumed=true recovered=false", "reset k 0 epoch", "data k 1"}; !containsRun(log, want) {
		t.Errorf("log %v, want the run %v", log, want)
	}
	if pos := c.Positions("emb")["k"]; pos != (client.Position{Seq: 5, Epoch: r[0].Epoch}) {
		t.Errorf("position %v", pos)
	}
}

func containsRun(log, run []string) bool {
	for i := 0; i+len(run) <= len(log); i++ {
		if strings.Join(log[i:i+len(run)], "|") == strings.Join(run, "|") {
			return true
		}
	}
	return false
}

// cutThrice cuts the proxied connection three times, each once got() has
// reached 15 more values, and waits for the client to reconnect.
func cutThrice(t *testing.T, px *proxy, st *states, got func() int) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		eventually(t, 10*time.Second, func() error {
			if got() < 15*i {
				return errors.New("waiting for values")
			}
			return nil
		})
		px.cut()
		eventually(t, 10*time.Second, func() error {
			if st.count(client.StateOpen) < i+1 {
				return errors.New("not reconnected")
			}
			return nil
		})
	}
}

// TestAbruptDisconnectResumes: connections cut without a close frame
// (1006) while values flow: every value arrives once, in order, and the
// resumes recover.
func TestAbruptDisconnectResumes(t *testing.T) {
	s := startServer(t, app.Config{Middle: middle.Config{HistorySize: 10000}}, "127.0.0.1:0")
	px := newProxy(t, s.addr)
	st := &states{}
	c := dial(t, client.Config{URL: "ws://" + px.addr() + "/ws", OnState: st.on})
	rec := newRecorder()
	keys := []string{"x", "y"}
	subscribe(t, c, "cut", keys, client.SubscribeOptions{Format: client.FormatBinary}, rec)
	stop := make(chan struct{})
	done := stream(t, s.base, "cut", keys, stop)
	cutThrice(t, px, st, func() int { return rec.count("x") })
	close(stop)
	last := done()
	for _, k := range keys {
		rec.waitSeq(t, k, last[k])
		checkSeqs(t, k, rec.seqs(k), 1, last[k])
	}
	acks, resets, _ := rec.snapshot()
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
	for _, e := range st.list() {
		if e.State == client.StateReconnecting && e.Code != 0 {
			t.Errorf("a cut connection reported close code %d", e.Code)
		}
	}
}

// TestBinaryFormat: binary and JSON subscriptions hand the Handler the
// same publications, JSON and bytes alike.
func TestBinaryFormat(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	c := dial(t, client.Config{URL: s.wsURL()})
	bin, js := newRecorder(), newRecorder()
	subscribe(t, c, "bin", []string{"k"}, client.SubscribeOptions{Format: client.FormatBinary}, bin)
	subscribe(t, c, "bin", []string{"j"}, client.SubscribeOptions{Format: client.FormatJSON}, js)
	for _, k := range []string{"k", "j"} {
		mustPublish(t, s.base(), "bin", k, `{"temp":21.5}`)
		if _, ok := post(s.base(), fmt.Sprintf(`{"app":"bin","key":%q,"b64":"AAEC/w==","ts":1763812345123}`, k)); !ok {
			t.Fatal("publish b64 refused")
		}
	}
	for _, x := range []struct {
		r   *recorder
		key string
	}{{bin, "k"}, {js, "j"}} {
		eventually(t, 5*time.Second, func() error {
			if x.r.count(x.key) < 2 {
				return errors.New("waiting")
			}
			return nil
		})
		x.r.mu.Lock()
		got := x.r.data[x.key]
		x.r.mu.Unlock()
		if p := got[0]; !p.JSON || string(p.Data) != `{"temp":21.5}` || p.Seq != 1 || p.Epoch == "" {
			t.Errorf("%s: first %+v", x.key, p)
		}
		if p := got[1]; p.JSON || string(p.Data) != "\x00\x01\x02\xff" || p.Seq != 2 || p.Time.UnixMilli() != 1763812345123 {
			t.Errorf("%s: second %+v", x.key, p)
		}
	}
}

// TestThousandKeys: 1,000 keys in one Subscribe and one Unsubscribe, then
// 100 Unsubscribe calls of one key each, stay under the server's command
// limits (no 1008) and its subscription limit.
func TestThousandKeys(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on})
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("s%04d", i)
	}
	rec := newRecorder()
	subscribe(t, c, "many", keys, client.SubscribeOptions{}, rec)
	rec.waitAcks(t, 10)
	if acks, _, _ := rec.snapshot(); len(acks) != 10 {
		t.Fatalf("%d acks, want 10 commands of 100 keys", len(acks))
	}
	_, err := c.Subscribe(context.Background(), "many", []string{"one-more"}, client.SubscribeOptions{}, rec)
	var cerr *client.CommandError
	if !errors.As(err, &cerr) || cerr.Code != "limit" {
		t.Fatalf("subscribe of the 1001st key: %v, want a limit error", err)
	}
	mustPublish(t, s.base(), "many", "s0999", "1")
	rec.waitSeq(t, "s0999", 1)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Unsubscribe(ctx, "many", keys); err != nil {
		t.Fatal(err)
	}
	if pos := c.Positions("many"); len(pos) != 0 {
		t.Fatalf("%d positions after unsubscribe", len(pos))
	}
	// The dashboard's "Cancel all": one unsubscribe per key.
	sub := subscribe(t, c, "many", keys[:100], client.SubscribeOptions{}, rec)
	start := time.Now()
	var wg sync.WaitGroup
	for _, k := range sub.Keys() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Unsubscribe(ctx, "many", []string{k}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	t.Logf("100 single-key unsubscribes took %s", time.Since(start).Round(time.Millisecond))
	// Still the first connection, and it works.
	subscribe(t, c, "many", []string{"after"}, client.SubscribeOptions{}, rec)
	if n := st.count(client.StateReconnecting); n != 0 || c.State() != client.StateOpen {
		t.Fatalf("state %v after %d reconnects: %v", c.State(), n, st.list())
	}
	if n := metric(t, s, "wspush_connections_closed_total"); n != 0 {
		t.Fatalf("the server closed %v connections", n)
	}
}

// metric sums a counter of the server's /metrics.
func metric(t *testing.T, s *server, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.base() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	sum := 0.0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

// TestUnauthorizedIsTerminal: a bad token gets 4001; Dial reports it and
// nothing reconnects.
func TestUnauthorizedIsTerminal(t *testing.T) {
	s := startServer(t, app.Config{Users: userservice.Config{JWTSecret: []byte("test-secret-of-32-bytes-at-least!")}}, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{URL: s.wsURL(), Token: "not.a.token", MinBackoff: time.Millisecond})
	var ce *client.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 {
		t.Fatalf("Dial: %v, want a CloseError 4001", err)
	}

	st := &states{}
	c, err := client.New(client.Config{URL: s.wsURL(), Token: "not.a.token", MinBackoff: time.Millisecond, OnState: st.on})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-c.Done():
	case <-ctx.Done():
		t.Fatal("the client did not end")
	}
	if !errors.As(c.Err(), &ce) || ce.Code != 4001 {
		t.Fatalf("Err: %v", c.Err())
	}
	if _, err := c.Subscribe(ctx, "a", []string{"b"}, client.SubscribeOptions{}, newRecorder()); !errors.As(err, &ce) {
		t.Fatalf("Subscribe on an ended client: %v", err)
	}
	eventually(t, 5*time.Second, func() error {
		if n := st.count(client.StateClosed); n != 1 {
			return fmt.Errorf("%d closed events", n)
		}
		return nil
	})
	if n := metric(t, s, "wspush_connections_accepted_total"); n != 2 {
		t.Fatalf("%v connections accepted, want 2 (one per client, no reconnect)", n)
	}
	if ev := st.list(); st.count(client.StateOpen) != 0 || ev[len(ev)-1].Code != 4001 {
		t.Fatalf("state events %v", ev)
	}
}

// TestSlowHandlerLosesNothing: a Handler slower than the stream fills the
// queue; the client drops the connection, lets the Handler catch up and
// resumes: every value still arrives once, in order.
func TestSlowHandlerLosesNothing(t *testing.T) {
	s := startServer(t, app.Config{Middle: middle.Config{HistorySize: 10000}}, "127.0.0.1:0")
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on, QueueSize: 4, StallTimeout: 50 * time.Millisecond})
	rec := newRecorder()
	slow := client.HandlerFuncs{
		Data: func(p client.Publication) {
			d := time.Millisecond
			if p.Seq%50 == 0 {
				d = 200 * time.Millisecond // a pause longer than StallTimeout
			}
			time.Sleep(d)
			rec.OnData(p)
		},
		Reset: rec.OnReset,
		Ack:   rec.OnAck,
	}
	subscribe(t, c, "slow", []string{"k"}, client.SubscribeOptions{}, slow)
	items := make([]string, 200)
	for i := range items {
		items[i] = fmt.Sprintf(`{"app":"slow","key":"k","data":%d}`, i+1)
	}
	resp, err := http.Post(s.base()+"/api/publish", "application/json", strings.NewReader(`{"items":[`+strings.Join(items, ",")+`]}`))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("publish: %v %v", err, resp)
	}
	resp.Body.Close()
	rec.waitSeq(t, "k", 200)
	checkSeqs(t, "k", rec.seqs("k"), 1, 200)
	if _, resets, _ := rec.snapshot(); len(resets) != 0 {
		t.Errorf("resets %v", resets)
	}
	if st.count(client.StateReconnecting) == 0 {
		t.Errorf("the queue never stalled: %v", st.list())
	}
}

// TestCloseStopsEverything: Close returns after the connection and every
// goroutine ended, and no Handler is called after it.
func TestCloseStopsEverything(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on})
	var after atomic.Bool
	var closed atomic.Bool
	subscribe(t, c, "close", []string{"k"}, client.SubscribeOptions{}, client.HandlerFuncs{
		Data: func(client.Publication) { after.Store(closed.Load()) },
	})
	stop := make(chan struct{})
	done := stream(t, s.base, "close", []string{"k"}, stop)
	time.Sleep(50 * time.Millisecond) // let values flow while closing
	c.Close()
	closed.Store(true)
	close(stop)
	done()
	if after.Load() {
		t.Error("a Handler ran after Close returned")
	}
	if !errors.Is(c.Err(), client.ErrClosed) || c.State() != client.StateClosed {
		t.Errorf("Err %v, state %v", c.Err(), c.State())
	}
	ev := st.list()
	if ev[len(ev)-1].State != client.StateClosed {
		t.Errorf("last state event %v", ev[len(ev)-1])
	}
	eventually(t, 5*time.Second, func() error {
		if n := metric(t, s, "wspush_connections"); n != 0 {
			return fmt.Errorf("%v connections open on the server", n)
		}
		return nil
	})
	if _, err := c.Subscribe(context.Background(), "close", []string{"k2"}, client.SubscribeOptions{}, newRecorder()); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Subscribe after Close: %v", err)
	}
}

func TestSubscribeErrors(t *testing.T) {
	s := startServer(t, app.Config{Users: userservice.Config{JWTSecret: []byte(testSecret)}}, "127.0.0.1:0")
	c := dial(t, client.Config{URL: s.wsURL(), Token: signToken(t, map[string]any{"sub": "u", "apps": []string{"ok"}, "exp": time.Now().Add(time.Hour).Unix()})})
	ctx := context.Background()
	rec := newRecorder()
	_, err := c.Subscribe(ctx, "other", []string{"k"}, client.SubscribeOptions{}, rec)
	var cerr *client.CommandError
	if !errors.As(err, &cerr) || cerr.Code != "forbidden" {
		t.Fatalf("subscribe to an app the token does not allow: %v", err)
	}
	for _, bad := range []struct {
		app  string
		keys []string
		opts client.SubscribeOptions
	}{
		{"a b", []string{"k"}, client.SubscribeOptions{}},
		{"ok", nil, client.SubscribeOptions{}},
		{"ok", []string{"k/1"}, client.SubscribeOptions{}},
		{"ok", []string{"k"}, client.SubscribeOptions{Format: "xml"}},
		{"ok", []string{"k"}, client.SubscribeOptions{Since: map[string]client.Position{"z": {Seq: 1}}}},
	} {
		if _, err := c.Subscribe(ctx, bad.app, bad.keys, bad.opts, rec); err == nil {
			t.Errorf("Subscribe(%q, %v, %+v) succeeded", bad.app, bad.keys, bad.opts)
		}
	}
	subscribe(t, c, "ok", []string{"k"}, client.SubscribeOptions{}, rec)
	if _, err := c.Subscribe(ctx, "ok", []string{"k"}, client.SubscribeOptions{}, rec); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second subscribe of a key: %v", err)
	}
	// The failed subscribe left nothing behind: "other/k" can be tried again.
	if _, err := c.Subscribe(ctx, "other", []string{"k"}, client.SubscribeOptions{}, rec); !errors.As(err, &cerr) {
		t.Errorf("again: %v", err)
	}
}

// TestResumeFromSavedPositions: Positions saved from one client resume in
// another (a process restart) with nothing missed.
func TestResumeFromSavedPositions(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	c1 := dial(t, client.Config{URL: s.wsURL()})
	rec1 := newRecorder()
	subscribe(t, c1, "save", []string{"k"}, client.SubscribeOptions{}, rec1)
	for i := 1; i <= 3; i++ {
		mustPublish(t, s.base(), "save", "k", strconv.Itoa(i))
	}
	rec1.waitSeq(t, "k", 3)
	saved := c1.Positions("save")
	c1.Close()
	for i := 4; i <= 6; i++ {
		mustPublish(t, s.base(), "save", "k", strconv.Itoa(i))
	}
	c2 := dial(t, client.Config{URL: s.wsURL()})
	rec2 := newRecorder()
	subscribe(t, c2, "save", []string{"k"}, client.SubscribeOptions{Since: saved}, rec2)
	rec2.waitSeq(t, "k", 6)
	checkSeqs(t, "k", rec2.seqs("k"), 4, 6)
	rec2.waitAcks(t, 1)
	if acks, _, _ := rec2.snapshot(); !acks[0].Resumed || !acks[0].Recovered {
		t.Errorf("ack %+v", acks[0])
	}
}

func TestMain(m *testing.M) {
	stop, err := startExampleServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "example server:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

func tokenServer(t *testing.T) *server {
	return startServer(t, app.Config{Users: userservice.Config{
		JWTSecret:    []byte(testSecret),
		PingInterval: 100 * time.Millisecond, // the expiry check runs with the heartbeat
		PingTimeout:  5 * time.Second,
	}}, "127.0.0.1:0")
}

// TestTokenRefresh: TokenFunc's tokens live 3 s; the client refreshes them
// ahead of exp and the connection outlives several of them.
func TestTokenRefresh(t *testing.T) {
	s := tokenServer(t)
	var calls atomic.Int32
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: st.on, TokenFunc: func(context.Context) (string, error) {
		calls.Add(1)
		return signToken(t, map[string]any{"sub": "u", "exp": time.Now().Add(3 * time.Second).Unix()}), nil
	}})
	rec := newRecorder()
	subscribe(t, c, "tok", []string{"k"}, client.SubscribeOptions{}, rec)
	deadline := time.Now().Add(5 * time.Second)
	var seq uint64
	for time.Now().Before(deadline) {
		seq = mustPublish(t, s.base(), "tok", "k", "1")
		time.Sleep(100 * time.Millisecond)
	}
	rec.waitSeq(t, "k", seq)
	checkSeqs(t, "k", rec.seqs("k"), 1, seq)
	if n := st.count(client.StateReconnecting); n != 0 {
		t.Fatalf("%d reconnects: %v", n, st.list())
	}
	if n := calls.Load(); n < 3 {
		t.Fatalf("TokenFunc called %d times, want the connect and at least two refreshes", n)
	}
}

// TestTokenExpiredReconnects: when no refresh succeeds, the server closes
// with 4003; the client gets a new token, reconnects and resumes.
func TestTokenExpiredReconnects(t *testing.T) {
	s := tokenServer(t)
	var expired atomic.Bool
	var calls atomic.Int32
	st := &states{}
	c := dial(t, client.Config{URL: s.wsURL(), OnState: func(e client.StateEvent) {
		if e.Code == 4003 {
			expired.Store(true)
		}
		st.on(e)
	}, TokenFunc: func(context.Context) (string, error) {
		if calls.Add(1) > 1 && !expired.Load() {
			return "", errors.New("token service down")
		}
		return signToken(t, map[string]any{"sub": "u", "exp": time.Now().Add(2 * time.Second).Unix()}), nil
	}})
	rec := newRecorder()
	subscribe(t, c, "tok", []string{"k"}, client.SubscribeOptions{}, rec)
	mustPublish(t, s.base(), "tok", "k", "1")
	eventually(t, 10*time.Second, func() error {
		if !expired.Load() || st.count(client.StateOpen) < 2 {
			return errors.New("no 4003 and reconnect yet")
		}
		return nil
	})
	seq := mustPublish(t, s.base(), "tok", "k", "2")
	rec.waitSeq(t, "k", seq)
	checkSeqs(t, "k", rec.seqs("k"), 1, seq)
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
	acks, _, _ := rec.snapshot()
	if a := acks[len(acks)-1]; !a.Resumed || !a.Recovered {
		t.Fatalf("last ack %+v", a)
	}
}

// TestTokenExpiredWithoutTokenFunc: a fixed token cannot be renewed: 4003
// ends the Client.
func TestTokenExpiredWithoutTokenFunc(t *testing.T) {
	s := tokenServer(t)
	c := dial(t, client.Config{URL: s.wsURL(), Token: signToken(t, map[string]any{"sub": "u", "exp": time.Now().Add(2 * time.Second).Unix()})})
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the client did not end")
	}
	var ce *client.CloseError
	if !errors.As(c.Err(), &ce) || ce.Code != 4003 {
		t.Fatalf("Err %v", c.Err())
	}
}

// TestOriginRefusedIsTerminal: an upgrade refused with 403 (an Origin the
// server does not allow) is not retried; an http:// URL without a path
// means ws://.../ws.
func TestOriginRefusedIsTerminal(t *testing.T) {
	s := startServer(t, app.Config{}, "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := client.Dial(ctx, client.Config{URL: s.base(), Header: http.Header{"Origin": {"http://evil.example"}}})
	var he *client.HandshakeError
	if !errors.As(err, &he) || he.StatusCode != http.StatusForbidden {
		t.Fatalf("Dial: %v, want a HandshakeError 403", err)
	}
	c := dial(t, client.Config{URL: s.base()})
	if c.State() != client.StateOpen {
		t.Fatalf("state %v", c.State())
	}
	if _, err := client.New(client.Config{URL: "ftp://x"}); err == nil {
		t.Fatal("New accepted ftp://")
	}
}
