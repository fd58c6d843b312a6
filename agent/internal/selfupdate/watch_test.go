package selfupdate

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// probation sets up a swap on probation: exe is the new binary, its
// .prev the old one, the marker's deadline at deadline.
func probation(t *testing.T, deadline time.Time) (state, exe string) {
	t.Helper()
	dir, state := t.TempDir(), t.TempDir()
	exe = script(t, dir, "ferry-agent", `echo "ferry-agent 2.0.0"`)
	script(t, dir, "ferry-agent.prev", `echo "ferry-agent 1.0.0"`)
	m := &Marker{JobID: "j1", RolloutID: "r1", Exe: exe, Prev: PrevPath(exe), OldVersion: "1.0.0", NewVersion: "2.0.0",
		Timeout: 10 * time.Second, Deadline: deadline, State: Probation, Args: []string{"run", "--state-dir", state}}
	if err := m.Save(state); err != nil {
		t.Fatal(err)
	}
	return state, exe
}

// sleeper starts a process that runs until it is killed; the cleanup
// kills it.
func sleeper(t *testing.T, bin string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

// execRecorder stands in for executing the restored agent.
type execRecorder struct {
	mu   sync.Mutex
	exe  string
	args []string
}

func (e *execRecorder) start(m *Marker) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.exe, e.args = m.Exe, m.Args
	return nil
}

func runWatch(t *testing.T, w *Watch) error {
	t.Helper()
	w.Poll = 10 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return w.Run(ctx)
}

func wantRestored(t *testing.T, state, exe, reason string) {
	t.Helper()
	if v, _ := Version(context.Background(), exe); v != "1.0.0" {
		t.Errorf("%s is %q after the watchdog, want the previous 1.0.0", exe, v)
	}
	m, err := Load(state)
	if err != nil || m == nil || m.State != Restored || m.Reason != reason {
		t.Errorf("marker after the watchdog: %+v, %v; want restored with %q", m, err, reason)
	}
}

// The new agent's process died right after the restart (a zombie its
// parent has not reaped yet, then gone): the watchdog restores at once,
// long before the deadline, and executes the previous agent with its
// arguments.
func TestWatchRestoresWhenTheNewAgentExits(t *testing.T) {
	for _, reaped := range []bool{false, true} {
		t.Run(fmt.Sprintf("reaped=%v", reaped), func(t *testing.T) {
			state, exe := probation(t, time.Now().Add(time.Hour))
			p := sleeper(t, "sleep")
			_ = p.Process.Kill()
			if reaped {
				_ = p.Wait()
			}
			var ex execRecorder
			w := &Watch{StateDir: state, JobID: "j1", PID: p.Process.Pid, Start: ex.start,
				Kill: func(int) error { t.Error("the watchdog killed a process that had exited"); return nil }}
			if err := runWatch(t, w); err != nil {
				t.Fatalf("Run: %v", err)
			}
			wantRestored(t, state, exe, "new agent exited before it reached the controller; restored ferry-agent 1.0.0")
			if ex.exe != exe || strings.Join(ex.args, " ") != "run --state-dir "+state {
				t.Errorf("the watchdog started %q %q, want the restored %s with the previous agent's arguments", ex.exe, ex.args, exe)
			}
		})
	}
}

// A new agent that runs but neither confirms nor restores itself by the
// deadline (hung): the watchdog stops it, then restores.
func TestWatchStopsAHungAgent(t *testing.T) {
	state, exe := probation(t, time.Now().Add(-WatchGrace))
	p := sleeper(t, "sleep")
	var killed []int
	var ex execRecorder
	w := &Watch{StateDir: state, JobID: "j1", PID: p.Process.Pid, Start: ex.start, Kill: func(pid int) error {
		killed = append(killed, pid)
		return syscall.Kill(pid, syscall.SIGKILL)
	}}
	if err := runWatch(t, w); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(killed) != 1 || killed[0] != p.Process.Pid {
		t.Errorf("killed %v, want the hung agent %d", killed, p.Process.Pid)
	}
	wantRestored(t, state, exe, "new agent did not reconnect within 10s and did not restore itself (it hung); stopped it and restored ferry-agent 1.0.0")
	if ex.exe != exe {
		t.Errorf("the watchdog started %q, want %s", ex.exe, exe)
	}
}

// Under systemd the watchdog knows no pid: at the deadline it stops the
// agent lock's holder if that runs the new binary, restores, and leaves
// the start to systemd.
func TestWatchUnderSystemd(t *testing.T) {
	state, exe := probation(t, time.Now().Add(-WatchGrace))
	// The hung new agent: a sleep binary at the new agent's path.
	sleepBin, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	b, err := os.ReadFile(sleepBin)
	if err != nil {
		t.Fatal(err)
	}
	hung := filepath.Join(filepath.Dir(exe), "hung-agent")
	if err := os.WriteFile(hung, b, 0o755); err != nil {
		t.Fatal(err)
	}
	m, _ := Load(state)
	m.Exe = hung
	if err := os.Rename(PrevPath(exe), PrevPath(hung)); err != nil {
		t.Fatal(err)
	}
	m.Prev = PrevPath(hung)
	if err := m.Save(state); err != nil {
		t.Fatal(err)
	}
	p := sleeper(t, hung)
	if err := os.WriteFile(filepath.Join(state, "agent.lock"), []byte(strconv.Itoa(p.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var killed []int
	w := &Watch{StateDir: state, JobID: "j1", AgentLock: "agent.lock", Kill: func(pid int) error {
		killed = append(killed, pid)
		return syscall.Kill(pid, syscall.SIGKILL)
	}}
	if err := runWatch(t, w); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if len(killed) != 1 || killed[0] != p.Process.Pid {
		t.Errorf("killed %v, want the hung agent %d", killed, p.Process.Pid)
	}
	wantRestored(t, state, hung, "new agent did not reconnect within 10s and did not restore itself (it hung); stopped it and restored ferry-agent 1.0.0")
}

// Under systemd, a lock file naming a process that is not the new agent
// (a stale pid) is left alone: systemd is restarting a new agent that
// fails to start, which the reason says.
func TestWatchUnderSystemdLeavesOtherProcesses(t *testing.T) {
	state, exe := probation(t, time.Now().Add(-WatchGrace))
	p := sleeper(t, "sleep")
	if err := os.WriteFile(filepath.Join(state, "agent.lock"), []byte(strconv.Itoa(p.Process.Pid)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := &Watch{StateDir: state, JobID: "j1", AgentLock: "agent.lock", Kill: func(pid int) error {
		t.Errorf("killed %d, which does not run the new agent", pid)
		return nil
	}}
	if err := runWatch(t, w); err != nil {
		t.Fatalf("Run: %v", err)
	}
	wantRestored(t, state, exe, "new agent did not reconnect within 10s (it does not keep running: see its journal); restored ferry-agent 1.0.0")
}

// A probation that ends otherwise (confirmed, or restored by the new
// agent itself, or another job's) sends the watchdog away untouched.
func TestWatchLeavesWhenTheProbationEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, state string)
	}{
		{"confirmed", func(t *testing.T, state string) {
			if ok, err := Confirm(state, "j1"); !ok || err != nil {
				t.Fatalf("Confirm = %v, %v", ok, err)
			}
		}},
		{"restored by the new agent", func(t *testing.T, state string) {
			if m, err := RestoreOnProbation(state, RestoreRequest{Reason: func(*Marker) string { return "by itself" }}); m == nil || err != nil {
				t.Fatalf("RestoreOnProbation = %v, %v", m, err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, _ := probation(t, time.Now().Add(time.Hour))
			p := sleeper(t, "sleep")
			tc.end(t, state)
			before, _ := Load(state)
			w := &Watch{StateDir: state, JobID: "j1", PID: p.Process.Pid,
				Start: func(*Marker) error { t.Error("the watchdog started an agent"); return nil },
				Kill:  func(int) error { t.Error("the watchdog killed the agent"); return nil }}
			if err := runWatch(t, w); err != nil {
				t.Fatalf("Run: %v", err)
			}
			after, _ := Load(state)
			if fmt.Sprint(before) != fmt.Sprint(after) {
				t.Errorf("the watchdog changed the marker: %+v -> %+v", before, after)
			}
		})
	}
	// Another job's marker: not this watchdog's.
	state, exe := probation(t, time.Now().Add(-time.Hour))
	w := &Watch{StateDir: state, JobID: "other", Start: func(*Marker) error { t.Error("started an agent"); return nil }}
	if err := runWatch(t, w); err != nil {
		t.Fatal(err)
	}
	if v, _ := Version(context.Background(), exe); v != "2.0.0" {
		t.Errorf("a watchdog of another job restored %s", exe)
	}
}

// The new agent confirming and a watchdog restoring at the same moment:
// exactly one of them wins, and the files agree with the winner.
func TestConfirmAndRestoreRace(t *testing.T) {
	for i := range 20 {
		state, exe := probation(t, time.Now())
		var wg sync.WaitGroup
		var confirmed bool
		var restored *Marker
		wg.Add(2)
		go func() {
			defer wg.Done()
			var err error
			if confirmed, err = Confirm(state, "j1"); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			var err error
			if restored, err = RestoreOnProbation(state, RestoreRequest{Reason: func(*Marker) string { return "race" }}); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		m, _ := Load(state)
		v, _ := Version(context.Background(), exe)
		switch {
		case confirmed && restored == nil:
			if m != nil || v != "2.0.0" {
				t.Fatalf("round %d: confirmed, but marker %+v and binary %s", i, m, v)
			}
		case !confirmed && restored != nil:
			if m == nil || m.State != Restored || v != "1.0.0" {
				t.Fatalf("round %d: restored, but marker %+v and binary %s", i, m, v)
			}
		default:
			t.Fatalf("round %d: confirmed %v and restored %v: want exactly one", i, confirmed, restored)
		}
	}
}

// leaderExitEnv makes the test binary a process whose main thread has
// exited while its other threads run (see TestMain): what the kernel
// shows while a thread other than the main one executes a new binary.
const leaderExitEnv = "FERRY_SELFUPDATE_TEST_LEADER_EXIT"

func init() {
	if os.Getenv(leaderExitEnv) == "1" {
		runtime.LockOSThread() // TestMain then runs on the main thread
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(leaderExitEnv) == "1" {
		fmt.Println("main thread exits")
		// SYS_EXIT ends this thread only (os.Exit would end them all);
		// the runtime's other threads keep the process until it is killed.
		_, _, _ = syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
	}
	os.Exit(m.Run())
}

// A new agent executed from a thread other than its main one (Go runs
// syscall.Exec on any thread) shows its main thread as a zombie until
// the exec takes over the pid. The watchdog must see that process as
// alive, not restore the previous binary under the starting agent (an
// ELF would run beside the restored agent; a script's shell would read
// the restored binary as its script); once it has exited, it is gone.
func TestAliveDuringAnExecFromAnotherThread(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), leaderExitEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line := make([]byte, len("main thread exits\n"))
	if _, err := io.ReadFull(out, line); err != nil {
		t.Fatalf("the helper process did not start: %v", err)
	}
	pid := cmd.Process.Pid
	// The main thread is a zombie once the kernel has ended it.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if state, _, err := readStat(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && state == "Z" {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the helper's main thread did not exit")
		}
	}
	start, err := procStart(pid)
	if err != nil {
		t.Fatalf("procStart of a process whose main thread is a zombie and whose other threads run: %v; want its start time", err)
	}
	if !alive(pid, start) {
		t.Fatal("alive: false for a process with running threads")
	}
	_ = cmd.Process.Kill()
	for end := time.Now().Add(10 * time.Second); alive(pid, start); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("alive: still true after the process was killed (a zombie, not yet reaped)")
		}
	}
	_ = cmd.Wait()
	if alive(pid, start) {
		t.Error("alive: true after the process was reaped")
	}
}
