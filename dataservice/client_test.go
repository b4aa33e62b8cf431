package dataservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/dataservice/simulator"
)

func newTestClient(t *testing.T, cfg ClientConfig) *Client {
	t.Helper()
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(c.closeIdle)
	return c
}

func TestClientHappyPath(t *testing.T) {
	clk := newClock()
	sim, srv := startSimulator(t, simulator.Config{Now: clk.Now})
	c := newTestClient(t, ClientConfig{URL: srv.URL + "/"})

	ids := []string{"001", "002", "s-3_x"}
	res, err := c.GetRealTimeData(context.Background(), "plant-7", ids)
	if err != nil {
		t.Fatalf("GetRealTimeData: %v", err)
	}
	if res.Ignored != 0 || res.IgnoredErr != nil {
		t.Errorf("Ignored = %d (%v), want 0", res.Ignored, res.IgnoredErr)
	}
	if len(res.Values) != len(ids) {
		t.Fatalf("got %d values, want %d", len(res.Values), len(ids))
	}
	for i, v := range res.Values {
		if v.ID != ids[i] {
			t.Errorf("value %d: id %q, want %q", i, v.ID, ids[i])
		}
		if v.TS != stepStartMs {
			t.Errorf("value %d: ts %d, want %d", i, v.TS, int64(stepStartMs))
		}
		var reading struct {
			Temp     *float64 `json:"temp"`
			Humidity *float64 `json:"humidity"`
		}
		if err := json.Unmarshal(v.Value, &reading); err != nil || reading.Temp == nil || reading.Humidity == nil {
			t.Errorf("value %d: %s: want {\"temp\":...,\"humidity\":...} (%v)", i, v.Value, err)
		}
	}
	if got := sim.Requests(); got != 1 {
		t.Errorf("simulator served %d requests, want 1", got)
	}
}

func TestClientStatusError(t *testing.T) {
	_, srv := startSimulator(t, simulator.Config{Fault: simulator.FaultError500})
	c := newTestClient(t, ClientConfig{URL: srv.URL})
	_, err := c.GetRealTimeData(context.Background(), "plant-7", []string{"001"})
	var se *StatusError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *StatusError", err)
	}
	if se.Code != http.StatusInternalServerError || !strings.Contains(se.Body, "simulated failure") {
		t.Errorf("StatusError = %d %q, want 500 with the body's message", se.Code, se.Body)
	}
	if !strings.Contains(err.Error(), "plant-7") {
		t.Errorf("error %q does not name the app", err)
	}
}

func TestClientGarbage(t *testing.T) {
	_, srv := startSimulator(t, simulator.Config{Fault: simulator.FaultGarbage})
	c := newTestClient(t, ClientConfig{URL: srv.URL})
	_, err := c.GetRealTimeData(context.Background(), "plant-7", []string{"001"})
	if err == nil || !strings.Contains(err.Error(), "decode response") {
		t.Fatalf("err = %v, want a decode error", err)
	}
	var syn *json.SyntaxError
	if !errors.As(err, &syn) {
		t.Errorf("err = %v, want it to wrap a *json.SyntaxError", err)
	}
}

func TestClientTimeout(t *testing.T) {
	sim, srv := startSimulator(t, simulator.Config{Fault: simulator.FaultSlow})
	c := newTestClient(t, ClientConfig{URL: srv.URL, Timeout: 100 * time.Millisecond})
	_, err := c.GetRealTimeData(context.Background(), "plant-7", []string{"001"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if sim.Requests() != 1 {
		t.Errorf("simulator served %d requests, want 1", sim.Requests())
	}
}

func TestClientIgnoresBadEntries(t *testing.T) {
	_, srv := startSimulator(t, simulator.Config{Fault: simulator.FaultExtra})
	c := newTestClient(t, ClientConfig{URL: srv.URL})
	ids := []string{"001", "002"}
	res, err := c.GetRealTimeData(context.Background(), "plant-7", ids)
	if err != nil {
		t.Fatalf("GetRealTimeData: %v", err)
	}
	// FaultExtra adds: a value-less entry, a repeat, an unrequested id and
	// an invalid id.
	if res.Ignored != 4 {
		t.Errorf("Ignored = %d, want 4", res.Ignored)
	}
	if res.IgnoredErr == nil || !strings.Contains(res.IgnoredErr.Error(), "no value") {
		t.Errorf("IgnoredErr = %v, want the first one (no value)", res.IgnoredErr)
	}
	if len(res.Values) != len(ids) || res.Values[0].ID != "001" || res.Values[1].ID != "002" {
		t.Errorf("values = %+v, want one per requested id", res.Values)
	}
}

func TestClientResponseTooLarge(t *testing.T) {
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("sensor-%03d", i)
	}
	t.Run("content-length", func(t *testing.T) {
		_, srv := startSimulator(t, simulator.Config{})
		c := newTestClient(t, ClientConfig{URL: srv.URL, MaxResponseBytes: 1000})
		_, err := c.GetRealTimeData(context.Background(), "plant-7", ids)
		if !errors.Is(err, ErrResponseTooLarge) {
			t.Fatalf("err = %v, want ErrResponseTooLarge", err)
		}
	})
	t.Run("chunked", func(t *testing.T) {
		// A streamed body has no Content-Length: the read limit must
		// catch it. The handler streams a valid but endless-looking body.
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"data":[`))
			for i := 0; i < 1000; i++ {
				_, _ = fmt.Fprintf(w, `{"id":"001","value":%d},`, i)
				w.(http.Flusher).Flush()
			}
			_, _ = w.Write([]byte(`{"id":"001","value":0}]}`))
		}))
		t.Cleanup(srv.Close)
		c := newTestClient(t, ClientConfig{URL: srv.URL, MaxResponseBytes: 1000})
		_, err := c.GetRealTimeData(context.Background(), "plant-7", []string{"001"})
		if !errors.Is(err, ErrResponseTooLarge) {
			t.Fatalf("err = %v, want ErrResponseTooLarge", err)
		}
	})
}

func TestClientRejectsBadArguments(t *testing.T) {
	sim, srv := startSimulator(t, simulator.Config{})
	c := newTestClient(t, ClientConfig{URL: srv.URL})
	if _, err := c.GetRealTimeData(context.Background(), "plant 7", []string{"001"}); err == nil {
		t.Error("invalid app: no error")
	}
	if _, err := c.GetRealTimeData(context.Background(), "plant-7", []string{"0.1"}); err == nil {
		t.Error("invalid id: no error")
	}
	res, err := c.GetRealTimeData(context.Background(), "plant-7", nil)
	if err != nil || len(res.Values) != 0 {
		t.Errorf("no ids: %+v, %v; want an empty result", res, err)
	}
	if sim.Requests() != 0 {
		t.Errorf("simulator served %d requests, want 0", sim.Requests())
	}
}

func TestClientConfigValidate(t *testing.T) {
	for _, cfg := range []ClientConfig{
		{},
		{URL: "localhost:9090"},
		{URL: "ftp://host/"},
		{URL: "http://"},
		{URL: "http://host", Timeout: -1},
		{URL: "http://host", MaxResponseBytes: -1},
	} {
		if _, err := NewClient(cfg); err == nil {
			t.Errorf("NewClient(%+v): no error", cfg)
		}
	}
}

func TestDecodeResponse(t *testing.T) {
	ids := []string{"001", "002", "003"}
	type want struct {
		id, value string
		ts        int64
	}
	for _, tc := range []struct {
		name    string
		body    string
		values  []want
		ignored int
		err     string
	}{
		{name: "compacted", body: `{"data":[{"id":"001","value":{ "temp" : 21.5, "l":[1, 2] },"ts":7}]}`,
			values: []want{{"001", `{"temp":21.5,"l":[1,2]}`, 7}}},
		{name: "any json value", body: `{"data":[{"id":"001","value":3},{"id":"002","value":"x"},{"id":"003","value":null}]}`,
			values: []want{{"001", `3`, 0}, {"002", `"x"`, 0}, {"003", `null`, 0}}},
		{name: "escaped id", body: `{"data":[{"id":"\u0030\u00301","value":1}]}`,
			values: []want{{"001", `1`, 0}}},
		{name: "null ts", body: `{"data":[{"id":"001","value":1,"ts":null}]}`,
			values: []want{{"001", `1`, 0}}},
		{name: "empty", body: `{"data":[]}`},
		{name: "unknown fields", body: `{"more":1,"data":[{"id":"001","value":1,"unit":"C"}]}`,
			values: []want{{"001", `1`, 0}}},
		{name: "missing value", body: `{"data":[{"id":"001","ts":5},{"id":"002","value":2}]}`,
			values: []want{{"002", `2`, 0}}, ignored: 1},
		{name: "not requested", body: `{"data":[{"id":"004","value":1}]}`, ignored: 1},
		{name: "invalid id", body: `{"data":[{"id":"a b","value":1},{"id":7,"value":1},{"value":1},{"id":null,"value":1}]}`, ignored: 4},
		{name: "repeated id", body: `{"data":[{"id":"001","value":1},{"id":"001","value":2}]}`,
			values: []want{{"001", `1`, 0}}, ignored: 1},
		{name: "bad ts", body: `{"data":[{"id":"001","value":1,"ts":-1},{"id":"002","value":1,"ts":1.5},{"id":"003","value":1,"ts":"9"}]}`, ignored: 3},
		{name: "invalid UTF-8", body: "{\"data\":[{\"id\":\"001\",\"value\":\"\xff\"},{\"id\":\"002\",\"value\":{\"n\":\"caf\xe9\"}},{\"id\":\"003\",\"value\":\"café\"}]}",
			values: []want{{"003", `"café"`, 0}}, ignored: 2},
		{name: "not json", body: `<html>`, err: "decode response"},
		{name: "no data", body: `{}`, err: `no "data" array`},
		{name: "null data", body: `{"data":null}`, err: `no "data" array`},
		{name: "data not array", body: `{"data":{}}`, err: "decode response"},
		{name: "entry not object", body: `{"data":[1]}`, err: "decode response"},
		{name: "truncated", body: `{"data":[{"id":"001","value":{"a":`, err: "decode response"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := decodeResponse([]byte(tc.body), ids)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if res.Ignored != tc.ignored || (res.Ignored > 0) != (res.IgnoredErr != nil) {
				t.Errorf("Ignored = %d (%v), want %d", res.Ignored, res.IgnoredErr, tc.ignored)
			}
			if len(res.Values) != len(tc.values) {
				t.Fatalf("values = %+v, want %+v", res.Values, tc.values)
			}
			for i, w := range tc.values {
				v := res.Values[i]
				if v.ID != w.id || string(v.Value) != w.value || v.TS != w.ts {
					t.Errorf("value %d = {%s %s %d}, want %+v", i, v.ID, v.Value, v.TS, w)
				}
			}
		})
	}
}

// FuzzDecodeResponse checks that no response crashes the decoder and that
// whatever it accepts keeps the promises of Result. Seeds are in
// testdata/fuzz/FuzzDecodeResponse.
func FuzzDecodeResponse(f *testing.F) {
	ids := []string{"001", "002", "a-b_C"}
	f.Fuzz(func(t *testing.T, body []byte) {
		res, err := decodeResponse(body, ids)
		if err != nil {
			return
		}
		var raw rawResponse
		if err := json.Unmarshal(body, &raw); err != nil || raw.Data == nil {
			t.Fatalf("decodeResponse accepted what json rejects: %v", err)
		}
		if got := len(res.Values) + res.Ignored; got != len(*raw.Data) {
			t.Fatalf("%d values + %d ignored != %d entries", len(res.Values), res.Ignored, len(*raw.Data))
		}
		if (res.Ignored > 0) != (res.IgnoredErr != nil) {
			t.Fatalf("Ignored = %d but IgnoredErr = %v", res.Ignored, res.IgnoredErr)
		}
		seen := map[string]bool{}
		for _, v := range res.Values {
			if seen[v.ID] {
				t.Fatalf("id %q twice", v.ID)
			}
			seen[v.ID] = true
			known := false
			for _, id := range ids {
				known = known || id == v.ID
			}
			if !known {
				t.Fatalf("id %q was not requested", v.ID)
			}
			if v.TS < 0 {
				t.Fatalf("ts %d < 0", v.TS)
			}
			if !json.Valid(v.Value) {
				t.Fatalf("value %q is not valid JSON", v.Value)
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, v.Value); err != nil || !bytes.Equal(buf.Bytes(), v.Value) {
				t.Fatalf("value %q is not compact", v.Value)
			}
		}
	})
}
