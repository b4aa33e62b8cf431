// Package retry holds the small pieces every reconnect loop of wspush
// shares: an exponential backoff with jitter, a sleep that ends with its
// context, and URL redaction for logs.
package retry

import (
	"context"
	"math/rand/v2"
	"net/url"
	"time"
)

// Backoff is the retry delay of the Redis and AMQP reconnect loops:
// exponential from Min to Max, each delay drawn from the upper half of the
// current step, so that nodes that lost a server together do not come back
// in lockstep. The zero step starts at Min.
type Backoff struct {
	Min, Max time.Duration
	step     time.Duration
}

// Next returns the next delay.
func (b *Backoff) Next() time.Duration {
	if b.step == 0 {
		b.step = b.Min
	} else {
		b.step = min(2*b.step, b.Max)
	}
	half := b.step / 2
	return half + rand.N(b.step-half+1)
}

// Reset starts the delays over at Min.
func (b *Backoff) Reset() { b.step = 0 }

// Sleep waits d; false when ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// RedactURL hides the password of a Redis or AMQP URL for logs and errors.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
