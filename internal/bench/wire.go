package bench

// The coordinator and a worker exchange one JSON object per line. A step
// goes:
//
//	coordinator → worker   {"type":"config","config":{...}}
//	worker → coordinator   {"type":"progress",...} every ProgressEvery, throughout
//	worker → coordinator   {"type":"ready"}     every planned connection is up or failed
//	coordinator → worker   {"type":"start","window_start":ns,"window_end":ns}
//	worker → coordinator   {"type":"started"}   values from now on are counted
//	coordinator → worker   {"type":"finish","expected":[[node,key,count],...],"finals":[[node,key,seq],...]}
//	worker → coordinator   {"type":"drained"}   values due have arrived (or Drain passed)
//	coordinator → worker   {"type":"stop"}
//	worker → coordinator   {"type":"result","result":{...}}
//
// then the coordinator closes the worker's input, which ends it. A worker
// that fails sends {"type":"error","error":"..."} instead of what comes
// next. Between ready and drained the coordinator reads the servers'
// /metrics, so the connections are open when it does.

// Message types.
const (
	msgConfig   = "config"
	msgProgress = "progress"
	msgReady    = "ready"
	msgStart    = "start"
	msgStarted  = "started"
	msgFinish   = "finish"
	msgDrained  = "drained"
	msgStop     = "stop"
	msgResult   = "result"
	msgError    = "error"
)

// wireMsg is one line of the protocol; fields a type does not use are
// empty.
type wireMsg struct {
	Type     string        `json:"type"`
	Config   *WorkerConfig `json:"config,omitempty"`
	Progress *Progress     `json:"progress,omitempty"`
	// WindowStart and WindowEnd (Unix ns) bound the send times (FromWsbench)
	// or value timestamps (SourcePoller) of the values counted; a value
	// outside is stale (a replay of an older value). WindowEnd 0: open.
	WindowStart int64 `json:"window_start,omitempty"`
	WindowEnd   int64 `json:"window_end,omitempty"`
	// Expected lists [node, key index, values published] for every (node,
	// key) the worker subscribes to (FromWsbench). Nil: counts come from
	// the seqs received (SourcePoller) or no values are due (capacity).
	Expected [][3]uint64 `json:"expected,omitempty"`
	// Finals lists [node, key index, seq of the key's last value] for
	// every (node, key) the worker subscribes to, in latest mode: that
	// value must arrive (docs/PROTOCOL.md, "Delivery modes").
	Finals [][3]uint64   `json:"finals,omitempty"`
	Result *WorkerResult `json:"result,omitempty"`
	Error  string        `json:"error,omitempty"`
}

// Progress is a worker's running counts.
type Progress struct {
	Connected int64  `json:"connected"`
	Failed    int64  `json:"failed"`
	Dropped   int64  `json:"dropped"`
	Counted   uint64 `json:"counted"` // values received inside the window
	Stale     uint64 `json:"stale"`
	Foreign   uint64 `json:"foreign"`
}

// Add adds o to p.
func (p *Progress) Add(o Progress) {
	p.Connected += o.Connected
	p.Failed += o.Failed
	p.Dropped += o.Dropped
	p.Counted += o.Counted
	p.Stale += o.Stale
	p.Foreign += o.Foreign
}

// WorkerResult is everything a worker measured in a step.
type WorkerResult struct {
	Planned  int      `json:"planned"`
	Progress Progress `json:"progress"`
	// Errors holds up to maxErrorSamples distinct connect errors.
	Errors     []string       `json:"errors,omitempty"`
	CloseCodes map[string]int `json:"close_codes,omitempty"` // of dropped connections
	Handshake  *Histogram     `json:"handshake"`             // dial to upgraded, ns
	Subscribe  *Histogram     `json:"subscribe"`             // subscribe sent to last ack, ns
	Latency    *Histogram     `json:"latency"`               // value sent (or made) to received, ns
	Loss       Loss           `json:"loss"`
	Latest     *LatestFigures `json:"latest,omitempty"` // latest mode
	// LastReceive is the Unix ns of the last value counted (0: none).
	LastReceive int64 `json:"last_receive"`
}

// maxErrorSamples bounds the error messages a step keeps.
const maxErrorSamples = 5

// addErrorSample adds msg to samples unless it is there or samples is
// full.
func addErrorSample(samples []string, msg string) []string {
	if len(samples) >= maxErrorSamples {
		return samples
	}
	for _, s := range samples {
		if s == msg {
			return samples
		}
	}
	return append(samples, msg)
}
