package selfupdate

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// script writes an executable shell script and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestVersion(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body, want, err string
	}{
		{"agent", `echo "ferry-agent 1.4.0 (commit abc, go1.25, linux/amd64)"`, "1.4.0", ""},
		{"exits 1", `echo boom >&2; exit 1`, "", "cannot run (--version: exit status 1: boom)"},
		{"not an agent", `echo "hello 1"`, "", `not a ferry-agent: --version printed "hello 1"`},
		{"silent", `exit 0`, "", "not a ferry-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := script(t, dir, strings.ReplaceAll(tc.name, " ", "-"), tc.body)
			got, err := Version(context.Background(), bin)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Version = %q, %v; want error with %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Version = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestStageSwapRestore(t *testing.T) {
	dir := t.TempDir()
	exe := script(t, dir, "ferry-agent", `echo "ferry-agent 1.0.0"`)
	src := filepath.Join(t.TempDir(), "artifact")
	// The artifact as the cache keeps it: not executable.
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho \"ferry-agent 2.0.0\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	staged, v, err := Stage(context.Background(), src, exe)
	if err != nil || v != "2.0.0" || staged != StagedPath(exe) {
		t.Fatalf("Stage = %q, %q, %v", staged, v, err)
	}
	if st, err := os.Stat(staged); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("staged binary: %v, %v", st, err)
	}
	prev := PrevPath(exe)
	if err := Swap(staged, exe, prev); err != nil {
		t.Fatal(err)
	}
	if got, _ := Version(context.Background(), exe); got != "2.0.0" {
		t.Fatalf("after the swap %s is %q, want 2.0.0", exe, got)
	}
	if got, _ := Version(context.Background(), prev); got != "1.0.0" {
		t.Fatalf("after the swap %s is %q, want 1.0.0", prev, got)
	}
	if _, err := os.Stat(staged); !os.IsNotExist(err) {
		t.Fatalf("the staged file is still there: %v", err)
	}
	if err := Restore(exe, prev); err != nil {
		t.Fatal(err)
	}
	if got, _ := Version(context.Background(), exe); got != "1.0.0" {
		t.Fatalf("after the restore %s is %q, want 1.0.0", exe, got)
	}
	if err := Restore(exe, prev); err == nil || !strings.Contains(err.Error(), "restore the previous agent") {
		t.Fatalf("a second restore without prev: %v", err)
	}
}

func TestStageRefusesABinaryThatCannotStart(t *testing.T) {
	dir := t.TempDir()
	exe := script(t, dir, "ferry-agent", `echo "ferry-agent 1.0.0"`)
	src := script(t, t.TempDir(), "broken", "exit 1")
	if _, _, err := Stage(context.Background(), src, exe); err == nil || !strings.Contains(err.Error(), "cannot run") {
		t.Fatalf("Stage of a broken binary: %v", err)
	}
	if _, err := os.Stat(StagedPath(exe)); !os.IsNotExist(err) {
		t.Fatalf("a refused binary was left staged: %v", err)
	}
	if got := read(t, exe); !strings.Contains(got, "1.0.0") {
		t.Fatalf("the running binary changed: %q", got)
	}
}

func TestMarker(t *testing.T) {
	state := t.TempDir()
	if m, err := Load(state); m != nil || err != nil {
		t.Fatalf("Load with no marker = %v, %v", m, err)
	}
	m := &Marker{JobID: "j1", RolloutID: "r1", Exe: "/bin/ferry-agent", Prev: "/bin/ferry-agent.prev", OldVersion: "1", NewVersion: "2",
		Timeout: time.Minute, Deadline: time.Unix(1000, 0).UTC(), State: Probation, Args: []string{"run"}}
	if err := m.Save(state); err != nil {
		t.Fatal(err)
	}
	got, err := Load(state)
	if err != nil || got.JobID != m.JobID || got.Deadline != m.Deadline || got.Timeout != m.Timeout || got.Args[0] != "run" || got.State != m.State {
		t.Fatalf("Load = %+v, %v; want %+v", got, err, m)
	}
	if st, _ := os.Stat(filepath.Join(state, MarkerFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("marker mode %v", st.Mode().Perm())
	}
	if err := os.WriteFile(filepath.Join(state, MarkerFile), []byte(`{"job_id":"j"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(state); err == nil || !strings.Contains(err.Error(), "incomplete; remove it") {
		t.Fatalf("Load of an incomplete marker: %v", err)
	}
	if err := Remove(state); err != nil {
		t.Fatal(err)
	}
	if err := Remove(state); err != nil {
		t.Fatalf("a second Remove: %v", err)
	}
}

func TestRestoreAfterFailedStart(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	exe := script(t, dir, "ferry-agent", `echo "ferry-agent 2.0.0"`)
	prev := script(t, dir, "ferry-agent.prev", `echo "ferry-agent 1.0.0"`)
	m := &Marker{JobID: "j1", Exe: exe, Prev: prev, OldVersion: "1.0.0", NewVersion: "2.0.0", Timeout: time.Minute, State: Probation}
	if err := m.Save(state); err != nil {
		t.Fatal(err)
	}
	// Another version than the marker's new one is not on probation.
	if _, ok := RestoreAfterFailedStart(state, "1.0.0", os.ErrPermission); ok {
		t.Fatal("restored for an agent not on probation")
	}
	got, ok := RestoreAfterFailedStart(state, "2.0.0", os.ErrPermission)
	if !ok || got.Exe != exe {
		t.Fatalf("RestoreAfterFailedStart = %+v, %v", got, ok)
	}
	if v, _ := Version(context.Background(), exe); v != "1.0.0" {
		t.Fatalf("%s is %q after the restore", exe, v)
	}
	after, err := Load(state)
	if err != nil || after.State != Restored || !strings.Contains(after.Reason, "new agent could not start (permission denied); restored ferry-agent 1.0.0") {
		t.Fatalf("marker after the restore: %+v, %v", after, err)
	}
}

func TestUnitOf(t *testing.T) {
	for _, tc := range []struct{ cgroup, want string }{
		{"0::/system.slice/ferry-agent.service\n", "ferry-agent.service"},
		{"12:pids:/\n1:name=systemd:/system.slice/ferry-agent.service\n0::/\n", "ferry-agent.service"},
		{"0::/user.slice/user-0.slice/session-3.scope\n", ""},
		{"4:memory:/x.service\n0::/\n", ""}, // not the systemd hierarchy
		{"", ""},
	} {
		if got := unitOf(tc.cgroup); got != tc.want {
			t.Errorf("unitOf(%q) = %q, want %q", tc.cgroup, got, tc.want)
		}
	}
}
