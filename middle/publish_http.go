package middle

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
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
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, cfg.MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return writeError(w, http.StatusRequestEntityTooLarge, proto.CodeLimit, fmt.Sprintf("body over %d bytes", cfg.MaxBody))
		}
		return writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "reading body: "+err.Error())
	}
	pubs, err := decodePublishBody(body, cfg.MaxItems)
	if err != nil {
		status, code := http.StatusBadRequest, proto.CodeBadRequest
		if errors.Is(err, errTooManyItems) {
			status, code = http.StatusRequestEntityTooLarge, proto.CodeLimit
		}
		return writeError(w, status, code, err.Error())
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

var errTooManyItems = errors.New("too many items")

func decodePublishBody(body []byte, maxItems int) ([]proto.Publication, error) {
	var b publishBody
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("malformed JSON body: %w", err)
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
	case len(items) > maxItems:
		return nil, fmt.Errorf("%w: %d, the limit is %d", errTooManyItems, len(items), maxItems)
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

func writeError(w http.ResponseWriter, status int, code, message string) int {
	return writeJSON(w, status, map[string]string{"error": code, "message": message})
}

func writeJSON(w http.ResponseWriter, status int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
	return status
}
