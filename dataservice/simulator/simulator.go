package simulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/wspush/wspush/proto"
)

// Path is where the simulator serves the API.
const Path = "/getRealTimeData"

// Defaults of Config.
const (
	DefaultStep      = time.Second
	DefaultMaxIDs    = 10000
	DefaultSlowDelay = time.Minute
)

// Config configures a Simulator. The zero value of every field means its
// default; a negative one too.
type Config struct {
	// Step is how often each sensor's value changes (default 1s), in whole
	// milliseconds, at least 1ms. Values change at multiples of Step since
	// the Unix epoch, and ts is the start of the value's step.
	Step time.Duration
	// MaxIDs is the most IDs one request may ask for (default 10000); more
	// is a 400.
	MaxIDs int
	// Seed picks the sensors' walks: the same seed gives the same values.
	Seed uint64
	// Fault is the fault mode at start (default FaultNone); see SetFault.
	Fault Fault
	// FailEvery makes every FailEvery-th request (counting all requests)
	// answer 500, whatever the fault mode; 0 never does.
	FailEvery int
	// SlowDelay is how long FaultSlow holds a request before answering
	// (default 1m, longer than any sane client timeout); the request
	// ending first ends the wait.
	SlowDelay time.Duration
	// Now is the clock (default time.Now); tests fix it to pin the step.
	Now func() time.Time
	// Apps, when not empty, are the only apps the data center knows: a
	// request for another app is answered with no values ({"data":[]}),
	// as for IDs it does not know (docs/PROTOCOL.md, "Data-center API").
	// Empty: every app has sensors.
	Apps []string
	// Sensors, when positive, is how many sensors each app has, with the
	// IDs SensorID(1)..SensorID(Sensors) ("s001", ...); other IDs are
	// omitted from the answer. 0: every valid ID is a sensor.
	Sensors int
}

// SensorID is the ID of sensor n of an app when Config.Sensors limits
// them: "s" and n in at least three digits (s001, s100, s1000).
func SensorID(n int) string { return fmt.Sprintf("s%03d", n) }

func (c Config) withDefaults() Config {
	if c.Step <= 0 {
		c.Step = DefaultStep
	}
	c.Step = max(c.Step.Truncate(time.Millisecond), time.Millisecond)
	if c.MaxIDs <= 0 {
		c.MaxIDs = DefaultMaxIDs
	}
	if c.SlowDelay <= 0 {
		c.SlowDelay = DefaultSlowDelay
	}
	if c.FailEvery < 0 {
		c.FailEvery = 0
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sensors < 0 {
		c.Sensors = 0
	}
	return c
}

// Fault is a way for the simulator to misbehave.
type Fault int32

// Fault modes.
const (
	// FaultNone answers correctly.
	FaultNone Fault = iota
	// FaultError500 answers 500 with a JSON error body.
	FaultError500
	// FaultGarbage answers 200 with a body that is not JSON.
	FaultGarbage
	// FaultSlow waits Config.SlowDelay (or until the request ends) before
	// answering correctly: longer than the client's timeout.
	FaultSlow
	// FaultExtra answers correctly but adds entries a client must ignore:
	// one without a value, one with an ID not asked for, one with an
	// invalid ID and one repeating an ID.
	FaultExtra
)

// faultCount is the number of Fault modes.
const faultCount = FaultExtra + 1

func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "none"
	case FaultError500:
		return "error500"
	case FaultGarbage:
		return "garbage"
	case FaultSlow:
		return "slow"
	case FaultExtra:
		return "extra"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// ParseFault returns the Fault named s (none, error500, garbage, slow,
// extra).
func ParseFault(s string) (Fault, error) {
	for f := range faultCount {
		if s == f.String() {
			return f, nil
		}
	}
	return 0, fmt.Errorf("unknown fault %q (want none, error500, garbage, slow or extra)", s)
}

// Simulator is the simulated data center, an http.Handler serving
// POST /getRealTimeData. It is safe for concurrent use.
type Simulator struct {
	cfg      Config
	apps     map[string]bool // nil: every app
	stepMs   int64
	maxBody  int64
	requests atomic.Uint64
	fault    atomic.Int32
}

// New returns a simulator.
func New(cfg Config) *Simulator {
	cfg = cfg.withDefaults()
	s := &Simulator{
		cfg:    cfg,
		stepMs: cfg.Step.Milliseconds(),
		// The largest valid request: MaxIDs names of the longest length,
		// quoted and comma-separated, plus the envelope.
		maxBody: int64(cfg.MaxIDs)*(proto.MaxNameLen+3) + 1024,
	}
	if len(cfg.Apps) > 0 {
		s.apps = make(map[string]bool, len(cfg.Apps))
		for _, a := range cfg.Apps {
			s.apps[a] = true
		}
	}
	s.fault.Store(int32(cfg.Fault))
	return s
}

// known keeps the IDs of ids that are sensors of app, in place, in order.
func (s *Simulator) known(app string, ids []string) []string {
	if s.apps != nil && !s.apps[app] {
		return ids[:0]
	}
	if s.cfg.Sensors == 0 {
		return ids
	}
	out := ids[:0]
	for _, id := range ids {
		if isSensor(id, s.cfg.Sensors) {
			out = append(out, id)
		}
	}
	return out
}

// isSensor reports whether id is SensorID(n) for some n in [1, sensors].
func isSensor(id string, sensors int) bool {
	if len(id) < 4 || id[0] != 's' {
		return false
	}
	n := 0
	for i := 1; i < len(id); i++ {
		c := id[i]
		if c < '0' || c > '9' {
			return false
		}
		if n = n*10 + int(c-'0'); n > sensors {
			return false
		}
	}
	// One spelling per sensor: zero-padded to three digits, no further.
	return n >= 1 && (len(id) == 4 || id[1] != '0')
}

// SetFault switches the fault mode for the requests that follow.
func (s *Simulator) SetFault(f Fault) { s.fault.Store(int32(f)) }

// Fault returns the current fault mode.
func (s *Simulator) Fault() Fault { return Fault(s.fault.Load()) }

// Requests returns how many requests the simulator has received, bad and
// failed ones included.
func (s *Simulator) Requests() uint64 { return s.requests.Load() }

type request struct {
	AppID string   `json:"appID"`
	IDs   []string `json:"ids"`
}

// ServeHTTP implements http.Handler.
func (s *Simulator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := s.requests.Add(1)
	if r.URL.Path != Path {
		writeError(w, http.StatusNotFound, "not found: the API is POST "+Path)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use POST")
		return
	}

	// The body is read to its end before any fault: only then does the
	// server notice a client that goes away and end r.Context(), which is
	// what ends the slow fault's wait.
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", s.maxBody))
			return
		}
		writeError(w, http.StatusBadRequest, "read request: "+err.Error())
		return
	}
	var req request
	if err := json.Unmarshal(data, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return
	}
	if err := proto.ValidateName(req.AppID); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("appID %q: %v", req.AppID, err))
		return
	}
	if len(req.IDs) > s.cfg.MaxIDs {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("too many ids: %d, at most %d", len(req.IDs), s.cfg.MaxIDs))
		return
	}
	for i, id := range req.IDs {
		if err := proto.ValidateName(id); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("ids[%d] %q: %v", i, id, err))
			return
		}
	}

	fault := s.Fault()
	if s.cfg.FailEvery > 0 && n%uint64(s.cfg.FailEvery) == 0 {
		fault = FaultError500
	}
	switch fault {
	case FaultError500:
		writeError(w, http.StatusInternalServerError, "simulated failure")
		return
	case FaultGarbage:
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html>simulated garbage, not JSON</html>\n"))
		return
	case FaultSlow:
		t := time.NewTimer(s.cfg.SlowDelay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}

	ids := s.known(req.AppID, req.IDs)
	body := s.appendResponse(make([]byte, 0, 16+len(ids)*80), req.AppID, ids, fault == FaultExtra)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// appendResponse appends {"data":[...]} with the current value of every id.
// Names need no JSON escaping, so the body is built by appending.
func (s *Simulator) appendResponse(b []byte, app string, ids []string, extra bool) []byte {
	step := s.cfg.Now().UnixMilli() / s.stepMs
	ts := step * s.stepMs
	appHash := hashString(offset64^s.cfg.Seed, app)
	b = append(b, `{"data":[`...)
	if extra && len(ids) > 0 {
		b = append(b, `{"id":"`...)
		b = append(b, ids[0]...)
		b = append(b, `","ts":`...)
		b = strconv.AppendInt(b, ts, 10)
		b = append(b, `},`...)
	}
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEntry(b, id, hashString(hashByte(appHash, 0), id), step, ts)
	}
	if extra {
		if len(ids) > 0 {
			b = append(b, ',')
			b = appendEntry(b, ids[0], hashString(appHash, "repeated"), step, ts)
			b = append(b, ',')
		}
		b = append(b, `{"id":"not-asked-for","value":1},{"id":"not valid!","value":2}`...)
	}
	return append(b, "]}"...)
}

func appendEntry(b []byte, id string, h uint64, step, ts int64) []byte {
	temp, hum := reading(h, step)
	b = append(b, `{"id":"`...)
	b = append(b, id...)
	b = append(b, `","value":{"temp":`...)
	b = appendFixed2(b, temp)
	b = append(b, `,"humidity":`...)
	b = appendFixed2(b, hum)
	b = append(b, `},"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	return append(b, '}')
}

// appendFixed2 appends v rounded to two decimals, without trailing zeros.
func appendFixed2(b []byte, v float64) []byte {
	return strconv.AppendFloat(b, math.Round(v*100)/100, 'f', -1, 64)
}

// reading is the value of the sensor with hash h at step: a base value
// plus three octaves of smoothly interpolated hash noise (periods of 512,
// 64 and 8 steps). Like a random walk it moves by small amounts from one
// step to the next and wanders far over time, but any step can be computed
// on its own, without the steps before it.
func reading(h uint64, step int64) (temp, humidity float64) {
	th, hh := mix(h^0x74656d70), mix(h^0x68756d69)
	temp = 18 + 6*unit(th) +
		8*(noise(mix(th+1), step, 512)-0.5) +
		3*(noise(mix(th+2), step, 64)-0.5) +
		0.8*(noise(mix(th+3), step, 8)-0.5)
	humidity = 35 + 20*unit(hh) +
		12*(noise(mix(hh+1), step, 512)-0.5) +
		4*(noise(mix(hh+2), step, 64)-0.5) +
		1.2*(noise(mix(hh+3), step, 8)-0.5)
	return temp, humidity
}

// noise is value noise in [0,1): random values at multiples of period,
// joined by a smoothstep curve.
func noise(h uint64, step, period int64) float64 {
	i, r := step/period, step%period
	if r < 0 {
		i, r = i-1, r+period
	}
	a := unit(mix(h ^ uint64(i)))
	c := unit(mix(h ^ uint64(i+1)))
	f := float64(r) / float64(period)
	f = f * f * (3 - 2*f)
	return a + (c-a)*f
}

// unit maps a hash to [0,1).
func unit(h uint64) float64 { return float64(h>>11) / (1 << 53) }

// mix is the splitmix64 finalizer: it spreads every input bit over the
// output so that neighbouring steps and IDs get unrelated values.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// FNV-1a, written out so that hashing a name does not allocate.
const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

func hashString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h = hashByte(h, s[i])
	}
	return h
}

func hashByte(h uint64, c byte) uint64 { return (h ^ uint64(c)) * prime64 }

func writeError(w http.ResponseWriter, code int, msg string) {
	body, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_, _ = w.Write(append(body, '\n'))
}
