package proto

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestAppendDataJSON(t *testing.T) {
	p := Publication{App: "plant-7", Key: "001", Seq: 42, TS: 1763812345123, Data: []byte(`{"temp":21.5}`), JSON: true}
	got := AppendDataJSON([]byte("xx"), &p)
	want := `xx{"op":"data","app":"plant-7","key":"001","seq":42,"ts":1763812345123,"data":{"temp":21.5}}`
	if string(got) != want {
		t.Fatalf("AppendDataJSON =\n%s\nwant\n%s", got, want)
	}

	pubs := []Publication{
		p,
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte(`1`), JSON: true},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte(`null`), JSON: true},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte(`"str \"q\" \u00e9"`), JSON: true},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte(`[1,2,{"a":[]}]`), JSON: true},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte(" {\"sp\" : true} "), JSON: true},
		{App: strings.Repeat("A", 64), Key: strings.Repeat("-", 64), Seq: math.MaxUint64, TS: math.MinInt64, Data: []byte(`{}`), JSON: true},
		{App: "a", Key: "k", Seq: 7, TS: math.MaxInt64, Data: []byte("not json"), JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: -1, Data: []byte{0, 1, 2, 0xff, 0xfe, '"', '\\', '\n'}, JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: 1, Data: nil, JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: 1, Data: []byte("a"), JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: 1, Data: []byte("ab"), JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: 1, Data: []byte("abc"), JSON: false},
		{App: "a", Key: "k", Seq: 7, TS: 1, Data: bytes.Repeat([]byte{0x80}, 10000), JSON: false},
	}
	for _, p := range pubs {
		b := AppendDataJSON(nil, &p)
		if !json.Valid(b) {
			t.Fatalf("AppendDataJSON(%+v) = %s: not valid JSON", p, b)
		}
		m := mustDecodeServer(t, b)
		if m.Op != OpData {
			t.Fatalf("op %q", m.Op)
		}
		checkPubEqual(t, m.Publication(), p, true)
		if !p.JSON {
			if !bytes.Contains(b, []byte(`"b64":"`+base64.StdEncoding.EncodeToString(p.Data)+`"`)) {
				t.Fatalf("%s: no standard base64 of the payload", b)
			}
			if bytes.Contains(b, []byte(`"data":`)) {
				t.Fatalf("%s: non-JSON payload has a data field", b)
			}
		}
	}
}

// checkPubEqual compares publications. With viaJSON, a JSON payload is
// compared after compacting (DecodeServerMessage keeps the raw bytes, so
// they should be equal anyway) and a nil payload equals an empty one.
func checkPubEqual(t *testing.T, got, want Publication, viaJSON bool) {
	t.Helper()
	if got.App != want.App || got.Key != want.Key || got.Seq != want.Seq || got.TS != want.TS || got.JSON != want.JSON {
		t.Fatalf("publication %+v, want %+v", got, want)
	}
	gd, wd := got.Data, want.Data
	if viaJSON && want.JSON {
		var g, w bytes.Buffer
		if err := json.Compact(&g, gd); err != nil {
			t.Fatalf("data %q: %v", gd, err)
		}
		if err := json.Compact(&w, wd); err != nil {
			t.Fatalf("data %q: %v", wd, err)
		}
		gd, wd = g.Bytes(), w.Bytes()
	}
	if !bytes.Equal(gd, wd) {
		t.Fatalf("data %q, want %q", gd, wd)
	}
}

func TestAppendDataBinaryLayout(t *testing.T) {
	p := Publication{App: "ap", Key: "k", Seq: 0x0102030405060708, TS: -2, Data: []byte("xyz"), JSON: true}
	got := AppendDataBinary([]byte{0xAA}, &p)
	want := []byte{
		0xAA,           // prefix
		1,              // version
		1,              // flags: JSON
		0, 2, 'a', 'p', // app
		0, 1, 'k', // key
		1, 2, 3, 4, 5, 6, 7, 8, // seq
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, // ts
		'x', 'y', 'z',
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("AppendDataBinary =\n% x\nwant\n% x", got, want)
	}
	p.JSON = false
	if got := AppendDataBinary(nil, &p); got[1] != 0 {
		t.Fatalf("flags %#x for a non-JSON payload", got[1])
	}
	if BinaryLen(&p) != len(want)-1 {
		t.Fatalf("BinaryLen = %d, want %d", BinaryLen(&p), len(want)-1)
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	pubs := []Publication{
		{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte(`{"temp":21.53,"humidity":40.1}`), JSON: true},
		{App: "plant-7", Key: "s001", Seq: 43, TS: 1763812345124, Data: []byte{0, 1, 2, 3, 0xff}, JSON: false},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: nil, JSON: false},
		{App: "a", Key: "k", Seq: 1, TS: 0, Data: []byte{}, JSON: true},
		{App: strings.Repeat("A", 64), Key: strings.Repeat("z", 64), Seq: math.MaxUint64, TS: math.MinInt64, Data: bytes.Repeat([]byte("p"), 70000), JSON: false},
		{App: "a", Key: "k", Seq: 0, TS: math.MaxInt64, Data: []byte("x"), JSON: true},
		// Empty names are not valid, but the layout can carry them.
		{App: "", Key: "", Seq: 5, TS: 6, Data: []byte("d")},
	}
	for _, p := range pubs {
		b := AppendDataBinary(nil, &p)
		if len(b) != BinaryLen(&p) {
			t.Fatalf("len %d, BinaryLen %d", len(b), BinaryLen(&p))
		}
		got, err := DecodeDataBinary(b)
		if err != nil {
			t.Fatalf("DecodeDataBinary: %v", err)
		}
		checkPubEqual(t, got, p, false)
		if len(p.Data) > 0 && &got.Data[0] != &b[len(b)-len(p.Data)] {
			t.Fatalf("Data does not alias the input")
		}
		if again := AppendDataBinary(nil, &got); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
	}
}

func TestDecodeDataBinaryFlags(t *testing.T) {
	p := Publication{App: "a", Key: "k", Seq: 1, TS: 2, Data: []byte("d")}
	b := AppendDataBinary(nil, &p)
	for _, tt := range []struct {
		flags byte
		json  bool
	}{{0, false}, {1, true}, {2, false}, {3, true}, {0xfe, false}, {0xff, true}} {
		b[1] = tt.flags
		got, err := DecodeDataBinary(b)
		if err != nil {
			t.Fatalf("flags %#x: %v", tt.flags, err)
		}
		if got.JSON != tt.json {
			t.Errorf("flags %#x: JSON = %v, want %v", tt.flags, got.JSON, tt.json)
		}
	}
}

func TestDecodeDataBinaryTruncated(t *testing.T) {
	p := Publication{App: "plant-7", Key: "s001", Seq: 42, TS: 1763812345123, Data: []byte(`{"t":1}`), JSON: true}
	b := AppendDataBinary(nil, &p)
	header := BinaryLen(&p) - len(p.Data)
	for n := 0; n <= len(b); n++ {
		// Copy so that a read past n would be caught by the race detector or
		// bounds checks rather than landing in the original slice.
		in := append([]byte(nil), b[:n]...)
		got, err := DecodeDataBinary(in)
		if n < header {
			if err == nil {
				t.Fatalf("length %d of %d: no error, got %+v", n, len(b), got)
			}
			if !errors.Is(err, ErrShortFrame) {
				t.Fatalf("length %d: error %v is not ErrShortFrame", n, err)
			}
			if got.App != "" || got.Key != "" || got.Seq != 0 || got.Data != nil {
				t.Fatalf("length %d: error with a non-zero publication %+v", n, got)
			}
			continue
		}
		if err != nil {
			t.Fatalf("length %d (header %d): %v", n, header, err)
		}
		if !bytes.Equal(got.Data, p.Data[:n-header]) {
			t.Fatalf("length %d: data %q", n, got.Data)
		}
	}
	// Name lengths that claim more than there is.
	for _, in := range [][]byte{
		{1, 0, 0xff, 0xff, 'a'},
		{1, 0, 0, 1, 'a', 0xff, 0xff},
		{1, 0, 0, 0, 0, 0, 1, 2, 3}, // names ok, seq short
	} {
		if _, err := DecodeDataBinary(in); !errors.Is(err, ErrShortFrame) {
			t.Errorf("DecodeDataBinary(% x) = %v, want ErrShortFrame", in, err)
		}
	}
}

func TestDecodeDataBinaryVersion(t *testing.T) {
	p := Publication{App: "a", Key: "k", Seq: 1, TS: 2, Data: []byte("d")}
	b := AppendDataBinary(nil, &p)
	for _, v := range []byte{0, 2, 0x7f, 0xff} {
		b[0] = v
		_, err := DecodeDataBinary(b)
		if !errors.Is(err, ErrVersion) {
			t.Errorf("version %d: error %v, want ErrVersion", v, err)
		}
	}
}

// dataFrameOfLen returns a publication with Seq n whose encoding in format
// f is exactly n bytes long.
func dataFrameOfLen(t *testing.T, f Format, n int) Publication {
	t.Helper()
	p := Publication{App: "plant-7", Key: "s001", Seq: uint64(n), TS: 1763812345123, JSON: true}
	if f == FormatBinary {
		p.Data = bytes.Repeat([]byte{'b'}, n-BinaryLen(&p))
	} else {
		p.Data = []byte(`""`)
		over := len(AppendDataJSON(nil, &p))
		p.Data = []byte(`"` + strings.Repeat("j", n-over) + `"`)
	}
	if f == FormatBinary && len(AppendDataBinary(nil, &p)) != n ||
		f == FormatJSON && len(AppendDataJSON(nil, &p)) != n {
		t.Fatalf("could not build a %v publication of %d bytes", f, n)
	}
	return p
}

func TestParseDataBinaryReadsInPlace(t *testing.T) {
	p := Publication{App: "plant-7", Key: "001", Seq: 42, TS: 1763812345123, JSON: true, Data: []byte(`{"temp":21.5}`)}
	b := AppendDataBinary(nil, &p)
	var v BinaryData
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if v, err = ParseDataBinary(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("ParseDataBinary allocates %v times", allocs)
	}
	if string(v.App) != p.App || string(v.Key) != p.Key || v.Seq != p.Seq || v.TS != p.TS || !v.JSON || string(v.Data) != string(p.Data) {
		t.Fatalf("read %+v from %+v", v, p)
	}
}
