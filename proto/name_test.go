package proto

import (
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of the error; "" means valid
	}{
		{"single char", "a", ""},
		{"all classes", "Az09_-", ""},
		{"digits only", "001", ""},
		{"dash only", "-", ""},
		{"underscore only", "_", ""},
		{"64 chars", strings.Repeat("x", 64), ""},
		{"empty", "", "empty"},
		{"65 chars", strings.Repeat("x", 65), "longer than 64"},
		{"very long", strings.Repeat("x", 1000), "longer than 64"},
		{"dot", "a.b", "invalid character '.' at 1"},
		{"leading dot", ".a", "invalid character '.' at 0"},
		{"space", "a b", "invalid character ' ' at 1"},
		{"tab", "a\tb", "invalid character"},
		{"newline", "a\n", "invalid character"},
		{"NUL", "a\x00", "invalid character"},
		{"slash", "a/b", "invalid character '/'"},
		{"star (AMQP wildcard)", "a*", "invalid character '*'"},
		{"hash (AMQP wildcard)", "#", "invalid character '#'"},
		{"colon", "a:b", "invalid character ':'"},
		{"quote", `a"b`, "invalid character"},
		{"backslash", `a\b`, "invalid character"},
		{"plus", "a+b", "invalid character '+'"},
		{"at", "a@b", "invalid character '@'"},
		{"unicode letter", "café", "invalid character"},
		{"unicode only", "日本", "invalid character"},
		{"emoji", "a😀", "invalid character"},
		{"invalid utf8", "a\xff", "invalid character"},
		{"DEL", "a\x7f", "invalid character"},
		{"char before 0", "/", "invalid character"},
		{"char after 9", "a:", "invalid character"},
		{"char before A", "@", "invalid character"},
		{"char after Z", "[", "invalid character"},
		{"char before a", "`", "invalid character"},
		{"char after z", "{", "invalid character"},
		// A 64-byte name with one multibyte character is still rejected for
		// the character, not the length; a 64-rune name over 64 bytes is too long.
		{"64 runes over 64 bytes", strings.Repeat("é", 64), "longer than 64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("ValidateName(%q) = nil, want error containing %q", tt.in, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ValidateName(%q) = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

// TestValidateNameEveryByte checks every single byte against the character
// class [A-Za-z0-9_-].
func TestValidateNameEveryByte(t *testing.T) {
	for c := 0; c < 256; c++ {
		want := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		err := ValidateName("x" + string([]byte{byte(c)}))
		if got := err == nil; got != want {
			t.Errorf("byte %#x: valid = %v, want %v (err %v)", c, got, want, err)
		}
	}
}

func TestRoutingKey(t *testing.T) {
	if got := RoutingKey("plant-7", "s001"); got != "plant-7.s001" {
		t.Fatalf("RoutingKey = %q", got)
	}
}

func TestParseRoutingKey(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		in       string
		app, key string
		wantErr  string
	}{
		{in: "plant-7.001", app: "plant-7", key: "001"},
		{in: "a.b", app: "a", key: "b"},
		{in: long + "." + long, app: long, key: long},
		{in: "", wantErr: "want <app>.<key>"},
		{in: "nodot", wantErr: "want <app>.<key>"},
		{in: ".", wantErr: "app: empty"},
		{in: ".key", wantErr: "app: empty"},
		{in: "app.", wantErr: "key: empty"},
		{in: "a.b.c", wantErr: "key: invalid character '.'"},
		{in: "a..b", wantErr: "key: invalid character '.'"},
		{in: "a b.c", wantErr: "app: invalid character ' '"},
		{in: "a.b c", wantErr: "key: invalid character ' '"},
		{in: long + "a.b", wantErr: "app: longer than 64"},
		{in: "a." + long + "a", wantErr: "key: longer than 64"},
		{in: "a.*", wantErr: "key: invalid character '*'"},
		{in: "#.k", wantErr: "app: invalid character '#'"},
		{in: "café.k", wantErr: "app: invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			app, key, err := ParseRoutingKey(tt.in)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseRoutingKey(%q) = %q, %q, nil; want error", tt.in, app, key)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRoutingKey(%q) error %q, want it to contain %q", tt.in, err, tt.wantErr)
				}
				if app != "" || key != "" {
					t.Fatalf("ParseRoutingKey(%q) returned %q, %q with an error", tt.in, app, key)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoutingKey(%q): %v", tt.in, err)
			}
			if app != tt.app || key != tt.key {
				t.Fatalf("ParseRoutingKey(%q) = %q, %q; want %q, %q", tt.in, app, key, tt.app, tt.key)
			}
			if rk := RoutingKey(app, key); rk != tt.in {
				t.Fatalf("RoutingKey(%q, %q) = %q, want %q", app, key, rk, tt.in)
			}
		})
	}
}
