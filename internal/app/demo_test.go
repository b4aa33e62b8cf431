package app_test

import (
	"testing"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
)

// The demo's data center serves app demo and its sensors s001..s100 only:
// while demo/s001 gets poller values, an unknown sensor of demo and a key
// of another app get none, so the first value published to them is seq 1.
func TestDemoDataCenterServesDemoSensorsOnly(t *testing.T) {
	base, _ := startApp(t, app.Config{Demo: true})
	c := wstest.Dial(t, wstest.WSURL(base), nil)
	c.Subscribe("plant-7", "json", nil, "001")
	c.Subscribe(app.DemoApp, "json", nil, "s001", "s999")

	// Three values of s001 take three polls (one a second) after both
	// subscribes: every poll asked for plant-7/001 and demo/s999 too.
	for n := 0; n < 3; {
		m := c.Next()
		if m.Op != proto.OpData {
			t.Fatalf("want data, got %+v", m)
		}
		if m.App != app.DemoApp || m.Key != "s001" {
			t.Fatalf("the demo data center gave a value to %s/%s: %s", m.App, m.Key, m.Data)
		}
		n++
	}

	mustPublish(t, base, "plant-7", "001", `{"temp":1}`)
	mustPublish(t, base, app.DemoApp, "s999", `{"temp":2}`)
	for seen := map[string]bool{}; len(seen) < 2; {
		m := c.Next()
		if m.Op != proto.OpData {
			t.Fatalf("want data, got %+v", m)
		}
		if m.Key == "s001" {
			continue
		}
		if m.Seq != 1 {
			t.Errorf("%s/%s: the published value has seq %d, want 1 (nothing polled before it)", m.App, m.Key, m.Seq)
		}
		seen[m.App+"/"+m.Key] = true
	}
}
