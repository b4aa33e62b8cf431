package chaos

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// BuildFlags are extra go build flags of the nodes' binary (e.g. -race);
// set them before the first Binary call.
var BuildFlags []string

// binary is the wspush command, built once per test process.
var binary struct {
	once      sync.Once
	dir, path string
	err       error
}

// Binary builds ./cmd/wspush into a temporary directory the first time it
// is called and returns its path.
func Binary() (string, error) {
	binary.once.Do(func() {
		if binary.dir, binary.err = os.MkdirTemp("", "wspush-chaos-bin-"); binary.err != nil {
			return
		}
		binary.path = filepath.Join(binary.dir, "wspush")
		args := append(append([]string{"build", "-o", binary.path}, BuildFlags...), "github.com/wspush/wspush/cmd/wspush")
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			binary.err = fmt.Errorf("go build ./cmd/wspush: %w\n%s", err, out)
		}
	})
	return binary.path, binary.err
}

// RemoveBinary deletes what Binary built (from TestMain, after the tests).
func RemoveBinary() {
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
}

// Node is one wspush process.
type Node struct {
	ID      string
	Addr    string // host:port it listens on
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process is gone
	exitErr error
	killed  atomic.Bool // gone on purpose (kill -9)
	stopped atomic.Bool // SIGSTOPped
}

// listenLine is the start-up log line that tells the port.
type listenLine struct {
	Msg  string `json:"msg"`
	Addr string `json:"addr"`
}

// StartNode runs bin with args, logging to logPath, and waits for its
// "wspush listening" log line.
func StartNode(ctx context.Context, bin, id, logPath string, args []string) (*Node, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("node %s log: %w", id, err)
	}
	defer f.Close()
	n := &Node{ID: id, LogPath: logPath, exited: make(chan struct{})}
	n.cmd = exec.Command(bin, args...)
	n.cmd.Stdout, n.cmd.Stderr = f, f
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start node %s: %w", id, err)
	}
	go func() { n.exitErr = n.cmd.Wait(); close(n.exited) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if addr := n.listenAddr(); addr != "" {
			n.Addr = addr
			return n, nil
		}
		select {
		case <-n.exited:
			return nil, fmt.Errorf("node %s exited at start-up (%v):\n%s", id, n.exitErr, n.Tail(30))
		case <-ctx.Done():
			n.Kill()
			return nil, fmt.Errorf("node %s did not log %q: %w\n%s", id, "wspush listening", ctx.Err(), n.Tail(30))
		case <-tick.C:
		}
	}
}

func (n *Node) listenAddr() string {
	b, _ := os.ReadFile(n.LogPath)
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l listenLine
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "wspush listening" && l.Addr != "" {
			return l.Addr
		}
	}
	return ""
}

// Alive reports whether the process runs (perhaps stopped).
func (n *Node) Alive() bool {
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Unexpected returns why the node exited when nobody killed or stopped it,
// or the data race it reported (built with -race).
func (n *Node) Unexpected() error {
	if l := n.Grep(1, "WARNING: DATA RACE"); len(l) > 0 {
		return fmt.Errorf("node %s reported a data race (see %s)", n.ID, n.LogPath)
	}
	if n.Alive() || n.killed.Load() {
		return nil
	}
	return fmt.Errorf("node %s exited on its own: %v", n.ID, n.exitErr)
}

// Kill is kill -9; it returns once the process is gone.
func (n *Node) Kill() {
	n.killed.Store(true)
	_ = n.cmd.Process.Signal(syscall.SIGKILL)
	<-n.exited
}

// Freeze is kill -STOP; Thaw is kill -CONT.
func (n *Node) Freeze() error {
	n.stopped.Store(true)
	return n.cmd.Process.Signal(syscall.SIGSTOP)
}

// Thaw resumes a frozen node.
func (n *Node) Thaw() error {
	n.stopped.Store(false)
	return n.cmd.Process.Signal(syscall.SIGCONT)
}

// Frozen reports whether the node is SIGSTOPped.
func (n *Node) Frozen() bool { return n.stopped.Load() }

// Stop asks the node to shut down (SIGTERM) and kills it after grace.
func (n *Node) Stop(grace time.Duration) {
	if !n.Alive() {
		return
	}
	n.killed.Store(true) // an exit from now on is ours
	_ = n.cmd.Process.Signal(syscall.SIGCONT)
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(grace):
		n.Kill()
	}
}

// Tail returns the last lines of the node's log.
func (n *Node) Tail(lines int) string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", n.LogPath, err)
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(ls[max(0, len(ls)-lines):], "\n")
}

// Grep returns the node's log lines that contain any of words (at most
// limit of them, the last ones).
func (n *Node) Grep(limit int, words ...string) []string {
	b, err := os.ReadFile(n.LogPath)
	if err != nil {
		return nil
	}
	var out []string
	for l := range strings.SplitSeq(string(b), "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return out[max(0, len(out)-limit):]
}

var errNoLiveNode = errors.New("no live node")
