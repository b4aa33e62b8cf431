package simulator

import (
	"slices"
	"testing"
)

// The demo's data center (wspush --demo) knows app demo and sensors
// s001..s100 only: other apps get no values, unknown IDs are omitted.
func TestSimulatorKnownAppsAndSensors(t *testing.T) {
	url := serve(t, New(Config{Apps: []string{"demo", "plant-7"}, Sensors: 100, Now: newClock(stepStartMs).Now}))
	for _, tc := range []struct {
		body string
		want []string
	}{
		{`{"appID":"demo","ids":["s001","s100","s002"]}`, []string{"s001", "s100", "s002"}},
		{`{"appID":"demo","ids":["s101","s000","s1","s01","s0001","001","x001","s001"]}`, []string{"s001"}},
		{`{"appID":"plant-7","ids":["s050","001"]}`, []string{"s050"}},
		{`{"appID":"other","ids":["s001","s002"]}`, nil},
		{`{"appID":"demo","ids":[]}`, nil},
	} {
		_, entries := values(t, url, tc.body)
		var got []string
		for _, e := range entries {
			got = append(got, e.ID)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got ids %q, want %q", tc.body, got, tc.want)
		}
	}
}

// A simulator without Apps and Sensors keeps answering for every app and
// every valid ID (cmd/datacenter's default, the benchmarks').
func TestSimulatorUnrestrictedByDefault(t *testing.T) {
	url := serve(t, New(Config{Now: newClock(stepStartMs).Now}))
	_, entries := values(t, url, `{"appID":"any-app","ids":["001","s999999","x"]}`)
	if len(entries) != 3 {
		t.Fatalf("got %d entries, want 3: %+v", len(entries), entries)
	}
}

// The values of a known sensor do not depend on which other IDs were asked
// for or omitted.
func TestSimulatorOmittingKeepsValues(t *testing.T) {
	clk := newClock(stepStartMs)
	url := serve(t, New(Config{Apps: []string{"demo"}, Sensors: 3, Now: clk.Now}))
	alone, _ := values(t, url, `{"appID":"demo","ids":["s002"]}`)
	mixed, _ := values(t, url, `{"appID":"demo","ids":["s404","s002","nope"]}`)
	if len(mixed) != 1 || mixed["s002"] != alone["s002"] {
		t.Errorf("s002 alone %q, among unknown IDs %v", alone["s002"], mixed)
	}
}

func TestIsSensor(t *testing.T) {
	for id, want := range map[string]bool{
		"s001": true, "s099": true, "s100": true, "s1000": true, "s1001": false,
		"s000": false, "s0001": false, "s01": false, "s1": false, "S001": false,
		"s00a": false, "s+01": false, "s-01": false, "s": false, "": false,
		"s99999999999999999999999": false,
	} {
		if got := isSensor(id, 1000); got != want {
			t.Errorf("isSensor(%q, 1000) = %v, want %v", id, got, want)
		}
	}
	for n := 1; n <= 1000; n++ {
		if !isSensor(SensorID(n), 1000) {
			t.Fatalf("SensorID(%d) = %q is not a sensor", n, SensorID(n))
		}
	}
}
