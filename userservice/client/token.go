package client

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// tokenExpiry reads the exp claim of a JWT without verifying it (the
// server does): the client only needs to know when to refresh
// (docs/PROTOCOL.md, Token expiry and refresh). Zero when there is none.
func tokenExpiry(token string) time.Time {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp float64 `json:"exp"`
	}
	if json.Unmarshal(b, &claims) != nil || claims.Exp <= 0 {
		return time.Time{}
	}
	sec := int64(claims.Exp)
	return time.Unix(sec, int64((claims.Exp-float64(sec))*1e9))
}

// refreshDelay is how long from now to refresh a token expiring at exp: a
// minute ahead, or half its remaining life when that is shorter. ok is
// false when there is nothing to refresh.
func refreshDelay(exp time.Time) (d time.Duration, ok bool) {
	if exp.IsZero() {
		return 0, false
	}
	left := time.Until(exp)
	if left <= 0 {
		return 0, false
	}
	return left - min(time.Minute, left/2), true
}
