// Package js holds the wspush JavaScript client (wspush.js, an ES module
// without dependencies, for browsers and Node 18+) and its TypeScript
// declarations (wspush.d.ts), embedded so that the server serves the very
// files of the repository at /client.js and /client.d.ts. The client
// implements docs/PROTOCOL.md; its tests are test/*.test.mjs (node --test).
package js

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"net/http"
	"time"
)

// Script is wspush.js.
//
//go:embed wspush.js
var Script []byte

// Types is wspush.d.ts.
//
//go:embed wspush.d.ts
var Types []byte

// ScriptHandler serves Script as text/javascript.
func ScriptHandler() http.Handler {
	return fileHandler("wspush.js", "text/javascript; charset=utf-8", Script)
}

// TypesHandler serves Types as application/typescript.
func TypesHandler() http.Handler {
	return fileHandler("wspush.d.ts", "application/typescript; charset=utf-8", Types)
}

// fileHandler serves one embedded file. Browsers revalidate it on every
// use (no-cache) with its ETag, so a page never runs a client older than
// the server it talks to, and an unchanged file costs a 304. Any origin may
// load it: it is public code, and a module script from another origin
// needs CORS.
func fileHandler(name, contentType string, content []byte) http.Handler {
	sum := sha256.Sum256(content)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", etag)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Access-Control-Allow-Origin", "*")
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(content))
	})
}
