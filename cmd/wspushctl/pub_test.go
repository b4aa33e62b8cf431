package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle"
)

func TestPubHTTPArgumentsReachASubscriber(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant-7", "json", nil, "001", "002")

	r := ctl(t, "", "pub", "--url", base, "--app", "plant-7", `001={"temp":21.5}`, "002=17", `001="on"`)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := `{"app":"plant-7","key":"001","seq":1}
{"app":"plant-7","key":"002","seq":1}
{"app":"plant-7","key":"001","seq":2}
`
	if r.stdout != want {
		t.Fatalf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}
	got := c.Data(3)
	for i, w := range []struct {
		key, data string
		seq       uint64
	}{{"001", `{"temp":21.5}`, 1}, {"002", `17`, 1}, {"001", `"on"`, 2}} {
		if got[i].Key != w.key || got[i].Seq != w.seq || string(got[i].Data) != w.data {
			t.Fatalf("value %d: %s/%s seq %d data %s, want %+v", i, got[i].App, got[i].Key, got[i].Seq, got[i].Data, w)
		}
	}
}

// Stdin lines go in batches of --batch, each value gets its seq, in
// order, and a repeated idempotency id gets the first one's seq back.
func TestPubHTTPStdinInBatches(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant-7", "binary", nil, "001", "raw")

	var in strings.Builder
	const n = 250
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&in, `{"key":"001","data":{"i":%d},"id":"dev-%d"}`+"\n", i, i)
	}
	in.WriteString("\n")                                         // blank lines are skipped
	in.WriteString(`{"key":"001","data":0,"id":"dev-7"}` + "\n") // a retry of value 7
	in.WriteString(`{"app":"plant-7","key":"raw","b64":"AAEC/w==","ts":1700000000123}`)
	r := ctl(t, in.String(), "pub", "--url", base, "--app", "plant-7", "--batch", "100")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := jsonLinesOf(t, r.stdout)
	if len(lines) != n+2 {
		t.Fatalf("%d lines, want %d", len(lines), n+2)
	}
	for i := 0; i < n; i++ {
		if lines[i]["seq"] != float64(i+1) || lines[i]["id"] != fmt.Sprintf("dev-%d", i+1) {
			t.Fatalf("line %d: %v", i, lines[i])
		}
	}
	if lines[n]["seq"] != float64(7) {
		t.Fatalf("the retry of dev-7 got %v, want seq 7", lines[n])
	}
	if lines[n+1]["key"] != "raw" || lines[n+1]["seq"] != float64(1) {
		t.Fatalf("last line %v", lines[n+1])
	}

	got := c.Data(n + 1)
	for i, m := range got[:n] {
		if want := fmt.Sprintf(`{"i":%d}`, i+1); m.Key != "001" || m.Seq != uint64(i+1) || string(m.Data) != want {
			t.Fatalf("value %d: %s seq %d %s, want %s", i, m.Key, m.Seq, m.Data, want)
		}
	}
	if raw := got[n]; raw.Key != "raw" || string(raw.B64) != "\x00\x01\x02\xff" || raw.TS != 1700000000123 {
		t.Fatalf("raw value: %+v", raw)
	}
	c.ExpectSilence(100 * time.Millisecond) // the retry was not published again

	// 252 values in batches of at most 100: at least 3 requests, and the
	// server saw no other.
	m := scrapeT(t, base)
	if v, _ := m.value("wspush_http_publish_requests_total", "code", "200"); v < 3 {
		t.Fatalf("%v publish requests, want at least 3 (batches of 100)", v)
	}
	if v, _ := m.value("wspush_http_publish_requests_total"); v != m.mustValue(t, "wspush_http_publish_requests_total", "code", "200") {
		t.Fatalf("publish requests other than 200: %v in all", v)
	}
}

// A batch is cut at 1000 items, the server's limit, whatever --batch
// allows.
func TestPubHTTPCutsBatchesAtTheServerLimit(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{})
	var in strings.Builder
	for i := 0; i < 2001; i++ {
		fmt.Fprintf(&in, `{"key":"k%d","data":%d}`+"\n", i%10, i)
	}
	r := ctl(t, in.String(), "pub", "--url", base, "--app", "big")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if n := strings.Count(r.stdout, "\n"); n != 2001 {
		t.Fatalf("%d lines, want 2001", n)
	}
	if v := scrapeT(t, base).mustValue(t, "wspush_http_publish_requests_total", "code", "200"); v < 3 {
		t.Fatalf("%v requests for 2001 values, want at least 3", v)
	}
	if r := ctl(t, "", "pub", "--url", base, "--app", "big", "--batch", "1001", "k=1"); r.code != 2 {
		t.Fatalf("--batch 1001: exit %d, want 2: %s", r.code, r.stderr)
	}
}

// Every refusal exits 1 and shows the server's status, error code and
// message; what went through before is printed.
func TestPubHTTPRefusals(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{APIKey: "s3cret", Middle: middle.Config{MaxPayload: 16}})

	r := ctl(t, "", "pub", "--url", base, "--app", "a", "k=1")
	if r.code != 1 || !strings.Contains(r.stderr, "HTTP 401 unauthorized") || !strings.Contains(r.stderr, "--api-key") {
		t.Fatalf("no key: exit %d, stderr %q", r.code, r.stderr)
	}
	r = ctlEnv(t, map[string]string{"WSPUSH_API_KEY": "s3cret", "WSPUSH_URL": base}, "", "pub", "--app", "a", "k=1")
	if r.code != 0 || r.stdout != `{"app":"a","key":"k","seq":1}`+"\n" {
		t.Fatalf("key and URL from the environment: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}

	// The first batch goes through; the second is refused (a payload over
	// --max-payload), and pub stops there.
	in := `{"key":"k","data":2}` + "\n" + `{"key":"k","data":"far more than sixteen bytes"}` + "\n" + `{"key":"k","data":3}` + "\n"
	r = ctl(t, in, "pub", "--url", base, "--api-key", "s3cret", "--app", "a", "--batch", "1")
	if r.code != 1 || !strings.Contains(r.stderr, "HTTP 400 bad_request") {
		t.Fatalf("oversized value: exit %d, stderr %q", r.code, r.stderr)
	}
	if r.stdout != `{"app":"a","key":"k","seq":2}`+"\n" {
		t.Fatalf("oversized value: stdout %q, want the first value only", r.stdout)
	}

	// A bad line stops pub with its number, after the lines before it.
	r = ctl(t, `{"key":"k","data":4}`+"\n"+`{"key":"k","value":5}`+"\n", "pub", "--url", base, "--api-key", "s3cret", "--app", "a")
	if r.code != 1 || !strings.Contains(r.stderr, "stdin line 2") || !strings.Contains(r.stderr, `unknown field "value"`) {
		t.Fatalf("bad line: exit %d, stderr %q", r.code, r.stderr)
	}
	if r.stdout != `{"app":"a","key":"k","seq":3}`+"\n" {
		t.Fatalf("bad line: stdout %q, want the first line's value", r.stdout)
	}

	// Not a wspush server.
	other := http.NewServeMux()
	other.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "teapot", http.StatusTeapot) })
	srv := startHTTP(t, other)
	r = ctl(t, "", "pub", "--url", srv, "--app", "a", "k=1")
	if r.code != 1 || !strings.Contains(r.stderr, "not a wspush reply") || !strings.Contains(r.stderr, "418") {
		t.Fatalf("not wspush: exit %d, stderr %q", r.code, r.stderr)
	}

	// Usage errors exit 2.
	for _, args := range [][]string{
		{"pub", "--url", base, "k=1"},                    // no --app
		{"pub", "--url", base, "--app", "a", "k"},        // no =
		{"pub", "--url", base, "--app", "a", "k=x"},      // not JSON
		{"pub", "--url", "ftp://x", "--app", "a", "k=1"}, // scheme
		{"pub", "--app", "a b", "k=1"},
	} {
		if r := ctl(t, "", args...); r.code != 2 {
			t.Errorf("%q: exit %d, want 2: %s", args, r.code, r.stderr)
		}
	}
}

// A 503 prints the seqs of the leading values that went through, then
// the refusal: here the embedded store is full of subscribed keys.
func TestPubHTTPPartialBatch(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{Middle: middle.Config{MaxKeys: 2}})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("a", "json", nil, "k1", "k2")
	r := ctl(t, "", "pub", "--url", base, "--app", "a", "k1=1", "k2=2", "k3=3")
	if r.code != 1 || !strings.Contains(r.stderr, "HTTP 503 limit") || !strings.Contains(r.stderr, "2 of the 3 values") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if want := `{"app":"a","key":"k1","seq":1}` + "\n" + `{"app":"a","key":"k2","seq":1}` + "\n"; r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

// An interrupted pub (SIGINT) stops waiting for stdin and exits 0.
func TestPubStopsOnInterrupt(t *testing.T) {
	base, _, _ := wstest.StartApp(t, app.Config{})
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"pub", "--url", base, "--app", "a"}, pr, &out, &errOut, func(string) string { return "" })
	}()
	if _, err := pw.Write([]byte(`{"key":"k","data":1}` + "\n")); err != nil {
		t.Fatal(err)
	}
	// The line is published at once: nothing else is ready on stdin.
	testutil.Eventually(t, 10*time.Second, 20*time.Millisecond, func() error {
		if v, _ := scrapeT(t, base).value("wspush_publications_total"); v != 1 {
			return fmt.Errorf("%v publications", v)
		}
		return nil
	})
	cancel()
	select {
	case code := <-done:
		if code != 0 || out.String() != `{"app":"a","key":"k","seq":1}`+"\n" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pub did not stop on interrupt")
	}
}
