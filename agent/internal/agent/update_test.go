package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/internal/selfupdate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/version"
)

func fakeAgentBinary(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho \"ferry-agent "+v+" (commit test)\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func binVersion(t *testing.T, path string) string {
	t.Helper()
	v, err := selfupdate.Version(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// runAnother starts another agent process on ta's state dir (the one a
// restart would start) and returns Run's result channel.
func (ta *testAgent) runAnother(t *testing.T) chan error {
	t.Helper()
	cfg := ta.cfg
	cfg.Rand = nil // its own jitter source: a *rand.Rand is not safe to share
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	a.dialer, a.after = ta.dialer, ta.after
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			t.Logf("Run returned %v", err)
		case <-time.After(waitFor):
			t.Errorf("the agent did not stop within %v", waitFor)
		}
	})
	return done
}

func restartOf(t *testing.T, done chan error) *RestartError {
	t.Helper()
	select {
	case err := <-done:
		done <- err // for the cleanup
		var re *RestartError
		if !errors.As(err, &re) {
			t.Fatalf("Run returned %v, want a restart", err)
		}
		return re
	case <-time.After(waitFor):
		t.Fatal("Run did not end with a restart")
		return nil
	}
}

// TestAgentUpdateSwapAndRestore: the job swaps the binary in and ends Run
// for a restart without reporting its result; a new agent past its
// deadline restores the previous binary; the restored agent reports the
// job failed in its hello.
func TestAgentUpdateSwapAndRestore(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "ferry-agent")
	fakeAgentBinary(t, exe, version.Version)
	newBin := filepath.Join(t.TempDir(), "artifact")
	fakeAgentBinary(t, newBin, "9.9.9")
	ta := newTestAgent(t, agentOptions{config: func(c *Config) { c.Executable = exe }})
	ta.run()
	s := ta.stream()

	digest := "sha256:" + strings.Repeat("9", 64)
	dl := ta.fetcher.download(digest)
	s.send(t, jobMsg(&ferryv1.Job{Id: "upd", RolloutId: "r1", Kind: ferryv1.JobKind_JOB_KIND_INSTALL, Package: &ferryv1.Package{
		Name: "ferry-agent", Version: "9.9.9", Artifact: &ferryv1.ArtifactRef{Digest: digest, Name: "ferry-agent", Size: 100},
		Steps: []*ferryv1.Step{{Kind: &ferryv1.Step_AgentUpdate{AgentUpdate: &ferryv1.AgentUpdateStep{}}}},
	}}))
	waitClosed(t, dl.started, "the new agent's download")
	dl.finish <- fetched{path: newBin}

	err := ta.result()
	var re *RestartError
	if !errors.As(err, &re) || re.Exe != exe || re.Args != nil {
		t.Fatalf("Run returned %v, want a restart as %s", err, exe)
	}
	if got := binVersion(t, exe); got != "9.9.9" {
		t.Errorf("%s is %s after the swap, want 9.9.9", exe, got)
	}
	if got := binVersion(t, exe+".prev"); got != version.Version {
		t.Errorf("ferry-agent.prev is %s, want %s", got, version.Version)
	}
	for _, u := range s.updatesOf("upd") {
		if final(u.GetPhase()) {
			t.Errorf("the old agent reported the update's result (%s) before the new one was welcomed", u.GetPhase())
		}
	}
	m, err := selfupdate.Load(ta.cfg.StateDir)
	if err != nil || m == nil || m.State != selfupdate.Probation || m.JobID != "upd" || m.OldVersion != version.Version || m.NewVersion != "9.9.9" {
		t.Fatalf("marker after the swap: %+v, %v", m, err)
	}
	// The watchdog: the previous binary, watching this process (re-exec:
	// the test does not run under systemd).
	want := selfupdate.WatchSpec{Binary: exe + ".prev", StateDir: ta.cfg.StateDir, JobID: "upd", PID: os.Getpid()}
	if w := ta.watchdogs(); len(w) != 1 || w[0] != want {
		t.Errorf("watchdogs started: %+v, want one %+v", w, want)
	}

	// This test binary plays the new agent, started after its deadline.
	m.NewVersion, m.Deadline, m.Args = version.Version, time.Now().Add(-time.Second), []string{"run", "--previous"}
	if err := m.Save(ta.cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	done := ta.runAnother(t)
	re = restartOf(t, done)
	if re.Exe != exe || strings.Join(re.Args, " ") != "run --previous" {
		t.Errorf("the restore restarts %s %v, want %s with the previous agent's arguments", re.Exe, re.Args, exe)
	}
	if got := binVersion(t, exe); got != version.Version {
		t.Errorf("%s is %s after the restore, want %s", exe, got, version.Version)
	}
	m, err = selfupdate.Load(ta.cfg.StateDir)
	reason := "new agent did not reconnect within 60s; restored ferry-agent " + version.Version
	if err != nil || m == nil || m.State != selfupdate.Restored || m.Reason != reason {
		t.Fatalf("marker after the restore: %+v, %v", m, err)
	}

	// The restored agent: the job failed, reported in its hello.
	ta.runAnother(t)
	s = ta.stream()
	var res *ferryv1.JobUpdate
	for _, u := range s.hello.GetRecentJobs() {
		if u.GetJobId() == "upd" {
			res = u
		}
	}
	if res.GetPhase() != ferryv1.JobPhase_JOB_PHASE_FAILED || res.GetMessage() != reason {
		t.Errorf("the restored agent's hello carries %v for the update, want it failed with %q", res, reason)
	}
	if m, _ := selfupdate.Load(ta.cfg.StateDir); m != nil {
		t.Errorf("the marker is still there after the restored agent started: %+v", m)
	}
	for _, p := range s.hello.GetInstalled() {
		if p.GetName() == "ferry-agent" {
			t.Errorf("the restored agent lists %v as installed", p)
		}
	}
}

// TestAgentUpdateWithoutWatchdog: when the watchdog cannot start, the
// swap is undone: the running binary is back, no marker, no restart, and
// the job reports failed.
func TestAgentUpdateWithoutWatchdog(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "ferry-agent")
	fakeAgentBinary(t, exe, version.Version)
	newBin := filepath.Join(t.TempDir(), "artifact")
	fakeAgentBinary(t, newBin, "9.9.9")
	ta := newTestAgent(t, agentOptions{config: func(c *Config) { c.Executable = exe }})
	ta.watchErr = errors.New("no processes left")
	ta.run()
	s := ta.stream()

	digest := "sha256:" + strings.Repeat("9", 64)
	dl := ta.fetcher.download(digest)
	s.send(t, jobMsg(&ferryv1.Job{Id: "upd", RolloutId: "r1", Kind: ferryv1.JobKind_JOB_KIND_INSTALL, Package: &ferryv1.Package{
		Name: "ferry-agent", Version: "9.9.9", Artifact: &ferryv1.ArtifactRef{Digest: digest, Name: "ferry-agent", Size: 100},
		Steps: []*ferryv1.Step{{Kind: &ferryv1.Step_AgentUpdate{AgentUpdate: &ferryv1.AgentUpdateStep{}}}},
	}}))
	waitClosed(t, dl.started, "the new agent's download")
	dl.finish <- fetched{path: newBin}
	u := s.result(t, "upd")
	if u.GetPhase() != ferryv1.JobPhase_JOB_PHASE_FAILED || !strings.Contains(u.GetMessage(), "could not be swapped in") {
		t.Errorf("the update job ended %s (%q), want failed: the swap could not be made", u.GetPhase(), u.GetMessage())
	}
	if got := binVersion(t, exe); got != version.Version {
		t.Errorf("%s is %s after the undone swap, want %s", exe, got, version.Version)
	}
	if m, err := selfupdate.Load(ta.cfg.StateDir); m != nil || err != nil {
		t.Errorf("marker after the undone swap: %+v, %v", m, err)
	}
	if ta.restarting() {
		t.Error("the agent asked for a restart although the swap was undone")
	}
}
