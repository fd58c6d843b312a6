package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/version"
)

// agentBinary writes a stand-in for a ferry-agent binary printing v for
// --version.
func agentBinary(t *testing.T, dir, name, v string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	must(t, os.WriteFile(p, []byte("#!/bin/sh\necho \"ferry-agent "+v+" (commit x)\"\n"), 0o644))
	return p
}

func agentUpdateStep(expect string) *ferryv1.Step {
	return &ferryv1.Step{Kind: &ferryv1.Step_AgentUpdate{AgentUpdate: &ferryv1.AgentUpdateStep{ExpectVersion: expect}}}
}

func TestAgentUpdateStep(t *testing.T) {
	bin := t.TempDir()
	exe := agentBinary(t, bin, "ferry-agent", version.Version)
	must(t, os.Chmod(exe, 0o755))
	e := newEnv(t)
	i, err := New(Config{Root: e.root, StateDir: e.state, Executable: exe})
	must(t, err)
	e.inst = i
	art := agentBinary(t, t.TempDir(), "artifact", "9.9.9")

	t.Run("staged for the agent to swap", func(t *testing.T) {
		u := e.install(pkg("ferry-agent", "9.9.9", "sha256:aa", agentUpdateStep("9.9")), art)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED)
		up, ok := i.TakeAgentUpdate(u.GetJobId(), true)
		if !ok || up.NewVersion != "9.9.9" || up.OldVersion != version.Version || up.Exe != exe || up.Timeout != defaultReconnectTimeout {
			t.Fatalf("TakeAgentUpdate = %+v, %v", up, ok)
		}
		if got := readFile(t, up.Staged); !strings.Contains(got, "9.9.9") {
			t.Fatalf("staged %s: %q", up.Staged, got)
		}
		if got := readFile(t, exe); !strings.Contains(got, version.Version) {
			t.Fatalf("the step replaced the executable itself: %q", got)
		}
		// The restored agent turns the recorded success into a failure and
		// the node no longer lists the version.
		failed, err := i.FailAgentUpdate(u.GetJobId(), "new agent did not reconnect within 60s; restored ferry-agent "+version.Version)
		must(t, err)
		wantPhase(t, failed, ferryv1.JobPhase_JOB_PHASE_FAILED)
		again, ok := e.open().JobResult(u.GetJobId()) // as read back after a restart
		if !ok || again.GetPhase() != ferryv1.JobPhase_JOB_PHASE_FAILED || !strings.Contains(again.GetMessage(), "did not reconnect within 60s") {
			t.Fatalf("result after a restart: %v", again)
		}
		for _, p := range e.open().Installed() {
			if p.GetName() == "ferry-agent" {
				t.Fatalf("ferry-agent still listed as installed: %v", p)
			}
		}
		_ = os.Remove(up.Staged)
	})
	t.Run("a binary that cannot start", func(t *testing.T) {
		broken := filepath.Join(t.TempDir(), "broken")
		must(t, os.WriteFile(broken, []byte("#!/bin/sh\nexit 1\n"), 0o644))
		u := e.install(pkg("ferry-agent", "9.9.8", "sha256:bb", agentUpdateStep("")), broken)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_FAILED)
		if !strings.Contains(u.GetMessage(), "cannot run") {
			t.Fatalf("message %q", u.GetMessage())
		}
		if _, ok := i.TakeAgentUpdate(u.GetJobId(), false); ok {
			t.Fatal("a failed job left a staged binary")
		}
	})
	t.Run("the wrong version", func(t *testing.T) {
		u := e.install(pkg("ferry-agent", "9.9.7", "sha256:cc", agentUpdateStep("2.0")), art)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_FAILED)
		if !strings.Contains(u.GetMessage(), "the new binary is ferry-agent 9.9.9, not 2.0") {
			t.Fatalf("message %q", u.GetMessage())
		}
	})
	t.Run("the running version", func(t *testing.T) {
		same := agentBinary(t, t.TempDir(), "same", version.Version)
		u := e.install(pkg("ferry-agent", version.Version, "sha256:dd", agentUpdateStep("")), same)
		if _, ok := i.TakeAgentUpdate(u.GetJobId(), true); ok {
			t.Fatal("the running version was staged")
		}
	})
	t.Run("not the last step", func(t *testing.T) {
		u := e.install(pkg("ferry-agent", "9.9.6", "sha256:ee", agentUpdateStep(""), checkStep("true", "", 0)), art)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_FAILED)
		if !strings.Contains(u.GetMessage(), "must be the package's last step") {
			t.Fatalf("message %q", u.GetMessage())
		}
	})
	t.Run("an agent that does not know its executable", func(t *testing.T) {
		e2 := newEnv(t)
		u := e2.install(pkg("ferry-agent", "9.9.9", "sha256:aa", agentUpdateStep("")), art)
		wantPhase(t, u, ferryv1.JobPhase_JOB_PHASE_FAILED)
		if !strings.Contains(u.GetMessage(), "does not know its own executable") {
			t.Fatalf("message %q", u.GetMessage())
		}
	})
}
