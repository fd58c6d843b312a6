package selfupdate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ferrydeploy/ferry/shared/dirlock"
)

// The watchdog. The new agent restores the previous one itself when it
// runs but cannot reach the controller; it cannot when it crashes right
// after the restart or hangs before its own timer fires. So before the
// restart the previous agent starts a watchdog: its own binary (kept as
// .prev) running the hidden command WatchCommand, outside the agent's
// process group and session (re-exec), or as a transient systemd unit
// outside the agent's cgroup (under systemd, which kills the whole unit
// when the agent exits). The watchdog polls the marker until the
// probation ends: confirmed or restored by the new agent, it leaves;
// the new agent's process gone (re-exec: the pid stays the same across
// the exec, and a process in the middle of its exec is not gone: see
// procStart) or the deadline passed by WatchGrace with the marker still
// on probation, it stops what is left of the new agent, restores the
// previous binary (RestoreOnProbation: under the same lock as the new
// agent's own restore and confirmation) and starts it: re-exec, by
// executing it in its own process; under systemd, the unit's
// Restart=on-failure starts it. The restored agent reports the job
// failed with the reason, as after any restore.

// WatchCommand is the hidden ferry-agent command the watchdog runs.
const WatchCommand = "selfupdate-watch"

// WatchGrace is how long past the deadline the watchdog leaves the new
// agent to restore itself (its own reason is the more precise one).
const WatchGrace = 3 * time.Second

// stopWait bounds the wait for a stopped agent's process to be gone.
const stopWait = 5 * time.Second

// Watch is the watchdog of one probation (see the comment above).
type Watch struct {
	StateDir string
	JobID    string
	// PID is the agent process the new binary was executed into (the
	// restart by re-exec keeps the pid); 0 under systemd, which starts
	// the new agent as a new process.
	PID int
	// AgentLock is the running agent's lock file in StateDir, which
	// names its pid (under systemd, the process to stop when it hangs).
	AgentLock string
	Logger    *slog.Logger
	// Start starts the restored agent: re-exec, by executing it in place
	// of the watchdog; under systemd, by starting the unit should its
	// restarts have stopped (Restart=on-failure restarts it otherwise).
	// nil: nothing to do.
	Start func(*Marker) error
	// Seams for tests; zero values are the real ones.
	Now  func() time.Time
	Poll time.Duration // 0: 100ms
	Kill func(pid int) error
}

// Run watches until the probation ends; it returns after starting the
// restored agent (or Exec does not return).
func (w *Watch) Run(ctx context.Context) error {
	if w.Now == nil {
		w.Now = time.Now
	}
	if w.Poll <= 0 {
		w.Poll = 100 * time.Millisecond
	}
	if w.Kill == nil {
		w.Kill = func(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
	}
	if w.Logger == nil {
		w.Logger = slog.Default()
	}
	var start uint64
	if w.PID > 0 {
		start, _ = procStart(w.PID) // 0 when already gone: seen as exited below
	}
	w.Logger.Info("watching the new agent until the controller welcomes it", "job", w.JobID, "pid", w.PID)
	tick := time.NewTicker(w.Poll)
	defer tick.Stop()
	for {
		m, err := Load(w.StateDir)
		if err != nil {
			return err
		}
		if m == nil || m.JobID != w.JobID || m.State != Probation {
			w.Logger.Info("the new agent's probation ended; watchdog leaves", "job", w.JobID)
			return nil
		}
		match := func(m *Marker) bool { return m.JobID == w.JobID }
		switch {
		case w.PID > 0 && !alive(w.PID, start):
			return w.restored(RestoreOnProbation(w.StateDir, RestoreRequest{Match: match, Reason: func(m *Marker) string {
				return fmt.Sprintf("new agent exited before it reached the controller; restored ferry-agent %s", m.OldVersion)
			}}))
		case !w.Now().Before(m.Deadline.Add(WatchGrace)):
			stopped := false
			return w.restored(RestoreOnProbation(w.StateDir, RestoreRequest{Match: match,
				Stop: func(m *Marker) (err error) { stopped, err = w.stop(m, start); return err },
				Reason: func(m *Marker) string {
					if !stopped { // under systemd: the new agent keeps failing to start
						return fmt.Sprintf("new agent did not reconnect within %s (it does not keep running: see its journal); restored ferry-agent %s",
							Seconds(m.Timeout), m.OldVersion)
					}
					return fmt.Sprintf("new agent did not reconnect within %s and did not restore itself (it hung); stopped it and restored ferry-agent %s",
						Seconds(m.Timeout), m.OldVersion)
				}}))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// restored logs a restore and starts the restored agent.
func (w *Watch) restored(m *Marker, err error) error {
	if err != nil {
		w.Logger.Error("watchdog could not restore the previous agent", "job", w.JobID, "err", err)
		return err
	}
	if m == nil {
		w.Logger.Info("the new agent's probation ended meanwhile; watchdog leaves", "job", w.JobID)
		return nil
	}
	w.Logger.Warn("previous agent restored by the watchdog", "job", w.JobID, "reason", m.Reason, "restored_after_swap", w.Now().Sub(m.Deadline.Add(-m.Timeout)))
	if w.Start == nil {
		return nil
	}
	w.Logger.Info("watchdog starts the previous agent", "exe", m.Exe)
	return w.Start(m)
}

// stop ends a hung new agent before the restore: the watched pid, or
// under systemd the agent lock's holder when it runs the new binary. It
// reports whether there was one to stop.
func (w *Watch) stop(m *Marker, start uint64) (bool, error) {
	pid := w.PID
	if pid == 0 {
		pid = dirlock.HolderPID(w.StateDir, w.AgentLock)
		if pid == 0 || !runs(pid, m.Exe) {
			return false, nil // no new agent runs (systemd restarting one that fails)
		}
		start, _ = procStart(pid)
	}
	if !alive(pid, start) {
		return false, nil
	}
	w.Logger.Warn("stopping the hung new agent", "pid", pid)
	if err := w.Kill(pid); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, fmt.Errorf("stop the hung new agent (pid %d): %w", pid, err)
	}
	for end := time.Now().Add(stopWait); alive(pid, start); {
		if time.Now().After(end) {
			return false, fmt.Errorf("the hung new agent (pid %d) did not end within %s of SIGKILL", pid, stopWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true, nil
}

// procStart reads a process's start time (clock ticks after boot), which
// with the pid names one process even if the pid is reused; a process
// that has exited (a zombie, or gone) is an error.
//
// The main thread showing as a zombie is not enough to say so: when a
// thread other than the main one executes a new binary (the agent's
// re-exec, from whichever thread its goroutine runs on), the kernel
// ends the other threads and shows the main one as a zombie until the
// executing thread takes over its pid and start time. Seen then, the
// process is starting the new binary, not gone: it has a thread that
// is not a zombie.
func procStart(pid int) (uint64, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	state, start, err := readStat(dir + "/stat")
	if err != nil {
		return 0, err
	}
	if exited(state) && !liveThread(dir) {
		return 0, fmt.Errorf("process %d has exited", pid)
	}
	return start, nil
}

// liveThread reports whether the process at dir (/proc/PID) has a
// thread that has not exited.
func liveThread(dir string) bool {
	tasks, err := os.ReadDir(dir + "/task")
	if err != nil {
		return false
	}
	for _, t := range tasks {
		if state, _, err := readStat(dir + "/task/" + t.Name() + "/stat"); err == nil && !exited(state) {
			return true
		}
	}
	return false
}

func exited(state string) bool { return state == "Z" || state == "X" }

// readStat reads the state and the start time of a /proc stat file.
func readStat(path string) (state string, start uint64, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, err
	}
	// pid (comm) state ppid ... : comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return "", 0, fmt.Errorf("%s: unexpected format", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return "", 0, fmt.Errorf("%s: unexpected format", path)
	}
	start, err = strconv.ParseUint(f[19], 10, 64) // field 22, starttime
	return f[0], start, err
}

// alive reports whether pid is still the process that started at start.
func alive(pid int, start uint64) bool {
	s, err := procStart(pid)
	return err == nil && s == start
}

// runs reports whether pid executes exe.
func runs(pid int, exe string) bool {
	got, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe")
	return err == nil && strings.TrimSuffix(got, " (deleted)") == exe
}

// WatchSpec is the watchdog the previous agent starts before a restart.
type WatchSpec struct {
	Binary   string // the previous agent's binary (the marker's Prev)
	StateDir string
	JobID    string
	PID      int    // the agent's pid (re-exec); 0 under systemd
	Systemd  bool   // start it as a transient systemd unit
	Unit     string // under systemd: the agent's unit, started again after a restore
}

// args are the watchdog's command line after the binary.
func (s WatchSpec) args() []string {
	a := []string{WatchCommand, "--state-dir", s.StateDir, "--job", s.JobID}
	if s.PID > 0 {
		a = append(a, "--pid", strconv.Itoa(s.PID))
	}
	if s.Unit != "" {
		a = append(a, "--unit", s.Unit)
	}
	return a
}

// startTimeout bounds starting the watchdog.
const startTimeout = 15 * time.Second

// StartWatchdog starts the watchdog and returns once it runs detached:
// under systemd as a transient unit (systemd-run), otherwise through
// Detach (a child that starts the watchdog in a session of its own and
// exits, so the agent neither waits for it nor leaves a zombie).
func StartWatchdog(ctx context.Context, s WatchSpec) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if s.Systemd {
		unit := "ferry-agent-update-watch-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		args := append([]string{"--unit", unit, "--collect", "--quiet", "--description",
			"Ferry agent update watchdog (restores the previous ferry-agent if the new one fails)", "--", s.Binary}, s.args()...)
		cmd := exec.CommandContext(ctx, "systemd-run", args...) //nolint:gosec // the agent's own previous binary and its state dir
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("start the update watchdog with systemd-run: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	cmd := exec.CommandContext(ctx, s.Binary, append(s.args(), "--detach")...) //nolint:gosec // the agent's own previous binary
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("start the update watchdog %s: %w", s.Binary, err)
	}
	return nil
}

// Detach starts this executable with args in a new session (stdin from
// /dev/null, stdout and stderr this process's), without waiting for it.
func Detach(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, args...) //nolint:gosec // this process's own executable
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the update watchdog: %w", err)
	}
	return cmd.Process.Release()
}

// StartUnit starts a systemd unit that is not running (its restarts
// stopped: the start limit, a failed state); a running or restarting one
// is left as it is.
func StartUnit(ctx context.Context, unit string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	_ = exec.CommandContext(ctx, "systemctl", "reset-failed", unit).Run()                                            //nolint:gosec // the agent's own unit; only clears a start limit
	if out, err := exec.CommandContext(ctx, "systemctl", "start", "--no-block", unit).CombinedOutput(); err != nil { //nolint:gosec // the agent's own unit
		return fmt.Errorf("systemctl start %s: %w: %s", unit, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Seconds writes d as operators set a timeout, e.g. 60s.
func Seconds(d time.Duration) string { return fmt.Sprintf("%ds", int(d.Round(time.Second).Seconds())) }
