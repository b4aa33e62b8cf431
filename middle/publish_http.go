package middle

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

	"github.com/wspush/wspush/proto"
)

// PublishHandlerConfig configures the HTTP publish API.
type PublishHandlerConfig struct {
	// APIKey, when set, must be sent as "Authorization: Bearer <key>".
	APIKey string
	// MaxItems bounds a batch (default 1000).
	MaxItems int
	// MaxBody bounds the request body in bytes (default 8 MiB).
	MaxBody int64
	// AllowOrigin decides whether a browser request (one with an Origin
	// header) may publish; refused ones get 403 (docs/PROTOCOL.md,
	// "Origins"). Nil: requests with an Origin header are refused.
	AllowOrigin func(*http.Request) bool
}

// publishItem is one publication of a request body. Exactly one of Data
// (any JSON value) and B64 (base64 bytes, for non-JSON payloads) is set.
type publishItem struct {
	App  string          `json:"app"`
	Key  string          `json:"key"`
	Data json.RawMessage `json:"data,omitempty"`
	B64  []byte          `json:"b64,omitempty"`
	TS   int64           `json:"ts,omitempty"`
	// ID is the item's idempotency id (docs/PROTOCOL.md, "Idempotent
	// publishing").
	ID string `json:"id,omitempty"`
}

type publishBody struct {
	publishItem
	Items []publishItem `json:"items,omitempty"`
}

// PublishHandler serves POST /api/publish: a single publication
// {"app","key","data"} or a batch {"items":[...]}, answered with
// {"seqs":[...]} in the order given.
func (n *Node) PublishHandler(cfg PublishHandlerConfig) http.Handler {
	if cfg.MaxItems <= 0 {
		cfg.MaxItems = 1000
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 8 << 20
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code := n.servePublish(w, r, cfg)
		n.metrics.httpReqs.WithLabelValues(strconv.Itoa(code)).Inc()
	})
}

func (n *Node) servePublish(w http.ResponseWriter, r *http.Request, cfg PublishHandlerConfig) int {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return writeError(w, http.StatusMethodNotAllowed, proto.CodeBadRequest, "use POST")
	}
	if r.Header.Get("Origin") != "" && (cfg.AllowOrigin == nil || !cfg.AllowOrigin(r)) {
		return writeError(w, http.StatusForbidden, proto.CodeForbidden, fmt.Sprintf("origin %q may not publish (see --allowed-origins)", r.Header.Get("Origin")))
	}
	if cfg.APIKey != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(cfg.APIKey)) != 1 {
			return writeError(w, http.StatusUnauthorized, proto.CodeUnauthorized, "missing or wrong API key (Authorization: Bearer <key>)")
		}
	} else if !loopbackPeer(r.RemoteAddr) {
		return writeError(w, http.StatusForbidden, proto.CodeForbidden, "without an API key this node accepts publications from loopback clients only; start it with --api-key to publish from elsewhere")
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != contentJSON {
		return writeError(w, http.StatusUnsupportedMediaType, proto.CodeBadRequest, fmt.Sprintf("Content-Type %q: send application/json", r.Header.Get("Content-Type")))
	}
	pubs, err := decodePublishBody(http.MaxBytesReader(w, r.Body, cfg.MaxBody), cfg.MaxItems)
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			return writeError(w, http.StatusRequestEntityTooLarge, proto.CodeLimit, fmt.Sprintf("body over %d bytes", cfg.MaxBody))
		case errors.Is(err, errTooManyItems):
			return writeError(w, http.StatusRequestEntityTooLarge, proto.CodeLimit, err.Error())
		}
		return writeError(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error())
	}
	seqs, err := n.Publish(r.Context(), "http", pubs)
	if err != nil {
		var perr *PublishError
		if errors.As(err, &perr) {
			return writeError(w, http.StatusBadRequest, proto.CodeBadRequest, err.Error())
		}
		code := proto.CodeUnavailable
		if errors.Is(err, ErrKeyLimit) {
			code = proto.CodeLimit // the store is full of subscribed keys (--max-keys)
			n.log.Warn("http publish refused: the memory store holds --max-keys keys, all with local subscribers", "published", len(seqs), "of", len(pubs), "error", err)
		} else {
			n.log.Error("http publish failed", "published", len(seqs), "of", len(pubs), "error", err)
		}
		return writeJSON(w, http.StatusServiceUnavailable, map[string]any{
			"error": code, "message": err.Error(), "seqs": seqs,
		})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"seqs": seqs})
}

// contentJSON is the one media type the publish API accepts: a form or
// text/plain body is what a web page can send cross-origin without a
// preflight (docs/PROTOCOL.md, "HTTP publish API").
const contentJSON = "application/json"

// loopbackPeer reports whether remoteAddr (host:port) is 127.0.0.0/8 or ::1.
func loopbackPeer(remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return false
	}
	return ap.Addr().Unmap().IsLoopback()
}

var errTooManyItems = errors.New("too many items")

// decodePublishBody decodes a body as it reads it: a batch is refused at
// item maxItems+1, so an oversized one costs at most maxItems decoded items
// (and the reader bounds the bytes). Field names match as json.Unmarshal
// matches them (case-insensitively); unknown fields are ignored.
func decodePublishBody(body io.Reader, maxItems int) ([]proto.Publication, error) {
	dec := json.NewDecoder(body)
	b, err := decodeTop(dec, maxItems)
	if err != nil {
		return nil, err
	}
	items := b.Items
	switch {
	case items == nil && b.App == "" && b.Key == "":
		return nil, errors.New(`empty body: want {"app","key","data"} or {"items":[...]}`)
	case items == nil:
		items = []publishItem{b.publishItem}
	case b.App != "" || b.Key != "" || b.Data != nil || b.B64 != nil:
		return nil, errors.New(`give either one publication or "items", not both`)
	case len(items) == 0:
		return nil, errors.New(`"items" is empty`)
	}
	pubs := make([]proto.Publication, len(items))
	for i, it := range items {
		p := proto.Publication{App: it.App, Key: it.Key, TS: it.TS, ID: it.ID}
		switch {
		case it.Data != nil && it.B64 != nil:
			return nil, &PublishError{Index: i, Err: errors.New(`give "data" or "b64", not both`)}
		case it.Data != nil:
			p.Data, p.JSON = it.Data, true
		case it.B64 != nil:
			p.Data = it.B64
		default:
			return nil, &PublishError{Index: i, Err: errors.New(`missing "data" (JSON) or "b64" (base64 bytes)`)}
		}
		if it.TS < 0 {
			return nil, &PublishError{Index: i, Err: errors.New(`"ts" must be Unix milliseconds`)}
		}
		pubs[i] = p
	}
	return pubs, nil
}

// decodeTop decodes the body's one JSON object, token by token at the top
// level and through "items", item by item.
func decodeTop(dec *json.Decoder, maxItems int) (publishBody, error) {
	var b publishBody
	if err := expectDelim(dec, '{', "a JSON object"); err != nil {
		return b, err
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return b, malformed(err)
		}
		name, _ := t.(string)
		var field any
		switch {
		case strings.EqualFold(name, "items"):
			if b.Items, err = decodeItems(dec, maxItems); err != nil {
				return b, err
			}
			continue
		case strings.EqualFold(name, "app"):
			field = &b.App
		case strings.EqualFold(name, "key"):
			field = &b.Key
		case strings.EqualFold(name, "data"):
			field = &b.Data
		case strings.EqualFold(name, "b64"):
			field = &b.B64
		case strings.EqualFold(name, "ts"):
			field = &b.TS
		case strings.EqualFold(name, "id"):
			field = &b.ID
		default:
			field = new(json.RawMessage)
		}
		if err := dec.Decode(field); err != nil {
			return b, malformed(fmt.Errorf("field %q: %w", name, err))
		}
	}
	if err := expectDelim(dec, '}', "the end of the object"); err != nil {
		return b, err
	}
	if t, err := dec.Token(); err != io.EOF {
		if err != nil {
			return b, malformed(err)
		}
		return b, malformed(fmt.Errorf("data after the object: %v", t))
	}
	return b, nil
}

// decodeItems decodes the value of "items": null (no batch) or an array
// of at most maxItems items.
func decodeItems(dec *json.Decoder, maxItems int) ([]publishItem, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, malformed(err)
	}
	if t == nil {
		return nil, nil
	}
	if d, ok := t.(json.Delim); !ok || d != '[' {
		return nil, malformed(fmt.Errorf(`"items" is %v, want an array`, t))
	}
	items := []publishItem{}
	for dec.More() {
		if len(items) == maxItems {
			return nil, fmt.Errorf("%w: more than %d, the limit is %d", errTooManyItems, maxItems, maxItems)
		}
		var it publishItem
		if err := dec.Decode(&it); err != nil {
			return nil, malformed(fmt.Errorf("item %d: %w", len(items), err))
		}
		items = append(items, it)
	}
	return items, expectDelim(dec, ']', `the end of "items"`)
}

func expectDelim(dec *json.Decoder, want json.Delim, what string) error {
	t, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return malformed(fmt.Errorf("got %v, want %s", t, what))
	}
	return nil
}

// malformed wraps a decoding error; a *http.MaxBytesError stays reachable
// with errors.As.
func malformed(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("malformed JSON body: %w", err)
}

func writeError(w http.ResponseWriter, status int, code, message string) int {
	return writeJSON(w, status, map[string]string{"error": code, "message": message})
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
	return status
}
