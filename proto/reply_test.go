package proto

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestAppendAck(t *testing.T) {
	tests := []struct {
		id            uint64
		r             Recovery
		want          string
		wantRecovered *bool
	}{
		{1, RecoveryNone, `{"op":"ack","id":1}`, nil},
		{2, Recovered, `{"op":"ack","id":2,"recovered":true}`, ptr(true)},
		{3, NotRecovered, `{"op":"ack","id":3,"recovered":false}`, ptr(false)},
		{0, RecoveryNone, `{"op":"ack","id":0}`, nil},
		{1<<64 - 1, Recovered, `{"op":"ack","id":18446744073709551615,"recovered":true}`, ptr(true)},
	}
	for _, tt := range tests {
		prefix := []byte("prefix")
		got := AppendAck(prefix, tt.id, tt.r, nil)
		if !bytes.HasPrefix(got, []byte("prefix")) {
			t.Fatalf("AppendAck did not append: %q", got)
		}
		got = got[len("prefix"):]
		if string(got) != tt.want {
			t.Errorf("AppendAck(%d, %d) = %s, want %s", tt.id, tt.r, got, tt.want)
		}
		m := mustDecodeServer(t, got)
		if m.Op != OpAck || m.ID != tt.id {
			t.Errorf("%s decoded to %+v", got, m)
		}
		switch {
		case tt.wantRecovered == nil && m.Recovered != nil,
			tt.wantRecovered != nil && (m.Recovered == nil || *m.Recovered != *tt.wantRecovered):
			t.Errorf("%s: Recovered = %v, want %v", got, m.Recovered, tt.wantRecovered)
		}
	}
}

func TestAppendPong(t *testing.T) {
	for _, id := range []uint64{0, 4, 1<<64 - 1} {
		got := AppendPong(nil, id)
		m := mustDecodeServer(t, got)
		if m.Op != OpPong || m.ID != id {
			t.Errorf("AppendPong(%d) = %s decoded to %+v", id, got, m)
		}
	}
	if got := string(AppendPong(nil, 4)); got != `{"op":"pong","id":4}` {
		t.Errorf("AppendPong(4) = %s", got)
	}
}

func TestAppendError(t *testing.T) {
	messages := []string{
		"",
		"plain",
		`key "a b": invalid character ' '`,
		"line1\nline2\r\n\ttab",
		`back\slash and "quotes" and \"escaped\"`,
		"unicode: café 日本 😀",
		"control: \x00\x01\x1f\x7f",
		"html: <script>&</script>",
		"line sep \u2028 para sep \u2029",
		"invalid utf8: \xff\xfe",
		strings.Repeat("long ", 1000),
	}
	codes := []string{CodeBadRequest, CodeUnauthorized, CodeForbidden, CodeLimit, CodeUnavailable, CodeInternal}
	for i, msg := range messages {
		code := codes[i%len(codes)]
		got := AppendError(nil, uint64(i), code, msg)
		if !json.Valid(got) {
			t.Fatalf("AppendError(%q) = %s: not valid JSON", msg, got)
		}
		m := mustDecodeServer(t, got)
		want := string([]rune(msg)) // each invalid byte becomes U+FFFD, as encoding/json does
		if m.Op != OpError || m.ID != uint64(i) || m.Code != code || m.Message != want {
			t.Errorf("AppendError(%d, %q, %q) = %s decoded to %+v", i, code, msg, got, m)
		}
	}
	if got := string(AppendError(nil, 3, CodeBadRequest, `key "a b": invalid character ' '`)); got != `{"op":"error","id":3,"code":"bad_request","message":"key \"a b\": invalid character ' '"}` {
		t.Errorf("AppendError (docs/PROTOCOL.md example) = %s", got)
	}
}

func TestDecodeServerMessage(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ServerMessage
		wantErr bool
	}{
		{name: "ack", in: `{"op":"ack","id":1}`, want: ServerMessage{Op: OpAck, ID: 1}},
		{name: "ack recovered", in: `{"op":"ack","id":2,"recovered":true}`, want: ServerMessage{Op: OpAck, ID: 2, Recovered: ptr(true)}},
		{name: "pong", in: `{"op":"pong","id":4}`, want: ServerMessage{Op: OpPong, ID: 4}},
		{
			name: "error",
			in:   `{"op":"error","id":3,"code":"bad_request","message":"key \"a b\": invalid character ' '"}`,
			want: ServerMessage{Op: OpError, ID: 3, Code: CodeBadRequest, Message: `key "a b": invalid character ' '`},
		},
		{
			name: "data",
			in:   `{"op":"data","app":"plant-7","key":"001","seq":42,"ts":1763812345123,"data":{"temp":21.5}}`,
			want: ServerMessage{Op: OpData, App: "plant-7", Key: "001", Seq: 42, TS: 1763812345123, Data: json.RawMessage(`{"temp":21.5}`)},
		},
		{
			name: "data b64",
			in:   `{"op":"data","app":"a","key":"k","seq":1,"ts":-5,"b64":"AP8="}`,
			want: ServerMessage{Op: OpData, App: "a", Key: "k", Seq: 1, TS: -5, B64: []byte{0, 0xff}},
		},
		{name: "unknown op", in: `{"op":"subscribe","id":1}`, wantErr: true},
		{name: "no op", in: `{"id":1}`, wantErr: true},
		{name: "malformed", in: `{"op":"ack"`, wantErr: true},
		{name: "empty", in: ``, wantErr: true},
		{name: "bad b64", in: `{"op":"data","b64":"!!"}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeServerMessage([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("DecodeServerMessage(%s) = %+v, nil; want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeServerMessage(%s): %v", tt.in, err)
			}
			if got.Op != tt.want.Op || got.ID != tt.want.ID || got.Code != tt.want.Code || got.Message != tt.want.Message ||
				got.App != tt.want.App || got.Key != tt.want.Key || got.Seq != tt.want.Seq || got.TS != tt.want.TS ||
				!bytes.Equal(got.Data, tt.want.Data) || !bytes.Equal(got.B64, tt.want.B64) ||
				(got.Recovered == nil) != (tt.want.Recovered == nil) ||
				(got.Recovered != nil && *got.Recovered != *tt.want.Recovered) {
				t.Fatalf("DecodeServerMessage(%s) =\n%+v\nwant\n%+v", tt.in, got, tt.want)
			}
		})
	}
}

func mustDecodeServer(t *testing.T, b []byte) ServerMessage {
	t.Helper()
	if !json.Valid(b) {
		t.Fatalf("not valid JSON: %s", b)
	}
	m, err := DecodeServerMessage(b)
	if err != nil {
		t.Fatalf("DecodeServerMessage(%s): %v", b, err)
	}
	return m
}

func ptr[T any](v T) *T { return &v }

func TestAppendAckPositions(t *testing.T) {
	got := AppendAck(nil, 1, Recovered, []KeyPosition{{"001", Position{41, "k3J9"}}, {"002", Position{0, "Zq81"}}})
	want := `{"op":"ack","id":1,"recovered":true,"positions":{"001":{"seq":41,"epoch":"k3J9"},"002":{"seq":0,"epoch":"Zq81"}}}`
	if string(got) != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	m := mustDecodeServer(t, got)
	if len(m.Positions) != 2 || m.Positions["001"] != (Position{41, "k3J9"}) || m.Positions["002"] != (Position{0, "Zq81"}) {
		t.Errorf("decoded positions %+v", m.Positions)
	}
}

func TestAppendReset(t *testing.T) {
	got := AppendReset(nil, "plant-7", "001", Position{0, "Wm2c"}, ResetEpoch)
	want := `{"op":"reset","app":"plant-7","key":"001","seq":0,"epoch":"Wm2c","reason":"epoch"}`
	if string(got) != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	m := mustDecodeServer(t, got)
	if m.Op != OpReset || m.App != "plant-7" || m.Key != "001" || m.Seq != 0 || m.Epoch != "Wm2c" || m.Reason != ResetEpoch {
		t.Errorf("decoded %+v", m)
	}
}

func TestPositionUnmarshal(t *testing.T) {
	tests := []struct {
		in      string
		want    Position
		wantErr bool
	}{
		{`41`, Position{Seq: 41}, false},
		{` 0 `, Position{}, false},
		{`{"seq":41,"epoch":"k3J9"}`, Position{41, "k3J9"}, false},
		{`{"seq":41}`, Position{Seq: 41}, false},
		{`18446744073709551615`, Position{Seq: 1<<64 - 1}, false},
		{`-1`, Position{}, true},
		{`"41"`, Position{}, true},
		{`1.5`, Position{}, true},
		{`{"seq":"x"}`, Position{}, true},
		{`null`, Position{}, true},
	}
	for _, tt := range tests {
		var p Position
		err := json.Unmarshal([]byte(tt.in), &p)
		if (err != nil) != tt.wantErr || (err == nil && p != tt.want) {
			t.Errorf("%s: got %+v, %v; want %+v, error %v", tt.in, p, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewEpoch(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		e := NewEpoch()
		if err := ValidateEpoch(e); err != nil || len(e) != epochLen {
			t.Fatalf("NewEpoch() = %q: %v", e, err)
		}
		if seen[e] {
			t.Fatalf("NewEpoch repeated %q", e)
		}
		seen[e] = true
	}
}

func TestValidateIdempotencyID(t *testing.T) {
	for _, ok := range []string{"1", "msg-42", strings.Repeat("x", MaxIdempotencyIDLen), "a/b:c{d}"} {
		if err := ValidateIdempotencyID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", strings.Repeat("x", MaxIdempotencyIDLen+1), "é", "a\n"} {
		if err := ValidateIdempotencyID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
