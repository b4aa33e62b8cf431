package app

// This file is a test of package app itself (not app_test): it reads the
// registry of a running App, which has no accessor. It cannot import
// internal/wstest, which imports this package.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"

	"github.com/wspush/wspush/middle/amqp"
	"github.com/wspush/wspush/middle/redis"
)

const (
	readmeRedisURL = "redis://127.0.0.1:6379/0"
	readmeAMQPURL  = "amqp://guest:guest@127.0.0.1:5672"
)

// TestReadmeMetricsTableHasEveryMetric keeps README's metrics table true:
// every metric a running node registers, embedded (with TLS, an admin
// listener and the demo poller) and in a cluster (Redis and RabbitMQ), is
// in it, and every metric it names is registered by one of them. The names
// come from the registry's descriptors, so a labelled metric counts before
// its first sample.
func TestReadmeMetricsTableHasEveryMetric(t *testing.T) {
	registered := make(map[string]bool)
	embedded := Config{Demo: true, AdminAddr: "127.0.0.1:0"}
	embedded.TLSCert, embedded.TLSKey = writeTestCert(t)
	for name := range runningMetrics(t, embedded) {
		registered[name] = true
	}
	if clusterServices(t) {
		pfx := "t-readme-" + randomHex()
		t.Cleanup(func() { cleanCluster(t, pfx) })
		cluster := Config{
			NodeID: pfx, RedisURL: readmeRedisURL, AMQPURL: readmeAMQPURL, AdminAddr: "127.0.0.1:0",
			Redis: redis.StoreConfig{Prefix: pfx}, AMQP: amqp.Topology{Prefix: pfx, Partitions: 1},
		}
		for name := range runningMetrics(t, cluster) {
			registered[name] = true
		}
	}

	documented, prefixes := readmeMetrics(t)
	if len(documented) < 40 {
		t.Fatalf("found %d metrics in README.md's metrics table: not the table (format changed?)", len(documented))
	}
	for name := range registered {
		if documented[name] || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		t.Errorf("%s is registered but not in README.md's metrics table (Operating it): add it", name)
	}
	if t.Failed() || t.Skipped() {
		return
	}
	for name := range documented {
		if !registered[name] && !strings.HasPrefix(name, "process_") && !strings.HasPrefix(name, "go_") {
			t.Errorf("README.md's metrics table has %s, which no node registers", name)
		}
	}
}

// runningMetrics runs an App built from cfg until every tier has registered
// its metrics (some only do in Run) and returns the names of its registry.
func runningMetrics(t *testing.T, cfg Config) map[string]bool {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, ln) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("the app did not stop within 30s")
		}
	}()
	// The admin listener starts after the HTTP connection counter and the
	// poller registered theirs.
	deadline := time.Now().Add(15 * time.Second)
	for a.AdminAddr() == "" {
		select {
		case err := <-done:
			t.Fatalf("run ended: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the app did not start its admin listener within 15s")
		}
	}

	ch := make(chan *prometheus.Desc)
	go func() { a.reg.Describe(ch); close(ch) }()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := make(map[string]bool)
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("descriptor without a name: %s", d)
		}
		names[m[1]] = true
	}
	return names
}

// readmeMetrics returns the metric names in the first column of the table
// after "Metrics at `/metrics`" in README.md, and the prefixes of its
// wildcard rows (`process_*`).
func readmeMetrics(t *testing.T) (names map[string]bool, prefixes []string) {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "Metrics at `/metrics`")
	if i < 0 {
		t.Fatal("README.md has no \"Metrics at `/metrics`\" table")
	}
	names = make(map[string]bool)
	name := regexp.MustCompile("`([a-z_:][a-z0-9_:]*)(\\*)?(\\{[a-z_,]*\\})?`")
	inTable := false
	for line := range strings.SplitSeq(s[i:], "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range name.FindAllStringSubmatch(cells[1], -1) {
			if m[2] == "*" {
				prefixes = append(prefixes, m[1])
			} else {
				names[m[1]] = true
			}
		}
	}
	return names, prefixes
}

// clusterServices reports whether Redis and RabbitMQ answer; without them
// the cluster half is skipped, or fails under WSPUSH_REQUIRE_SERVICES=1.
func clusterServices(t *testing.T) bool {
	for _, addr := range []string{"127.0.0.1:6379", "127.0.0.1:5672"} {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			if os.Getenv("WSPUSH_REQUIRE_SERVICES") == "1" {
				t.Fatalf("%s unreachable (WSPUSH_REQUIRE_SERVICES=1): %v", addr, err)
			}
			t.Logf("%s unreachable, the cluster metrics are not checked: %v", addr, err)
			return false
		}
		c.Close()
	}
	return true
}

// cleanCluster removes what a cluster node with prefix pfx created in Redis
// and RabbitMQ.
func cleanCluster(t *testing.T, pfx string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:6379"})
	defer rdb.Close()
	it := rdb.Scan(ctx, 0, pfx+":*", 1000).Iterator()
	for it.Next(ctx) {
		rdb.Del(ctx, it.Val())
	}
	if err := it.Err(); err != nil {
		t.Logf("removing %s:* from Redis: %v", pfx, err)
	}
	conn, err := amqp091.Dial(readmeAMQPURL)
	if err != nil {
		t.Logf("removing %s.* from RabbitMQ: %v", pfx, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Logf("removing %s.* from RabbitMQ: %v", pfx, err)
		return
	}
	defer ch.Close()
	for _, q := range []string{".ingest.0", ".dead"} {
		if _, err := ch.QueueDelete(pfx+q, false, false, false); err != nil {
			t.Logf("deleting queue %s%s: %v", pfx, q, err)
			return // the channel is closed after an error
		}
	}
	for _, x := range []string{".ingest.hash", ".ingest", ".dlx"} {
		if err := ch.ExchangeDelete(pfx+x, false, false); err != nil {
			t.Logf("deleting exchange %s%s: %v", pfx, x, err)
			return
		}
	}
}

func randomHex() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// writeTestCert writes a self-signed certificate for 127.0.0.1 and its key
// to a temporary directory.
func writeTestCert(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wspush test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	for f, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der}, keyFile: {Type: "EC PRIVATE KEY", Bytes: kb}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}
