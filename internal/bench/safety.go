package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
)

// CheckLoopback refuses a URL whose host is not, or does not resolve
// only to, a loopback address (127.0.0.0/8 or ::1): a load test must
// never hit another machine. The dialers check again at connect time
// (see loopbackOnly), so a name that resolves differently later is
// refused too.
func CheckLoopback(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("url %q: %w", raw, err)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("url %q: no host", raw)
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("refusing %s: %s is not a loopback address (127.0.0.0/8 or ::1); wsbench only loads this machine", raw, ip)
		}
		return nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("url %q: resolve %s: %w", raw, host, err)
	}
	if len(addrs) == 0 {
		return fmt.Errorf("url %q: %s resolves to nothing", raw, host)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return fmt.Errorf("refusing %s: %s resolves to %s, not a loopback address; wsbench only loads this machine", raw, host, a.IP)
		}
	}
	return nil
}

// loopbackOnly is a net.Dialer Control function that refuses to connect
// anywhere but loopback.
func loopbackOnly(_, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("dial %s: refusing a non-loopback address", address)
	}
	return nil
}

// ServerURL is one wspush node: its WebSocket URL and the HTTP base of
// its /api/publish and /metrics.
type ServerURL struct {
	WS   string
	HTTP string
}

// ParseServerURLs reads a comma-separated list of ws:// (or wss://)
// URLs, checks each is loopback and derives its HTTP base: ws://host/ws
// is http://host.
func ParseServerURLs(ctx context.Context, list string) ([]ServerURL, error) {
	var out []ServerURL
	for _, raw := range strings.Split(list, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("url %q: %w", raw, err)
		}
		var scheme string
		switch u.Scheme {
		case "ws":
			scheme = "http"
		case "wss":
			scheme = "https"
		default:
			return nil, fmt.Errorf("url %q: want ws:// or wss://", raw)
		}
		if err := CheckLoopback(ctx, raw); err != nil {
			return nil, err
		}
		out = append(out, ServerURL{WS: raw, HTTP: scheme + "://" + u.Host})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no server URL given")
	}
	return out, nil
}

// CheckAMQPURL refuses an AMQP URL that is not amqp:// or amqps:// on a
// loopback host (see CheckLoopback). Its messages never show the
// password.
func CheckAMQPURL(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL
		}
		return fmt.Errorf("AMQP URL: %w", err)
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return fmt.Errorf("AMQP URL %s: want amqp:// or amqps://", u.Redacted())
	}
	return CheckLoopback(ctx, u.Redacted())
}
