package proto

import "fmt"

// MaxNameLen is the longest app ID or key, in bytes.
const MaxNameLen = 64

// ValidateName reports whether s is a valid app ID or key: 1 to 64
// characters of [A-Za-z0-9_-]. No dots, so that "<app>.<key>" is an
// unambiguous AMQP routing key.
func ValidateName(s string) error {
	if len(s) == 0 {
		return fmt.Errorf("empty")
	}
	if len(s) > MaxNameLen {
		return fmt.Errorf("longer than %d characters", MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		if !nameChar(s[i]) {
			return fmt.Errorf("invalid character %q at %d", s[i], i)
		}
	}
	return nil
}

func nameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// RoutingKey is the AMQP routing key of (app, key).
func RoutingKey(app, key string) string { return app + "." + key }

// ParseRoutingKey splits an AMQP routing key "<app>.<key>" and validates both
// halves.
func ParseRoutingKey(rk string) (app, key string, err error) {
	for i := 0; i < len(rk); i++ {
		if rk[i] == '.' {
			app, key = rk[:i], rk[i+1:]
			if err := ValidateName(app); err != nil {
				return "", "", fmt.Errorf("routing key %q: app: %w", rk, err)
			}
			if err := ValidateName(key); err != nil {
				return "", "", fmt.Errorf("routing key %q: key: %w", rk, err)
			}
			return app, key, nil
		}
	}
	return "", "", fmt.Errorf("routing key %q: want <app>.<key>", rk)
}
