package redis

import (
	"fmt"
	"testing"

	"github.com/wspush/wspush/proto"
)

// FuzzDecodePub feeds decodePub what a peer, or a stranger publishing on a
// fan-out channel, could send: it never panics, and what it accepts is a
// valid position whose encoding gives the message back.
func FuzzDecodePub(f *testing.F) {
	for _, s := range []string{
		`1:Wm2cAAAAAAAA:1700000000000:1:{"temp":21.5}`,
		"42:k3J9:0:0:\x00\x01\x02",
		"7:e:1:1:a:b:c",
		"0:e:1:1:x",
		"1::1:1:x",
		"1:e:x:1:x",
		"1:e:1:2:x",
		"1:e:1",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		var p proto.Publication
		if err := decodePub("a", "k", msg, &p); err != nil {
			return
		}
		if p.Seq == 0 || proto.ValidateEpoch(p.Epoch) != nil {
			t.Fatalf("accepted an invalid position: %+v", p)
		}
		j := "0"
		if p.JSON {
			j = "1"
		}
		if again := fmt.Sprintf("%d:%s:%d:%s:%s", p.Seq, p.Epoch, p.TS, j, p.Data); again != msg {
			// Numbers with leading zeros or a '+' are accepted; the rest
			// must round-trip.
			var q proto.Publication
			if err := decodePub("a", "k", again, &q); err != nil || q.Seq != p.Seq || q.Epoch != p.Epoch || q.TS != p.TS || q.JSON != p.JSON || string(q.Data) != string(p.Data) {
				t.Fatalf("%q decoded to %+v, which encodes to %q", msg, p, again)
			}
		}
	})
}

// FuzzParsePub: a channel name is either refused or rebuilt exactly from
// the (app, key) it yields.
func FuzzParsePub(f *testing.F) {
	for _, s := range []string{"wspush:pub:{plant-7:001}", "wspush:pub:{a:b:c}", "wspush:pub:{:k}", "wspush:pub:{a:}", "wspush:pub:{a", "other:pub:{a:k}", ""} {
		f.Add(s)
	}
	k := newKeys("wspush")
	f.Fuzz(func(t *testing.T, channel string) {
		app, key, ok := k.parsePub(channel)
		if !ok {
			return
		}
		if app == "" || key == "" || k.pub(app, key) != channel {
			t.Fatalf("%q parsed to (%q, %q)", channel, app, key)
		}
	})
}
