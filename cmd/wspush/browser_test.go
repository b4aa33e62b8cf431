package main

// The browser test of the dashboard (issue 10, item 6): a real wspush --demo
// in this process, the embedded dashboard (webFS) loaded in headless
// Chromium driven over the DevTools protocol by chromedp, and the paper's
// demo played through the dashboard's DOM contract (data-sensor,
// data-state, data-seq, data-format, data-mode, button.cancel,
// select.format, select.rate, #conn): subscribe s001–s003, cancel s002 and
// watch it stop while s001 goes on, switch s003 to binary, switch s001 to
// the latest value at most once a second (issue 11), restart the server and
// watch the page resume, then resume s002 in the delivery chosen while it
// was stopped.
//
// Needs Debian's chromium (scripts/services.sh ensure_chromium installs it;
// WSPUSH_CHROMIUM names another binary). Without it the test skips, or
// fails under WSPUSH_REQUIRE_SERVICES=1 (CI). WSPUSH_SHOTS=<dir> saves a
// screenshot of each key moment there as browser-*.png.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/testutil"
)

const (
	// browserTestDeadline bounds the whole test, browser start included.
	browserTestDeadline = 90 * time.Second
	// demoPeriod is the demo poller's period (dataservice.DefaultSchedule):
	// a subscribed demo sensor gets a new value about this often. The
	// poller's cron schedule cannot go below one second.
	demoPeriod = time.Second
	// restartDowntime is how long the server stays down: long enough for
	// the page to see its reconnect attempts refused.
	restartDowntime = 2 * demoPeriod
)

// sensorKeys are the sensors of the scenario, as data-sensor names them.
var sensorKeys = []string{"demo/s001", "demo/s002", "demo/s003"}

func TestBrowserDashboard(t *testing.T) {
	chrome := findChromium(t)
	shots := os.Getenv("WSPUSH_SHOTS")
	if shots != "" {
		if err := os.MkdirAll(shots, 0o755); err != nil {
			t.Fatalf("WSPUSH_SHOTS: %v", err)
		}
	}
	started := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), browserTestDeadline)
	defer cancel()

	var srvLogs []*testutil.SyncBuffer // of every server, for a failure
	srv := startDemo(t, "127.0.0.1:0")
	srvLogs = append(srvLogs, srv.log)
	addr := srv.addr
	base := "http://" + addr

	con := &consoleWatch{server: addr}
	var chromeOut testutil.SyncBuffer
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// The machine's network is closed: without these Chromium's own
		// background connections are refused, and it looks up Google's
		// hosts at every start.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
		// A hidden tab must not be throttled: the page's timers drive
		// its reconnects.
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 1100),
		chromedp.CombinedOutput(&chromeOut),
	)
	defer cancelAlloc()
	bctx, cancelTab := chromedp.NewContext(allocCtx, chromedp.WithListener(con.listen))
	defer cancelTab()
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range srvLogs {
				t.Logf("wspush log (server %d):\n%s", i+1, l.String())
			}
			t.Logf("chromium output:\n%s", chromeOut.String())
		}
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v\n%s", chrome, err, chromeOut.String())
	}
	p := &page{t: t, ctx: bctx, shots: shots}

	// 1. Load the dashboard; it connects by itself. ?sub=0 turns off its
	// subscription to the form's default keys at load, so that the form's
	// submit below is what subscribes.
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/?sub=0")); err != nil {
		t.Fatalf("load %s/?sub=0: %v", base, err)
	}
	p.eval(observerJS)
	p.waitFor("#conn[data-state=open] after loading the page", 10*time.Second, func(v pageView) (bool, error) {
		if len(v.Sensors) > 0 {
			return false, errors.New("[data-sensor] elements before any subscribe: /?sub=0 must load the page without subscribing")
		}
		return v.Conn.State == "open", nil
	})

	// 2. Subscribe to s001–s003 in JSON through the form.
	p.do("fill #sub-form",
		chromedp.SetValue(chromedp.CSS("#sub-app"), "demo"),
		chromedp.Clear(chromedp.CSS("#sub-keys")),
		chromedp.SendKeys(chromedp.CSS("#sub-keys"), "s001 s002 s003"),
		chromedp.SetValue(chromedp.CSS("#sub-format"), "json"),
	)
	// requestSubmit is what the form's submit button or Enter does: the
	// submit event, after the form's own validation.
	p.eval(`document.querySelector("#sub-form").requestSubmit()`)
	first := p.waitFor(`[data-sensor="demo/s001".."demo/s003"] with data-state=live, data-format=json and a data-seq`, 15*time.Second,
		func(v pageView) (bool, error) {
			for _, k := range sensorKeys {
				s, ok := v.Sensors[k]
				if !ok || s.State != "live" || s.Format != "json" || s.seq() == 0 {
					return false, nil
				}
			}
			return true, nil
		})
	p.waitFor("data-seq of s001–s003 to grow (a second value each)", 10*time.Second, func(v pageView) (bool, error) {
		for _, k := range sensorKeys {
			if v.Sensors[k].seq() <= first.Sensors[k].seq() {
				return false, nil
			}
		}
		return true, nil
	})
	p.shot("browser-1-live")
	con.check(t, "after subscribing")

	// 3. Cancel s002: it stops, stays on the page greyed, while s001 goes on.
	p.do(`click [data-sensor="demo/s002"] button.cancel`, chromedp.Click(chromedp.CSS(`[data-sensor="demo/s002"] button.cancel`)))
	stopped := p.waitFor(`[data-sensor="demo/s002"][data-state=stopped]`, 5*time.Second, func(v pageView) (bool, error) {
		s, ok := v.Sensors["demo/s002"]
		if !ok {
			return false, errors.New(`[data-sensor="demo/s002"] left the page: a cancelled sensor must stay`)
		}
		return s.State == "stopped", nil
	})
	stopSeq := stopped.Sensors["demo/s002"].Seq
	s001 := stopped.Sensors["demo/s001"].seq()
	p.waitFor("s001 to get 3 more values while s002 stays stopped", 3*demoPeriod+8*time.Second, func(v pageView) (bool, error) {
		if err := stoppedAt(v, "demo/s002", stopSeq); err != nil {
			return false, err
		}
		return v.Sensors["demo/s001"].seq() >= s001+3, nil
	})
	p.history("demo/s002", stopped.Now, func(e histEntry) error {
		if e.State != "stopped" || e.Seq != stopSeq {
			return fmt.Errorf("after the cancel it showed data-state=%q data-seq=%q (want stopped at %q)", e.State, e.Seq, stopSeq)
		}
		return nil
	})
	if txt := p.view().Sensors["demo/s002"].Text; !strings.Contains(strings.ToLower(txt), "stopped at seq "+stopSeq) {
		t.Errorf(`[data-sensor="demo/s002"] says %q, want "stopped at seq %s"`, txt, stopSeq)
	}
	p.shot("browser-2-cancelled")
	con.check(t, "after cancelling s002")

	// 4. Switch s003 to binary: it resumes from its position, so its seq
	// goes on without a reset, and values keep coming as binary frames.
	before := p.view()
	s003 := before.Sensors["demo/s003"].seq()
	p.eval(`(() => {
		const s = document.querySelector('[data-sensor="demo/s003"] select.format');
		if (!s) throw new Error('no [data-sensor="demo/s003"] select.format');
		s.value = "binary";
		s.dispatchEvent(new Event("input", {bubbles: true}));
		s.dispatchEvent(new Event("change", {bubbles: true}));
	})()`)
	p.waitFor(`[data-sensor="demo/s003"][data-format=binary][data-state=live] with 2 more values`, 3*demoPeriod+8*time.Second,
		func(v pageView) (bool, error) {
			s := v.Sensors["demo/s003"]
			return s.Format == "binary" && s.State == "live" && s.seq() >= s003+2, nil
		})
	p.monotonic("demo/s003", before.Now)
	p.shot("browser-3-binary")
	con.check(t, "after switching s003 to binary")

	// 4b. Switch s001 to "≤ 1/s" (latest, max_rate 1; docs/PROTOCOL.md,
	// Delivery modes): it resubscribes from its position and stays live.
	// The demo publishes about once a second, so its seq keeps growing, and
	// it shows no reset: a seq jump of a latest key is a skip, not a loss.
	before = p.view()
	s001 = before.Sensors["demo/s001"].seq()
	if m := before.Sensors["demo/s001"].Mode; m != "stream" {
		t.Errorf(`[data-sensor="demo/s001"] data-mode=%q before any switch, want stream`, m)
	}
	p.eval(`(() => {
		const s = document.querySelector('[data-sensor="demo/s001"] select.rate');
		if (!s) throw new Error('no [data-sensor="demo/s001"] select.rate');
		s.value = "latest:1";
		s.dispatchEvent(new Event("input", {bubbles: true}));
		s.dispatchEvent(new Event("change", {bubbles: true}));
	})()`)
	p.waitFor(`[data-sensor="demo/s001"][data-mode="latest:1"][data-state=live] with 2 more values`, 3*demoPeriod+8*time.Second,
		func(v pageView) (bool, error) {
			s := v.Sensors["demo/s001"]
			if err := stoppedAt(v, "demo/s002", stopSeq); err != nil {
				return false, err
			}
			return s.Mode == "latest:1" && s.Rate != nil && *s.Rate == "latest:1" && s.State == "live" && s.seq() >= s001+2, nil
		})
	p.monotonic("demo/s001", before.Now)
	// A stopped sensor's delivery can change too: it takes effect when it
	// is resumed (step 6).
	p.eval(`(() => {
		const s = document.querySelector('[data-sensor="demo/s002"] select.rate');
		if (!s) throw new Error('no [data-sensor="demo/s002"] select.rate');
		s.value = "latest:5";
		s.dispatchEvent(new Event("change", {bubbles: true}));
	})()`)
	p.waitFor(`[data-sensor="demo/s002"][data-mode="latest:5"], still stopped`, 5*time.Second, func(v pageView) (bool, error) {
		return v.Sensors["demo/s002"].Mode == "latest:5", stoppedAt(v, "demo/s002", stopSeq)
	})
	for _, k := range []string{"demo/s003"} {
		if m := p.view().Sensors[k].Mode; m != "stream" {
			t.Errorf(`[data-sensor=%q] data-mode=%q after switching s001 only, want stream`, k, m)
		}
	}
	p.shot("browser-3b-latest")
	con.check(t, "after switching s001 to latest at most 1/s")

	// 5. Restart the server on the same address. An embedded store starts
	// every key's history afresh (a new epoch): the page gets a reset for
	// s001 and s003, shows it, and carries on; s002 stays stopped.
	down := p.view()
	con.restartBegins()
	if err := srv.stop(); err != nil {
		t.Fatalf("stop wspush: %v", err)
	}
	p.waitFor("#conn to leave data-state=open after the server stopped", 10*time.Second, func(v pageView) (bool, error) {
		return v.Conn.State == "reconnecting" || v.Conn.State == "connecting", nil
	})
	time.Sleep(restartDowntime) // the outage itself, not a wait for something
	p.shot("browser-4-server-down")
	srv = startDemo(t, addr)
	srvLogs = append(srvLogs, srv.log)
	p.waitFor("#conn[data-state=open] after the restart", 20*time.Second, func(v pageView) (bool, error) {
		return v.Conn.State == "open", nil
	})
	con.restartEnds()
	resumed := p.waitFor("s001 and s003 to show a reset, then live values again", 15*time.Second, func(v pageView) (bool, error) {
		for _, k := range []string{"demo/s001", "demo/s003"} {
			if s := v.Sensors[k]; s.State != "live" || !p.sawReset(k, down.Now) {
				return false, nil
			}
		}
		return true, stoppedAt(v, "demo/s002", stopSeq)
	})
	p.waitFor("data-seq of s001 and s003 to grow after the reset", 3*demoPeriod+8*time.Second, func(v pageView) (bool, error) {
		for _, k := range []string{"demo/s001", "demo/s003"} {
			if s := v.Sensors[k]; s.State != "live" || s.seq() < resumed.Sensors[k].seq()+2 {
				return false, nil
			}
		}
		return true, stoppedAt(v, "demo/s002", stopSeq)
	})
	end := p.view()
	for _, k := range []string{"demo/s001", "demo/s003"} {
		if r := end.Sensors[k].Recovery; strings.Contains(strings.ToLower(r), "not recovered") {
			t.Errorf(`[data-sensor=%q] .recovery still says %q after values resumed`, k, r)
		}
		p.monotonic(k, resumed.Now)
	}
	if f := end.Sensors["demo/s003"].Format; f != "binary" {
		t.Errorf(`[data-sensor="demo/s003"] data-format=%q after the restart, want binary`, f)
	}
	if m := end.Sensors["demo/s001"].Mode; m != "latest:1" {
		t.Errorf(`[data-sensor="demo/s001"] data-mode=%q after the restart, want latest:1`, m)
	}
	p.history("demo/s002", down.Now, func(e histEntry) error {
		if e.State != "stopped" || e.Seq != stopSeq {
			return fmt.Errorf("across the restart it showed data-state=%q data-seq=%q (want stopped at %q)", e.State, e.Seq, stopSeq)
		}
		return nil
	})
	p.shot("browser-5-resumed")
	con.check(t, "after the restart")

	// 6. "Resume stopped" resubscribes s002 from its position, in the
	// delivery chosen while it was stopped: it lives again (after a reset:
	// its position is of the first server's epoch), and every sensor keeps
	// its mode.
	p.do("click #resume-all", chromedp.Click(chromedp.CSS("#resume-all")))
	p.waitFor(`[data-sensor="demo/s002"][data-mode="latest:5"][data-state=live] with a new value`, 3*demoPeriod+8*time.Second, func(v pageView) (bool, error) {
		s := v.Sensors["demo/s002"]
		return s.State == "live" && s.Mode == "latest:5" && s.Rate != nil && *s.Rate == "latest:5" && s.Seq != stopSeq, nil
	})
	for k, want := range map[string]string{"demo/s001": "latest:1", "demo/s003": "stream"} {
		if s := p.view().Sensors[k]; s.Mode != want || s.State != "live" {
			t.Errorf(`[data-sensor=%q] data-mode=%q data-state=%q after "Resume stopped", want %s and live`, k, s.Mode, s.State, want)
		}
	}
	p.shot("browser-6-resumed-stopped")
	con.check(t, "at the end")
	t.Logf("browser test took %s", time.Since(started).Round(time.Millisecond))
}

// findChromium returns the browser to drive: $WSPUSH_CHROMIUM, else the
// first of Debian's and Google's names on PATH.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WSPUSH_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
		t.Fatal("no chromium on PATH (WSPUSH_REQUIRE_SERVICES=1): run scripts/test.sh, which installs it, or apt-get install chromium")
	}
	t.Skip("no chromium on PATH: apt-get install chromium, or set WSPUSH_CHROMIUM")
	return ""
}

// demoServer is one wspush --demo process, in this test process.
type demoServer struct {
	addr string
	log  *testutil.SyncBuffer
	stop func() error
}

// startDemo runs wspush --demo with the embedded dashboard on addr
// ("127.0.0.1:0" for a free port; the same address again for a restart).
func startDemo(t *testing.T, addr string) *demoServer {
	t.Helper()
	dash, err := fs.Sub(webFS, "web")
	if err != nil {
		t.Fatal(err)
	}
	var buf testutil.SyncBuffer
	a, err := app.New(app.Config{
		Demo: true, Dashboard: dash, ShutdownTimeout: 5 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&buf, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenRetry(addr, 5*time.Second)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = fmt.Errorf("wspush on %s did not stop within 15s", ln.Addr())
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("wspush on %s: %v", ln.Addr(), err)
		}
	})
	return &demoServer{addr: ln.Addr().String(), log: &buf, stop: stop}
}

// listenRetry listens on addr, retrying for up to patience while the
// address is in use: on a restart, another test's listener on a free port
// may have been given this one while the server was down.
func listenRetry(addr string, patience time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(patience)
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return ln, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// observerJS records every change of the contract's attributes, so that a
// state the page shows only briefly (a reset until the next value) and a
// value shown between two polls of the test are not missed. It keeps the
// last 5,000 changes.
const observerJS = `(() => {
  if (window.__wspushTest) return;
  const hist = [], last = new Map();
  const view = el => ({
    key: el.dataset.sensor, state: el.dataset.state ?? "", seq: el.dataset.seq ?? "",
    format: el.dataset.format ?? "", mode: el.dataset.mode ?? "", recovery: (el.querySelector(".recovery")?.textContent ?? "").trim(),
  });
  const record = () => {
    const t = Date.now(), conn = document.querySelector("#conn");
    const views = [...document.querySelectorAll("[data-sensor]")].map(view);
    views.push({key: "#conn", state: conn?.dataset.state ?? "", seq: "", format: "", mode: "", recovery: ""});
    for (const v of views) {
      const s = JSON.stringify(v);
      if (last.get(v.key) === s) continue;
      last.set(v.key, s);
      hist.push({t, ...v});
      if (hist.length > 5000) hist.shift();
    }
  };
  new MutationObserver(record).observe(document.documentElement,
    {subtree: true, childList: true, characterData: true, attributes: true});
  record();
  window.__wspushTest = {
    history: since => hist.filter(e => e.t >= since),
    view: () => {
      const conn = document.querySelector("#conn"), sensors = {};
      for (const el of document.querySelectorAll("[data-sensor]")) {
        sensors[el.dataset.sensor] = {...view(el), text: el.textContent.replace(/\s+/g, " ").trim().slice(0, 300),
          cancel: !!el.querySelector("button.cancel"), select: el.querySelector("select.format")?.value ?? null,
          rate: el.querySelector("select.rate")?.value ?? null};
      }
      return {now: Date.now(), conn: {state: conn?.dataset.state ?? "", text: conn?.textContent.trim() ?? ""}, sensors};
    },
  };
})()`

// pageView is what the page shows, read through the DOM contract.
type pageView struct {
	Now  int64 `json:"now"` // the page's clock, ms
	Conn struct {
		State string `json:"state"` // "": no data-state (or no #conn)
		Text  string `json:"text"`
	} `json:"conn"`
	Sensors map[string]sensorView `json:"sensors"`
}

type sensorView struct {
	State    string  `json:"state"`
	Seq      string  `json:"seq"`
	Format   string  `json:"format"`
	Mode     string  `json:"mode"` // data-mode: "stream", "latest", "latest:1", …
	Recovery string  `json:"recovery"`
	Text     string  `json:"text"`
	Cancel   bool    `json:"cancel"`
	Select   *string `json:"select"` // select.format's value
	Rate     *string `json:"rate"`   // select.rate's value
}

// seq is data-seq as a number; 0 before any value (or not a number).
func (s sensorView) seq() uint64 {
	n, _ := strconv.ParseUint(s.Seq, 10, 64)
	return n
}

type histEntry struct {
	T        int64  `json:"t"`
	Key      string `json:"key"`
	State    string `json:"state"`
	Seq      string `json:"seq"`
	Format   string `json:"format"`
	Mode     string `json:"mode"`
	Recovery string `json:"recovery"`
}

func stoppedAt(v pageView, key, seq string) error {
	s, ok := v.Sensors[key]
	if !ok {
		return fmt.Errorf("[data-sensor=%q] left the page: a cancelled sensor must stay", key)
	}
	if s.State != "stopped" || s.Seq != seq {
		return fmt.Errorf("[data-sensor=%q] shows data-state=%q data-seq=%q, want stopped at %q", key, s.State, s.Seq, seq)
	}
	return nil
}

// page drives the dashboard's tab; every failure names what it waited for
// and what the page showed.
type page struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v\npage: %s", what, err, p.describe())
	}
}

func (p *page) eval(js string) {
	p.t.Helper()
	p.do("run "+strings.SplitN(js, "\n", 2)[0], chromedp.Evaluate[chromedp.Void](js))
}

func (p *page) view() pageView {
	p.t.Helper()
	v, err := p.tryView()
	if err != nil {
		p.t.Fatalf("read the page: %v", err)
	}
	return v
}

func (p *page) tryView() (pageView, error) {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](`window.__wspushTest.view()`))
	if err != nil {
		return pageView{}, err
	}
	var v pageView
	if err := json.Unmarshal(raw, &v); err != nil {
		return pageView{}, fmt.Errorf("decode %s: %w", raw, err)
	}
	return v, nil
}

func (p *page) describe() string {
	v, err := p.tryView()
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// waitFor reads the page every 100 ms until cond holds, and fails the test
// when cond reports an error or after timeout, with what the page showed.
func (p *page) waitFor(what string, timeout time.Duration, cond func(pageView) (bool, error)) pageView {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, err := p.tryView()
		if err != nil {
			p.t.Fatalf("waiting for %s: read the page: %v", what, err)
		}
		ok, err := cond(v)
		if err != nil {
			b, _ := json.MarshalIndent(v, "", "  ")
			p.t.Fatalf("waiting for %s: %v\npage: %s", what, err, b)
		}
		if ok {
			return v
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(v, "", "  ")
			p.shot("browser-failed")
			p.t.Fatalf("waiting for %s: not seen within %s\npage: %s", what, timeout, b)
		}
		select {
		case <-p.ctx.Done():
			p.t.Fatalf("waiting for %s: %v (the whole test may take %s)", what, p.ctx.Err(), browserTestDeadline)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *page) entries(key string, since int64) []histEntry {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](fmt.Sprintf(`window.__wspushTest.history(%d)`, since)))
	if err != nil {
		p.t.Fatalf("read the page's history: %v", err)
	}
	var all []histEntry
	if err := json.Unmarshal(raw, &all); err != nil {
		p.t.Fatalf("decode the page's history %s: %v", raw, err)
	}
	var out []histEntry
	for _, e := range all {
		if e.Key == key {
			out = append(out, e)
		}
	}
	return out
}

// history checks every state key showed since the page's time since.
func (p *page) history(key string, since int64, check func(histEntry) error) {
	p.t.Helper()
	for _, e := range p.entries(key, since) {
		if err := check(e); err != nil {
			p.t.Errorf("[data-sensor=%q] %v", key, err)
			return
		}
	}
}

// sawReset reports whether key showed a reset since the page's time since:
// data-state=reset, or "NOT recovered" in its .recovery (the page renders
// once per animation frame, so a reset followed at once by a value may
// show only the note).
func (p *page) sawReset(key string, since int64) bool {
	p.t.Helper()
	for _, e := range p.entries(key, since) {
		if e.State == "reset" || strings.Contains(strings.ToLower(e.Recovery), "not recovered") {
			return true
		}
	}
	return false
}

// monotonic checks that key's data-seq never went down, and that it showed
// no reset, since the page's time since.
func (p *page) monotonic(key string, since int64) {
	p.t.Helper()
	var prev uint64
	for _, e := range p.entries(key, since) {
		if e.State == "reset" {
			p.t.Errorf("[data-sensor=%q] showed data-state=reset (seq %q) where nothing was lost", key, e.Seq)
			return
		}
		n, err := strconv.ParseUint(e.Seq, 10, 64)
		if err != nil {
			continue // "" before a value
		}
		if n < prev {
			p.t.Errorf("[data-sensor=%q] data-seq went from %d down to %d", key, prev, n)
			return
		}
		prev = n
	}
}

// shot saves a screenshot of the whole page as <WSPUSH_SHOTS>/<name>.png.
func (p *page) shot(name string) {
	p.t.Helper()
	if p.shots == "" {
		return
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	// Two animation frames first: the cards are content-visibility: auto,
	// and a capture in the same frame as a change can show them blank.
	png, err := chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) ([]byte, error) {
		frames := chromedp.Evaluate[chromedp.Void](`new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))`,
			chromedp.EvalAwaitPromise)
		if _, err := frames(ctx, t); err != nil {
			return nil, err
		}
		return chromedp.CaptureScreenshot()(ctx, t)
	})
	if err != nil {
		p.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(p.shots, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p.t.Logf("screenshot %s", path)
}

// consoleWatch collects what the page writes to the console and what the
// browser logs about it, and judges it:
//
//   - any console.error, console.warn or failed console.assert, and any
//     uncaught exception or unhandled rejection, fails the test, at any
//     time: the page must write none, reconnects included;
//   - the browser's own log entries of level error or warning (a failed
//     request, a refused WebSocket, a deprecation) fail it too, except,
//     during the deliberate restart window (from the server's stop until
//     the page shows #conn open again), the network entries about the
//     server's own address: a refused WebSocket handshake or fetch is what
//     a browser reports, and no page can prevent, while its server is down.
//     They are logged, not hidden.
type consoleWatch struct {
	server string // host:port of the server

	mu      sync.Mutex
	entries []consoleEntry
	window  [2]time.Time // the restart window; zero end: still open
	checked int
}

type consoleEntry struct {
	at     time.Time
	kind   string // "console.<type>", "exception", "log.<level>"
	source string // the browser log's source ("network", ...)
	text   string
	url    string
}

// listen runs in the tab's event loop, in the order of arrival: it only
// records.
func (w *consoleWatch) listen(ev any) {
	var e consoleEntry
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		e = consoleEntry{kind: "console." + string(ev.Type), text: argsText(ev.Args)}
		if st := ev.StackTrace; st != nil && len(st.CallFrames) > 0 {
			e.url = fmt.Sprintf("%s:%d", st.CallFrames[0].URL, st.CallFrames[0].LineNumber+1)
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		e = consoleEntry{kind: "exception", text: d.Text, url: fmt.Sprintf("%s:%d", d.URL, d.LineNumber+1)}
		if d.Exception != nil {
			e.text += " " + d.Exception.Description
		}
	case *log.EventEntryAdded:
		en := ev.Entry
		e = consoleEntry{kind: "log." + string(en.Level), source: string(en.Source), text: en.Text, url: en.URL}
	default:
		return
	}
	e.at = time.Now()
	w.mu.Lock()
	w.entries = append(w.entries, e)
	w.mu.Unlock()
}

func argsText(args []*runtime.RemoteObject) string {
	parts := make([]string, 0, len(args))
	for _, a := range args {
		var s string
		switch {
		case a.Type == runtime.RemoteObjectTypeString && json.Unmarshal(a.Value, &s) == nil:
			parts = append(parts, s)
		case a.Description != "":
			parts = append(parts, a.Description)
		default:
			parts = append(parts, string(a.Value))
		}
	}
	return strings.Join(parts, " ")
}

func (w *consoleWatch) restartBegins() {
	w.mu.Lock()
	w.window[0] = time.Now()
	w.mu.Unlock()
}

func (w *consoleWatch) restartEnds() {
	w.mu.Lock()
	w.window[1] = time.Now()
	w.mu.Unlock()
}

// check fails the test for every entry not judged yet that breaks the
// rules above, and logs the tolerated ones.
func (w *consoleWatch) check(t *testing.T, when string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.entries[w.checked:] {
		line := fmt.Sprintf("%s %s: %s (%s)", e.at.Format("15:04:05.000"), e.kind, e.text, e.url)
		if e.source != "" {
			line = fmt.Sprintf("%s %s[%s]: %s (%s)", e.at.Format("15:04:05.000"), e.kind, e.source, e.text, e.url)
		}
		switch {
		case e.kind == "exception", e.kind == "console.error", e.kind == "console.warning", e.kind == "console.assert":
			t.Errorf("%s, the page wrote %s", when, line)
		case e.kind == "log.error" || e.kind == "log.warning":
			if w.inRestart(e) {
				t.Logf("tolerated during the restart: %s", line)
			} else {
				t.Errorf("%s, the browser logged %s", when, line)
			}
		default:
			t.Logf("console: %s", line)
		}
	}
	w.checked = len(w.entries)
}

func (w *consoleWatch) inRestart(e consoleEntry) bool {
	if w.window[0].IsZero() || e.at.Before(w.window[0]) || (!w.window[1].IsZero() && e.at.After(w.window[1])) {
		return false
	}
	return e.source == string(log.EntrySourceNetwork) && (strings.Contains(e.text, w.server) || strings.Contains(e.url, w.server))
}
