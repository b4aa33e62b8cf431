package client

import (
	"encoding/base64"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	c := &Client{cfg: Config{MinBackoff: 100 * time.Millisecond, MaxBackoff: 2 * time.Second}}
	for n, ceil := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
		ceil *= time.Millisecond
		if n == 6 {
			n = 1000 // no overflow for large attempts
		}
		var maxSeen time.Duration
		for range 2000 {
			d := c.backoff(n)
			if d < 0 || d >= ceil {
				t.Fatalf("backoff(%d) = %s, want [0, %s)", n, d, ceil)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceil/2 {
			t.Errorf("backoff(%d) never above %s in 2000 draws: not spread up to %s", n, maxSeen, ceil)
		}
	}
}

func TestTokenExpiry(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	for _, tc := range []struct {
		token string
		want  time.Time
	}{
		{"h." + enc([]byte(`{"exp":1763812345}`)) + ".s", time.Unix(1763812345, 0)},
		{"h." + enc([]byte(`{"sub":"x"}`)) + ".s", time.Time{}},
		{"h." + enc([]byte(`not json`)) + ".s", time.Time{}},
		{"h.!!!.s", time.Time{}},
		{"", time.Time{}},
		{"a.b", time.Time{}},
	} {
		if got := tokenExpiry(tc.token); !got.Equal(tc.want) {
			t.Errorf("tokenExpiry(%q) = %v, want %v", tc.token, got, tc.want)
		}
	}
}

func TestRefreshDelay(t *testing.T) {
	if _, ok := refreshDelay(time.Time{}); ok {
		t.Error("a token without exp is refreshed")
	}
	if _, ok := refreshDelay(time.Now().Add(-time.Second)); ok {
		t.Error("an expired token is refreshed")
	}
	// A minute ahead of a long-lived token, half-way for a short one.
	if d, _ := refreshDelay(time.Now().Add(time.Hour)); d < 58*time.Minute || d > 59*time.Minute {
		t.Errorf("1h token: refresh in %s", d)
	}
	if d, _ := refreshDelay(time.Now().Add(10 * time.Second)); d < 4*time.Second || d > 5*time.Second {
		t.Errorf("10s token: refresh in %s", d)
	}
}
