package redis

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/proto"
)

// DefaultLeaseTTL is the default lifetime of a poll lease.
const DefaultLeaseTTL = 5 * time.Second

// LeaseConfig configures a Lease. The zero value of every field
// but Client and NodeID means its default.
type LeaseConfig struct {
	// Client is the Redis every node shares. Required.
	Client goredis.UniversalClient
	// NodeID is the lease holder's name, the value of <prefix>:poll:<app>:
	// 1–64 characters of [A-Za-z0-9_-], unique among the live nodes.
	// Required.
	NodeID string
	// Prefix starts every key (default DefaultPrefix, "wspush").
	Prefix string
	// TTL is how long a lease lasts after it was taken or last renewed: a
	// node that stops renewing (it died, or stopped polling) loses the app
	// to another within TTL (default 5s). It should exceed the poll
	// schedule's interval, or the lease changes hands between polls, and a
	// new holder publishes every value once more.
	TTL time.Duration
}

// Validate reports the first invalid field.
func (c LeaseConfig) Validate() error {
	if c.Client == nil {
		return errors.New("redis lease: Client is required")
	}
	if err := proto.ValidateName(c.NodeID); err != nil {
		return fmt.Errorf("redis lease: node ID %q: %w", c.NodeID, err)
	}
	if err := ValidatePrefix(c.Prefix); err != nil {
		return fmt.Errorf("redis lease: %w", err)
	}
	if c.TTL < 0 || (c.TTL > 0 && c.TTL < time.Millisecond) {
		return fmt.Errorf("redis lease: TTL %s: must be at least 1ms", c.TTL)
	}
	return nil
}

// Lease decides which node polls an app (docs/PROTOCOL.md, "Data-center
// API": one node polls an app at a time): <prefix>:poll:<app> holds the
// node ID of the holder, with a TTL that the holder renews on each Acquire.
// Its scripts touch that one key, so they run on Redis Cluster too. It
// implements dataservice.Lease.
type Lease struct {
	client goredis.UniversalClient
	keys   keys
	node   string
	ttlMs  int64

	mu   sync.Mutex
	held map[string]struct{} // apps whose last Acquire succeeded
}

// NewLease validates cfg and returns a lease.
func NewLease(cfg LeaseConfig) (*Lease, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultLeaseTTL
	}
	return &Lease{
		client: cfg.Client,
		keys:   newKeys(cfg.Prefix),
		node:   cfg.NodeID,
		ttlMs:  cfg.TTL.Milliseconds(),
		held:   make(map[string]struct{}),
	}, nil
}

// leaseAcquireScript takes a free lease or renews one this node holds.
// KEYS[1] lease; ARGV[1] node, ARGV[2] TTL in ms. Returns 1 when held.
var leaseAcquireScript = goredis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// leaseReleaseScript deletes the lease if this node holds it.
// KEYS[1] lease; ARGV[1] node.
var leaseReleaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Acquire reports whether this node holds the lease of app for the next
// TTL: it takes the lease when it is free and renews it when this node
// already holds it, in one round trip.
func (l *Lease) Acquire(ctx context.Context, app string) (bool, error) {
	n, err := leaseAcquireScript.Run(ctx, l.client, []string{l.keys.poll(app)}, l.node, l.ttlMs).Int()
	if err != nil {
		return false, fmt.Errorf("redis lease of %s: %w", app, err)
	}
	l.mu.Lock()
	if n == 1 {
		l.held[app] = struct{}{}
	} else {
		delete(l.held, app)
	}
	l.mu.Unlock()
	return n == 1, nil
}

// Release gives up the lease of app if this node holds it, so that another
// node takes the app over at once rather than after TTL.
func (l *Lease) Release(ctx context.Context, app string) error {
	l.mu.Lock()
	delete(l.held, app)
	l.mu.Unlock()
	if err := leaseReleaseScript.Run(ctx, l.client, []string{l.keys.poll(app)}, l.node).Err(); err != nil {
		return fmt.Errorf("release redis lease of %s: %w", app, err)
	}
	return nil
}

// ReleaseAll releases every lease this node acquired, for a clean shutdown
// (after the poller stopped).
func (l *Lease) ReleaseAll(ctx context.Context) error {
	l.mu.Lock()
	apps := make([]string, 0, len(l.held))
	for app := range l.held {
		apps = append(apps, app)
	}
	l.mu.Unlock()
	slices.Sort(apps)
	var errs []error
	for _, app := range apps {
		if err := l.Release(ctx, app); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
