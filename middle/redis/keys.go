package redis

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/wspush/wspush/proto"
)

// keys names the Redis keys of docs/PROTOCOL.md, "Redis schema", under a
// prefix. App and key names cannot contain ':', '{' or '}'
// (proto.ValidateName), so every name is unambiguous and the hash tag of a
// stream, {<app>:<key>}, puts all of its keys in one Redis Cluster slot.
type keys struct {
	p string // prefix including the trailing ':'
}

func newKeys(prefix string) keys {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return keys{p: prefix + ":"}
}

func tag(app, key string) string { return "{" + app + ":" + key + "}" }

// Per stream, one hash slot.

func (k keys) seq(app, key string) string  { return k.p + "seq:" + tag(app, key) }
func (k keys) hist(app, key string) string { return k.p + "hist:" + tag(app, key) }

// idemPrefix is the idempotency key of (app, key) without the id; the
// append script adds the id.
func (k keys) idemPrefix(app, key string) string { return k.p + "idem:" + tag(app, key) + ":" }
func (k keys) pub(app, key string) string        { return k.p + "pub:" + tag(app, key) }

// parsePub returns the (app, key) of a fan-out channel name.
func (k keys) parsePub(channel string) (app, key string, ok bool) {
	rest, ok := strings.CutPrefix(channel, k.p+"pub:{")
	if !ok {
		return "", "", false
	}
	rest, ok = strings.CutSuffix(rest, "}")
	if !ok {
		return "", "", false
	}
	app, key, ok = strings.Cut(rest, ":")
	return app, key, ok && app != "" && key != ""
}

// The index: one hash tag for all of its keys, so that its scripts, which
// touch several of them, run on Redis Cluster.

func (k keys) idx() string                { return k.p + "{index}:" }
func (k keys) sub(app, key string) string { return k.idx() + "sub:" + app + ":" + key }
func (k keys) appKeys(app string) string  { return k.idx() + "keys:" + app }
func (k keys) apps() string               { return k.idx() + "apps" }
func (k keys) nodes() string              { return k.idx() + "nodes" }
func (k keys) node(id string) string      { return k.idx() + "node:" + id }
func (k keys) nodeSubs(id string) string  { return k.idx() + "nodesubs:" + id }
func (k keys) poll(app string) string     { return k.p + "poll:" + app }

// The ingest claims: one hash tag, for the same reason.

func (k keys) ingest() string             { return k.p + "{ingest}:" }
func (k keys) claim(partition int) string { return k.ingest() + "claim:" + strconv.Itoa(partition) }
func (k keys) members() string            { return k.ingest() + "members" }
func (k keys) fence() string              { return k.ingest() + "fence" }

// The fan-out message is what the append script SPUBLISHes on the key's
// channel: "<seq>:<epoch>:<ts>:<j>:<payload>", where j is "1" for a JSON
// payload and "0" for bytes. The payload goes last and raw, so decoding
// copies nothing but it; the epoch never contains ':' (proto.ValidateEpoch).

var errBadMessage = errors.New("malformed fan-out message")

// decodePub parses a fan-out message of (app, key) into p.
func decodePub(app, key, msg string, p *proto.Publication) error {
	var f [4]string
	rest := msg
	for i := range f {
		var ok bool
		if f[i], rest, ok = strings.Cut(rest, ":"); !ok {
			return fmt.Errorf("%w: %d fields", errBadMessage, i+1)
		}
	}
	seq, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || seq == 0 {
		return fmt.Errorf("%w: seq %q", errBadMessage, f[0])
	}
	if err := proto.ValidateEpoch(f[1]); err != nil {
		return fmt.Errorf("%w: %v", errBadMessage, err)
	}
	ts, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: ts %q", errBadMessage, f[2])
	}
	if f[3] != "0" && f[3] != "1" {
		return fmt.Errorf("%w: json flag %q", errBadMessage, f[3])
	}
	*p = proto.Publication{App: app, Key: key, Seq: seq, Epoch: f[1], TS: ts, JSON: f[3] == "1", Data: []byte(rest)}
	return nil
}
