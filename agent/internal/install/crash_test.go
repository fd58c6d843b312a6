package install

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// TestCrashAtEveryPoint stops a job dead at each point of interest, as a
// SIGKILL would (no deferred undo runs, nothing after the point happens),
// then starts a new Installer on the same directories: the interrupted job
// must be reported FAILED and the node must be exactly as before it.
func TestCrashAtEveryPoint(t *testing.T) {
	points := []string{"archive:extracted", "archive:switched", "file:prepared", "file:written", "commit"}
	for _, point := range points {
		t.Run(point, func(t *testing.T) {
			e := newEnv(t)
			a1, d1 := artifact(t, goV1)
			a2, d2 := artifact(t, goV2)
			wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
			before := snapshot(t, e.root)

			e.inst.hook = func(p string) {
				if p == point {
					runtime.Goexit()
				}
			}
			p2 := goPackage("1.20.3", d2, envStep("more", nil, "X", "y"))
			crashed := make(chan struct{})
			go func() {
				defer close(crashed)
				e.inst.Install(context.Background(), Request{JobID: "crash", RolloutID: "r2", Package: p2, ArtifactPath: a2}, nil, nil)
				t.Errorf("the job ran to the end; the hook at %s never fired", point)
			}()
			<-crashed

			i2 := e.open()
			got := i2.Interrupted()
			if len(got) != 1 || got[0].GetJobId() != "crash" || got[0].GetRolloutId() != "r2" || got[0].GetPhase() != failed {
				t.Fatalf("Interrupted() = %v", got)
			}
			if !strings.Contains(got[0].GetMessage(), "interrupted") {
				t.Errorf("message %q", got[0].GetMessage())
			}
			if after := snapshot(t, e.root); after != before {
				t.Fatalf("node not restored after a crash at %s:\nbefore\n%s\nafter\n%s", point, before, after)
			}
			e.inst = i2
			assertNoLeftovers(t, e)
			if u, ok := i2.JobResult("crash"); !ok || u.GetPhase() != failed {
				t.Errorf("JobResult(crash) = %v, %v", u, ok)
			}
			if inst := i2.Installed(); inst[0].GetVersion() != "1.20.2" {
				t.Errorf("Installed() = %v", inst)
			}
			// The restarted agent carries on normally.
			wantPhase(t, e.install(goPackage("1.20.2", d1), a1), unchanged)
			wantPhase(t, e.install(goPackage("1.20.3", d2), a2), succeeded)
			wantPhase(t, e.rollback("go"), succeeded)
			verifyTree(t, e.path("/usr/local/go"), stripGo(goV1))
			// A third start finds nothing more to report.
			if got := e.open().Interrupted(); len(got) != 0 {
				t.Errorf("second restart reports %v", got)
			}
		})
	}
}

func TestCrashDuringRollback(t *testing.T) {
	e := newEnv(t)
	a1, d1 := artifact(t, goV1)
	a2, d2 := artifact(t, goV2)
	wantPhase(t, e.install(goPackage("1.20.2", d1), a1), succeeded)
	wantPhase(t, e.install(goPackage("1.20.3", d2), a2), succeeded)
	before := snapshot(t, e.root)
	e.crashAt(t, "rollback:switched", "rb", func(i *Installer) { i.Rollback(context.Background(), "rb", "r", "go", nil, nil) })
	if after := snapshot(t, e.root); after != before {
		t.Fatalf("node not restored after a crash mid-rollback:\n%s\nvs\n%s", before, after)
	}
	wantPhase(t, e.rollback("go"), succeeded)
	verifyTree(t, e.path("/usr/local/go"), stripGo(goV1))
}

// crashAt runs job until it reaches point, where the agent "crashes" (the
// job's goroutine exits), then starts a new installer on the same state,
// which must report jobID interrupted, and goes on with it.
func (e *env) crashAt(t *testing.T, point, jobID string, job func(*Installer)) {
	t.Helper()
	e.inst.hook = func(p string) {
		if p == point {
			runtime.Goexit()
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		job(e.inst)
	}()
	<-done
	i2 := e.open()
	if got := i2.Interrupted(); len(got) != 1 || got[0].GetJobId() != jobID {
		t.Fatalf("Interrupted() = %v, want %s", got, jobID)
	}
	e.inst = i2
}

// TestUndoTreeFromEveryPosition undoes a tree switch from each state a
// crash can leave it in, including the two-rename fallback used where
// the file system has no atomic exchange.
func TestUndoTreeFromEveryPosition(t *testing.T) {
	tests := []struct {
		name    string
		arrange func(a *action) error // move trees to where the crash left them
		state   string
	}{
		{"staged, not switched", func(a *action) error { return nil }, "switching"},
		{"fallback: old moved aside, new not in", func(a *action) error { return os.Rename(a.Target, a.Kept) }, "switching"},
		{"exchanged, old not yet kept", func(a *action) error { return exchange(a.Stage, a.Target) }, "switching"},
		{"applied", func(a *action) error {
			if err := exchange(a.Stage, a.Target); err != nil {
				return err
			}
			return os.Rename(a.Stage, a.Kept)
		}, "applied"},
		{"fallback applied", func(a *action) error {
			if err := os.Rename(a.Target, a.Kept); err != nil {
				return err
			}
			return os.Rename(a.Stage, a.Target)
		}, "applied"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := &action{Kind: "tree", Target: filepath.Join(dir, "go"), Stage: filepath.Join(dir, "hold", "stage"), Kept: filepath.Join(dir, "hold", "prev"), HasNew: true, HadOld: true}
			must(t, os.MkdirAll(a.Target, 0o755))
			must(t, os.WriteFile(filepath.Join(a.Target, "VERSION"), []byte("old"), 0o644))
			must(t, os.MkdirAll(a.Stage, 0o755))
			must(t, os.WriteFile(filepath.Join(a.Stage, "VERSION"), []byte("new"), 0o644))
			a.NewID, _ = idOf(a.Stage)
			a.OldID, _ = idOf(a.Target)
			a.State = tc.state
			if err := tc.arrange(a); errors.Is(err, errExchangeUnsupported) {
				t.Skipf("%s: the file system of %s has no atomic exchange", tc.name, dir)
			} else {
				must(t, err)
			}
			for round := 0; round < 2; round++ { // idempotent
				if err := newEnv(t).inst.undoAction(a); err != nil {
					t.Fatalf("undo round %d: %v", round, err)
				}
				if got := readFile(t, filepath.Join(a.Target, "VERSION")); got != "old" {
					t.Fatalf("after undo the target holds %q", got)
				}
				assertAbsent(t, a.Stage)
				assertAbsent(t, a.Kept)
			}
		})
	}
}

// TestSIGKILL kills a real agent process (this test binary, re-executed)
// at different moments of an upgrade and checks after each restart that
// the node holds one complete version, never a mix, and that the job is
// either finished or reported as interrupted.
func TestSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	if os.Getenv("FERRY_INSTALL_CHILD") != "" {
		t.Skip("child")
	}
	e := newEnv(t)
	v1 := map[string]string{"VERSION": "1"}
	v2 := map[string]string{"VERSION": "2"}
	for k := 0; k < 300; k++ {
		v1[fmt.Sprintf("lib/f%03d", k)] = "one"
		v2[fmt.Sprintf("lib/f%03d", k)] = "two"
	}
	a1, d1 := artifact(t, v1)
	a2, d2 := artifact(t, v2)
	p1 := pkg("app", "1", d1, archiveStep("/opt/app", 0), envStep("app", nil, "APP_VERSION", "1"))
	wantPhase(t, e.install(p1, a1), succeeded)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]int{}
	for round, delay := range []time.Duration{0, 5, 20, 40, 80, 160, 320, 640, 1500} {
		job := fmt.Sprintf("kill-%d", round)
		cmd := exec.Command(exe, "-test.run=^TestSIGKILLChild$")
		cmd.Env = append(os.Environ(), "FERRY_INSTALL_CHILD="+strings.Join([]string{e.root, e.state, job, a2, d2}, "\x1f"))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Fatal(err)
		}
		// Killed, or done first: either way, what the node holds is
		// checked below.
		_ = cmd.Wait()

		i := e.open()
		version := readFile(t, e.path("/opt/app/VERSION"))
		for k := 0; k < 300; k++ {
			want := map[string]string{"1": "one", "2": "two"}[version]
			if got := readFile(t, e.path(fmt.Sprintf("/opt/app/lib/f%03d", k))); got != want {
				t.Fatalf("round %d: mixed tree: VERSION %s but lib/f%03d = %s", round, version, k, got)
			}
		}
		inst := i.Installed()
		u, done := i.JobResult(job)
		switch {
		case done && u.GetPhase() == succeeded:
			outcomes["finished"]++
			if version != "2" || inst[0].GetVersion() != "2" {
				t.Fatalf("round %d: job succeeded but tree %s, record %s", round, version, inst[0].GetVersion())
			}
			if !strings.Contains(readFile(t, e.path("/etc/profile.d/app.sh")), "'2'") {
				t.Fatalf("round %d: env file not upgraded", round)
			}
			e.inst = i
			wantPhase(t, e.rollback("app"), succeeded)
		case done && u.GetPhase() == failed:
			outcomes["interrupted"]++
			if version != "1" || inst[0].GetVersion() != "1" {
				t.Fatalf("round %d: interrupted job left tree %s, record %s", round, version, inst[0].GetVersion())
			}
		default:
			outcomes["not started"]++
			if version != "1" {
				t.Fatalf("round %d: job never recorded but tree is %s", round, version)
			}
		}
		if !strings.Contains(readFile(t, e.path("/etc/profile.d/app.sh")), "'1'") {
			t.Fatalf("round %d: env file not at version 1", round)
		}
		e.inst = i
		assertNoLeftovers(t, e)
	}
	t.Logf("outcomes: %v", outcomes)
}

// TestSIGKILLChild is the process TestSIGKILL kills.
func TestSIGKILLChild(t *testing.T) {
	args := os.Getenv("FERRY_INSTALL_CHILD")
	if args == "" {
		t.Skip("run by TestSIGKILL")
	}
	f := strings.Split(args, "\x1f")
	i, err := New(Config{Root: f[0], StateDir: f[1]})
	if err != nil {
		t.Fatal(err)
	}
	p2 := pkg("app", "2", f[4], archiveStep("/opt/app", 0), envStep("app", nil, "APP_VERSION", "2"))
	i.hook = func(string) { time.Sleep(5 * time.Millisecond) }
	u := i.Install(context.Background(), Request{JobID: f[2], Package: p2, ArtifactPath: f[3]}, nil, nil)
	if u.GetPhase() != ferryv1.JobPhase_JOB_PHASE_SUCCEEDED {
		t.Fatal(u.GetMessage())
	}
}
