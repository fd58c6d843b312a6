package e2e_test

// Agent self-update through Ferry (issue 14, item 5): three agents run
// copies of the built ferry-agent (not under systemd, so they restart by
// re-exec). A package carrying a ferry-agent built with another version
// is rolled out to two of them, which swap it in, restart and reconnect
// reporting the new version. The third is given binaries that cannot do
// the job: one that cannot even start (--version exits 1: refused before
// the swap); one that starts but never reaches the controller (the new
// process's own timer restores the previous binary and starts it, and
// the restored agent reports the job failed with the reason); one that
// passes --version but exits as soon as it runs, and one that hangs
// there (both: the watchdog the previous agent left, outside its process
// group, restores the previous binary and starts it). The node stays
// connected through all of it, and the rollout records each failure
// with its reason. The timings of the swap, the reconnect and each
// restore are logged.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// agentVersion is the version a ferry-agent binary prints.
func agentVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v: %s", bin, err, out)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 || f[0] != "ferry-agent" {
		t.Fatalf("%s --version printed %q", bin, out)
	}
	return f[1]
}

// buildAgent builds ferry-agent from this checkout stamped with version
// (only the link differs from make build's, so the build cache serves
// the rest).
func buildAgent(t *testing.T, version, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-trimpath", "-o", out,
		"-ldflags", "-s -w -X github.com/ferrydeploy/ferry/shared/version.Version="+version, "./cmd/ferry-agent")
	cmd.Dir = filepath.Join("..", "..") // the agent module
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ferry-agent %s: %v\n%s", version, err, b)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// logDuration is the duration under key in the last of an agent's JSON
// log lines that contain msg ("?" when there is none).
func logDuration(log, msg, key string) string {
	v := "?"
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			if ns, ok := m[key].(float64); ok {
				v = time.Duration(ns).Round(100 * time.Microsecond).String()
			}
		}
	}
	return v
}

// logTime is the time of the first of an agent's JSON log lines that
// contain msg after the first that contains after.
func logTime(t *testing.T, log, after, msg string) time.Time {
	t.Helper()
	seen := false
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, after) {
			seen = true
		}
		if !seen || !strings.Contains(line, msg) {
			continue
		}
		var m struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &m) == nil {
			return m.Time
		}
	}
	t.Fatalf("no log line %q after %q", msg, after)
	return time.Time{}
}

// watchGrace is selfupdate.WatchGrace, for the log.
const watchGrace = 3 * time.Second

// checkRestored: the node runs the previous agent again, healthy, from
// the previous binary, with no update marker left, in a live process.
func checkRestored(t *testing.T, h *e2e.Harness, a *e2e.Agent, exe, old, oldSum string) {
	t.Helper()
	h.WaitNode(a.NodeID, healthyWithin, "healthy, running "+old, func(n e2e.Node) bool {
		return n.State == e2e.Healthy && n.AgentVersion == old
	})
	if got := fileSum(t, exe); got != oldSum {
		t.Errorf("%s: the binary is not the previous one after the restore", a.NodeID)
	}
	if _, err := os.Stat(filepath.Join(a.StateDir, "agent-update.json")); !os.IsNotExist(err) {
		t.Errorf("%s: the update marker is still there: %v", a.NodeID, err)
	}
	if pid := lockHolder(a); pid == 0 || syscall.Kill(pid, 0) != nil {
		t.Errorf("%s: no agent process holds the state dir (lock names pid %d)", a.NodeID, pid)
	}
}

// lockHolder is the pid the agent's state-dir lock names.
func lockHolder(a *e2e.Agent) int {
	b, err := os.ReadFile(filepath.Join(a.StateDir, "agent.lock"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// stopOrphan stops an agent the watchdog started (not the harness's
// child): SIGTERM, then SIGKILL.
func stopOrphan(t *testing.T, a *e2e.Agent) {
	pid := lockHolder(a)
	if pid <= 0 || a.Running() && a.PID() == pid {
		return
	}
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	t.Logf("%s: the agent the watchdog started (pid %d) did not stop on SIGTERM; killing it", a.NodeID, pid)
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func TestE2EAgentSelfUpdate(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	work := filepath.Join(h.Dir(), "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	old := agentVersion(t, h.Bin(e2e.AgentBinary))
	next := old + "-next"
	nextBin := filepath.Join(work, "ferry-agent-next")
	buildAgent(t, next, nextBin)
	if got := agentVersion(t, nextBin); got != next {
		t.Fatalf("the new build prints %s, want %s", got, next)
	}

	h.StartController(e2e.ControllerOptions{HeartbeatInterval: hb})
	ids := []string{"upd-1", "upd-2", "upd-3"}
	tok := h.CreateToken(e2e.TokenOptions{Group: "fleet", Uses: len(ids), AllowLabels: []string{"node=*", "wave=*"}})
	agents := map[string]*e2e.Agent{}
	exes := map[string]string{}
	for _, id := range ids {
		dir := filepath.Join(h.Dir(), "bin-"+id)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		exes[id] = filepath.Join(dir, "ferry-agent")
		copyFile(t, h.Bin(e2e.AgentBinary), exes[id], 0o755)
		wave := "a"
		if id == "upd-3" {
			wave = "b"
		}
		a := h.NewAgent(id, e2e.AgentOptions{Labels: map[string]string{"node": id, "wave": wave}, Binary: exes[id]})
		a.MustEnroll(tok)
		a.Start()
		agents[id] = a
	}
	for _, id := range ids {
		h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	}
	oldSum := fileSum(t, exes["upd-3"])

	// publish pushes bin as artifact name@version and applies the package
	// ferry-agent@version that installs it.
	publish := func(bin, version, extra string) {
		t.Helper()
		h.MustCtl("artifact", "push", bin, "--name", "ferry-agent", "--version", version, "--os", "linux", "--arch", "amd64")
		pkg := fmt.Sprintf("name: ferry-agent\nversion: %[1]s\nartifact: ferry-agent@%[1]s\nsteps:\n  - agent_update: {%[2]s}\n", version, extra)
		file := filepath.Join(work, "ferry-agent-"+version+".yaml")
		if err := os.WriteFile(file, []byte(pkg), 0o644); err != nil {
			t.Fatal(err)
		}
		h.MustCtl("package", "apply", "-f", file)
	}
	rollout := func(selector, ref string) (rolloutStatus, e2e.Result) {
		t.Helper()
		args := []string{"rollout", "--selector", selector, "--package", ref, "--healthy-for", "1s", "--progress-deadline", "90s",
			"--canary", "1", "--auto-promote", "--max-parallel", "1"}
		out, stderr, code := h.Ctl(args...)
		id := rolloutID(t, out)
		st, sErr, _ := h.Ctl("rollout", "status", id, "-o", "json")
		var r rolloutStatus
		if err := json.Unmarshal([]byte(st), &r); err != nil {
			t.Fatalf("rollout status %s: %v\n%s%s", id, err, st, sErr)
		}
		return r, e2e.Result{Stdout: out, Stderr: stderr, Exit: code}
	}

	t.Log("the new agent on two nodes")
	publish(nextBin, "2.0.0", "expect_version: "+next)
	start := time.Now()
	r, res := rollout("wave=a", "ferry-agent@2.0.0")
	t.Logf("rollout of the new agent to two nodes took %s", time.Since(start).Round(time.Millisecond))
	if res.Exit != 0 || r.State != "succeeded" {
		t.Fatalf("rollout of the new agent: exit %d, %s\n%s", res.Exit, r.outcomes(), res)
	}
	for _, id := range []string{"upd-1", "upd-2"} {
		if n := r.node(id); n.Outcome != "succeeded" {
			t.Errorf("%s: %s (%s)", id, n.Outcome, n.Message)
		}
		h.WaitNode(id, healthyWithin, "healthy, running "+next, func(n e2e.Node) bool {
			return n.State == e2e.Healthy && n.AgentVersion == next
		})
		if got := agentVersion(t, exes[id]); got != next {
			t.Errorf("%s: %s is %s, want %s", id, exes[id], got, next)
		}
		if got := agentVersion(t, exes[id]+".prev"); got != old {
			t.Errorf("%s: ferry-agent.prev is %s, want %s", id, got, old)
		}
		if !agents[id].Running() {
			t.Errorf("%s: the agent process is gone (it should have re-executed in place)", id)
		}
		log := agents[id].FullLog()
		t.Logf("%s: swap %s; the new agent welcomed %s after the swap", id, logDuration(log, "new binary swapped in", "swap_took"), logDuration(log, "update confirmed", "since_swap"))
	}

	t.Log("a binary that cannot start")
	broken := filepath.Join(work, "ferry-agent-broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'cannot start' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	publish(broken, "2.0.1", "")
	r, res = rollout("node=upd-3", "ferry-agent@2.0.1")
	if res.Exit == 0 || r.node("upd-3").Outcome != "failed" || !strings.Contains(r.node("upd-3").Message, "cannot run") {
		t.Errorf("rollout of a binary that cannot start: exit %d, %s", res.Exit, r.outcomes())
	}
	if got := fileSum(t, exes["upd-3"]); got != oldSum {
		t.Error("upd-3's binary changed after a refused update")
	}

	t.Log("a binary that starts but never reaches the controller")
	// A wrapper that runs the new agent against a port nobody listens on.
	dead := fmt.Sprintf("127.0.0.1:%d", h.FreePort("127.0.0.1"))
	lost := filepath.Join(work, "ferry-agent-lost")
	script := fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = run ]; then shift; exec %s run \"$@\" --controller %s --reconnect-max 1s; fi\nexec %s \"$@\"\n", nextBin, dead, nextBin)
	if err := os.WriteFile(lost, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	publish(lost, "2.0.2", "reconnect_timeout: 10s")
	start = time.Now()
	r, res = rollout("node=upd-3", "ferry-agent@2.0.2")
	t.Logf("rollout to the node whose new agent never connects ended after %s", time.Since(start).Round(time.Millisecond))
	want := "new agent did not reconnect within 10s; restored ferry-agent " + old
	if n := r.node("upd-3"); res.Exit == 0 || n.Outcome != "failed" || n.Message != want {
		t.Errorf("rollout of an agent that never connects: exit %d, upd-3 %s (%q); want failed (%q)\n%s", res.Exit, n.Outcome, n.Message, want, res)
	}
	h.WaitNode("upd-3", healthyWithin, "healthy, running "+old, func(n e2e.Node) bool {
		return n.State == e2e.Healthy && n.AgentVersion == old
	})
	if got := fileSum(t, exes["upd-3"]); got != oldSum {
		t.Errorf("upd-3's binary is not the previous one after the restore")
	}
	if !agents["upd-3"].Running() {
		t.Error("upd-3's agent process is gone after the restore")
	}
	if _, err := os.Stat(filepath.Join(agents["upd-3"].StateDir, "agent-update.json")); !os.IsNotExist(err) {
		t.Errorf("the update marker is still there: %v", err)
	}
	log := agents["upd-3"].FullLog()
	restored := logTime(t, log, "new binary swapped in", "previous agent restored")
	back := logTime(t, log, "previous agent restored", "connected to controller")
	t.Logf("upd-3: swap %s; restore %s (at the 10s deadline); the restored agent connected %s after the restore",
		logDuration(log, "new binary swapped in", "swap_took"), logDuration(log, "previous agent restored", "restore_took"), back.Sub(restored).Round(time.Millisecond))
	if !regexp.MustCompile(`agent update failed; the previous agent runs again`).MatchString(log) {
		t.Errorf("the restored agent did not log the failed update:\n%s", agents["upd-3"].Tail(30))
	}

	// Both failures below kill the process the harness started: the
	// agent that runs afterwards was started by the watchdog, in a
	// session of its own. The cleanup stops it by the pid in its lock.
	t.Cleanup(func() { stopOrphan(t, agents["upd-3"]) })

	t.Log("a binary that passes --version but exits as soon as it runs")
	crash := filepath.Join(work, "ferry-agent-crash")
	script = fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = run ]; then echo 'the new agent crashes at start' >&2; exit 2; fi\nexec %s \"$@\"\n", nextBin)
	if err := os.WriteFile(crash, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// A long deadline: the restore must come from the watchdog seeing
	// the process gone, not from the deadline.
	publish(crash, "2.0.3", "reconnect_timeout: 120s")
	mark := len(agents["upd-3"].FullLog())
	start = time.Now()
	r, res = rollout("node=upd-3", "ferry-agent@2.0.3")
	t.Logf("rollout to the node whose new agent exits at start ended after %s", time.Since(start).Round(time.Millisecond))
	want = "new agent exited before it reached the controller; restored ferry-agent " + old
	if n := r.node("upd-3"); res.Exit == 0 || n.Outcome != "failed" || n.Message != want {
		t.Errorf("rollout of an agent that exits at start: exit %d, upd-3 %s (%q); want failed (%q)\n%s", res.Exit, n.Outcome, n.Message, want, res)
	}
	checkRestored(t, h, agents["upd-3"], exes["upd-3"], old, oldSum)
	log = agents["upd-3"].FullLog()[mark:]
	if !strings.Contains(log, "the new agent crashes at start") {
		t.Errorf("the new agent did not run (its crash is not in the log):\n%s", tail(log, 30))
	}
	swapped := logTime(t, log, "", "new binary swapped in")
	restored = logTime(t, log, "new binary swapped in", "previous agent restored by the watchdog")
	back = logTime(t, log, "previous agent restored by the watchdog", "connected to controller")
	t.Logf("upd-3 (exits at start): swap %s; the watchdog restored %s after the swap (deadline 120s); the restored agent connected %s after the restore",
		logDuration(log, "new binary swapped in", "swap_took"), restored.Sub(swapped).Round(time.Millisecond), back.Sub(restored).Round(time.Millisecond))

	t.Log("a binary that passes --version but hangs when it runs")
	hang := filepath.Join(work, "ferry-agent-hang")
	script = fmt.Sprintf("#!/bin/sh\nif [ \"$1\" = run ]; then exec sleep 120; fi\nexec %s \"$@\"\n", nextBin)
	if err := os.WriteFile(hang, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	publish(hang, "2.0.4", "reconnect_timeout: 5s")
	mark = len(agents["upd-3"].FullLog())
	start = time.Now()
	r, res = rollout("node=upd-3", "ferry-agent@2.0.4")
	t.Logf("rollout to the node whose new agent hangs ended after %s", time.Since(start).Round(time.Millisecond))
	want = "new agent did not reconnect within 5s and did not restore itself (it hung); stopped it and restored ferry-agent " + old
	if n := r.node("upd-3"); res.Exit == 0 || n.Outcome != "failed" || n.Message != want {
		t.Errorf("rollout of an agent that hangs: exit %d, upd-3 %s (%q); want failed (%q)\n%s", res.Exit, n.Outcome, n.Message, want, res)
	}
	checkRestored(t, h, agents["upd-3"], exes["upd-3"], old, oldSum)
	log = agents["upd-3"].FullLog()[mark:]
	swapped = logTime(t, log, "", "new binary swapped in")
	restored = logTime(t, log, "new binary swapped in", "previous agent restored by the watchdog")
	back = logTime(t, log, "previous agent restored by the watchdog", "connected to controller")
	t.Logf("upd-3 (hangs): swap %s; the watchdog stopped it and restored %s after the swap (deadline 5s + %s grace); the restored agent connected %s after the restore",
		logDuration(log, "new binary swapped in", "swap_took"), restored.Sub(swapped).Round(time.Millisecond), watchGrace, back.Sub(restored).Round(time.Millisecond))

	// The two updated nodes are untouched by the third's rollouts.
	for _, id := range []string{"upd-1", "upd-2"} {
		if n := h.Nodes()[id]; n.AgentVersion != next || !bytes.Contains([]byte(n.State), []byte("healthy")) {
			t.Errorf("%s: %s running %s", id, n.State, n.AgentVersion)
		}
	}
}
