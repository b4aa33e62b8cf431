package proto

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseFormat(t *testing.T) {
	tests := []struct {
		in      string
		want    Format
		wantErr bool
	}{
		{"", FormatJSON, false},
		{"json", FormatJSON, false},
		{"binary", FormatBinary, false},
		{"JSON", 0, true},
		{"bin", 0, true},
		{"msgpack", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseFormat(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseFormat(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if err == nil && got != tt.want {
			t.Errorf("ParseFormat(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	if FormatJSON.String() != "json" || FormatBinary.String() != "binary" {
		t.Errorf("Format.String: %q, %q", FormatJSON, FormatBinary)
	}
	if NumFormats != 2 {
		t.Errorf("NumFormats = %d, want 2", NumFormats)
	}
}

func TestDecodeCommand(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Command // checked only when wantErr == ""
		wantErr string  // substring of the error
		wantID  uint64  // CommandError.ID on error
	}{
		// Valid commands, including the examples of docs/PROTOCOL.md.
		{
			name: "subscribe json",
			in:   `{"op":"subscribe","id":1,"app":"plant-7","keys":["001","002"],"format":"json"}`,
			want: Command{Op: OpSubscribe, ID: 1, App: "plant-7", Keys: []string{"001", "002"}, Format: "json"},
		},
		{
			name: "subscribe since",
			in:   `{"op":"subscribe","id":2,"app":"plant-7","keys":["001"],"since":{"001":41}}`,
			want: Command{Op: OpSubscribe, ID: 2, App: "plant-7", Keys: []string{"001"}, Since: map[string]Position{"001": {Seq: 41}}},
		},
		{
			name: "subscribe since position",
			in:   `{"op":"subscribe","id":2,"app":"plant-7","keys":["001"],"since":{"001":{"seq":41,"epoch":"k3J9"}}}`,
			want: Command{Op: OpSubscribe, ID: 2, App: "plant-7", Keys: []string{"001"}, Since: map[string]Position{"001": {Seq: 41, Epoch: "k3J9"}}},
		},
		{
			name:    "since bad epoch",
			in:      `{"op":"subscribe","id":9,"app":"a","keys":["k"],"since":{"k":{"seq":1,"epoch":"a b"}}}`,
			wantErr: "epoch",
			wantID:  9,
		},
		{
			name:    "since not a position",
			in:      `{"op":"subscribe","id":8,"app":"a","keys":["k"],"since":{"k":"x"}}`,
			wantErr: "position",
			wantID:  8,
		},
		{
			name: "subscribe binary",
			in:   `{"op":"subscribe","id":5,"app":"a","keys":["k"],"format":"binary"}`,
			want: Command{Op: OpSubscribe, ID: 5, App: "a", Keys: []string{"k"}, Format: "binary"},
		},
		{
			name: "subscribe without id",
			in:   `{"op":"subscribe","app":"a","keys":["k"]}`,
			want: Command{Op: OpSubscribe, App: "a", Keys: []string{"k"}},
		},
		{
			name: "subscribe max id",
			in:   `{"op":"subscribe","id":18446744073709551615,"app":"a","keys":["k"]}`,
			want: Command{Op: OpSubscribe, ID: 1<<64 - 1, App: "a", Keys: []string{"k"}},
		},
		{
			name: "unsubscribe",
			in:   `{"op":"unsubscribe","id":3,"app":"plant-7","keys":["002"]}`,
			want: Command{Op: OpUnsubscribe, ID: 3, App: "plant-7", Keys: []string{"002"}},
		},
		{
			name: "ping",
			in:   `{"op":"ping","id":4}`,
			want: Command{Op: OpPing, ID: 4},
		},
		{
			name: "refresh",
			in:   `{"op":"refresh","id":5,"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYXNoIn0.c2ln-_0"}`,
			want: Command{Op: OpRefresh, ID: 5, Token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkYXNoIn0.c2ln-_0"},
		},
		{
			name: "ping with whitespace and unknown field",
			in:   " {\n\t\"op\": \"ping\", \"id\": 9, \"extra\": [1,2,{}] }\n",
			want: Command{Op: OpPing, ID: 9},
		},

		// Malformed JSON: syntax errors lose the id, type errors keep it.
		{name: "empty", in: ``, wantErr: "empty command"},
		{name: "whitespace", in: `   `, wantErr: "malformed JSON"},
		{name: "garbage", in: `hello`, wantErr: "malformed JSON"},
		{name: "truncated", in: `{"op":"subscribe","id":7,`, wantErr: "malformed JSON"},
		{name: "trailing garbage", in: `{"op":"ping","id":7}x`, wantErr: "malformed JSON"},
		{name: "array", in: `[1,2]`, wantErr: "malformed JSON"},
		{name: "null", in: `null`, wantErr: "missing op"},
		{name: "keys not an array", in: `{"op":"subscribe","id":7,"app":"a","keys":"k"}`, wantErr: "malformed JSON", wantID: 7},
		{name: "since not an object", in: `{"op":"subscribe","id":8,"app":"a","keys":["k"],"since":[1]}`, wantErr: "malformed JSON", wantID: 8},
		{name: "since negative", in: `{"op":"subscribe","id":9,"app":"a","keys":["k"],"since":{"k":-1}}`, wantErr: "malformed JSON", wantID: 9},
		{name: "op not a string", in: `{"op":1,"id":10}`, wantErr: "malformed JSON", wantID: 10},
		{name: "id after bad field", in: `{"app":5,"op":"subscribe","id":11}`, wantErr: "malformed JSON", wantID: 11},
		{name: "id a string", in: `{"op":"ping","id":"4"}`, wantErr: "malformed JSON", wantID: 0},
		{name: "id negative", in: `{"op":"ping","id":-4}`, wantErr: "malformed JSON", wantID: 0},
		{name: "id fraction", in: `{"op":"ping","id":4.5}`, wantErr: "malformed JSON", wantID: 0},
		{name: "id overflow", in: `{"op":"ping","id":18446744073709551616}`, wantErr: "malformed JSON", wantID: 0},

		// Shape errors, which keep the id.
		{name: "unknown op", in: `{"op":"publish","id":12,"app":"a","keys":["k"]}`, wantErr: `unknown op "publish"`, wantID: 12},
		{name: "op wrong case", in: `{"op":"Subscribe","id":13,"app":"a","keys":["k"]}`, wantErr: `unknown op "Subscribe"`, wantID: 13},
		{name: "missing op", in: `{"id":14,"app":"a","keys":["k"]}`, wantErr: "missing op", wantID: 14},
		{name: "empty op", in: `{"op":"","id":15}`, wantErr: "missing op", wantID: 15},
		{name: "missing app", in: `{"op":"subscribe","id":16,"keys":["k"]}`, wantErr: `app "": empty`, wantID: 16},
		{name: "invalid app", in: `{"op":"subscribe","id":17,"app":"plant.7","keys":["k"]}`, wantErr: `app "plant.7": invalid character '.'`, wantID: 17},
		{name: "app too long", in: `{"op":"subscribe","id":18,"app":"` + strings.Repeat("a", 65) + `","keys":["k"]}`, wantErr: "longer than 64", wantID: 18},
		{name: "invalid key space", in: `{"op":"subscribe","id":19,"app":"a","keys":["ok","a b"]}`, wantErr: `key "a b": invalid character ' '`, wantID: 19},
		{name: "invalid key empty", in: `{"op":"subscribe","id":20,"app":"a","keys":[""]}`, wantErr: `key "": empty`, wantID: 20},
		{name: "invalid key unicode", in: `{"op":"subscribe","id":21,"app":"a","keys":["clé"]}`, wantErr: `key "clé": invalid character`, wantID: 21},
		{name: "invalid key unsubscribe", in: `{"op":"unsubscribe","id":22,"app":"a","keys":["a.b"]}`, wantErr: `key "a.b"`, wantID: 22},
		{name: "no keys", in: `{"op":"subscribe","id":23,"app":"a"}`, wantErr: "no keys", wantID: 23},
		{name: "empty keys", in: `{"op":"subscribe","id":24,"app":"a","keys":[]}`, wantErr: "no keys", wantID: 24},
		{name: "null keys", in: `{"op":"unsubscribe","id":25,"app":"a","keys":null}`, wantErr: "no keys", wantID: 25},
		{name: "bad format", in: `{"op":"subscribe","id":26,"app":"a","keys":["k"],"format":"xml"}`, wantErr: `format "xml"`, wantID: 26},
		{name: "since for a key not subscribed", in: `{"op":"subscribe","id":27,"app":"a","keys":["k1"],"since":{"k1":1,"k2":5}}`, wantErr: `since "k2": not among the keys`, wantID: 27},
		{name: "unsubscribe with format", in: `{"op":"unsubscribe","id":28,"app":"a","keys":["k"],"format":"json"}`, wantErr: "unsubscribe takes no format or since", wantID: 28},
		{name: "unsubscribe with since", in: `{"op":"unsubscribe","id":29,"app":"a","keys":["k"],"since":{"k":1}}`, wantErr: "unsubscribe takes no format or since", wantID: 29},

		// refresh (docs/PROTOCOL.md, "Token expiry and refresh").
		{name: "refresh without token", in: `{"op":"refresh","id":30}`, wantErr: "refresh without a token", wantID: 30},
		{name: "refresh with app", in: `{"op":"refresh","id":31,"app":"a","token":"a.b.c"}`, wantErr: "refresh takes only a token", wantID: 31},
		{name: "refresh with keys", in: `{"op":"refresh","id":32,"keys":["k"],"token":"a.b.c"}`, wantErr: "refresh takes only a token", wantID: 32},
		{name: "refresh token not a JWT", in: `{"op":"refresh","id":33,"token":"abc"}`, wantErr: "not a JWT", wantID: 33},
		{name: "refresh token bad character", in: `{"op":"refresh","id":34,"token":"a.b c.d"}`, wantErr: "invalid character ' '", wantID: 34},
		{name: "refresh token too long", in: `{"op":"refresh","id":35,"token":"a.b.` + strings.Repeat("c", MaxTokenLen) + `"}`, wantErr: "the limit is", wantID: 35},
		{name: "token on subscribe", in: `{"op":"subscribe","id":36,"app":"a","keys":["k"],"token":"a.b.c"}`, wantErr: "subscribe takes no token", wantID: 36},
		{name: "token on ping", in: `{"op":"ping","id":37,"token":"a.b.c"}`, wantErr: "ping takes no token", wantID: 37},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeCommand([]byte(tt.in))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("DecodeCommand: %v", err)
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("DecodeCommand =\n%#v\nwant\n%#v", got, tt.want)
				}
				if err := got.Validate(); err != nil {
					t.Fatalf("Validate of a decoded command: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeCommand = %#v, nil; want error containing %q", got, tt.wantErr)
			}
			var ce *CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("error %T %v is not a *CommandError", err, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q, want it to contain %q", err, tt.wantErr)
			}
			if ce.ID != tt.wantID {
				t.Fatalf("CommandError.ID = %d, want %d", ce.ID, tt.wantID)
			}
			if ce.Unwrap() == nil || ce.Error() != ce.Err.Error() {
				t.Fatalf("CommandError: Unwrap %v, Error %q vs %q", ce.Unwrap(), ce.Error(), ce.Err)
			}
		})
	}
}

func TestDecodeCommandEmptyIsErrEmptyCommand(t *testing.T) {
	_, err := DecodeCommand(nil)
	if !errors.Is(err, ErrEmptyCommand) {
		t.Fatalf("DecodeCommand(nil) = %v, want ErrEmptyCommand", err)
	}
}

// The error reply for a bad command must be a valid JSON error message that
// carries the command's id (docs/PROTOCOL.md example).
func TestDecodeCommandErrorReply(t *testing.T) {
	_, err := DecodeCommand([]byte(`{"op":"subscribe","id":3,"app":"a","keys":["a b"]}`))
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("DecodeCommand = %v", err)
	}
	reply := AppendError(nil, ce.ID, CodeBadRequest, ce.Error())
	m, err := DecodeServerMessage(reply)
	if err != nil {
		t.Fatalf("DecodeServerMessage(%s): %v", reply, err)
	}
	if m.Op != OpError || m.ID != 3 || m.Code != CodeBadRequest || m.Message != `key "a b": invalid character ' ' at 1` {
		t.Fatalf("reply %s decoded to %+v", reply, m)
	}
}

func TestEncodeCommandRoundTrip(t *testing.T) {
	cmds := []Command{
		{Op: OpPing, ID: 4},
		{Op: OpPing},
		{Op: OpSubscribe, ID: 1, App: "plant-7", Keys: []string{"001", "002"}, Format: "json"},
		{Op: OpSubscribe, ID: 2, App: "plant-7", Keys: []string{"001"}, Format: "binary", Since: map[string]Position{"001": {Seq: 41, Epoch: "k3J9"}}},
		{Op: OpSubscribe, ID: 1<<64 - 1, App: "a", Keys: []string{"k"}, Since: map[string]Position{"k": {Seq: 1<<64 - 1}}},
		{Op: OpUnsubscribe, ID: 3, App: "plant-7", Keys: []string{"002"}},
	}
	for _, c := range cmds {
		b, err := EncodeCommand(&c)
		if err != nil {
			t.Fatalf("EncodeCommand(%+v): %v", c, err)
		}
		got, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("DecodeCommand(%s): %v", b, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("round trip of %+v via %s gave %+v", c, b, got)
		}
	}
	// The documented wire form.
	b, _ := EncodeCommand(&Command{Op: OpPing, ID: 4})
	if string(b) != `{"op":"ping","id":4}` {
		t.Fatalf("EncodeCommand(ping) = %s", b)
	}
}

func TestValidateDirect(t *testing.T) {
	// A command built in code (not decoded) with an empty, non-nil Since is
	// still an unsubscribe with since.
	c := Command{Op: OpUnsubscribe, App: "a", Keys: []string{"k"}, Since: map[string]Position{}}
	if err := c.Validate(); err == nil {
		t.Fatal("unsubscribe with empty non-nil since: Validate = nil")
	}
	c = Command{Op: OpSubscribe, App: "a", Keys: []string{"k"}, Since: map[string]Position{}}
	if err := c.Validate(); err != nil {
		t.Fatalf("subscribe with empty since: %v", err)
	}
}
