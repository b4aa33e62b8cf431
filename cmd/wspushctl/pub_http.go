package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// httpPublisher publishes over POST /api/publish (docs/PROTOCOL.md, "HTTP
// publish API").
type httpPublisher struct {
	endpoint, apiKey string
	client           *http.Client
	out              *jsonLines
}

func newHTTPPublisher(rawURL, apiKey string, timeout time.Duration, out *jsonLines) (*httpPublisher, error) {
	base, err := httpBase(rawURL)
	if err != nil {
		return nil, err
	}
	return &httpPublisher{
		endpoint: base + "/api/publish", apiKey: apiKey,
		client: &http.Client{Timeout: timeout}, out: out,
	}, nil
}

func (p *httpPublisher) close() { p.client.CloseIdleConnections() }

// publishReply is the server's answer: seqs on success; error, message and
// the seqs of the leading items that went through on a refusal.
type publishReply struct {
	Seqs    []uint64 `json:"seqs"`
	Error   string   `json:"error"`
	Message string   `json:"message"`
}

// maxReply bounds the reply read (1000 seqs, or an error message).
const maxReply = 1 << 20

func (p *httpPublisher) publish(ctx context.Context, items []pubItem) error {
	body, err := json.Marshal(struct {
		Items []pubItem `json:"items"`
	}{items})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if p.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.apiKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: the batch in flight (%d values) may or may not have been published; publish it again, with ids to be safe", ctx.Err(), len(items))
		}
		var ue *url.Error
		if errors.As(err, &ue) && ue.Timeout() {
			return fmt.Errorf("%w (--timeout %s): the batch (%d values) may or may not have been published; publish it again, with ids to be safe", err, p.client.Timeout, len(items))
		}
		return err // a *url.Error names the method and the URL
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return fmt.Errorf("POST %s: reading the reply: %w", p.endpoint, err)
	}
	var r publishReply
	if jerr := json.Unmarshal(raw, &r); jerr != nil || (resp.StatusCode != http.StatusOK && r.Error == "") {
		return fmt.Errorf("POST %s: HTTP %s, not a wspush reply: %q", p.endpoint, resp.Status, snippet(raw))
	}
	// The leading items the server sequenced (all of them on success).
	if len(r.Seqs) > len(items) {
		return fmt.Errorf("POST %s: %d seqs for %d items", p.endpoint, len(r.Seqs), len(items))
	}
	for i, seq := range r.Seqs {
		if err := p.out.write(published{App: items[i].App, Key: items[i].Key, ID: items[i].ID, Seq: &seq}); err != nil {
			return err
		}
	}
	if resp.StatusCode != http.StatusOK {
		msg := fmt.Sprintf("refused: HTTP %d %s: %s", resp.StatusCode, r.Error, r.Message)
		if hint := refusalHint(resp.StatusCode); hint != "" {
			msg += " (" + hint + ")"
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			msg += fmt.Sprintf("; %d of the %d values of this batch went through (printed), the rest may or may not have: publish them again with ids to be safe", len(r.Seqs), len(items))
		}
		return fmt.Errorf("%s", msg)
	}
	if len(r.Seqs) != len(items) {
		return fmt.Errorf("POST %s: %d seqs for %d items", p.endpoint, len(r.Seqs), len(items))
	}
	return nil
}

// refusalHint says what to do about the refusals a first user meets.
func refusalHint(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "give the server's --api-key with --api-key or WSPUSH_API_KEY"
	case http.StatusForbidden:
		return "a server without --api-key takes publications from loopback clients only"
	case http.StatusRequestEntityTooLarge:
		return "lower --batch, or the value is over the server's --max-payload"
	}
	return ""
}

// snippet is the start of a reply that is not wspush's, for an error.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
