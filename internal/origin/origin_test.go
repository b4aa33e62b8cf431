package origin

import (
	"net"
	"net/http"
	"slices"
	"testing"
)

func TestPolicy(t *testing.T) {
	p, err := New([]string{"https://Dash.Example:443", "http://10.0.0.5:3000"}, []string{"https://push.example/ws"})
	if err != nil {
		t.Fatal(err)
	}
	for origin, want := range map[string]bool{
		"":                          true, // not a browser
		"https://dash.example":      true,
		"HTTPS://DASH.EXAMPLE":      true,
		"https://dash.example:8443": false,
		"http://dash.example":       false,
		"http://10.0.0.5:3000":      true,
		"https://push.example":      true,
		"https://evil.example":      false,
		"null":                      false,
		"https://push.example.evil": false,
	} {
		if got := p.Allow(origin); got != want {
			t.Errorf("Allow(%q) = %v, want %v", origin, got, want)
		}
	}
	r, _ := http.NewRequest("GET", "http://evil.example/ws", nil)
	r.Host = "evil.example"
	r.Header.Set("Origin", "http://evil.example")
	if p.AllowRequest(r) {
		t.Error("an origin matching the claimed Host passed")
	}
	if got := p.Origins(); !slices.Equal(got, []string{"http://10.0.0.5:3000", "https://dash.example", "https://push.example"}) {
		t.Errorf("Origins() = %v", got)
	}
}

func TestPolicyAny(t *testing.T) {
	p, err := New([]string{"*"}, nil)
	if err != nil || !p.Any() || !p.Allow("https://anything.example") {
		t.Fatalf("any: %v %v", p, err)
	}
}

func TestPolicyRejectsBadEntries(t *testing.T) {
	for _, a := range []string{"dash.example", "ftp://x", "https://x/path", "https://u@x", "https://"} {
		if _, err := New([]string{a}, nil); err == nil {
			t.Errorf("New(%q): no error", a)
		}
	}
	if _, err := New(nil, []string{"push.example"}); err == nil {
		t.Error("a public URL without scheme was accepted")
	}
}

func TestLoopbackURLs(t *testing.T) {
	got := LoopbackURLs(&net.TCPAddr{IP: net.IPv4zero, Port: 8080}, false)
	if !slices.Equal(got, []string{"http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"}) {
		t.Errorf("unspecified: %v", got)
	}
	got = LoopbackURLs(&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 443}, true)
	if !slices.Equal(got, []string{"https://localhost:443", "https://127.0.0.1:443", "https://[::1]:443", "https://192.0.2.7:443"}) {
		t.Errorf("specific IP: %v", got)
	}
	p, err := New(nil, got)
	if err != nil || !p.Allow("https://192.0.2.7") || !p.Allow("https://localhost") {
		t.Errorf("default port of a loopback URL: %v %v", p.Origins(), err)
	}
}
