package wstest

import (
	"net/http"
	"testing"

	"github.com/gorilla/websocket"
)

// TryDialWith connects with d (to set a source address or a TLS
// configuration) and returns the handshake's response and error instead of
// failing the test.
func TryDialWith(t testing.TB, d *websocket.Dialer, url string, hdr http.Header) (*Client, *http.Response, error) {
	if d.HandshakeTimeout == 0 {
		d.HandshakeTimeout = Timeout
	}
	conn, resp, err := d.Dial(url, hdr)
	if err != nil {
		return nil, resp, err
	}
	c := &Client{t: t, Conn: conn}
	t.Cleanup(func() { conn.Close() })
	return c, resp, nil
}
