package userservice

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wspush/wspush/proto"
)

// tokenVerifier checks client JWTs (docs/PROTOCOL.md, "Auth"): the
// signature with the one configured key, by the algorithms of that key
// only (no "none", no HMAC keyed with a public key), then exp (required
// unless allowed to be missing), nbf, aud and iss.
type tokenVerifier struct {
	key     any
	methods []string
	parser  *jwt.Parser
}

// tokenClaims are the claims of a client JWT.
type tokenClaims struct {
	jwt.RegisteredClaims
	Apps []string `json:"apps,omitempty"`
}

// tokenInfo is what a connection keeps of its token.
type tokenInfo struct {
	subject string
	apps    []string  // nil: any app
	expires time.Time // zero: never (only with JWTAllowNoExp)
}

// newTokenVerifier returns the verifier cfg asks for, nil when auth is off.
// It reads and parses JWTPublicKeyFile.
func newTokenVerifier(cfg Config) (*tokenVerifier, error) {
	v := &tokenVerifier{}
	switch {
	case len(cfg.JWTSecret) > 0 && cfg.JWTPublicKeyFile != "":
		return nil, errors.New("jwt: a secret and a public key are both set: choose one")
	case len(cfg.JWTSecret) > 0:
		v.key, v.methods = cfg.JWTSecret, []string{"HS256", "HS384", "HS512"}
	case cfg.JWTPublicKeyFile != "":
		key, methods, err := loadPublicKey(cfg.JWTPublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("jwt public key %s: %w", cfg.JWTPublicKeyFile, err)
		}
		v.key, v.methods = key, methods
	default:
		if cfg.JWTAudience != "" || cfg.JWTIssuer != "" || cfg.JWTAllowNoExp {
			return nil, errors.New("jwt audience, issuer or allow-no-exp set, but auth is off (no JWT secret or public key)")
		}
		return nil, nil
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(v.methods)}
	if !cfg.JWTAllowNoExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if cfg.JWTAudience != "" {
		opts = append(opts, jwt.WithAudience(cfg.JWTAudience))
	}
	if cfg.JWTIssuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.JWTIssuer))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// verify checks token and returns what the connection keeps of it.
func (v *tokenVerifier) verify(token string) (tokenInfo, error) {
	var claims tokenClaims
	_, err := v.parser.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return v.key, nil })
	if err != nil {
		return tokenInfo{}, fmt.Errorf("invalid token: %w", err)
	}
	info := tokenInfo{subject: claims.Subject, apps: claims.Apps}
	if claims.ExpiresAt != nil {
		info.expires = claims.ExpiresAt.Time
	}
	return info, nil
}

// loadPublicKey reads a PEM public key (PKIX "PUBLIC KEY", PKCS #1 "RSA
// PUBLIC KEY", or a "CERTIFICATE") and returns it with the JWT algorithms
// it verifies: RS256/384/512 for RSA, the ES algorithm of an ECDSA key's
// curve, EdDSA for Ed25519.
func loadPublicKey(path string) (any, []string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, errors.New("no PEM block")
	}
	var key any
	switch block.Type {
	case "PUBLIC KEY":
		key, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		key, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			key = cert.PublicKey
		}
	default:
		return nil, nil, fmt.Errorf("PEM block %q: want a PUBLIC KEY, an RSA PUBLIC KEY or a CERTIFICATE (never a private key)", block.Type)
	}
	if err != nil {
		return nil, nil, err
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, nil, fmt.Errorf("RSA key of %d bits: want at least 2048", k.N.BitLen())
		}
		return k, []string{"RS256", "RS384", "RS512"}, nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return k, []string{"ES256"}, nil
		case elliptic.P384():
			return k, []string{"ES384"}, nil
		case elliptic.P521():
			return k, []string{"ES512"}, nil
		}
		return nil, nil, fmt.Errorf("ECDSA curve %s: want P-256, P-384 or P-521", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return k, []string{"EdDSA"}, nil
	}
	return nil, nil, fmt.Errorf("key type %T: want RSA, ECDSA or Ed25519", key)
}

// setToken records the connection's token. Only the reader goroutine
// calls it (and ServeHTTP before the reader starts); the expiry is read by
// the heartbeat too.
func (s *session) setToken(info tokenInfo) {
	s.apps, s.subject = info.apps, info.subject
	var exp int64
	if !info.expires.IsZero() {
		exp = info.expires.UnixNano()
	}
	s.expires.Store(exp)
}

// tokenExpired reports whether the connection's token expired before now.
func (s *session) tokenExpired(now time.Time) bool {
	exp := s.expires.Load()
	return exp != 0 && now.UnixNano() >= exp
}

// expire closes the connection whose token expired with 4003 (once: the
// heartbeat may find it again while its close completes).
func (s *session) expire() {
	s.mu.Lock()
	closing := s.closeFrame != nil
	s.mu.Unlock()
	if closing {
		return
	}
	s.srv.log.Info("closing connection: token expired", "conn", s.id, "subject", s.subject, "expired", time.Unix(0, s.expires.Load()).UTC())
	s.closeWith(proto.CloseTokenExpired, "token expired")
}

// refresh replaces the connection's token with cmd.Token, which must be
// valid by the rules of a connecting token and name the same subject and
// apps: a refresh extends a connection, it does not change its rights.
// Refused, the old token and its expiry stay.
func (s *session) refresh(cmd *proto.Command) {
	v := s.srv.tokens
	if v == nil {
		s.replyError(cmd.ID, proto.CodeBadRequest, "refresh: this server does not use tokens")
		return
	}
	info, err := v.verify(cmd.Token)
	switch {
	case err != nil:
	case info.subject != s.subject:
		err = fmt.Errorf("subject %q is not the connection's %q", info.subject, s.subject)
	case !sameApps(info.apps, s.apps):
		err = errors.New(`"apps" differs from the connection's token: reconnect to change it`)
	}
	if err != nil {
		s.srv.log.Info("refresh refused", "conn", s.id, "subject", s.subject, "error", err)
		s.replyError(cmd.ID, proto.CodeUnauthorized, "refresh refused: "+err.Error())
		return
	}
	s.setToken(info)
	s.Enqueue(proto.NewFrame(proto.OpcodeText, proto.AppendAck(nil, cmd.ID, proto.RecoveryNone, nil)))
}

// sameApps compares two "apps" claims as sets; nil (any app) equals only nil.
func sameApps(a, b []string) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}
