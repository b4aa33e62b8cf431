package simulator

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const stepStartMs = 1763812345000

type entry struct {
	ID    string          `json:"id"`
	Value json.RawMessage `json:"value"`
	TS    int64           `json:"ts"`
}

// serve starts s on a real socket.
func serve(t *testing.T, s *Simulator) string {
	t.Helper()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv.URL
}

func post(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post(url+Path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return resp.StatusCode, b
}

// values posts body and returns the raw value of every entry of the
// response, which must be a 200, by id, and the entries decoded.
func values(t *testing.T, url, reqBody string) (map[string]string, []entry) {
	t.Helper()
	code, body := post(t, url, reqBody)
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, body)
	}
	var resp struct {
		Data []json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatalf("response %s: %v", body, err)
	}
	out := map[string]string{}
	var entries []entry
	for _, raw := range resp.Data {
		var e entry
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatalf("entry %s: %v", raw, err)
		}
		out[e.ID] = string(e.Value)
		entries = append(entries, e)
	}
	return out, entries
}

// clock is a settable clock; atomic because the handler reads it on the
// server's goroutines.
type clock struct{ ms atomic.Int64 }

func newClock(ms int64) *clock {
	c := &clock{}
	c.ms.Store(ms)
	return c
}

func (c *clock) Now() time.Time { return time.UnixMilli(c.ms.Load()) }

func TestSimulatorAnswers(t *testing.T) {
	s := New(Config{Now: newClock(stepStartMs + 400).Now})
	url := serve(t, s)
	_, entries := values(t, url, `{"appID":"plant-7","ids":["001","002","s-99_x"]}`)
	if len(entries) != 3 {
		t.Fatalf("got %d entries, want 3", len(entries))
	}
	for i, e := range entries {
		if want := []string{"001", "002", "s-99_x"}[i]; e.ID != want {
			t.Errorf("entry %d: id %q, want %q", i, e.ID, want)
		}
		if e.TS != stepStartMs {
			t.Errorf("entry %d: ts %d, want the start of the step %d", i, e.TS, int64(stepStartMs))
		}
		var v struct {
			Temp     *float64 `json:"temp"`
			Humidity *float64 `json:"humidity"`
		}
		if err := json.Unmarshal(e.Value, &v); err != nil || v.Temp == nil || v.Humidity == nil {
			t.Fatalf("entry %d: value %s: want temp and humidity (%v)", i, e.Value, err)
		}
		if *v.Temp < 0 || *v.Temp > 50 || *v.Humidity < 0 || *v.Humidity > 100 {
			t.Errorf("entry %d: value %s out of range", i, e.Value)
		}
		// Two decimals at most.
		for _, part := range strings.FieldsFunc(string(e.Value), func(r rune) bool { return strings.ContainsRune(`{}:,"`, r) }) {
			if dot := strings.IndexByte(part, '.'); dot >= 0 && len(part)-dot-1 > 2 {
				t.Errorf("entry %d: %q has more than two decimals", i, part)
			}
		}
	}
	if s.Requests() != 1 {
		t.Errorf("Requests() = %d, want 1", s.Requests())
	}
}

func TestSimulatorWalks(t *testing.T) {
	clk := newClock(stepStartMs)
	url := serve(t, New(Config{Now: clk.Now, Seed: 7}))
	ids := make([]string, 50)
	for i := range ids {
		ids[i] = fmt.Sprintf("k%d", i)
	}
	body, _ := json.Marshal(map[string]any{"appID": "demo", "ids": ids})

	a, _ := values(t, url, string(body))
	again, _ := values(t, url, string(body))
	// Same step: same values (the poller relies on it to publish only changes).
	for id, v := range a {
		if again[id] != v {
			t.Fatalf("%s: %s then %s within one step", id, v, again[id])
		}
	}
	clk.ms.Add(1000)
	b, _ := values(t, url, string(body))
	changed := 0
	for id := range a {
		if a[id] != b[id] {
			changed++
		}
	}
	if changed < len(ids)/2 {
		t.Errorf("only %d of %d sensors changed over one step", changed, len(ids))
	}

	// Same seed: another simulator agrees; another seed does not.
	same, _ := values(t, serve(t, New(Config{Now: clk.Now, Seed: 7})), string(body))
	other, _ := values(t, serve(t, New(Config{Now: clk.Now, Seed: 8})), string(body))
	differ := 0
	for id := range b {
		if same[id] != b[id] {
			t.Fatalf("%s: seed 7 gave %s and %s", id, b[id], same[id])
		}
		if other[id] != b[id] {
			differ++
		}
	}
	if differ < len(ids)/2 {
		t.Errorf("seeds 7 and 8 differ on only %d of %d sensors", differ, len(ids))
	}
}

// TestReadingIsAWalk checks that values move by small steps: a dashboard of
// them looks like sensors, not like noise.
func TestReadingIsAWalk(t *testing.T) {
	h := hashString(offset64, "demo/s001")
	prevT, prevH := reading(h, 1000)
	for step := int64(1001); step < 5000; step++ {
		temp, hum := reading(h, step)
		if d := temp - prevT; d > 1 || d < -1 {
			t.Fatalf("step %d: temp jumped %.2f", step, d)
		}
		if d := hum - prevH; d > 1.5 || d < -1.5 {
			t.Fatalf("step %d: humidity jumped %.2f", step, d)
		}
		prevT, prevH = temp, hum
	}
}

func TestSimulatorRejectsBadRequests(t *testing.T) {
	url := serve(t, New(Config{MaxIDs: 3}))
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"get", http.MethodGet, Path, "", http.StatusMethodNotAllowed, "POST"},
		{"other path", http.MethodPost, "/other", `{}`, http.StatusNotFound, "not found"},
		{"bad json", http.MethodPost, Path, `{"appID":`, http.StatusBadRequest, "invalid JSON"},
		{"bad app", http.MethodPost, Path, `{"appID":"a.b","ids":["1"]}`, http.StatusBadRequest, "appID"},
		{"no app", http.MethodPost, Path, `{"ids":["1"]}`, http.StatusBadRequest, "appID"},
		{"bad id", http.MethodPost, Path, `{"appID":"a","ids":["1","x y"]}`, http.StatusBadRequest, "ids[1]"},
		{"too many ids", http.MethodPost, Path, `{"appID":"a","ids":["1","2","3","4"]}`, http.StatusBadRequest, "too many ids"},
		{"huge body", http.MethodPost, Path, `{"appID":"a","ids":["` + strings.Repeat("x", 1<<20) + `"]}`, http.StatusRequestEntityTooLarge, "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, url+tc.path, strings.NewReader(tc.body))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var e struct {
				Error string `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatalf("error body: %v", err)
			}
			if resp.StatusCode != tc.code || !strings.Contains(e.Error, tc.msg) {
				t.Errorf("got %d %q, want %d with %q", resp.StatusCode, e.Error, tc.code, tc.msg)
			}
		})
	}
	code, body := post(t, url, `{"appID":"a","ids":[]}`)
	if code != http.StatusOK || !bytes.Equal(body, []byte(`{"data":[]}`)) {
		t.Errorf("no ids: %d %s, want 200 {\"data\":[]}", code, body)
	}
}

func TestSimulatorFaults(t *testing.T) {
	s := New(Config{SlowDelay: time.Hour})
	url := serve(t, s)
	const req = `{"appID":"a","ids":["1"]}`

	s.SetFault(FaultError500)
	if code, body := post(t, url, req); code != http.StatusInternalServerError || !strings.Contains(string(body), `"error"`) {
		t.Errorf("error500: %d %s", code, body)
	}
	s.SetFault(FaultGarbage)
	if code, body := post(t, url, req); code != http.StatusOK || json.Valid(body) {
		t.Errorf("garbage: %d %s, want 200 and not JSON", code, body)
	}
	s.SetFault(FaultExtra)
	if _, entries := values(t, url, req); len(entries) != 5 {
		t.Errorf("extra: %d entries, want 5 (1 real + 4 to ignore)", len(entries))
	}

	s.SetFault(FaultSlow)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+Path, strings.NewReader(req))
	if resp, err := http.DefaultClient.Do(r); err == nil {
		resp.Body.Close()
		t.Fatal("slow: answered before the client's timeout")
	}
	// The server's Close at cleanup would hang for SlowDelay if the slow
	// handler did not notice that the client went away.

	s.SetFault(FaultNone)
	if code, _ := post(t, url, req); code != http.StatusOK {
		t.Errorf("none: %d", code)
	}
}

func TestSimulatorFailEvery(t *testing.T) {
	url := serve(t, New(Config{FailEvery: 3}))
	var codes []int
	for range 6 {
		code, _ := post(t, url, `{"appID":"a","ids":["1"]}`)
		codes = append(codes, code)
	}
	if want := fmt.Sprint([]int{200, 200, 500, 200, 200, 500}); fmt.Sprint(codes) != want {
		t.Errorf("codes %v, want %s", codes, want)
	}
}

func TestParseFault(t *testing.T) {
	for f := range faultCount {
		got, err := ParseFault(f.String())
		if err != nil || got != f {
			t.Errorf("ParseFault(%q) = %v, %v", f.String(), got, err)
		}
	}
	if _, err := ParseFault("boom"); err == nil {
		t.Error("ParseFault(boom): no error")
	}
}

func BenchmarkSimulator(b *testing.B) {
	s := New(Config{})
	ids := make([]string, 500)
	for i := range ids {
		ids[i] = fmt.Sprintf("s%05d", i)
	}
	body, _ := json.Marshal(map[string]any{"appID": "bench", "ids": ids})
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, Path, bytes.NewReader(body)))
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}
