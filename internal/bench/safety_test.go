package bench

import (
	"context"
	"strings"
	"testing"
)

func TestCheckLoopback(t *testing.T) {
	ctx := context.Background()
	for _, ok := range []string{"ws://127.0.0.1:8080/ws", "ws://127.9.8.7/ws", "ws://[::1]:8080/ws", "ws://localhost:8080/ws", "http://127.0.0.1"} {
		if err := CheckLoopback(ctx, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"ws://10.0.0.1:8080/ws", "ws://8.8.8.8/ws", "ws://[2001:db8::1]/ws", "ws://0.0.0.0:8080/ws", "ws:///ws", "ws://no-such-host.invalid/ws"} {
		err := CheckLoopback(ctx, bad)
		if err == nil {
			t.Errorf("%s: want refused", bad)
		}
	}
	if err := CheckLoopback(ctx, "ws://192.168.1.1/ws"); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("want a refusal that says so, got %v", err)
	}
}

func TestParseServerURLs(t *testing.T) {
	got, err := ParseServerURLs(context.Background(), " ws://127.0.0.1:8080/ws, wss://127.0.0.2:8443/ws ,")
	if err != nil {
		t.Fatal(err)
	}
	want := []ServerURL{{WS: "ws://127.0.0.1:8080/ws", HTTP: "http://127.0.0.1:8080"}, {WS: "wss://127.0.0.2:8443/ws", HTTP: "https://127.0.0.2:8443"}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for _, bad := range []string{"", "http://127.0.0.1:8080/ws", "ws://127.0.0.1/ws,ws://1.2.3.4/ws", "::"} {
		if _, err := ParseServerURLs(context.Background(), bad); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestLoopbackOnlyDialControl(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:80": true, "[::1]:80": true, "127.1.2.3:1": true, "10.1.1.1:80": false, "[2001:db8::1]:80": false, "nohost": false} {
		if err := loopbackOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("%s: err %v, want allowed=%v", addr, err, ok)
		}
	}
}

func TestCheckAMQPURL(t *testing.T) {
	ctx := t.Context()
	for _, ok := range []string{DefaultAMQPURL, "amqps://u:p@localhost:5671/vhost", "amqp://[::1]/"} {
		if err := CheckAMQPURL(ctx, ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"amqp://u:secret@10.0.0.1/", "http://127.0.0.1:5672/", "amqp:///", "::", "amqp://u:secret@[2001:db8::1]/"} {
		err := CheckAMQPURL(ctx, bad)
		if err == nil || strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: %v; want refused without the password", bad, err)
		}
	}
}
