// Package e2e drives Ferry's built binaries as real processes: a controller
// and several agents, each with its own state dir, install root and
// loopback ports, their output captured to log files. Tests kill, stop and
// restart them for real and wait for what an operator would see in
// `ferryctl nodes`.
//
// The binaries are found in the folder named by FERRY_BIN (the Makefile sets
// it to <repo>/bin; `make e2e` builds and runs these tests). Without
// FERRY_BIN the tests skip.
//
// A typical scenario:
//
//	h := e2e.New(t)
//	h.StartController(e2e.ControllerOptions{})
//	a := h.Agent("web-1", "production") // enroll with a fresh token, then run
//	h.WaitNodeState("web-1", e2e.Healthy, 10*time.Second)
//	a.Kill()
//	h.WaitNode("web-1", 5*time.Second, "not healthy", func(n e2e.Node) bool { return n.State != e2e.Healthy })
//
// A Harness belongs to one test (or subtest): its failures call t.Fatal, so
// create one per t.Run rather than sharing it, or give each subtest
// h.Sub(t), which shares h's controller and fleet.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Binary names in FERRY_BIN.
const (
	ControllerBinary = "ferry-controller"
	AgentBinary      = "ferry-agent"
	CtlBinary        = "ferryctl"
)

// PollInterval is how often the Wait helpers look again.
const PollInterval = 100 * time.Millisecond

// Harness owns the processes of one test and the folder they live in.
type Harness struct {
	t   testing.TB
	bin string // folder with the binaries
	dir string // the test's temporary folder

	mu    sync.Mutex
	procs []*Process
	ctl   *Controller // the controller ferryctl talks to
}

// New returns a harness for t, or skips t when FERRY_BIN is not set.
// Every process it starts is stopped when t ends; if t failed, the tail of
// each process's log is printed.
func New(t testing.TB) *Harness {
	t.Helper()
	bin := os.Getenv("FERRY_BIN")
	if bin == "" {
		t.Skip("end-to-end test skipped: FERRY_BIN is not set; run `make e2e` (or `make test`), " +
			"or build with `make build` and set FERRY_BIN to the repository's bin folder")
	}
	bin, err := filepath.Abs(bin)
	if err != nil {
		t.Fatalf("FERRY_BIN %q: %v", bin, err)
	}
	// FERRY_BIN set but a binary missing is a broken build, not a reason
	// to skip: fail, so CI cannot pass without running these tests.
	for _, name := range []string{ControllerBinary, AgentBinary, CtlBinary} {
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			t.Fatalf("FERRY_BIN=%s has no executable %s: run `make build` first", bin, name)
		}
	}
	h := &Harness{t: t, bin: bin, dir: t.TempDir()}
	if err := os.MkdirAll(h.path("logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.cleanup)
	return h
}

// Sub returns a harness for t, a subtest of h's test, so that subtests
// can share one controller and fleet: it talks to h's controller and
// lives in h's folder, and its commands and waits fail t, not the parent.
// Processes started on it are stopped when t ends; those started on h
// (and their methods, which fail h's test) keep running.
func (h *Harness) Sub(t testing.TB) *Harness {
	t.Helper()
	h.mu.Lock()
	ctl := h.ctl
	h.mu.Unlock()
	sub := &Harness{t: t, bin: h.bin, dir: h.dir, ctl: ctl}
	t.Cleanup(sub.cleanup)
	return sub
}

// Dir is the test's temporary folder; every state dir, root and log is
// under it.
func (h *Harness) Dir() string { return h.dir }

// Bin is the path of one of the binaries.
func (h *Harness) Bin(name string) string { return filepath.Join(h.bin, name) }

func (h *Harness) path(elem ...string) string {
	return filepath.Join(append([]string{h.dir}, elem...)...)
}

// Processes lists every process the harness has created, in order.
func (h *Harness) Processes() []*Process {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]*Process(nil), h.procs...)
}

func (h *Harness) cleanup() {
	procs := h.Processes()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.shutdown()
		}()
	}
	wg.Wait()
	if h.t.Failed() {
		for _, p := range procs {
			if p.current() == nil {
				continue
			}
			h.t.Logf("--- %s: last lines of %s:\n%s", p.name, p.logPath, p.Tail(40))
		}
	}
}

// Result is what a short-lived command printed and its exit code.
type Result struct {
	Stdout, Stderr string
	Exit           int
}

func (r Result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.Exit, r.Stdout, r.Stderr)
}

// CommandTimeout bounds every short-lived command (ferryctl, enroll).
const CommandTimeout = 30 * time.Second

// Exec runs a short-lived command to completion. A command that cannot be
// started, or runs past CommandTimeout, fails the test.
func (h *Harness) Exec(env []string, name string, args ...string) Result {
	h.t.Helper()
	return h.ExecTimeout(CommandTimeout, env, name, args...)
}

// ExecTimeout is Exec with its own time limit. The command runs in its own
// process group, which is killed as a whole when the limit passes, so a
// script's children cannot outlive it or hold its output open.
func (h *Harness) ExecTimeout(timeout time.Duration, env []string, name string, args ...string) Result {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Dir = h.dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Exit: exitCode(err)}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		h.t.Fatalf("%s %s: still running after %v\n%s", name, strings.Join(args, " "), timeout, res)
	case err != nil && !errors.As(err, &ee):
		h.t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return res
}

// Ctl runs ferryctl against the current controller with its admin
// credential (FERRY_CONFIG) and returns what it printed and its exit code.
func (h *Harness) Ctl(args ...string) (stdout, stderr string, exit int) {
	h.t.Helper()
	r := h.ctlResult(args...)
	return r.Stdout, r.Stderr, r.Exit
}

func (h *Harness) ctlResult(args ...string) Result {
	h.t.Helper()
	c := h.Controller()
	return h.Exec([]string{"FERRY_CONFIG=" + c.AdminConfig}, h.Bin(CtlBinary), append([]string{"--timeout", "10s"}, args...)...)
}

// MustCtl runs ferryctl and fails the test unless it exits 0; it returns
// stdout.
func (h *Harness) MustCtl(args ...string) string {
	h.t.Helper()
	r := h.ctlResult(args...)
	if r.Exit != 0 {
		h.t.Fatalf("ferryctl %s: %s", strings.Join(args, " "), r)
	}
	return r.Stdout
}

// WaitFor polls cond every PollInterval until it returns true, and fails the
// test when timeout passes first. what describes the awaited condition;
// cond's status string (e.g. the state seen last) goes into the failure.
func (h *Harness) WaitFor(what string, timeout time.Duration, cond func() (ok bool, status string)) {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, status := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out after %v waiting for %s; last seen: %s", timeout, what, status)
		}
		time.Sleep(PollInterval)
	}
}
