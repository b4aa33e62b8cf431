package main

import (
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestEnvTwinsFillFlagsNotGiven(t *testing.T) {
	env := map[string]string{
		"WSPUSH_ADDR":            ":9999",
		"WSPUSH_MAX_CONNECTIONS": "5",
		"WSPUSH_PING_INTERVAL":   "3s",
		"WSPUSH_DEMO":            "true",
		"WSPUSH_ALLOWED_ORIGINS": "https://a.example, https://b.example",
	}
	o, err := parseOptions([]string{"--addr", ":7777"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.addr != ":7777" {
		t.Errorf("a flag on the command line wins over its env twin: addr %q", o.addr)
	}
	u := o.cfg.Users
	if u.MaxConnections != 5 || u.PingInterval != 3*time.Second || !o.cfg.Demo {
		t.Errorf("env twins not applied: %+v demo=%v", u, o.cfg.Demo)
	}
	if len(o.cfg.AllowedOrigins) != 2 || o.cfg.AllowedOrigins[1] != "https://b.example" {
		t.Errorf("origins %q", o.cfg.AllowedOrigins)
	}
}

func TestBadOptions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--max-connections", "x"}, nil, "invalid value"},
		{nil, map[string]string{"WSPUSH_PING_TIMEOUT": "soon"}, "WSPUSH_PING_TIMEOUT"},
		{[]string{"extra"}, nil, "unexpected arguments"},
	} {
		_, err := parseOptions(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: got %v, want %q", tc.args, tc.env, err, tc.want)
		}
	}
	if _, err := parseOptions([]string{"--help"}, func(string) string { return "" }, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("--help: %v", err)
	}
}

func TestLoggerOptions(t *testing.T) {
	if _, err := newLogger("xml", "info"); err == nil {
		t.Error("log format xml accepted")
	}
	if _, err := newLogger("json", "loud"); err == nil {
		t.Error("log level loud accepted")
	}
}
