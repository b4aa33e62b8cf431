package proto

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/gorilla/websocket"
)

// How a stream of client frames ends, for both readers alike.
const (
	endEOF         = "eof"         // the bytes ran out, between or within messages
	endClose       = "close"       // a valid close frame
	endProtocol    = "protocol"    // a frame that breaks RFC 6455: 1002
	endInvalidData = "invalidData" // a text message that is not UTF-8: 1007
	endTooLarge    = "tooLarge"    // a message over the limit: 1009
)

// readResult is what a reader made of a stream: the messages (control
// frames included) in order, then how it ended.
type readResult struct {
	msgs      []ClientMessage
	end       string
	closeCode int    // with endClose
	closeText string // with endClose
	detail    string // the error, for the failure message
}

func (r readResult) String() string {
	var b strings.Builder
	for _, m := range r.msgs {
		fmt.Fprintf(&b, "%d:%.40q ", m.Opcode, m.Payload)
	}
	fmt.Fprintf(&b, "end %s", r.end)
	if r.end == endClose {
		fmt.Fprintf(&b, " %d %q", r.closeCode, r.closeText)
	}
	if r.detail != "" {
		fmt.Fprintf(&b, " (%s)", r.detail)
	}
	return b.String()
}

// readOurs feeds stream to a ClientReader in two pieces, cut at cut, and
// handles a close frame as the session does (ParseClosePayload).
func readOurs(stream []byte, cut, limit int) readResult {
	r := ClientReader{MaxMessage: limit}
	var res readResult
	closed := false
	collect := func(m ClientMessage) bool {
		if m.Opcode != OpcodeClose {
			res.msgs = append(res.msgs, ClientMessage{m.Opcode, bytes.Clone(m.Payload)})
			return true
		}
		code, text, err := ParseClosePayload(m.Payload)
		if err != nil {
			res.end, res.detail = endProtocol, err.Error()
		} else {
			res.end, res.closeCode, res.closeText = endClose, code, text
		}
		closed = true
		return false
	}
	s := bytes.Clone(stream)
	cut %= len(s) + 1
	for _, piece := range [][]byte{s[:cut], s[cut:]} {
		if err := r.Feed(piece, collect); err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				return readResult{msgs: res.msgs, end: "unexpected", detail: err.Error()}
			}
			res.detail = fe.Reason
			switch fe.Code {
			case CloseProtocolError:
				res.end = endProtocol
			case CloseInvalidData:
				res.end = endInvalidData
			case CloseTooLarge:
				res.end = endTooLarge
			default:
				res.end = fmt.Sprintf("close code %d", fe.Code)
			}
			return res
		}
		if closed {
			return res
		}
	}
	res.end = endEOF
	return res
}

// hijacker is the http.ResponseWriter of a request whose connection is
// conn: all gorilla's Upgrader needs to take it over.
type hijacker struct {
	conn net.Conn
	hdr  http.Header
}

func (h *hijacker) Header() http.Header         { return h.hdr }
func (h *hijacker) Write(b []byte) (int, error) { return len(b), nil }
func (h *hijacker) WriteHeader(int)             {}
func (h *hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return h.conn, bufio.NewReadWriter(bufio.NewReader(h.conn), bufio.NewWriter(h.conn)), nil
}

// readGorilla writes stream, as the client, into one end of a net.Pipe
// whose other end gorilla/websocket upgrades as a server, and reads it
// with gorilla's reader. gorilla leaves UTF-8 to the application: a text
// message that is not UTF-8 ends the stream here as it would in a server
// that checks.
func readGorilla(t *testing.T, stream []byte, limit int) readResult {
	client, server := net.Pipe()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer client.Close()
	defer server.Close()
	wg.Add(1)
	go func() { // the 101, and the pongs and closes gorilla answers with
		defer wg.Done()
		_, _ = io.Copy(io.Discard, client)
	}()

	req := &http.Request{Method: http.MethodGet, Header: http.Header{
		"Connection":            {"Upgrade"},
		"Upgrade":               {"websocket"},
		"Sec-Websocket-Version": {"13"},
		"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
	}}
	up := websocket.Upgrader{ReadBufferSize: 512, WriteBufferSize: 512}
	ws, err := up.Upgrade(&hijacker{conn: server, hdr: http.Header{}}, req, nil)
	if err != nil {
		t.Fatalf("gorilla upgrade over net.Pipe: %v", err)
	}
	ws.SetReadLimit(int64(limit))
	var res readResult
	ws.SetPingHandler(func(p string) error {
		res.msgs = append(res.msgs, ClientMessage{OpcodePing, []byte(p)})
		return nil
	})
	ws.SetPongHandler(func(p string) error {
		res.msgs = append(res.msgs, ClientMessage{OpcodePong, []byte(p)})
		return nil
	})
	ws.SetCloseHandler(func(int, string) error { return nil })
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = client.Write(stream)
		client.Close() // the end of the stream
	}()

	for {
		mt, p, err := ws.ReadMessage()
		if err != nil {
			res.detail = err.Error()
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ce) && ce.Code == websocket.CloseAbnormalClosure,
				errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
				res.end = endEOF
			case errors.As(err, &ce):
				res.end, res.closeCode, res.closeText, res.detail = endClose, ce.Code, ce.Text, ""
			case errors.Is(err, websocket.ErrReadLimit):
				res.end = endTooLarge
			default:
				// handleProtocolError's errors have no type of their own.
				res.end = endProtocol
			}
			return res
		}
		if mt == websocket.TextMessage && !utf8.Valid(p) {
			res.end = endInvalidData
			return res
		}
		res.msgs = append(res.msgs, ClientMessage{byte(mt), p})
	}
}

// stricterThanGorilla reports whether our reader refused, as RFC 6455
// requires, something gorilla lets through; gorilla must then agree on
// everything before it (ours being a prefix) and, where it names one, on
// how it ends.
func stricterThanGorilla(ours readResult) (prefixOnly bool, wantEnd string) {
	if ours.end != endProtocol {
		return false, ""
	}
	switch {
	case strings.Contains(ours.detail, "shortest form"): // gorilla takes any length encoding
		return true, ""
	case strings.Contains(ours.detail, "close payload of 1 byte"): // gorilla: no status
		return true, ""
	case strings.Contains(ours.detail, "over 2^63-1"): // gorilla: its read limit
		return false, endTooLarge
	}
	return false, ""
}

// FuzzClientReaderMatchesGorilla gives the same client bytes to
// ClientReader (in two pieces) and to gorilla/websocket's server-side
// reader: both must give the same messages, then end the same way (the
// same close code and reason, or an error of the same class), except where
// stricterThanGorilla says ours is right to refuse more.
func FuzzClientReaderMatchesGorilla(f *testing.F) {
	f.Fuzz(func(t *testing.T, stream []byte, split uint16) {
		const limit = 1 << 10
		ours := readOurs(stream, int(split), limit)
		theirs := readGorilla(t, stream, limit)
		prefixOnly, wantEnd := stricterThanGorilla(ours)
		n := len(ours.msgs)
		switch {
		case prefixOnly && len(theirs.msgs) < n,
			!prefixOnly && len(theirs.msgs) != n:
			t.Fatalf("stream %q\nours:    %v\ngorilla: %v", stream, ours, theirs)
		}
		for i := range n {
			if ours.msgs[i].Opcode != theirs.msgs[i].Opcode || !bytes.Equal(ours.msgs[i].Payload, theirs.msgs[i].Payload) {
				t.Fatalf("message %d differs\nstream %q\nours:    %v\ngorilla: %v", i, stream, ours, theirs)
			}
		}
		if prefixOnly {
			return
		}
		if wantEnd == "" {
			wantEnd = ours.end
		}
		if theirs.end != wantEnd || ours.end == endClose && (ours.closeCode != theirs.closeCode || ours.closeText != theirs.closeText) {
			t.Fatalf("different ends\nstream %q\nours:    %v\ngorilla: %v", stream, ours, theirs)
		}
	})
}
