package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/testutil"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/middle/redis"
	"github.com/wspush/wspush/userservice"
)

// publishT publishes key=JSON values through pub.
func publishT(t *testing.T, base, app string, values ...string) {
	t.Helper()
	r := ctl(t, "", append([]string{"pub", "--url", base, "--app", app}, values...)...)
	if r.code != 0 {
		t.Fatalf("pub %v: exit %d: %s", values, r.code, r.stderr)
	}
}

// checkValue checks one output line of sub.
func checkValue(t *testing.T, l map[string]any, key string, seq int, data string) {
	t.Helper()
	got := fmt.Sprintf("%v", l["data"])
	if l["app"] != "plant-7" || l["key"] != key || l["seq"] != float64(seq) || got != data || l["ts"] == nil || l["epoch"] == "" {
		t.Fatalf("line %v, want key %s seq %d data %s", l, key, seq, data)
	}
}

// sub prints the latest value, then live values, one line each and in
// order; an embedded node that restarts lost every stream, which sub
// prints as a reset line before the new values; --count stops it.
func TestSubPrintsValuesAndResetsAcrossARestart(t *testing.T) {
	for _, format := range []string{"json", "binary"} {
		t.Run(format, func(t *testing.T) {
			base, _, stop := wstest.StartAppAt(t, app.Config{}, "127.0.0.1:0")
			publishT(t, base, "plant-7", "001=1", "001=2")
			sub := ctlBackground(t, "sub", "--url", wstest.WSURL(base), "--app", "plant-7", "--format", format, "001", "002")
			lines := sub.waitLines(t, 1)
			checkValue(t, lines[0], "001", 2, "2") // the latest value
			publishT(t, base, "plant-7", "002=10", "001=3")
			lines = sub.waitLines(t, 3)
			checkValue(t, lines[1], "002", 1, "10")
			checkValue(t, lines[2], "001", 3, "3")
			epoch := lines[2]["epoch"]

			stop()
			base, _, _ = wstest.StartAppAt(t, app.Config{}, strings.TrimPrefix(base, "http://"))
			testutil.Eventually(t, 15*time.Second, 20*time.Millisecond, func() error {
				if !strings.Contains(sub.stderr.String(), "reconnected") {
					return fmt.Errorf("stderr: %s", sub.stderr.String())
				}
				return nil
			})
			publishT(t, base, "plant-7", "001=100")
			lines = sub.waitLines(t, 6)
			// Both resumes fail (new epochs): each key gets a reset to seq 0
			// (nothing retained), and 001 then its new value. Lines of one
			// key are in order; the keys interleave as they come.
			perKey := map[string][]map[string]any{}
			for _, l := range lines[3:] {
				perKey[l["key"].(string)] = append(perKey[l["key"].(string)], l)
			}
			for _, key := range []string{"001", "002"} {
				r := perKey[key][0]
				if r["reset"] != "epoch" || r["seq"] != float64(0) || r["epoch"] == epoch || r["data"] != nil {
					t.Fatalf("want a reset of %s first, got %v", key, r)
				}
			}
			if len(perKey["001"]) != 2 || len(perKey["002"]) != 1 {
				t.Fatalf("after the restart: %v", lines[3:])
			}
			checkValue(t, perKey["001"][1], "001", 1, "100")
			if code := sub.stop(t); code != 0 {
				t.Fatalf("exit %d: %s", code, sub.stderr.String())
			}
			if !strings.Contains(sub.stderr.String(), `positions: {"001":{"seq":1,"epoch":"`) {
				t.Fatalf("no positions on stderr: %s", sub.stderr.String())
			}
		})
	}
}

// On a cluster node the streams survive the node: sub resumes after a
// restart with every value it missed, in order, no reset, no duplicate.
// --since resumes from the positions a previous run printed.
func TestSubResumesWithoutLossOnACluster(t *testing.T) {
	wstest.RequireServices(t)
	prefix := randomName("t-ctl-")
	t.Cleanup(func() { cleanRedis(t, prefix) })
	cfg := func() app.Config {
		return app.Config{NodeID: randomName("ctl-"), RedisURL: wstest.RedisURL, Redis: redis.StoreConfig{Prefix: prefix}}
	}
	base, a, stop := wstest.StartAppAt(t, cfg(), "127.0.0.1:0")
	testutil.Eventually(t, 15*time.Second, 50*time.Millisecond, a.Ready)
	publishT(t, base, "plant-7", "001=1")
	sub := ctlBackground(t, "sub", "--url", base, "--app", "plant-7", "001")
	sub.waitLines(t, 1)

	stop()
	addr := strings.TrimPrefix(base, "http://")
	// Published while sub is disconnected: through another node.
	other, b, _ := wstest.StartAppAt(t, cfg(), "127.0.0.1:0")
	testutil.Eventually(t, 15*time.Second, 50*time.Millisecond, b.Ready)
	publishT(t, other, "plant-7", "001=2", "001=3")
	base, a, _ = wstest.StartAppAt(t, cfg(), addr)
	testutil.Eventually(t, 15*time.Second, 50*time.Millisecond, a.Ready)
	publishT(t, base, "plant-7", "001=4")
	lines := sub.waitLines(t, 4)
	for i, l := range lines {
		checkValue(t, l, "001", i+1, fmt.Sprint(i+1))
	}
	sub.stop(t)
	if len(sub.lines(t)) != 4 {
		t.Fatalf("lines after stop: %v", sub.lines(t))
	}
	_, positions, ok := strings.Cut(sub.stderr.String(), "positions: ")
	if !ok {
		t.Fatalf("no positions on stderr: %s", sub.stderr.String())
	}

	// A later run resumes from those positions: 5 and 6 only.
	publishT(t, base, "plant-7", "001=5", "001=6")
	r := ctl(t, "", "sub", "--url", base, "--app", "plant-7", "--since", strings.TrimSpace(positions), "--count", "2", "001")
	if r.code != 0 {
		t.Fatalf("sub --since: exit %d: %s", r.code, r.stderr)
	}
	lines = jsonLinesOf(t, r.stdout)
	if len(lines) != 2 {
		t.Fatalf("sub --since --count 2: %v", lines)
	}
	checkValue(t, lines[0], "001", 5, "5")
	checkValue(t, lines[1], "001", 6, "6")
}

// sub ends with exit 1 and the server's reason when it refuses for good.
func TestSubRefusals(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	base, _, _ := wstest.StartApp(t, app.Config{Users: userservice.Config{JWTSecret: secret}})
	r := ctl(t, "", "sub", "--url", base, "--app", "plant-7", "--dial-timeout", "5s", "001")
	if r.code != 1 || !strings.Contains(r.stderr, "4001") {
		t.Fatalf("no token: exit %d, stderr %q", r.code, r.stderr)
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "ctl", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	publishT(t, base, "plant-7", "001=1")
	r = ctlEnv(t, map[string]string{"WSPUSH_TOKEN": tok}, "", "sub", "--url", base, "--app", "plant-7", "--count", "1", "001")
	if r.code != 0 || len(jsonLinesOf(t, r.stdout)) != 1 {
		t.Fatalf("token from WSPUSH_TOKEN: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	for _, args := range [][]string{
		{"sub", "--url", base, "001"},                                      // no --app
		{"sub", "--url", base, "--app", "a"},                               // no keys
		{"sub", "--url", base, "--app", "a", "--format", "xml", "k"},       // format
		{"sub", "--url", base, "--app", "a", "--since", "{", "k"},          // since
		{"sub", "--url", "mailto:x@y", "--app", "a", "k"},                  // scheme
		{"sub", "--url", base, "--app", "a", "--dial-timeout", "1ns", "k"}, // bounds
		{"sub", "--url", base, "--app", "a", "k 1"},                        // key name
	} {
		if r := ctl(t, "", args...); r.code != 2 {
			t.Errorf("%q: exit %d, want 2: %s", args, r.code, r.stderr)
		}
	}
	// Nothing listens: the first connection fails within --dial-timeout.
	start := time.Now()
	r = ctl(t, "", "sub", "--url", "ws://127.0.0.1:1/ws", "--app", "a", "--dial-timeout", "1s", "k")
	if r.code != 1 || time.Since(start) > 10*time.Second || !strings.Contains(r.stderr, "--dial-timeout") {
		t.Fatalf("no server: exit %d after %s, stderr %q", r.code, time.Since(start), r.stderr)
	}
}

// cleanRedis deletes the keys of a test's Redis prefix.
func cleanRedis(t *testing.T, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rdb, err := redis.NewClient(ctx, wstest.RedisURL, "wspushctl-test")
	if err != nil {
		t.Logf("removing %s:* from Redis: %v", prefix, err)
		return
	}
	defer rdb.Close()
	it := rdb.Scan(ctx, 0, prefix+":*", 1000).Iterator()
	for it.Next(ctx) {
		rdb.Del(ctx, it.Val())
	}
	if err := it.Err(); err != nil {
		t.Logf("removing %s:* from Redis: %v", prefix, err)
	}
}
