package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestHTTPServerOptions(t *testing.T) {
	env := map[string]string{"WSPUSH_HTTP_IDLE_TIMEOUT": "5s", "WSPUSH_MAX_CONNECTIONS_PER_IP": "7"}
	o, err := parseOptions([]string{"--admin-addr", "127.0.0.1:9100", "--max-http-connections", "50", "--drain-delay", "3s",
		"--tls-cert", "c.pem", "--tls-key", "k.pem"}, func(k string) string { return env[k] }, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if c.AdminAddr != "127.0.0.1:9100" || c.MaxHTTPConnections != 50 || c.DrainDelay != 3*time.Second ||
		c.HTTPIdleTimeout != 5*time.Second || c.Users.MaxConnectionsPerIP != 7 || c.TLSCert != "c.pem" || c.TLSKey != "k.pem" {
		t.Fatalf("options: %+v", c)
	}
}

func TestDebugAddrIsADeprecatedAliasOfAdminAddr(t *testing.T) {
	var stderr bytes.Buffer
	o, err := parseOptions([]string{"--debug-addr", "127.0.0.1:6060"}, func(string) string { return "" }, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.AdminAddr != "127.0.0.1:6060" || !strings.Contains(stderr.String(), "deprecated") {
		t.Fatalf("admin addr %q, stderr %q", o.cfg.AdminAddr, stderr.String())
	}
	if _, err := parseOptions([]string{"--debug-addr", ":6060", "--admin-addr", ":9100"}, func(string) string { return "" }, &stderr); err == nil {
		t.Fatal("--debug-addr and a different --admin-addr accepted")
	}
}
