package app_test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/wspush/wspush/internal/app"
	jsclient "github.com/wspush/wspush/userservice/client/js"
)

// TestServesTheJSClient fetches /client.js and /client.d.ts over a real
// socket: the repository's files, with their content types, revalidated by
// ETag, and not shadowed by a dashboard that has files of the same name.
func TestServesTheJSClient(t *testing.T) {
	dash := fstest.MapFS{
		"index.html": {Data: []byte("<html></html>")},
		"client.js":  {Data: []byte("// not the client")},
	}
	base, _ := startApp(t, app.Config{Dashboard: dash})
	for _, tc := range []struct {
		path, contentType string
		want              []byte
		contains          string
	}{
		{"/client.js", "text/javascript; charset=utf-8", jsclient.Script, "export class Client"},
		{"/client.d.ts", "application/typescript; charset=utf-8", jsclient.Types, "export declare class Client"},
	} {
		resp, err := http.Get(base + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d", tc.path, resp.StatusCode)
		}
		if got := resp.Header.Get("Content-Type"); got != tc.contentType {
			t.Errorf("GET %s: Content-Type %q, want %q", tc.path, got, tc.contentType)
		}
		if got := resp.Header.Get("Cache-Control"); got != "no-cache" {
			t.Errorf("GET %s: Cache-Control %q, want no-cache", tc.path, got)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
			t.Errorf("GET %s: Access-Control-Allow-Origin %q, want * (module scripts from another origin need CORS)", tc.path, got)
		}
		if !bytes.Equal(body, tc.want) || !strings.Contains(string(body), tc.contains) {
			t.Errorf("GET %s: %d bytes, not the embedded file (%d bytes)", tc.path, len(body), len(tc.want))
		}
		etag := resp.Header.Get("ETag")
		if etag == "" {
			t.Fatalf("GET %s: no ETag", tc.path)
		}

		req, _ := http.NewRequest(http.MethodGet, base+tc.path, nil)
		req.Header.Set("If-None-Match", etag)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotModified {
			t.Errorf("GET %s with If-None-Match: %d, want 304", tc.path, resp.StatusCode)
		}
	}
}
