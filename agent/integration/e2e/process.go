package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StopTimeout is how long Stop waits for a process to exit after SIGTERM
// before it kills it and fails the test.
const StopTimeout = 10 * time.Second

// Process is one daemon the harness runs: a fixed command line, a log file
// that collects its stdout and stderr across restarts, and its current run.
type Process struct {
	h       *Harness
	name    string
	path    string   // the binary
	args    []string // its arguments
	prefix  []string // a command prefix, e.g. ip netns exec NS
	env     []string // extra environment, KEY=value
	logPath string

	mu     sync.Mutex
	cur    *run
	starts int
}

// run is one start of a Process.
type run struct {
	cmd       *exec.Cmd
	logOffset int64 // where this run's output begins in the log
	done      chan struct{}
	err       error // from cmd.Wait, valid once done is closed
}

func (h *Harness) newProcess(name, path string, args, prefix []string) *Process {
	p := &Process{h: h, name: name, path: path, args: args, prefix: prefix, logPath: h.path("logs", name+".log")}
	h.mu.Lock()
	h.procs = append(h.procs, p)
	h.mu.Unlock()
	return p
}

// Name is the process's name in the harness (its log is logs/NAME.log).
func (p *Process) Name() string { return p.name }

// CommandLine is what the harness runs, for messages.
func (p *Process) CommandLine() string { return strings.Join(p.argv(), " ") }

// argv is the prefix, the binary and its arguments.
func (p *Process) argv() []string {
	return append(append(append([]string{}, p.prefix...), p.path), p.args...)
}

// setArgs replaces the arguments for the next start.
func (p *Process) setArgs(args []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.args = args
}

// start launches a new run. It fails the test if the process is already
// running or cannot be started.
func (p *Process) start() {
	p.h.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil && !p.cur.exited() {
		p.h.t.Fatalf("%s: start: already running (pid %d)", p.name, p.cur.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.h.t.Fatalf("%s: open log: %v", p.name, err)
	}
	defer logf.Close()
	off, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		p.h.t.Fatalf("%s: seek log: %v", p.name, err)
	}
	p.starts++
	header := fmt.Sprintf("=== e2e: start #%d at %s: %s\n", p.starts, time.Now().Format("15:04:05.000"), p.CommandLine())
	if _, err := logf.WriteString(header); err != nil {
		p.h.t.Fatalf("%s: write log: %v", p.name, err)
	}
	argv := p.argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.h.dir
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Own process group, so signals reach the daemon and anything it
	// started; Pdeathsig, so a test binary that dies (a timeout panic)
	// leaves no daemons behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.h.t.Fatalf("%s: start %s: %v", p.name, p.CommandLine(), err)
	}
	r := &run{cmd: cmd, logOffset: off + int64(len(header)), done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	p.cur = r
}

func (r *run) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (p *Process) current() *run {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// Running reports whether the process is running now.
func (p *Process) Running() bool {
	r := p.current()
	return r != nil && !r.exited()
}

// PID is the process ID of the current run (0 if never started).
func (p *Process) PID() int {
	r := p.current()
	if r == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Signal sends sig to the process group of the current run.
func (p *Process) Signal(sig syscall.Signal) {
	p.h.t.Helper()
	r := p.current()
	if r == nil || r.exited() {
		p.h.t.Fatalf("%s: signal %v: not running", p.name, sig)
	}
	if err := syscall.Kill(-r.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		p.h.t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// Wait waits up to timeout for the current run to end and returns its exit
// code (-1 if a signal ended it). ok is false on timeout.
func (p *Process) Wait(timeout time.Duration) (code int, ok bool) {
	p.h.t.Helper()
	r := p.current()
	if r == nil {
		p.h.t.Fatalf("%s: wait: never started", p.name)
	}
	select {
	case <-r.done:
		return exitCode(r.err), true
	case <-time.After(timeout):
		return 0, false
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

// Stop shuts the process down gracefully (SIGTERM) and returns its exit
// code. A process that has not exited after StopTimeout is killed and the
// test fails.
func (p *Process) Stop() int {
	p.h.t.Helper()
	p.Signal(syscall.SIGTERM)
	code, ok := p.Wait(StopTimeout)
	if !ok {
		p.kill()
		p.h.t.Fatalf("%s: still running %v after SIGTERM; killed it", p.name, StopTimeout)
	}
	return code
}

// Kill ends the process with SIGKILL, as a crash or power loss would, and
// waits for it to be gone.
func (p *Process) Kill() {
	p.h.t.Helper()
	if !p.Running() {
		p.h.t.Fatalf("%s: kill: not running", p.name)
	}
	p.kill()
}

func (p *Process) kill() {
	r := p.current()
	if r == nil || r.exited() {
		return
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	<-r.done
}

// Pause freezes the process (SIGSTOP): it keeps its connections open but
// does nothing, as a hung daemon or an overloaded host would.
func (p *Process) Pause() {
	p.h.t.Helper()
	p.Signal(syscall.SIGSTOP)
}

// Resume lets a paused process carry on (SIGCONT).
func (p *Process) Resume() {
	p.h.t.Helper()
	p.Signal(syscall.SIGCONT)
}

// shutdown is the harness's cleanup: SIGTERM, a short grace, then SIGKILL.
func (p *Process) shutdown() {
	r := p.current()
	if r == nil || r.exited() {
		return
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGTERM)
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGCONT) // in case it was paused
	select {
	case <-r.done:
	case <-time.After(3 * time.Second):
		p.kill()
	}
}

// Log is the output of the current (or last) run.
func (p *Process) Log() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	if r := p.current(); r != nil && r.logOffset <= int64(len(data)) {
		data = data[r.logOffset:]
	}
	return string(data)
}

// FullLog is everything the process wrote, all runs, with a header line
// before each start.
func (p *Process) FullLog() string {
	data, _ := os.ReadFile(p.logPath)
	return string(data)
}

// WaitLog waits until the output of the current run contains substr and
// returns the first line holding it; it fails the test at timeout.
func (p *Process) WaitLog(substr string, timeout time.Duration) string {
	p.h.t.Helper()
	var line string
	p.h.WaitFor(fmt.Sprintf("%s to log %q", p.name, substr), timeout, func() (bool, string) {
		out := p.Log()
		i := strings.Index(out, substr)
		if i < 0 {
			return false, "last lines:\n" + tail(out, 5)
		}
		start := strings.LastIndexByte(out[:i], '\n') + 1
		end := strings.IndexByte(out[i:], '\n')
		if end < 0 {
			end = len(out) - i
		}
		line = out[start : i+end]
		return true, ""
	})
	return line
}

// Tail is the last n lines of the process's log (all runs).
func (p *Process) Tail(n int) string { return tail(p.FullLog(), n) }

func tail(s string, n int) string {
	lines := bytes.Split(bytes.TrimRight([]byte(s), "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
