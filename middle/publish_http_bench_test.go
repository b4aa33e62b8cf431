package middle

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// BenchmarkPublishOversizedBatch is what refusing a 200,000-item batch
// (issue 9) costs the node: bytes allocated per request (B/op) and time.
// Nothing is published.
func BenchmarkPublishOversizedBatch(b *testing.B) {
	n := newTestNode(b, Config{})
	h := n.PublishHandler(PublishHandlerConfig{})
	item := `{"app":"a","key":"k","data":1},`
	body := `{"items":[` + strings.Repeat(item, 200_000-1) + strings.TrimSuffix(item, ",") + `]}`
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/api/publish", strings.NewReader(body))
		req.RemoteAddr = "127.0.0.1:5000"
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusRequestEntityTooLarge {
			b.Fatalf("%d %s", w.Code, w.Body.Bytes())
		}
	}
}
