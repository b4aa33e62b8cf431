package middle

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// DefaultRedisPrefix starts every Redis key wspush uses (DESIGN.md, "Redis
// schema"). Another prefix lets several clusters, or tests, share one Redis.
const DefaultRedisPrefix = "wspush"

// NewRedisClient returns a client of the Redis at rawURL
// (redis://[user:password@]host:port/db or rediss:// for TLS; see
// redis.ParseURL for the query options) after checking, within ctx, that it
// answers PING. The error never contains the password.
func NewRedisClient(ctx context.Context, rawURL string) (*redis.Client, error) {
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("redis URL %s: %w", redactURL(rawURL), err)
	}
	// Maintenance notifications are a Redis Cloud feature; asking a plain
	// Redis for them only adds a failing command to every new connection.
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	c := redis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis %s: ping: %w", redactURL(rawURL), err)
	}
	return c, nil
}

// validateRedisPrefix checks a key prefix: something non-empty that cannot
// run into the key names that follow it.
func validateRedisPrefix(p string) error {
	if p == "" {
		return nil // the default
	}
	if strings.ContainsAny(p, " \t\r\n") {
		return fmt.Errorf("redis prefix %q: must not contain white space", p)
	}
	return nil
}

// redisKeys names the keys of DESIGN.md's Redis schema under a prefix, plus
// the bookkeeping RedisIndex adds (apps, nodes, nodesubs). App and key names
// cannot contain ':' (proto.ValidateName), so every name is unambiguous.
type redisKeys struct {
	p string // prefix including the trailing ':'
}

func newRedisKeys(prefix string) redisKeys {
	if prefix == "" {
		prefix = DefaultRedisPrefix
	}
	return redisKeys{p: prefix + ":"}
}

func (k redisKeys) seq(app, key string) string  { return k.p + "seq:" + app + ":" + key }
func (k redisKeys) hist(app, key string) string { return k.p + "hist:" + app + ":" + key }
func (k redisKeys) sub(app, key string) string  { return k.p + "sub:" + app + ":" + key }
func (k redisKeys) keys(app string) string      { return k.p + "keys:" + app }
func (k redisKeys) apps() string                { return k.p + "apps" }
func (k redisKeys) nodes() string               { return k.p + "nodes" }
func (k redisKeys) node(id string) string       { return k.p + "node:" + id }
func (k redisKeys) nodeSubs(id string) string   { return k.p + "nodesubs:" + id }
func (k redisKeys) poll(app string) string      { return k.p + "poll:" + app }

// instanceToken identifies one run of a process, to tell it apart from
// another process that (wrongly) uses the same node ID.
func instanceToken() string { return crand.Text() }

// isNoScript reports whether err says Redis does not have a script cached
// (it restarted, or SCRIPT FLUSH ran).
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, redis.ErrNoScript) || redis.HasErrorPrefix(err, "NOSCRIPT"))
}
