package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// Spawner starts worker processes (or goroutines) that run RunWorker on
// their input and output.
type Spawner interface {
	spawn(ctx context.Context, id int) (*workerProc, error)
}

// workerProc is a started worker.
type workerProc struct {
	in   io.WriteCloser // its input; closing it ends the worker
	out  io.Reader      // its output, to be read to the end before wait
	wait func() error
	kill func()
}

// ExecSpawner runs each worker as a process, by default wsbench itself
// re-executed with the hidden "worker" subcommand.
type ExecSpawner struct {
	// Command returns the worker's command (default: os.Executable()
	// worker). ctx ending kills it.
	Command func(ctx context.Context) (*exec.Cmd, error)
	// Stderr receives the workers' stderr (default os.Stderr).
	Stderr io.Writer
}

// SelfWorkerCommand is ExecSpawner's default command: this executable
// with the argument "worker".
func SelfWorkerCommand(ctx context.Context) (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	return exec.CommandContext(ctx, exe, "worker"), nil
}

func (s ExecSpawner) spawn(ctx context.Context, id int) (*workerProc, error) {
	command := s.Command
	if command == nil {
		command = SelfWorkerCommand
	}
	cmd, err := command(ctx)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = s.Stderr
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("worker %d stdin: %w", id, err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("worker %d stdout: %w", id, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start worker %d: %w", id, err)
	}
	return &workerProc{
		in:   in,
		out:  out,
		wait: cmd.Wait,
		kill: func() { _ = cmd.Process.Kill() },
	}, nil
}

// InProcessSpawner runs each worker as a goroutine of this process,
// speaking the same protocol through pipes.
type InProcessSpawner struct{}

func (InProcessSpawner) spawn(ctx context.Context, _ int) (*workerProc, error) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { // ends when the coordinator closes inW (RunWorker's contract)
		err := RunWorker(wctx, inR, outW)
		_ = outW.Close()
		done <- err
	}()
	return &workerProc{
		in:  inW,
		out: outR,
		wait: func() error {
			err := <-done
			cancel()
			return err
		},
		kill: func() {
			cancel()
			_ = inW.Close()
		},
	}, nil
}

// fleet is the coordinator's side of a step's workers.
type fleet struct {
	procs  []*workerProc
	encs   []*json.Encoder
	events chan event // every message but progress and error
	done   chan struct{}

	ctx    context.Context // ends when a worker fails
	cancel context.CancelCauseFunc

	procCancel context.CancelFunc
	readers    sync.WaitGroup
	closeOnce  sync.Once

	mu       sync.Mutex
	progress []Progress
	results  []bool // a result arrived from worker i
}

type event struct {
	worker int
	msg    wireMsg
}

// workerGrace is how long a worker has to end once its input is closed
// before it is killed.
const workerGrace = 10 * time.Second

// startFleet starts one worker per config and sends each its config.
func startFleet(ctx context.Context, sp Spawner, cfgs []WorkerConfig) (*fleet, error) {
	fctx, cancel := context.WithCancelCause(ctx)
	// The processes outlive ctx by the grace of close: a worker told to
	// stop closes its connections cleanly.
	procCtx, procCancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &fleet{
		events:     make(chan event, 4*len(cfgs)),
		done:       make(chan struct{}),
		ctx:        fctx,
		cancel:     cancel,
		procCancel: procCancel,
		progress:   make([]Progress, len(cfgs)),
		results:    make([]bool, len(cfgs)),
	}
	for i := range cfgs {
		p, err := sp.spawn(procCtx, i)
		if err != nil {
			f.close()
			return nil, err
		}
		f.procs = append(f.procs, p)
		f.encs = append(f.encs, json.NewEncoder(p.in))
		f.readers.Go(func() { f.read(i, p.out) })
	}
	for i := range cfgs {
		if err := f.send(i, wireMsg{Type: msgConfig, Config: &cfgs[i]}); err != nil {
			f.close()
			return nil, err
		}
	}
	return f, nil
}

// read reads worker i's output to its end.
func (f *fleet) read(i int, out io.Reader) {
	dec := json.NewDecoder(out)
	for {
		var m wireMsg
		if err := dec.Decode(&m); err != nil {
			f.mu.Lock()
			got := f.results[i]
			f.mu.Unlock()
			if !got {
				if errors.Is(err, io.EOF) {
					err = errors.New("exited")
				}
				f.cancel(fmt.Errorf("worker %d ended before its result: %w", i, err))
			}
			return
		}
		f.mu.Lock()
		if m.Progress != nil {
			f.progress[i] = *m.Progress
		}
		if m.Type == msgResult {
			f.results[i] = true
		}
		f.mu.Unlock()
		switch m.Type {
		case msgProgress:
		case msgError:
			f.cancel(fmt.Errorf("worker %d: %s", i, m.Error))
		default:
			select {
			case f.events <- event{worker: i, msg: m}:
			case <-f.done:
			}
		}
	}
}

func (f *fleet) send(i int, m wireMsg) error {
	if err := f.encs[i].Encode(m); err != nil {
		return fmt.Errorf("worker %d: send %s: %w", i, m.Type, err)
	}
	return nil
}

func (f *fleet) broadcast(m wireMsg) error {
	for i := range f.procs {
		if err := f.send(i, m); err != nil {
			return err
		}
	}
	return nil
}

// await returns message typ from every worker, or the first failure.
func (f *fleet) await(typ string) ([]wireMsg, error) {
	got := make([]wireMsg, len(f.procs))
	have := make([]bool, len(f.procs))
	for n := 0; n < len(f.procs); {
		select {
		case <-f.ctx.Done():
			return nil, context.Cause(f.ctx)
		case e := <-f.events:
			if e.msg.Type != typ {
				return nil, fmt.Errorf("worker %d: want %s, got %s", e.worker, typ, e.msg.Type)
			}
			if !have[e.worker] {
				have[e.worker] = true
				got[e.worker] = e.msg
				n++
			}
		}
	}
	return got, nil
}

// snapshot sums the workers' latest progress.
func (f *fleet) snapshot() Progress {
	f.mu.Lock()
	defer f.mu.Unlock()
	var p Progress
	for _, q := range f.progress {
		p.Add(q)
	}
	return p
}

// close ends every worker: it closes their inputs and waits for them to
// end, killing those that take longer than workerGrace. How a worker
// failed is known from its messages (see read), so exit statuses are not
// looked at. It may be called more than once.
func (f *fleet) close() { f.closeOnce.Do(f.shutdown) }

func (f *fleet) shutdown() {
	close(f.done)
	for _, p := range f.procs {
		_ = p.in.Close()
	}
	readersDone := make(chan struct{})
	go func() { // ends when the readers have read every output to its end
		f.readers.Wait()
		close(readersDone)
	}()
	t := time.NewTimer(workerGrace)
	select {
	case <-readersDone:
		t.Stop()
	case <-t.C:
		for _, p := range f.procs {
			p.kill()
		}
		<-readersDone
	}
	for _, p := range f.procs {
		_ = p.wait()
	}
	f.procCancel()
	f.cancel(nil)
}
