// Package origin decides which browser origins may use a node. The
// WebSocket upgrade and POST /api/publish share one Policy
// (docs/PROTOCOL.md, "Origins"): a request without an Origin header comes
// from a program, not a web page, and passes; a browser's Origin must be
// one the operator allowed or one of the server's own public URLs. The Host
// a request claims is never trusted (DNS rebinding makes it whatever the
// attacker's page wants).
package origin

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Policy is an immutable set of allowed origins.
type Policy struct {
	any     bool
	allowed map[string]bool // canonical "scheme://host[:port]"
}

// New returns the policy allowing the origins of allowed ("*" for any)
// and of the server's public URLs (scheme and host of each; a path is
// ignored).
func New(allowed, publicURLs []string) (*Policy, error) {
	p := &Policy{allowed: make(map[string]bool)}
	for _, a := range allowed {
		a = strings.TrimSpace(a)
		if a == "*" {
			p.any = true
			continue
		}
		c, err := canonical(a, false)
		if err != nil {
			return nil, fmt.Errorf("allowed origin %q: %w", a, err)
		}
		p.allowed[c] = true
	}
	for _, u := range publicURLs {
		c, err := canonical(strings.TrimSpace(u), true)
		if err != nil {
			return nil, fmt.Errorf("public URL %q: %w", u, err)
		}
		p.allowed[c] = true
	}
	return p, nil
}

// Allow reports whether a request with this Origin header may proceed; ""
// (no header: not a browser) always may.
func (p *Policy) Allow(origin string) bool {
	if origin == "" || p.any {
		return true
	}
	c, err := canonical(origin, false)
	return err == nil && p.allowed[c]
}

// AllowRequest is Allow for r's Origin header.
func (p *Policy) AllowRequest(r *http.Request) bool { return p.Allow(r.Header.Get("Origin")) }

// Any reports whether every origin is allowed ("*").
func (p *Policy) Any() bool { return p.any }

// Origins lists the allowed origins, sorted (for the start-up log).
func (p *Policy) Origins() []string {
	out := make([]string, 0, len(p.allowed)+1)
	if p.any {
		out = append(out, "*")
	}
	for o := range p.allowed {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

// LoopbackURLs are the public URLs of a server listening on addr when the
// operator named none: its loopback names (localhost, 127.0.0.1, [::1])
// with its port, and the listening IP itself when it is a specific one.
func LoopbackURLs(addr net.Addr, tls bool) []string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return nil
	}
	scheme := "http"
	if tls {
		scheme = "https"
	}
	port := strconv.Itoa(tcp.Port)
	hosts := []string{"localhost", "127.0.0.1", "[::1]"}
	if ip := tcp.IP; ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		if ip.To4() != nil {
			hosts = append(hosts, ip.String())
		} else {
			hosts = append(hosts, "["+ip.String()+"]")
		}
	}
	out := make([]string, 0, len(hosts))
	for _, h := range hosts {
		out = append(out, scheme+"://"+h+":"+port)
	}
	return out
}

// canonical returns "scheme://host[:port]" in lower case, without the
// scheme's default port. A path is an error for an origin and ignored for
// a public URL.
func canonical(s string, pathOK bool) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("scheme %q: want http or https", u.Scheme)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("want scheme://host[:port]")
	}
	if !pathOK && u.Path != "" && u.Path != "/" {
		return "", fmt.Errorf("an origin has no path")
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		return scheme + "://" + host + ":" + port, nil
	}
	return scheme + "://" + host, nil
}
