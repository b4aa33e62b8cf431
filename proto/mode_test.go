package proto

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Delivery modes of a subscribe (docs/PROTOCOL.md, "Delivery modes").

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeStream, "stream": ModeStream, "latest": ModeLatest} {
		if got, err := ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"Latest", "LATEST", "newest", "conflate", " latest"} {
		if _, err := ParseMode(in); err == nil {
			t.Errorf("ParseMode(%q): no error", in)
		}
	}
	if ModeStream.String() != "stream" || ModeLatest.String() != "latest" {
		t.Errorf("Mode.String: %q, %q", ModeStream, ModeLatest)
	}
}

func TestDecodeCommandMode(t *testing.T) {
	good := []struct {
		in   string
		mode string
		rate float64
	}{
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest"}`, "latest", 0},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"stream"}`, "stream", 0},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest","max_rate":2}`, "latest", 2},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest","max_rate":0.5}`, "latest", 0.5},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest","max_rate":1000}`, "latest", 1000},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest","max_rate":1e-3}`, "latest", 0.001},
		{`{"op":"subscribe","id":1,"app":"a","keys":["k"],"mode":"latest","format":"binary","since":{"k":4},"max_rate":3}`, "latest", 3},
	}
	for _, tt := range good {
		c, err := DecodeCommand([]byte(tt.in))
		if err != nil {
			t.Errorf("DecodeCommand(%s): %v", tt.in, err)
			continue
		}
		if c.Mode != tt.mode || c.MaxRate != tt.rate {
			t.Errorf("DecodeCommand(%s): mode %q max_rate %v; want %q %v", tt.in, c.Mode, c.MaxRate, tt.mode, tt.rate)
		}
	}
	bad := []struct{ in, wantErr string }{
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"newest"}`, `mode "newest": want "stream" or "latest"`},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"Latest"}`, `mode "Latest"`},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":7}`, "malformed JSON"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","max_rate":0}`, "max_rate 0: want 0 < max_rate <= 1000"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","max_rate":-1}`, "max_rate -1: want 0 < max_rate <= 1000"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","max_rate":1000.5}`, "max_rate 1000.5"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","max_rate":"2"}`, "malformed JSON"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"max_rate":2}`, `max_rate needs "mode":"latest"`},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"stream","max_rate":2}`, `max_rate needs "mode":"latest"`},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"stream","max_rate":0}`, "max_rate 0"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","MAX_RATE":0}`, "max_rate 0"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","Max_Rate":0}`, "max_rate 0"},
		{`{"op":"subscribe","id":9,"app":"a","keys":["k"],"mode":"latest","max_r\u0061te":0}`, "max_rate 0"},
		{`{"op":"unsubscribe","id":9,"app":"a","keys":["k"],"mode":"latest"}`, "unsubscribe takes no mode or max_rate"},
		{`{"op":"refresh","id":9,"token":"a.b.c","mode":"latest"}`, "refresh takes only a token"},
	}
	for _, tt := range bad {
		_, err := DecodeCommand([]byte(tt.in))
		var ce *CommandError
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("DecodeCommand(%s) = %v; want a CommandError containing %q", tt.in, err, tt.wantErr)
			continue
		}
		if ce.ID != 9 {
			t.Errorf("DecodeCommand(%s): error id %d, want 9", tt.in, ce.ID)
		}
	}
}

func TestEncodeCommandModeRoundTrip(t *testing.T) {
	c := Command{Op: OpSubscribe, ID: 3, App: "a", Keys: []string{"k"}, Mode: "latest", MaxRate: 2.5}
	b, err := EncodeCommand(&c)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"mode":"latest","max_rate":2.5`) {
		t.Fatalf("encoded %s", b)
	}
	got, err := DecodeCommand(b)
	if err != nil || !commandsEqual(got, c) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	plain, _ := EncodeCommand(&Command{Op: OpSubscribe, App: "a", Keys: []string{"k"}})
	if strings.Contains(string(plain), "mode") || strings.Contains(string(plain), "max_rate") {
		t.Fatalf("a stream subscribe encodes %s", plain)
	}
}

func TestAppendAckMode(t *testing.T) {
	pos := []KeyPosition{{Key: "k", Position: Position{Seq: 412, Epoch: "k3J9"}}}
	tests := []struct {
		mode Mode
		rate float64
		r    Recovery
		want string
	}{
		{ModeStream, 0, RecoveryNone, `{"op":"ack","id":7,"positions":{"k":{"seq":412,"epoch":"k3J9"}}}`},
		{ModeLatest, 0, RecoveryNone, `{"op":"ack","id":7,"mode":"latest","positions":{"k":{"seq":412,"epoch":"k3J9"}}}`},
		{ModeLatest, 2, RecoveryNone, `{"op":"ack","id":7,"mode":"latest","max_rate":2,"positions":{"k":{"seq":412,"epoch":"k3J9"}}}`},
		{ModeLatest, 0.5, Recovered, `{"op":"ack","id":7,"mode":"latest","max_rate":0.5,"recovered":true,"positions":{"k":{"seq":412,"epoch":"k3J9"}}}`},
	}
	for _, tt := range tests {
		got := string(AppendAckMode(nil, 7, tt.r, tt.mode, tt.rate, pos))
		if got != tt.want {
			t.Errorf("AppendAckMode(%v, %v) =\n%s\nwant\n%s", tt.mode, tt.rate, got, tt.want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("not JSON: %s", got)
		}
		m, err := DecodeServerMessage([]byte(got))
		if err != nil {
			t.Fatal(err)
		}
		if want := map[Mode]string{ModeStream: "", ModeLatest: "latest"}[tt.mode]; m.Mode != want || m.MaxRate != tt.rate {
			t.Errorf("decoded mode %q max_rate %v", m.Mode, m.MaxRate)
		}
	}
	if a, b := string(AppendAck(nil, 7, RecoveryNone, pos)), string(AppendAckMode(nil, 7, RecoveryNone, ModeStream, 0, pos)); a != b {
		t.Errorf("AppendAck %s != stream AppendAckMode %s", a, b)
	}
}
