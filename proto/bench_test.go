package proto

import "testing"

// benchPub is a realistic publication: one sensor reading.
var benchPub = Publication{
	App:  "plant-7",
	Key:  "s001",
	Seq:  1234567,
	TS:   1763812345123,
	Data: []byte(`{"temp":21.53,"humidity":40.1}`),
	JSON: true,
}

var benchSink *Frame

func BenchmarkEncode(b *testing.B) {
	for _, bc := range []struct {
		name string
		f    Format
	}{{"json", FormatJSON}, {"binary", FormatBinary}} {
		b.Run(bc.name, func(b *testing.B) {
			p := benchPub
			b.ReportAllocs()
			b.SetBytes(int64(len(EncodeDataFrame(&p, bc.f).Bytes)))
			for b.Loop() {
				benchSink = EncodeDataFrame(&p, bc.f)
			}
		})
	}
}

func BenchmarkAppendDataJSON(b *testing.B) {
	p := benchPub
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(AppendDataJSON(nil, &p))))
	for b.Loop() {
		buf = AppendDataJSON(buf[:0], &p)
	}
}

func BenchmarkAppendDataBinary(b *testing.B) {
	p := benchPub
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(BinaryLen(&p)))
	for b.Loop() {
		buf = AppendDataBinary(buf[:0], &p)
	}
}

func BenchmarkDecodeCommand(b *testing.B) {
	for _, bc := range []struct{ name, cmd string }{
		{"subscribe", `{"op":"subscribe","id":1,"app":"plant-7","keys":["001","002","003"],"format":"json","since":{"001":41}}`},
		{"ping", `{"op":"ping","id":4}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := []byte(bc.cmd)
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := DecodeCommand(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The reused-buffer appends are on the hot path of every connection.
func TestAppendDataZeroAllocs(t *testing.T) {
	p := benchPub
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { buf = AppendDataJSON(buf[:0], &p) }); n != 0 {
		t.Errorf("AppendDataJSON into a reused buffer: %v allocs", n)
	}
	p.JSON = false
	if n := testing.AllocsPerRun(100, func() { buf = AppendDataJSON(buf[:0], &p) }); n != 0 {
		t.Errorf("AppendDataJSON (b64) into a reused buffer: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = AppendDataBinary(buf[:0], &p) }); n != 0 {
		t.Errorf("AppendDataBinary into a reused buffer: %v allocs", n)
	}
	kps := []KeyPosition{{"001", Position{41, "k3J9"}}, {"002", Position{0, "Zq81"}}}
	if n := testing.AllocsPerRun(100, func() { buf = AppendAck(buf[:0], 1, Recovered, kps) }); n != 0 {
		t.Errorf("AppendAck: %v allocs", n)
	}
	if n := testing.AllocsPerRun(100, func() { buf = AppendPong(buf[:0], 1) }); n != 0 {
		t.Errorf("AppendPong: %v allocs", n)
	}
}
