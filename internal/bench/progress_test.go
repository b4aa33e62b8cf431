package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/wspush/wspush/internal/testutil"
)

func TestProgressPlainLines(t *testing.T) {
	var out testutil.SyncBuffer
	p := Progress{Connected: 3, Failed: 1}
	v := startProgress(&out, false, "capacity", 8, func() Progress { return p })
	v.setPhase("ramp", 0)
	v.setPhase("hold", time.Second)
	v.close()
	v.close()
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want one line per phase, got %q", lines)
	}
	if !strings.Contains(lines[0], "capacity ramp") || !strings.Contains(lines[0], " 50%") || !strings.Contains(lines[0], "conns 3/8  failed 1") {
		t.Errorf("ramp line %q", lines[0])
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("plain output must not redraw lines")
	}
}

func TestProgressTerminalRedraws(t *testing.T) {
	var out testutil.SyncBuffer
	v := startProgress(&out, true, "fanout", 10, func() Progress { return Progress{Connected: 10, Counted: 42} })
	v.setPhase("publish", time.Minute)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(out.String(), "values 42") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	v.close()
	s := out.String()
	if !strings.Contains(s, "\r\033[Kfanout publish  [") || !strings.HasSuffix(s, "\r\033[K") {
		t.Fatalf("terminal output %q: want redrawn lines and a cleared line at the end", s)
	}
}

func TestProgressNowhere(t *testing.T) {
	v := startProgress(nil, false, "x", 1, func() Progress { return Progress{} })
	v.setPhase("ramp", 0)
	v.close()
}
