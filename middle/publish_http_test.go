package middle

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wspush/wspush/proto"
)

// publishServer serves n's publish handler on a real local socket.
func publishServer(t *testing.T, n *Node, cfg PublishHandlerConfig) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(n.PublishHandler(cfg))
	t.Cleanup(srv.Close)
	return srv
}

type httpReply struct {
	status int
	header http.Header
	Seqs   []uint64 `json:"seqs"`
	Error  string   `json:"error"`
	Msg    string   `json:"message"`
}

// post sends body to srv with the given method and Authorization header
// ("" for none) and decodes the JSON reply.
func post(t *testing.T, srv *httptest.Server, method, auth, body string) httpReply {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+"/api/publish", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	r := httpReply{status: resp.StatusCode, header: resp.Header}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: Content-Type %q, want application/json (body %q)", body, ct, raw)
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		t.Fatalf("reply %q: %v", raw, err)
	}
	return r
}

func TestHTTPPublish(t *testing.T) {
	n := newTestNode(t, Config{})
	srv := publishServer(t, n, PublishHandlerConfig{})
	js, bin := newRecorder(), newRecorder()
	subscribe(t, n, js, SubscribeRequest{App: "plant-7", Keys: []string{"001", "002"}})
	subscribe(t, n, bin, SubscribeRequest{App: "plant-7", Keys: []string{"001", "002"}, Format: proto.FormatBinary})

	r := post(t, srv, http.MethodPost, "", `{"app":"plant-7","key":"001","data":{"temp":21.5}}`)
	if r.status != http.StatusOK || !equalSeqs(r.Seqs, []uint64{1}) {
		t.Fatalf("single publish: %d %+v, want 200 seqs [1]", r.status, r)
	}

	r = post(t, srv, http.MethodPost, "", `{"items":[
		{"app":"plant-7","key":"001","data":[1,2]},
		{"app":"plant-7","key":"002","data":"two","ts":1763812345123},
		{"app":"plant-7","key":"001","b64":"AAEC/w=="},
		{"app":"plant-7","key":"002","data":null}
	]}`)
	if r.status != http.StatusOK || !equalSeqs(r.Seqs, []uint64{2, 1, 3, 2}) {
		t.Fatalf("batch publish: %d %+v, want 200 seqs [2 1 3 2]", r.status, r)
	}

	want := []proto.Publication{
		{App: "plant-7", Key: "001", Seq: 1, Data: []byte(`{"temp":21.5}`), JSON: true},
		{App: "plant-7", Key: "001", Seq: 2, Data: []byte(`[1,2]`), JSON: true},
		{App: "plant-7", Key: "002", Seq: 1, Data: []byte(`"two"`), JSON: true, TS: 1763812345123},
		{App: "plant-7", Key: "001", Seq: 3, Data: []byte{0, 1, 2, 0xff}},
		{App: "plant-7", Key: "002", Seq: 2, Data: []byte(`null`), JSON: true},
	}
	for name, s := range map[string]*recorder{"json": js, "binary": bin} {
		ms := s.messages(t)[1:]
		if len(ms) != len(want) {
			t.Fatalf("%s subscriber got %v, want %d publications", name, ms, len(want))
		}
		for i, m := range ms {
			p, w := m.pub, want[i]
			if p.App != w.App || p.Key != w.Key || p.Seq != w.Seq || p.JSON != w.JSON || !bytes.Equal(p.Data, w.Data) ||
				(w.TS != 0 && p.TS != w.TS) || p.TS == 0 {
				t.Errorf("%s subscriber, publication %d: got %+v, want %+v", name, i, p, w)
			}
		}
	}
}

func TestHTTPPublishAPIKey(t *testing.T) {
	n := newTestNode(t, Config{})
	srv := publishServer(t, n, PublishHandlerConfig{APIKey: "s3cret"})
	body := `{"app":"a","key":"k","data":1}`
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Bearer s3cret2", "bearer s3cret", "Basic s3cret", "s3cret"} {
		r := post(t, srv, http.MethodPost, auth, body)
		if r.status != http.StatusUnauthorized || r.Error != proto.CodeUnauthorized || r.Msg == "" {
			t.Errorf("Authorization %q: %d %+v, want 401 unauthorized", auth, r.status, r)
		}
	}
	if top := topSeq(t, n, "a", "k"); top != 0 {
		t.Fatalf("unauthorized requests published up to seq %d", top)
	}
	r := post(t, srv, http.MethodPost, "Bearer s3cret", body)
	if r.status != http.StatusOK || !equalSeqs(r.Seqs, []uint64{1}) {
		t.Fatalf("right API key: %d %+v, want 200 seqs [1]", r.status, r)
	}
}

func TestHTTPPublishRejects(t *testing.T) {
	reg := prometheus.NewRegistry()
	n := newTestNode(t, Config{MaxPayload: 64, Registerer: reg})
	srv := publishServer(t, n, PublishHandlerConfig{MaxItems: 3, MaxBody: 1024})
	s := newRecorder()
	subscribe(t, n, s, SubscribeRequest{App: "a", Keys: []string{"k"}})
	if r := post(t, srv, http.MethodPost, "", `{"app":"a","key":"k","data":1}`); r.status != http.StatusOK {
		t.Fatalf("valid publish: %d %+v", r.status, r)
	}

	item := `{"app":"a","key":"k","data":1}`
	tests := []struct {
		name   string
		method string
		body   string
		status int
		code   string
	}{
		{"GET", http.MethodGet, "", http.StatusMethodNotAllowed, proto.CodeBadRequest},
		{"PUT", http.MethodPut, item, http.StatusMethodNotAllowed, proto.CodeBadRequest},
		{"empty body", http.MethodPost, "", http.StatusBadRequest, proto.CodeBadRequest},
		{"empty object", http.MethodPost, "{}", http.StatusBadRequest, proto.CodeBadRequest},
		{"malformed JSON", http.MethodPost, `{"app":"a",`, http.StatusBadRequest, proto.CodeBadRequest},
		{"not an object", http.MethodPost, `[1,2]`, http.StatusBadRequest, proto.CodeBadRequest},
		{"wrong field type", http.MethodPost, `{"app":1,"key":"k","data":1}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"single and items", http.MethodPost, `{"app":"a","key":"k","data":1,"items":[` + item + `]}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"data beside items", http.MethodPost, `{"data":1,"items":[` + item + `]}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"empty items", http.MethodPost, `{"items":[]}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"missing data", http.MethodPost, `{"app":"a","key":"k"}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"missing data in a batch", http.MethodPost, `{"items":[` + item + `,{"app":"a","key":"k"}]}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"data and b64", http.MethodPost, `{"app":"a","key":"k","data":1,"b64":"AA=="}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"bad base64", http.MethodPost, `{"app":"a","key":"k","b64":"!!"}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"negative ts", http.MethodPost, `{"app":"a","key":"k","data":1,"ts":-1}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"invalid key", http.MethodPost, `{"app":"a","key":"a b","data":1}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"invalid app", http.MethodPost, `{"app":"a.b","key":"k","data":1}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"invalid key in a batch", http.MethodPost, `{"items":[` + item + `,{"app":"a","key":"","data":1}]}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"payload over MaxPayload", http.MethodPost, `{"app":"a","key":"k","data":"` + strings.Repeat("x", 80) + `"}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"too many items", http.MethodPost, `{"items":[` + strings.Repeat(item+",", 3) + item + `]}`, http.StatusRequestEntityTooLarge, proto.CodeLimit},
		{"too many items, the rest malformed", http.MethodPost, `{"items":[` + strings.Repeat(item+",", 4) + `{"app":`, http.StatusRequestEntityTooLarge, proto.CodeLimit},
		{"items not an array", http.MethodPost, `{"items":{}}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"data after the object", http.MethodPost, item + `{}`, http.StatusBadRequest, proto.CodeBadRequest},
		{"unterminated items", http.MethodPost, `{"items":[` + item, http.StatusBadRequest, proto.CodeBadRequest},
		{"invalid UTF-8", http.MethodPost, "{\"app\":\"a\",\"key\":\"k\",\"data\":\"\xff\xfe\"}", http.StatusBadRequest, proto.CodeBadRequest},
		{"invalid UTF-8 in a batch", http.MethodPost, `{"items":[` + item + ",{\"app\":\"a\",\"key\":\"k\",\"data\":{\"v\":\"caf\xe9\"}}]}", http.StatusBadRequest, proto.CodeBadRequest},
		{"body over MaxBody", http.MethodPost, `{"app":"a","key":"k","b64":"` + strings.Repeat("A", 2048) + `"}`, http.StatusRequestEntityTooLarge, proto.CodeLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := post(t, srv, tt.method, "", tt.body)
			if r.status != tt.status || r.Error != tt.code || r.Msg == "" {
				t.Errorf("%d %+v, want %d with error %q and a message", r.status, r, tt.status, tt.code)
			}
			if r.Seqs != nil {
				t.Errorf("rejected request answered seqs %v", r.Seqs)
			}
			if tt.status == http.StatusMethodNotAllowed && r.header.Get("Allow") != http.MethodPost {
				t.Errorf("405 without Allow: POST (Allow %q)", r.header.Get("Allow"))
			}
			t.Logf("%d %s: %s", r.status, r.Error, r.Msg)
		})
	}
	if top := topSeq(t, n, "a", "k"); top != 1 {
		t.Fatalf("rejected requests moved the seq to %d", top)
	}
	wantSeqs(t, "subscriber", s.seqs(t, "k"), []uint64{1})

	// At the limits: accepted.
	r := post(t, srv, http.MethodPost, "", `{"items":[`+strings.Repeat(item+",", 2)+item+`]}`)
	if r.status != http.StatusOK || !equalSeqs(r.Seqs, []uint64{2, 3, 4}) {
		t.Fatalf("MaxItems items: %d %+v, want 200 seqs [2 3 4]", r.status, r)
	}
	if got := counterValue(t, reg, "wspush_http_publish_requests_total"); got != float64(len(tests)+2) {
		t.Errorf("wspush_http_publish_requests_total = %v, want %d", got, len(tests)+2)
	}
}

// The API takes application/json only: a form or text/plain body is what a
// web page can send cross-origin without a preflight.
func TestHTTPPublishContentType(t *testing.T) {
	n := newTestNode(t, Config{})
	srv := publishServer(t, n, PublishHandlerConfig{})
	for _, tt := range []struct {
		contentType string
		status      int
	}{
		{"application/json", http.StatusOK},
		{"application/json; charset=utf-8", http.StatusOK},
		{"Application/JSON", http.StatusOK},
		{"", http.StatusUnsupportedMediaType},
		{"text/plain", http.StatusUnsupportedMediaType},
		{"text/plain; charset=utf-8", http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", http.StatusUnsupportedMediaType},
		{"multipart/form-data; boundary=x", http.StatusUnsupportedMediaType},
		{"application/json-seq", http.StatusUnsupportedMediaType},
		{"application/json; charset", http.StatusUnsupportedMediaType}, // malformed parameter
	} {
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"app":"a","key":"k","data":1}`))
		if err != nil {
			t.Fatal(err)
		}
		if tt.contentType != "" {
			req.Header.Set("Content-Type", tt.contentType)
		}
		r := do(t, srv.Client(), req)
		if r.status != tt.status {
			t.Errorf("Content-Type %q: %d %+v, want %d", tt.contentType, r.status, r, tt.status)
		}
		if tt.status == http.StatusUnsupportedMediaType && (r.Error != proto.CodeBadRequest || r.Seqs != nil) {
			t.Errorf("Content-Type %q: %+v, want error %q and no seqs", tt.contentType, r, proto.CodeBadRequest)
		}
	}
	if top := topSeq(t, n, "a", "k"); top != 3 {
		t.Fatalf("seq %d after 3 accepted requests", top)
	}
}

// A browser Origin is refused unless AllowOrigin allows it.
func TestHTTPPublishOrigin(t *testing.T) {
	n := newTestNode(t, Config{})
	for _, tt := range []struct {
		name   string
		allow  func(*http.Request) bool
		origin string
		status int
	}{
		{"no policy, no Origin", nil, "", http.StatusOK},
		{"no policy", nil, "https://evil.example", http.StatusForbidden},
		{"refused", func(r *http.Request) bool { return r.Header.Get("Origin") == "https://good.example" }, "https://evil.example", http.StatusForbidden},
		{"allowed", func(r *http.Request) bool { return r.Header.Get("Origin") == "https://good.example" }, "https://good.example", http.StatusOK},
	} {
		srv := publishServer(t, n, PublishHandlerConfig{AllowOrigin: tt.allow})
		req, err := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(`{"app":"a","key":"k","data":1}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if tt.origin != "" {
			req.Header.Set("Origin", tt.origin)
		}
		r := do(t, srv.Client(), req)
		if r.status != tt.status || (tt.status == http.StatusForbidden && r.Error != proto.CodeForbidden) {
			t.Errorf("%s: %d %+v, want %d", tt.name, r.status, r, tt.status)
		}
	}
}

// Without an API key the API answers loopback peers only; with one, any
// peer that sends it.
func TestHTTPPublishLoopbackOnly(t *testing.T) {
	n := newTestNode(t, Config{})
	open := n.PublishHandler(PublishHandlerConfig{})
	keyed := n.PublishHandler(PublishHandlerConfig{APIKey: "s3cret"})
	for _, tt := range []struct {
		handler http.Handler
		remote  string
		auth    string
		status  int
	}{
		{open, "127.0.0.1:5000", "", http.StatusOK},
		{open, "127.3.4.5:5000", "", http.StatusOK},
		{open, "[::1]:5000", "", http.StatusOK},
		{open, "[::ffff:127.0.0.1]:5000", "", http.StatusOK},
		{open, "192.0.2.1:5000", "", http.StatusForbidden},
		{open, "10.0.0.1:5000", "", http.StatusForbidden},
		{open, "[2001:db8::1]:5000", "", http.StatusForbidden},
		{open, "[::ffff:192.0.2.1]:5000", "", http.StatusForbidden},
		{open, "0.0.0.0:5000", "", http.StatusForbidden},
		{open, "not an address", "", http.StatusForbidden},
		{keyed, "192.0.2.1:5000", "Bearer s3cret", http.StatusOK},
		{keyed, "192.0.2.1:5000", "", http.StatusUnauthorized},
		{keyed, "127.0.0.1:5000", "", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodPost, "/api/publish", strings.NewReader(`{"app":"a","key":"k","data":1}`))
		req.RemoteAddr = tt.remote
		req.Header.Set("Content-Type", "application/json")
		if tt.auth != "" {
			req.Header.Set("Authorization", tt.auth)
		}
		w := httptest.NewRecorder()
		tt.handler.ServeHTTP(w, req)
		var r httpReply
		if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
			t.Fatalf("%s: reply %q: %v", tt.remote, w.Body.Bytes(), err)
		}
		if w.Code != tt.status {
			t.Errorf("%s auth %q: %d %+v, want %d", tt.remote, tt.auth, w.Code, r, tt.status)
		}
		if w.Code == http.StatusForbidden && (r.Error != proto.CodeForbidden || !strings.Contains(r.Msg, "--api-key")) {
			t.Errorf("%s: 403 %+v, want error %q and a message naming --api-key", tt.remote, r, proto.CodeForbidden)
		}
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// An oversized batch is refused at item MaxItems+1: the handler reads
// little more than MaxItems items of the body, and publishes nothing.
func TestHTTPPublishBatchRefusedWhileDecoding(t *testing.T) {
	n := newTestNode(t, Config{})
	h := n.PublishHandler(PublishHandlerConfig{MaxItems: 1000, MaxBody: 64 << 20})
	item := `{"app":"a","key":"k","data":{"v":1}},`
	body := `{"items":[` + strings.Repeat(item, 200_000-1) + strings.TrimSuffix(item, ",") + `]}`
	cr := &countingReader{r: strings.NewReader(body)}
	req := httptest.NewRequest(http.MethodPost, "/api/publish", cr)
	req.RemoteAddr = "127.0.0.1:5000"
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	var r httpReply
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil {
		t.Fatalf("reply %q: %v", w.Body.Bytes(), err)
	}
	if w.Code != http.StatusRequestEntityTooLarge || r.Error != proto.CodeLimit {
		t.Fatalf("200,000 items: %d %+v, want 413 %q", w.Code, r, proto.CodeLimit)
	}
	// 1001 items and the decoder's read-ahead (it grows its buffer by
	// doubling), far from the body's 7.4 MB.
	if limit := 4 * 1001 * len(item); cr.n > limit {
		t.Errorf("read %d bytes of a %d-byte body before the 413, want at most %d", cr.n, len(body), limit)
	}
	t.Logf("413 after reading %d of %d bytes: %s", cr.n, len(body), r.Msg)
	if top := topSeq(t, n, "a", "k"); top != 0 {
		t.Fatalf("the refused batch moved the seq to %d", top)
	}
}

// do sends req and decodes the JSON reply.
func do(t *testing.T, c *http.Client, req *http.Request) httpReply {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := httpReply{status: resp.StatusCode, header: resp.Header}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("reply: %v", err)
	}
	return r
}
