package main

import (
	"strings"
	"testing"
)

func TestUsageAndHelp(t *testing.T) {
	if r := ctl(t, ""); r.code != 2 || !strings.Contains(r.stderr, "Commands:") {
		t.Fatalf("no command: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := ctl(t, "", "--help"); r.code != 0 || !strings.Contains(r.stdout, "Commands:") {
		t.Fatalf("--help: exit %d, stdout %q", r.code, r.stdout)
	}
	if r := ctl(t, "", "publish"); r.code != 2 || !strings.Contains(r.stderr, `unknown command "publish"`) {
		t.Fatalf("unknown command: exit %d, stderr %q", r.code, r.stderr)
	}
	for _, c := range commands() {
		r := ctl(t, "", c.name, "--help")
		if r.code != 0 || !strings.Contains(r.stdout, "Usage: wspushctl "+c.name) || !strings.Contains(r.stdout, "Examples:\n  wspushctl "+c.name) {
			t.Errorf("%s --help: exit %d, stdout:\n%s", c.name, r.code, r.stdout)
		}
		for _, name := range c.env {
			if !strings.Contains(r.stdout, "--"+name+" (env "+envName(name)+")") {
				t.Errorf("%s --help does not name the environment twin of --%s", c.name, name)
			}
		}
		if r := ctl(t, "", c.name, "--no-such-flag"); r.code != 2 {
			t.Errorf("%s --no-such-flag: exit %d", c.name, r.code)
		}
	}
}

func TestServerURLs(t *testing.T) {
	for _, tc := range []struct{ in, http, ws string }{
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"},
		{"http://127.0.0.1:8080/", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"},
		{"ws://127.0.0.1:8080/ws", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"},
		{"wss://push.example/ws?token=x", "https://push.example", "wss://push.example/ws"},
		{"https://push.example/wspush", "https://push.example/wspush", "wss://push.example/wspush/ws"},
		{"http://127.0.0.1:9100/metrics", "http://127.0.0.1:9100", "ws://127.0.0.1:9100/ws"},
		{"http://127.0.0.1:8080/api/publish", "http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws"},
	} {
		h, err := httpBase(tc.in)
		if err != nil || h != tc.http {
			t.Errorf("httpBase(%q) = %q, %v; want %q", tc.in, h, err, tc.http)
		}
		w, err := wsURL(tc.in)
		if err != nil || w != tc.ws {
			t.Errorf("wsURL(%q) = %q, %v; want %q", tc.in, w, err, tc.ws)
		}
	}
	for _, bad := range []string{"127.0.0.1:8080", "ftp://x", "http://", "::"} {
		if _, err := httpBase(bad); err == nil {
			t.Errorf("httpBase(%q): no error", bad)
		}
	}
}
