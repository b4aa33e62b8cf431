package userservice

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pkix(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestJWTConfigValidate: a misconfigured key fails at start-up, not at the
// first client.
func TestJWTConfigValidate(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	smallRSA, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		cfg     Config
		wantErr string // "" for valid
		methods []string
	}{
		{name: "auth off", cfg: Config{}},
		{name: "secret", cfg: Config{JWTSecret: []byte("s")}, methods: []string{"HS256", "HS384", "HS512"}},
		{name: "PKIX RSA", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", pkix(t, &rsaKey.PublicKey))}, methods: []string{"RS256", "RS384", "RS512"}},
		{name: "PKCS1 RSA", cfg: Config{JWTPublicKeyFile: writePEM(t, "RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(&rsaKey.PublicKey))}, methods: []string{"RS256", "RS384", "RS512"}},
		{name: "P-384", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", pkix(t, &ecKey.PublicKey))}, methods: []string{"ES384"}},
		{name: "Ed25519", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", pkix(t, edPub))}, methods: []string{"EdDSA"}},
		{name: "both", cfg: Config{JWTSecret: []byte("s"), JWTPublicKeyFile: garbage}, wantErr: "both set"},
		{name: "missing file", cfg: Config{JWTPublicKeyFile: filepath.Join(t.TempDir(), "none.pem")}, wantErr: "no such file"},
		{name: "not PEM", cfg: Config{JWTPublicKeyFile: garbage}, wantErr: "no PEM block"},
		{name: "private key", cfg: Config{JWTPublicKeyFile: writePEM(t, "PRIVATE KEY", privDER)}, wantErr: "never a private key"},
		{name: "broken DER", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", []byte{0x30, 0x01})}, wantErr: "jwt public key"},
		{name: "small RSA", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", pkix(t, &smallRSA.PublicKey))}, wantErr: "1024 bits"},
		{name: "P-224", cfg: Config{JWTPublicKeyFile: writePEM(t, "PUBLIC KEY", pkix(t, &p224.PublicKey))}, wantErr: "P-224"},
		{name: "audience without auth", cfg: Config{JWTAudience: "a"}, wantErr: "auth is off"},
		{name: "allow no exp without auth", cfg: Config{JWTAllowNoExp: true}, wantErr: "auth is off"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Validate = %v, want an error containing %q", err, tc.wantErr)
				}
				if _, err := NewServer(tc.cfg, nil); err == nil {
					t.Fatal("NewServer accepted the config")
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate: %v", err)
			}
			v, err := newTokenVerifier(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if tc.methods == nil {
				if v != nil {
					t.Fatal("auth on without a key")
				}
				return
			}
			if !slices.Equal(v.methods, tc.methods) {
				t.Fatalf("methods %v, want %v", v.methods, tc.methods)
			}
		})
	}
}

func TestJWTVerify(t *testing.T) {
	secret := []byte("secret")
	v, err := newTokenVerifier(Config{JWTSecret: secret, JWTAudience: "push", JWTIssuer: "auth"})
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	sign := func(m jwt.SigningMethod, c jwt.MapClaims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ok := jwt.MapClaims{"sub": "dash", "aud": []string{"other", "push"}, "iss": "auth", "exp": exp.Unix(), "apps": []string{"a"}}
	info, err := v.verify(sign(jwt.SigningMethodHS256, ok))
	if err != nil {
		t.Fatal(err)
	}
	if info.subject != "dash" || !info.expires.Equal(exp) || !slices.Equal(info.apps, []string{"a"}) {
		t.Fatalf("got %+v", info)
	}
	for name, c := range map[string]jwt.MapClaims{
		"no exp":     {"sub": "dash", "aud": "push", "iss": "auth"},
		"expired":    {"sub": "dash", "aud": "push", "iss": "auth", "exp": time.Now().Add(-time.Second).Unix()},
		"not yet":    {"sub": "dash", "aud": "push", "iss": "auth", "exp": exp.Unix(), "nbf": exp.Unix()},
		"wrong aud":  {"sub": "dash", "aud": "pull", "iss": "auth", "exp": exp.Unix()},
		"wrong iss":  {"sub": "dash", "aud": "push", "iss": "evil", "exp": exp.Unix()},
		"no aud/iss": {"sub": "dash", "exp": exp.Unix()},
	} {
		if _, err := v.verify(sign(jwt.SigningMethodHS256, c)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, ok).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.verify(none); err == nil {
		t.Error("alg none accepted")
	}

	lax, err := newTokenVerifier(Config{JWTSecret: secret, JWTAllowNoExp: true})
	if err != nil {
		t.Fatal(err)
	}
	if info, err := lax.verify(sign(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "x"})); err != nil || !info.expires.IsZero() {
		t.Fatalf("--jwt-allow-no-exp: %+v, %v", info, err)
	}
}

func TestSameApps(t *testing.T) {
	for _, tc := range []struct {
		a, b []string
		want bool
	}{
		{nil, nil, true},
		{nil, []string{}, false},
		{[]string{"a", "b"}, []string{"b", "a"}, true},
		{[]string{"a", "a"}, []string{"a"}, true},
		{[]string{"a"}, []string{"a", "b"}, false},
	} {
		if got := sameApps(tc.a, tc.b); got != tc.want {
			t.Errorf("sameApps(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

// BenchmarkJWTVerify is the cost of checking one token (at each connect
// and refresh) per algorithm.
func BenchmarkJWTVerify(b *testing.B) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "dash", "apps": []string{"plant-7"}, "exp": time.Now().Add(time.Hour).Unix()}
	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		priv   any
		pub    any
	}{
		{"HS256", jwt.SigningMethodHS256, []byte("bench-secret"), nil},
		{"RS256", jwt.SigningMethodRS256, rsaKey, &rsaKey.PublicKey},
		{"ES256", jwt.SigningMethodES256, ecKey, &ecKey.PublicKey},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := Config{JWTSecret: []byte("bench-secret")}
			if tc.pub != nil {
				der, err := x509.MarshalPKIXPublicKey(tc.pub)
				if err != nil {
					b.Fatal(err)
				}
				path := filepath.Join(b.TempDir(), "key.pem")
				if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
					b.Fatal(err)
				}
				cfg = Config{JWTPublicKeyFile: path}
			}
			v, err := newTokenVerifier(cfg)
			if err != nil {
				b.Fatal(err)
			}
			tok, err := jwt.NewWithClaims(tc.method, claims).SignedString(tc.priv)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.verify(tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
