package app_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"

	"github.com/wspush/wspush/internal/app"
	"github.com/wspush/wspush/internal/wstest"
	"github.com/wspush/wspush/proto"
)

// Rows 8 (JWT) and 9 (origins) of issue 9: each attack gets the documented
// status or close code, while a well-behaved client on the same node keeps
// receiving values.

var authSecret = []byte("security-auth-test-secret-of-32+bytes")

// hsToken signs claims with authSecret (HS256).
func hsToken(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(authSecret)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// bystander is the well-behaved client: subscribed to good/k on base, it
// must get every value published there while the attack goes on.
type bystander struct {
	t    *testing.T
	base string
	c    *wstest.Client
	sent int
}

func newBystander(t *testing.T, base, token string) *bystander {
	t.Helper()
	url := wstest.WSURL(base)
	if token != "" {
		url += "?token=" + token
	}
	b := &bystander{t: t, base: base, c: wstest.Dial(t, url, nil)}
	b.c.Subscribe("good", "", nil, "k")
	return b
}

// check publishes n values and expects them, in order, right behind the
// ones before.
func (b *bystander) check(n int) {
	b.t.Helper()
	for i := 0; i < n; i++ {
		b.sent++
		mustPublish(b.t, b.base, "good", "k", fmt.Sprint(b.sent))
	}
	for i, m := range b.c.Data(n) {
		if want := uint64(b.sent - n + i + 1); m.Seq != want || string(m.Data) != fmt.Sprint(want) {
			b.t.Fatalf("bystander: got seq %d data %s, want seq %d", m.Seq, m.Data, want)
		}
	}
}

// authConfig is a node with HS256 auth and a fast heartbeat (the expiry
// sweep runs with it); PingTimeout is long so that test clients that read
// only now and then are not reaped.
func authConfig() app.Config {
	var cfg app.Config
	cfg.Users.JWTSecret = authSecret
	cfg.Users.PingInterval = 100 * time.Millisecond
	cfg.Users.PingTimeout = time.Minute
	return cfg
}

func TestSecurityJWTWithoutExpIsRefused(t *testing.T) {
	base, _ := startApp(t, authConfig())
	good := newBystander(t, base, hsToken(t, jwt.MapClaims{"sub": "good", "exp": time.Now().Add(time.Hour).Unix()}))

	noExp := hsToken(t, jwt.MapClaims{"sub": "mallory"})
	wstest.Dial(t, wstest.WSURL(base)+"?token="+noExp, nil).ExpectClose(proto.CloseUnauthorized)
	expired := hsToken(t, jwt.MapClaims{"sub": "mallory", "exp": time.Now().Add(-time.Minute).Unix()})
	wstest.Dial(t, wstest.WSURL(base), http.Header{"Authorization": {"Bearer " + expired}}).ExpectClose(proto.CloseUnauthorized)
	good.check(3)

	// --jwt-allow-no-exp lets such a token in, for good.
	cfg := authConfig()
	cfg.Users.JWTAllowNoExp = true
	base2, _ := startApp(t, cfg)
	c := wstest.Dial(t, wstest.WSURL(base2)+"?token="+noExp, nil)
	c.Subscribe("good", "", nil, "k")
	mustPublish(t, base2, "good", "k", `"v"`)
	if m := c.Data(1)[0]; string(m.Data) != `"v"` {
		t.Fatalf("got %+v", m)
	}
}

func TestSecurityJWTExpiryClosesWith4003(t *testing.T) {
	base, _ := startApp(t, authConfig())
	good := newBystander(t, base, hsToken(t, jwt.MapClaims{"sub": "good", "exp": time.Now().Add(time.Hour).Unix()}))

	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	c := wstest.Dial(t, wstest.WSURL(base)+"?token="+hsToken(t, jwt.MapClaims{"sub": "short", "exp": exp.Unix()}), nil)
	c.Subscribe("good", "", nil, "k")
	good.check(2)
	c.Data(2) // served like any other until its token expires
	c.ExpectClose(proto.CloseTokenExpired)
	if now := time.Now(); now.Before(exp) {
		t.Fatalf("closed at %s, before the token's exp %s", now, exp)
	}
	good.check(3)
}

func TestSecurityJWTRefreshKeepsTheConnection(t *testing.T) {
	base, _ := startApp(t, authConfig())
	good := newBystander(t, base, hsToken(t, jwt.MapClaims{"sub": "good", "exp": time.Now().Add(time.Hour).Unix()}))

	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	short := func(sub string) string {
		return hsToken(t, jwt.MapClaims{"sub": sub, "apps": []string{"good"}, "exp": exp.Unix()})
	}
	later := time.Now().Add(time.Hour).Unix()
	// renewed refreshes in time; refused sends only bad refreshes, so it
	// keeps its first expiry.
	renewed := wstest.Dial(t, wstest.WSURL(base)+"?token="+short("alice"), nil)
	renewed.Subscribe("good", "", nil, "k")
	refused := wstest.Dial(t, wstest.WSURL(base)+"?token="+short("bob"), nil)
	refused.Subscribe("good", "", nil, "k")

	for _, bad := range []struct{ name, token string }{
		{"another subject", hsToken(t, jwt.MapClaims{"sub": "alice", "apps": []string{"good"}, "exp": later})},
		{"other apps", hsToken(t, jwt.MapClaims{"sub": "bob", "apps": []string{"good", "more"}, "exp": later})},
		{"no exp", hsToken(t, jwt.MapClaims{"sub": "bob", "apps": []string{"good"}})},
		{"wrong key", func() string {
			s, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "bob", "apps": []string{"good"}, "exp": later}).SignedString([]byte("not the secret"))
			return s
		}()},
	} {
		id := refused.Send(proto.Command{Op: proto.OpRefresh, Token: bad.token})
		if m := refused.Next(); m.Op != proto.OpError || m.ID != id || m.Code != proto.CodeUnauthorized {
			t.Fatalf("refresh with %s: got %+v, want error %s", bad.name, m, proto.CodeUnauthorized)
		}
	}
	id := renewed.Send(proto.Command{Op: proto.OpRefresh, Token: hsToken(t, jwt.MapClaims{"sub": "alice", "apps": []string{"good"}, "exp": later})})
	renewed.ExpectAck(id)

	refused.ExpectClose(proto.CloseTokenExpired)
	// Past the first expiry and more than one sweep (PingInterval) later,
	// the renewed connection still gets values.
	time.Sleep(time.Until(exp) + 300*time.Millisecond)
	good.check(3)
	ms := renewed.Data(3)
	if got := wstest.Seqs(ms); got[0] != 1 || got[2] != 3 {
		t.Fatalf("renewed connection got seqs %v, want 1..3", got)
	}
	renewed.Send(proto.Command{Op: proto.OpPing})
	if m := renewed.Next(); m.Op != proto.OpPong {
		t.Fatalf("renewed connection: got %+v, want pong", m)
	}
}

func TestSecurityJWTPublicKeyAndAlgorithmConfusion(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		method jwt.SigningMethod
		priv   any
		pub    any
	}{
		{"RS256", jwt.SigningMethodRS256, rsaKey, &rsaKey.PublicKey},
		{"ES256", jwt.SigningMethodES256, ecKey, &ecKey.PublicKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := x509.MarshalPKIXPublicKey(tc.pub)
			if err != nil {
				t.Fatal(err)
			}
			pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			path := filepath.Join(t.TempDir(), "jwt.pub")
			if err := os.WriteFile(path, pemBytes, 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := authConfig()
			cfg.Users.JWTSecret = nil
			cfg.Users.JWTPublicKeyFile = path
			cfg.Users.JWTAudience = "wspush"
			cfg.Users.JWTIssuer = "https://auth.example"
			base, _ := startApp(t, cfg)

			claims := func(extra jwt.MapClaims) jwt.MapClaims {
				c := jwt.MapClaims{"sub": "dash", "aud": "wspush", "iss": "https://auth.example", "exp": time.Now().Add(time.Hour).Unix()}
				for k, v := range extra {
					c[k] = v
				}
				return c
			}
			sign := func(m jwt.SigningMethod, key any, c jwt.MapClaims) string {
				s, err := jwt.NewWithClaims(m, c).SignedString(key)
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			good := newBystander(t, base, sign(tc.method, tc.priv, claims(nil)))

			refusedTokens := map[string]string{
				// The classic confusion: HMAC keyed with the public key's
				// PEM (or DER) bytes, which anyone can read.
				"HS256 keyed with the public PEM": sign(jwt.SigningMethodHS256, pemBytes, claims(nil)),
				"HS256 keyed with the public DER": sign(jwt.SigningMethodHS256, der, claims(nil)),
				"alg none":                        sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil)),
				"wrong audience":                  sign(tc.method, tc.priv, claims(jwt.MapClaims{"aud": "other"})),
				"no audience":                     sign(tc.method, tc.priv, claims(jwt.MapClaims{"aud": nil})),
				"wrong issuer":                    sign(tc.method, tc.priv, claims(jwt.MapClaims{"iss": "https://evil.example"})),
				"no exp":                          sign(tc.method, tc.priv, claims(jwt.MapClaims{"exp": nil})),
			}
			for name, tok := range refusedTokens {
				c := wstest.Dial(t, wstest.WSURL(base)+"?token="+tok, nil)
				c.ExpectClose(proto.CloseUnauthorized)
				t.Logf("%s: closed with %d", name, proto.CloseUnauthorized)
			}
			good.check(3)
		})
	}
}

// dialStatus attempts a WebSocket upgrade with hdr and returns the HTTP
// status of the answer (101 when it succeeded).
func dialStatus(t *testing.T, base string, hdr http.Header) int {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: wstest.Timeout}
	conn, resp, err := d.Dial(wstest.WSURL(base), hdr)
	if resp == nil {
		t.Fatalf("dial with %v: no HTTP answer: %v", hdr, err)
	}
	if conn != nil {
		conn.Close()
	}
	return resp.StatusCode
}

func TestSecurityOriginIsNeverTheClaimedHost(t *testing.T) {
	cfg := app.Config{AllowedOrigins: []string{"https://dash.example"}}
	base, _ := startApp(t, cfg)
	good := newBystander(t, base, "")
	port := base[strings.LastIndex(base, ":")+1:]

	for _, tc := range []struct {
		name string
		hdr  http.Header
		want int
	}{
		// DNS rebinding: the page of evil.example, its name resolved to
		// the node, sends Host and Origin that agree with each other.
		{"evil host and origin", http.Header{"Host": {"evil.example"}, "Origin": {"https://evil.example"}}, http.StatusForbidden},
		{"evil host and origin with the port", http.Header{"Host": {"evil.example:" + port}, "Origin": {"http://evil.example:" + port}}, http.StatusForbidden},
		{"evil origin", http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
		{"own loopback origin", http.Header{"Origin": {"http://127.0.0.1:" + port}}, http.StatusSwitchingProtocols},
		{"own localhost origin", http.Header{"Origin": {"http://localhost:" + port}}, http.StatusSwitchingProtocols},
		{"--allowed-origins", http.Header{"Origin": {"https://dash.example"}}, http.StatusSwitchingProtocols},
		{"--allowed-origins, claimed by the Host", http.Header{"Host": {"dash.example"}, "Origin": {"https://dash.example"}}, http.StatusSwitchingProtocols},
		{"no origin (a service)", nil, http.StatusSwitchingProtocols},
	} {
		if got := dialStatus(t, base, tc.hdr); got != tc.want {
			t.Errorf("%s: upgrade answered %d, want %d", tc.name, got, tc.want)
		}
		good.check(1)
	}

	// The same policy guards the publish API.
	req, err := http.NewRequest(http.MethodPost, base+"/api/publish", strings.NewReader(`{"app":"good","key":"k","data":"evil"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", "https://evil.example")
	req.Host = "evil.example"
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("publish from https://evil.example: %d, want 403", resp.StatusCode)
	}
	good.check(2)
}
