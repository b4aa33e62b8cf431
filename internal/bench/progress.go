package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// progressView shows a step's progress on stderr while it runs: a bar
// redrawn in place when the output is a terminal, a plain line every few
// seconds otherwise (logs, CI). Its goroutine is stopped by close.
type progressView struct {
	w       io.Writer
	tty     bool
	label   string
	planned int64
	snap    func() Progress

	wmu     sync.Mutex // the ticker and setPhase both render
	mu      sync.Mutex
	phase   string
	started time.Time
	length  time.Duration // 0: the phase has no known length

	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

// Periods of the progress view.
const (
	ttyRefresh   = 200 * time.Millisecond
	plainRefresh = 2 * time.Second
)

// startProgress starts a view; w nil shows nothing.
func startProgress(w io.Writer, tty bool, label string, planned int, snap func() Progress) *progressView {
	v := &progressView{w: w, tty: tty, label: label, planned: int64(planned), snap: snap,
		phase: "start", started: time.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	if w == nil {
		close(v.done)
		return v
	}
	period := plainRefresh
	if tty {
		period = ttyRefresh
	}
	go func() { // ends at close
		defer close(v.done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-v.stop:
				return
			case <-t.C:
				v.render()
			}
		}
	}()
	return v
}

// setPhase starts a phase (ramp, hold, publish, measure, drain) of the
// given length (0: unknown; the ramp's progress is the connections).
func (v *progressView) setPhase(name string, length time.Duration) {
	v.mu.Lock()
	v.phase, v.started, v.length = name, time.Now(), length
	v.mu.Unlock()
	if v.w != nil && !v.tty {
		v.render()
	}
}

func (v *progressView) render() {
	v.mu.Lock()
	phase, started, length := v.phase, v.started, v.length
	v.mu.Unlock()
	p := v.snap()
	elapsed := time.Since(started)
	frac := -1.0
	switch {
	case phase == "ramp" && v.planned > 0:
		frac = float64(p.Connected+p.Failed) / float64(v.planned)
	case length > 0:
		frac = min(float64(elapsed)/float64(length), 1)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-8s", v.label, phase)
	if frac >= 0 {
		const width = 24
		n := int(frac * width)
		fmt.Fprintf(&b, " [%s%s] %3.0f%%", strings.Repeat("#", n), strings.Repeat(".", width-n), frac*100)
	}
	fmt.Fprintf(&b, "  conns %d/%d  failed %d  dropped %d  values %d  %.1fs",
		p.Connected, v.planned, p.Failed, p.Dropped, p.Counted, elapsed.Seconds())
	v.wmu.Lock()
	defer v.wmu.Unlock()
	if v.tty {
		fmt.Fprintf(v.w, "\r\033[K%s", b.String())
	} else {
		fmt.Fprintln(v.w, b.String())
	}
}

// close stops the view and clears its line; it may be called more than
// once.
func (v *progressView) close() {
	if v.w == nil {
		return
	}
	v.stopOnce.Do(func() {
		close(v.stop)
		<-v.done
		if v.tty {
			v.wmu.Lock()
			fmt.Fprint(v.w, "\r\033[K")
			v.wmu.Unlock()
		}
	})
}
