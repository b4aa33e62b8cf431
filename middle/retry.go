package middle

import (
	"context"
	"math/rand/v2"
	"net/url"
	"time"
)

// backoff is the retry delay of the Redis and AMQP reconnect loops:
// exponential from min to max, each delay drawn from the upper half of the
// current step, so that nodes that lost a server together do not come back
// in lockstep.
type backoff struct {
	min, max time.Duration
	step     time.Duration
}

func (b *backoff) next() time.Duration {
	if b.step == 0 {
		b.step = b.min
	} else {
		b.step = min(2*b.step, b.max)
	}
	half := b.step / 2
	return half + rand.N(b.step-half+1)
}

func (b *backoff) reset() { b.step = 0 }

// sleepCtx waits d; false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// redactURL hides the password of a Redis or AMQP URL for logs and errors.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
