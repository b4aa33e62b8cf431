// Package redis holds the Redis adapters of the middle tier: the Store that
// sequences publications and fans them out with sharded pub/sub, the Bus that
// receives them, the subscription Index, the poll leases and the ingest
// partition claims. docs/PROTOCOL.md, "Redis schema", names every key.
package redis

import (
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/wspush/wspush/internal/retry"
)

// DefaultPrefix starts every Redis key wspush uses (docs/PROTOCOL.md, "Redis
// schema"). Another prefix lets several deployments, or tests, share one
// Redis.
const DefaultPrefix = "wspush"

// NewClient returns a client of the Redis at rawURL after checking, within
// ctx, that it answers PING. rawURL is redis://[user:password@]host:port/db
// (rediss:// for TLS; see goredis.ParseURL for the query options), or
// several such URLs separated by commas: the seeds of a Redis Cluster. name
// becomes the CLIENT SETNAME of every connection, so that an operator (and
// the fault suite) can tell the node's connections apart. The error never
// contains a password.
func NewClient(ctx context.Context, rawURL, name string) (goredis.UniversalClient, error) {
	seeds := strings.Split(rawURL, ",")
	var c goredis.UniversalClient
	if len(seeds) == 1 {
		opt, err := goredis.ParseURL(rawURL)
		if err != nil {
			return nil, fmt.Errorf("redis URL %s: %w", retry.RedactURL(rawURL), err)
		}
		opt.ClientName = name
		opt.MaxRetries = noRetries
		// Maintenance notifications are a Redis Cloud feature; asking a
		// plain Redis for them only adds a failing command to every new
		// connection.
		opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c = goredis.NewClient(opt)
	} else {
		var copt *goredis.ClusterOptions
		for _, s := range seeds {
			s = strings.TrimSpace(s)
			opt, err := goredis.ParseURL(s)
			if err != nil {
				return nil, fmt.Errorf("redis cluster seed %s: %w", retry.RedactURL(s), err)
			}
			if copt == nil {
				copt = &goredis.ClusterOptions{
					Username: opt.Username, Password: opt.Password, TLSConfig: opt.TLSConfig,
					ClientName:               name,
					MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
				}
			}
			copt.Addrs = append(copt.Addrs, opt.Addr)
		}
		c = goredis.NewClusterClient(copt)
	}
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("redis %s: ping: %w", retry.RedactURL(rawURL), err)
	}
	return c, nil
}

// noRetries turns off go-redis's own retries. After a failed read of a
// pipeline's replies it would send the whole pipeline again, and the
// scripts that had already run would sequence their publications a second
// time. Every caller here retries at its own level, where it knows what is
// safe to repeat.
const noRetries = -1

// ValidatePrefix checks a key prefix: empty (the default), or a name without
// white space or braces (braces would break the hash tags).
func ValidatePrefix(p string) error {
	if strings.ContainsAny(p, " \t\r\n{}") {
		return fmt.Errorf("redis prefix %q: must not contain white space or braces", p)
	}
	return nil
}

// instanceToken identifies one run of a process, to tell it apart from
// another process that (wrongly) uses the same node ID.
func instanceToken() string { return crand.Text() }

// isNoScript reports whether err says Redis does not have a script cached
// (it restarted, or SCRIPT FLUSH ran).
func isNoScript(err error) bool {
	return err != nil && (errors.Is(err, goredis.ErrNoScript) || goredis.HasErrorPrefix(err, "NOSCRIPT"))
}
