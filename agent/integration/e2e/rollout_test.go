package e2e_test

// Rollouts with the real binaries (issue 5): six agents in two groups, a
// package whose artifact is a small generated release tarball (a fake
// toolchain tree with bin/tool printing its version) pushed with checksum
// verification, rolled out with ferryctl while agents and the controller are
// killed for real. Every assertion reads what an operator would: the files
// under each node's install root, what bin/tool prints, `ferryctl rollout
// status -o json`, and ferryctl's exit code.
//
// The package's check appends "$FERRY_VERSION" to "$FERRY_ROOT/runs.log"
// before anything else. The agent runs a package's checks in every job that
// gets that far (an install, a job that finds the version already there and
// reports it unchanged, the rollback to a version), and never runs a job
// twice (a repeated job gets its recorded result), so each node's runs.log
// counts the jobs executed there: the agent-side proof of "installed exactly
// once". A node whose root holds a "fail-check" file fails the check, which
// is how one node of a group is made to fail.

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

var (
	stagingNodes    = []string{"stage-1", "stage-2"}
	productionNodes = []string{"prod-1", "prod-2", "prod-3", "prod-4"}
)

// rolloutTimeout bounds a whole rollout in these tests.
const rolloutTimeout = 60 * time.Second

// rolloutFleet is a controller and six agents (staging: 2, production: 4),
// each enrolled with the label node=<id> so one node can be targeted with
// --selector.
type rolloutFleet struct {
	t      *testing.T
	h      *e2e.Harness
	c      *e2e.Controller
	agents map[string]*e2e.Agent
	work   string // tarballs, checksum and package files
}

// newRolloutFleet starts the controller and the six agents and waits until
// all are healthy; agentArgs are extra `ferry-agent run` flags for each.
func newRolloutFleet(t *testing.T, agentArgs ...string) *rolloutFleet {
	t.Helper()
	f := newEmptyFleet(t)
	h := f.h
	groups := map[string][]string{"staging": stagingNodes, "production": productionNodes}
	for group, ids := range groups {
		// Each node asks for its own node=ID label, which rollouts select.
		tok := h.CreateToken(e2e.TokenOptions{Group: group, Uses: len(ids), AllowLabels: []string{"node=*"}})
		for _, id := range ids {
			a := h.NewAgent(id, e2e.AgentOptions{Labels: map[string]string{"node": id}, Args: agentArgs})
			a.MustEnroll(tok)
			a.Start()
			f.agents[id] = a
		}
	}
	for _, ids := range groups {
		for _, id := range ids {
			h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
		}
	}
	return f
}

// newEmptyFleet starts a controller with no agents yet; tests add their
// own to f.agents.
func newEmptyFleet(t *testing.T) *rolloutFleet {
	t.Helper()
	h := e2e.New(t)
	f := &rolloutFleet{t: t, h: h, agents: map[string]*e2e.Agent{}, work: filepath.Join(h.Dir(), "work")}
	if err := os.MkdirAll(f.work, 0o755); err != nil {
		t.Fatal(err)
	}
	f.c = h.StartController(e2e.ControllerOptions{HeartbeatInterval: hb})
	return f
}

func (f *rolloutFleet) root(id string) string { return f.agents[id].Root }

// publish builds tool-VERSION.linux-amd64.tar.gz (tool-VERSION/bin/tool,
// tool-VERSION/VERSION), pushes it with its .sha256 file and applies the
// package tool@VERSION. Its check records the run, fails on nodes with a
// fail-check marker, sleeps checkSleep (to widen the window in which a
// test kills something mid-job), then runs tool from the installed tree.
func (f *rolloutFleet) publish(version string, checkSleep time.Duration) {
	f.t.Helper()
	name := "tool-" + version + ".linux-amd64.tar.gz"
	tarball := filepath.Join(f.work, name)
	data := toolTarball(f.t, version)
	if err := os.WriteFile(tarball, data, 0o644); err != nil {
		f.t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if err := os.WriteFile(tarball+".sha256", []byte(hex.EncodeToString(sum[:])+"  "+name+"\n"), 0o644); err != nil {
		f.t.Fatal(err)
	}
	f.h.MustCtl("artifact", "push", tarball, "--checksum-file", tarball+".sha256")

	pkg := fmt.Sprintf(`name: tool
version: %[1]s
artifact: %[2]s@%[1]s
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - env: {name: tool, vars: {TOOL_VERSION: "%[1]s"}, path: [/opt/tool/bin]}
  - file: {path: /etc/tool.conf, content: "version = %[1]s\n", mode: "0644"}
  - check:
      run: |
        echo "$FERRY_VERSION" >> "$FERRY_ROOT/runs.log"
        if [ -e "$FERRY_ROOT/fail-check" ]; then echo "fail-check marker present"; exit 7; fi
        sleep %[3]g
        tool
      expect: "tool %[1]s"
`, version, name, checkSleep.Seconds())
	file := filepath.Join(f.work, "tool-"+version+".yaml")
	if err := os.WriteFile(file, []byte(pkg), 0o644); err != nil {
		f.t.Fatal(err)
	}
	f.h.MustCtl("package", "apply", "-f", file)
}

// toolTarball is a gzipped tar of a fake toolchain tree.
func toolTarball(t *testing.T, version string) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	top := "tool-" + version + "/"
	entries := []struct {
		name, body string
		mode       int64
	}{
		{top, "", 0o755},
		{top + "bin/", "", 0o755},
		{top + "bin/tool", "#!/bin/sh\necho \"tool " + version + "\"\n", 0o755},
		{top + "VERSION", version + "\n", 0o644},
		{top + "share/doc/README", "a fake toolchain for Ferry's end-to-end tests\n", 0o644},
	}
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Mode: e.mode, Size: int64(len(e.body)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}
		if strings.HasSuffix(e.name, "/") {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// installed is the version of the tool a node's root holds ("" for none):
// what bin/tool prints, which must agree with the tree's VERSION file, the
// env file and the config file. Any disagreement (a half-installed or
// mixed tree) is an error.
func (f *rolloutFleet) installed(id string) (string, error) {
	root := f.root(id)
	read := func(rel string) (string, bool, error) {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if errors.Is(err, os.ErrNotExist) {
			return "", false, nil
		}
		return string(b), err == nil, err
	}
	var got []string // "what=version"
	versions := map[string]bool{}
	add := func(what, v string) {
		got = append(got, what+"="+v)
		versions[v] = true
	}
	toolPath := filepath.Join(root, "opt/tool/bin/tool")
	if _, err := os.Stat(toolPath); err == nil {
		out, err := exec.Command(toolPath).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("%s: %w: %s", toolPath, err, out)
		}
		add("bin/tool", strings.TrimPrefix(strings.TrimSpace(string(out)), "tool "))
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	for _, file := range []struct{ rel, prefix, suffix string }{
		{"opt/tool/VERSION", "", "\n"},
		{"etc/tool.conf", "version = ", "\n"},
	} {
		s, ok, err := read(file.rel)
		if err != nil {
			return "", err
		}
		if ok {
			add(file.rel, strings.TrimSuffix(strings.TrimPrefix(s, file.prefix), file.suffix))
		}
	}
	if s, ok, err := read("etc/profile.d/tool.sh"); err != nil {
		return "", err
	} else if ok {
		m := regexp.MustCompile(`TOOL_VERSION='([^']*)'`).FindStringSubmatch(s)
		if m == nil {
			return "", fmt.Errorf("%s: etc/profile.d/tool.sh sets no TOOL_VERSION:\n%s", id, s)
		}
		add("profile.d/tool.sh", m[1])
	}
	switch {
	case len(got) == 0:
		return "", nil
	case len(got) != 4 || len(versions) != 1:
		return "", fmt.Errorf("%s: inconsistent install: %s", id, strings.Join(got, ", "))
	}
	return strings.TrimPrefix(got[0], "bin/tool="), nil
}

// wantVersions checks each node's installed version ("" for none).
func (f *rolloutFleet) wantVersions(when string, want map[string]string) {
	f.t.Helper()
	for _, id := range slices.Sorted(maps.Keys(want)) {
		got, err := f.installed(id)
		switch {
		case err != nil:
			f.t.Errorf("%s: %v", when, err)
		case got != want[id]:
			f.t.Errorf("%s: %s has tool %q installed, want %q", when, id, got, want[id])
		}
	}
}

func allAt(version string, ids ...[]string) map[string]string {
	m := map[string]string{}
	for _, group := range ids {
		for _, id := range group {
			m[id] = version
		}
	}
	return m
}

// treeID identifies the directory /opt/tool is now (device and inode): an
// install switches in a new tree, so a changed ID means a reinstall.
func (f *rolloutFleet) treeID(id string) string {
	f.t.Helper()
	fi, err := os.Stat(filepath.Join(f.root(id), "opt/tool"))
	if err != nil {
		f.t.Fatal(err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		f.t.Fatalf("%s: no inode information on this platform", id)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// runs counts the check runs recorded in a node's runs.log, by version.
func (f *rolloutFleet) runs(id string) map[string]int {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root(id), "runs.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		f.t.Fatal(err)
	}
	m := map[string]int{}
	for _, line := range strings.Fields(string(b)) {
		m[line]++
	}
	return m
}

// waitCheckRunning waits until a node's check for version has started.
func (f *rolloutFleet) waitCheckRunning(id, version string, timeout time.Duration) {
	f.t.Helper()
	f.h.WaitFor(fmt.Sprintf("%s to run the check of %s", id, version), timeout, func() (bool, string) {
		r := f.runs(id)
		return r[version] > 0, fmt.Sprintf("runs.log: %v", r)
	})
}

// rolloutStatus is `ferryctl rollout status -o json`, with the enums in
// their short form (running, waiting_promotion, succeeded...).
type rolloutStatus struct {
	ID             string    `json:"id"`
	PackageVersion string    `json:"package_version"`
	State          string    `json:"state"`
	Message        string    `json:"message"`
	JobKind        string    `json:"job_kind"`
	UndoOf         string    `json:"undo_of"`
	Nodes          []nodeJob `json:"nodes"`
}

type nodeJob struct {
	NodeID          string     `json:"node_id"`
	JobID           string     `json:"job_id"`
	Outcome         string     `json:"outcome"`
	Wave            int        `json:"wave"`
	StartedAt       *time.Time `json:"started_at"`
	FinishedAt      *time.Time `json:"finished_at"`
	FailedStep      string     `json:"failed_step"`
	Message         string     `json:"message"`
	PreviousVersion string     `json:"previous_version"`
}

func (r rolloutStatus) node(id string) nodeJob {
	for _, n := range r.Nodes {
		if n.NodeID == id {
			return n
		}
	}
	return nodeJob{NodeID: id, Outcome: "(not in the rollout)"}
}

// outcomes is "node=outcome ..." for messages.
func (r rolloutStatus) outcomes() string {
	var parts []string
	for _, n := range r.Nodes {
		s := n.NodeID + "=" + n.Outcome
		if n.Message != "" {
			s += " (" + n.Message + ")"
		}
		parts = append(parts, s)
	}
	return fmt.Sprintf("%s: %s; nodes: %s", r.State, r.Message, strings.Join(parts, ", "))
}

func (f *rolloutFleet) status(id string) (rolloutStatus, error) {
	f.t.Helper()
	out, stderr, code := f.h.Ctl("rollout", "status", id, "-o", "json")
	var r rolloutStatus
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return r, fmt.Errorf("ferryctl rollout status %s -o json: exit %d: %w\nstdout: %s\nstderr: %s", id, code, err, out, stderr)
	}
	return r, nil
}

// wantStatusExit checks the exit code of `ferryctl rollout status ID`
// (the table), which tells a script how a rollout that ended went.
// (With -o json it exits 0 whatever the state.)
func (f *rolloutFleet) wantStatusExit(id string, want int) {
	f.t.Helper()
	out, stderr, code := f.h.Ctl("rollout", "status", id)
	if code != want {
		f.t.Errorf("ferryctl rollout status %s: exit %d, want %d\n%s%s", id, code, want, out, stderr)
	}
}

func (f *rolloutFleet) mustStatus(id string) rolloutStatus {
	f.t.Helper()
	r, err := f.status(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// waitRollout polls the rollout until cond holds, for up to rolloutTimeout.
func (f *rolloutFleet) waitRollout(id, what string, cond func(rolloutStatus) bool) rolloutStatus {
	f.t.Helper()
	var last rolloutStatus
	f.h.WaitFor("rollout "+id+" to be "+what, rolloutTimeout, func() (bool, string) {
		r, err := f.status(id)
		if err != nil {
			return false, err.Error()
		}
		last = r
		return cond(r), r.outcomes()
	})
	return last
}

func inState(state string) func(rolloutStatus) bool {
	return func(r rolloutStatus) bool { return r.State == state }
}

// wantOutcomes checks each listed node's outcome.
func (f *rolloutFleet) wantOutcomes(r rolloutStatus, want map[string]string) {
	f.t.Helper()
	if len(r.Nodes) != len(want) {
		f.t.Errorf("rollout %s has %d nodes, want %d (%v): %s", r.ID, len(r.Nodes), len(want), slices.Sorted(maps.Keys(want)), r.outcomes())
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if got := r.node(id).Outcome; got != want[id] {
			f.t.Errorf("rollout %s: %s is %s, want %s (%s)", r.ID, id, got, want[id], r.node(id).Message)
		}
	}
}

func outcomesOf(outcome string, ids ...string) map[string]string {
	m := map[string]string{}
	for _, id := range ids {
		m[id] = outcome
	}
	return m
}

func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// rolloutArgs is `ferryctl rollout` with the short timings these tests use;
// later flags in extra override earlier ones.
func rolloutArgs(group, ref string, extra ...string) []string {
	return append([]string{"rollout", "--group", group, "--package", ref, "--healthy-for", "1s", "--progress-deadline", "30s"}, extra...)
}

var startedRE = regexp.MustCompile(`rollout (\S+) started`)

// rolloutID is the ID `ferryctl rollout` printed when it started.
func rolloutID(t *testing.T, stdout string) string {
	t.Helper()
	m := startedRE.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("ferryctl rollout printed no \"rollout ID started\" line:\n%s", stdout)
	}
	return m[1]
}

// rollout runs `ferryctl rollout` to the end and returns the rollout ID and
// the result.
func (f *rolloutFleet) rollout(args ...string) (string, e2e.Result) {
	f.t.Helper()
	out, stderr, code := f.h.Ctl(args...)
	return rolloutID(f.t, out), e2e.Result{Stdout: out, Stderr: stderr, Exit: code}
}

// mustRollout runs `ferryctl rollout` and fails the test unless it exits 0.
func (f *rolloutFleet) mustRollout(args ...string) rolloutStatus {
	f.t.Helper()
	id, res := f.rollout(args...)
	if res.Exit != 0 {
		f.t.Fatalf("ferryctl %s: %s\nstatus: %s", strings.Join(args, " "), res, f.mustStatus(id).outcomes())
	}
	return f.mustStatus(id)
}

// background is a ferryctl command running while the test does other
// things (a rollout waiting for promotion, paused, or watched across a
// kill).
type background struct {
	args   []string
	stdout syncBuffer
	stderr syncBuffer
	done   chan struct{}
	exit   int
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCtl starts ferryctl without waiting for it; it is killed when the
// test ends.
func (f *rolloutFleet) startCtl(args ...string) *background {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*rolloutTimeout)
	b := &background{args: args, done: make(chan struct{})}
	cmd := exec.CommandContext(ctx, f.h.Bin(e2e.CtlBinary), append([]string{"--timeout", "10s"}, args...)...)
	cmd.Dir = f.h.Dir()
	cmd.Env = append(os.Environ(), "FERRY_CONFIG="+f.c.AdminConfig)
	cmd.Stdout, cmd.Stderr = &b.stdout, &b.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		f.t.Fatalf("ferryctl %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			b.exit = ee.ExitCode()
		default:
			b.exit = -1
		}
		close(b.done)
	}()
	f.t.Cleanup(func() {
		cancel()
		<-b.done
	})
	return b
}

// id waits for the "rollout ID started" line.
func (b *background) id(t *testing.T) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if m := startedRE.FindStringSubmatch(b.stdout.String()); m != nil {
			return m[1]
		}
		select {
		case <-b.done:
			t.Fatalf("ferryctl %s ended (exit %d) without starting a rollout:\n%s\n%s", strings.Join(b.args, " "), b.exit, b.stdout.String(), b.stderr.String())
		case <-time.After(e2e.PollInterval):
		}
	}
	t.Fatalf("ferryctl %s printed no rollout ID within 15s:\n%s", strings.Join(b.args, " "), b.stdout.String())
	return ""
}

// wait waits for the command to end.
func (b *background) wait(t *testing.T, timeout time.Duration) e2e.Result {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		t.Fatalf("ferryctl %s still running after %v:\n%s\n%s", strings.Join(b.args, " "), timeout, b.stdout.String(), b.stderr.String())
	}
	return e2e.Result{Stdout: b.stdout.String(), Stderr: b.stderr.String(), Exit: b.exit}
}

// TestE2ERolloutStagingThenProductionAndUndo rolls v1 to staging (one
// canary, promoted by hand) and then production (auto-promoted), v2 to
// production, and undoes it.
func TestE2ERolloutStagingThenProductionAndUndo(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t)
	f.publish("1.0.0", 0)
	f.publish("2.0.0", 0)

	// Staging: the canary goes first, then the rollout waits for promotion.
	bg := f.startCtl(rolloutArgs("staging", "tool@1.0.0", "--canary", "1", "--max-parallel", "2")...)
	id := bg.id(t)
	r := f.waitRollout(id, "waiting for promotion", inState("waiting_promotion"))
	f.wantOutcomes(r, map[string]string{"stage-1": "succeeded", "stage-2": "pending"})
	if c := r.node("stage-1"); c.Wave != 0 || r.node("stage-2").Wave != 1 {
		t.Errorf("waves: stage-1 %d, stage-2 %d; want the canary stage-1 in wave 0, stage-2 in wave 1", c.Wave, r.node("stage-2").Wave)
	}
	f.wantVersions("staging canary done, before promotion", map[string]string{"stage-1": "1.0.0", "stage-2": ""})
	f.h.WaitFor("ferryctl rollout to say how to promote", 5*time.Second, func() (bool, string) {
		return strings.Contains(bg.stdout.String(), "ferryctl rollout promote "+id), "output so far:\n" + bg.stdout.String()
	})
	f.h.MustCtl("rollout", "promote", id)
	if res := bg.wait(t, rolloutTimeout); res.Exit != 0 {
		t.Fatalf("ferryctl rollout to staging: %s\nstatus: %s", res, f.mustStatus(id).outcomes())
	}
	r = f.mustStatus(id)
	if r.State != "succeeded" {
		t.Errorf("staging rollout: %s", r.outcomes())
	}
	f.wantStatusExit(id, 0)
	f.wantOutcomes(r, outcomesOf("succeeded", stagingNodes...))
	f.wantVersions("after the staging rollout", merge(allAt("1.0.0", stagingNodes), allAt("", productionNodes)))

	// Production, auto-promoted.
	r = f.mustRollout(rolloutArgs("production", "tool@1.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "3")...)
	if r.State != "succeeded" {
		t.Errorf("production rollout: %s", r.outcomes())
	}
	f.wantOutcomes(r, outcomesOf("succeeded", productionNodes...))
	for _, n := range r.Nodes {
		if n.PreviousVersion != "" {
			t.Errorf("%s: previous version %q, want none (first install)", n.NodeID, n.PreviousVersion)
		}
	}
	f.wantVersions("after the production rollout", allAt("1.0.0", stagingNodes, productionNodes))
	for _, id := range append(append([]string{}, stagingNodes...), productionNodes...) {
		if got := f.runs(id); got["1.0.0"] != 1 {
			t.Errorf("%s ran the 1.0.0 check %d times, want once: %v", id, got["1.0.0"], got)
		}
	}

	// v2 reaches prod-2 alone first, so the production-wide v2 rollout
	// leaves it unchanged, and the undo must leave it alone.
	r = f.mustRollout(rolloutArgs("production", "tool@2.0.0", "--selector", "node=prod-2", "--auto-promote")...)
	f.wantOutcomes(r, map[string]string{"prod-2": "succeeded"})
	prod2Tree := f.treeID("prod-2")
	v2 := f.mustRollout(rolloutArgs("production", "tool@2.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "3")...)
	f.wantOutcomes(v2, merge(outcomesOf("succeeded", "prod-1", "prod-3", "prod-4"), outcomesOf("unchanged", "prod-2")))
	for _, id := range []string{"prod-1", "prod-3", "prod-4"} {
		if p := v2.node(id).PreviousVersion; p != "1.0.0" {
			t.Errorf("v2 rollout: %s previous version %q, want 1.0.0", id, p)
		}
	}
	f.wantVersions("after v2", merge(allAt("1.0.0", stagingNodes), allAt("2.0.0", productionNodes)))
	// Unchanged: its checks ran again, but its tree was not replaced.
	if f.treeID("prod-2") != prod2Tree {
		t.Errorf("prod-2 already had 2.0.0, but the rollout that found it unchanged replaced its /opt/tool tree")
	}

	// Undo that rollout: the nodes it changed go back to what they had
	// before it (a plain undo would take prod-2 back too: its latest
	// change was 1.0.0 → 2.0.0).
	out, stderr, code := f.h.Ctl("rollout", "undo", "--group", "production", "--package", "tool", "--to-rollout", v2.ID,
		"--canary", "1", "--auto-promote", "--max-parallel", "3", "--healthy-for", "1s", "--progress-deadline", "30s")
	if code != 0 {
		t.Fatalf("ferryctl rollout undo: exit %d\n%s\n%s", code, out, stderr)
	}
	undo := f.mustStatus(rolloutID(t, out))
	if undo.State != "succeeded" || undo.JobKind != "rollback" || undo.UndoOf != v2.ID {
		t.Errorf("undo: state %s, kind %s, undo of %q; want succeeded, rollback, undo of %s: %s", undo.State, undo.JobKind, undo.UndoOf, v2.ID, undo.outcomes())
	}
	// An undo's nodes succeed when their rollback job does.
	f.wantOutcomes(undo, outcomesOf("succeeded", "prod-1", "prod-3", "prod-4"))
	for _, n := range undo.Nodes {
		if n.PreviousVersion != "2.0.0" {
			t.Errorf("undo: %s previous version %q, want the undone 2.0.0", n.NodeID, n.PreviousVersion)
		}
	}
	// Back to 1.0.0 where v2's rollout changed the node; prod-2 had 2.0.0
	// before that rollout and keeps it; staging was never part of it.
	f.wantVersions("after undo", merge(allAt("1.0.0", stagingNodes, []string{"prod-1", "prod-3", "prod-4"}), map[string]string{"prod-2": "2.0.0"}))

	hist := f.h.MustCtl("rollout", "history", "--package", "tool")
	if !strings.Contains(hist, "undo "+v2.ID) {
		t.Errorf("ferryctl rollout history --package tool does not list the undo of %s:\n%s", v2.ID, hist)
	}
}

// TestE2ERolloutFailingCheckKeepsPreviousVersion makes prod-3's check fail:
// with --on-failure rollback the nodes that changed go back; with pause the
// rollout waits, and an abort skips the rest. prod-3 keeps 1.0.0 throughout
// and ferryctl rollout exits non-zero.
func TestE2ERolloutFailingCheckKeepsPreviousVersion(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t)
	f.publish("1.0.0", 0)
	f.publish("2.0.0", 0)
	first := f.mustRollout(rolloutArgs("production", "tool@1.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "4")...)
	if err := os.WriteFile(filepath.Join(f.root("prod-3"), "fail-check"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// One at a time, so the order is fixed: prod-1 (canary), prod-2, prod-3
	// fails, prod-4 is never started.
	strategy := []string{"--canary", "1", "--auto-promote", "--max-parallel", "1", "--max-failures", "0"}

	t.Log("--on-failure rollback")
	id, res := f.rollout(rolloutArgs("production", "tool@2.0.0", append(strategy, "--on-failure", "rollback")...)...)
	if res.Exit != 1 {
		t.Errorf("ferryctl rollout with a failing node and --on-failure rollback: exit %d, want 1\n%s", res.Exit, res)
	}
	if !strings.Contains(res.Stdout, "prod-3") || !strings.Contains(res.Stdout, "ferryctl logs "+id+" prod-3") || !strings.Contains(res.Stdout, "ferryctl logs "+id+" --failed") {
		t.Errorf("ferryctl rollout output does not name the failed node and the logs command that shows why:\n%s", res.Stdout)
	}
	wantFailedLogs(t, f.h, id)
	r := f.mustStatus(id)
	if r.State != "rolled_back" {
		t.Errorf("rollout with --on-failure rollback: %s; want rolled_back", r.outcomes())
	}
	f.wantStatusExit(id, 1)
	f.wantOutcomes(r, map[string]string{"prod-1": "rolled_back", "prod-2": "rolled_back", "prod-3": "failed", "prod-4": "skipped"})
	if s := r.node("prod-3").FailedStep; !strings.Contains(s, "check") {
		t.Errorf("prod-3 failed at step %q, want the check", s)
	}
	f.wantVersions("after the rollback", allAt("1.0.0", productionNodes))
	if got := f.runs("prod-4"); got["2.0.0"] != 0 {
		t.Errorf("prod-4 was skipped but ran the 2.0.0 check: %v", got)
	}

	t.Log("--on-failure pause, then abort")
	bg := f.startCtl(rolloutArgs("production", "tool@2.0.0", append(strategy, "--on-failure", "pause")...)...)
	id = bg.id(t)
	r = f.waitRollout(id, "paused", inState("paused"))
	f.wantOutcomes(r, map[string]string{"prod-1": "succeeded", "prod-2": "succeeded", "prod-3": "failed", "prod-4": "pending"})
	f.wantVersions("while paused", map[string]string{"prod-1": "2.0.0", "prod-2": "2.0.0", "prod-3": "1.0.0", "prod-4": "1.0.0"})
	// Paused is not the end: it stays paused and ferryctl keeps watching.
	time.Sleep(2 * hb)
	if r := f.mustStatus(id); r.State != "paused" || r.node("prod-4").Outcome != "pending" {
		t.Errorf("a paused rollout moved on by itself: %s", r.outcomes())
	}
	f.wantStatusExit(id, 0) // paused has not ended
	select {
	case <-bg.done:
		t.Errorf("ferryctl rollout returned while the rollout was paused:\n%s", bg.stdout.String())
	default:
	}
	f.h.MustCtl("rollout", "abort", id)
	res = bg.wait(t, rolloutTimeout)
	if res.Exit != 1 || !strings.Contains(res.Stderr, "aborted") {
		t.Errorf("ferryctl rollout of an aborted rollout: exit %d, want 1 and the reason on stderr\n%s", res.Exit, res)
	}
	r = f.mustStatus(id)
	if r.State != "aborted" {
		t.Errorf("after abort: %s", r.outcomes())
	}
	f.wantStatusExit(id, 1)
	f.wantOutcomes(r, map[string]string{"prod-1": "succeeded", "prod-2": "succeeded", "prod-3": "failed", "prod-4": "skipped"})
	f.wantVersions("after abort", map[string]string{"prod-1": "2.0.0", "prod-2": "2.0.0", "prod-3": "1.0.0", "prod-4": "1.0.0"})
	if got := f.runs("prod-4"); got["2.0.0"] != 0 {
		t.Errorf("prod-4 was skipped but ran the 2.0.0 check: %v", got)
	}
	logs := f.h.MustCtl("logs", id, "prod-3")
	if !strings.Contains(logs, "fail-check marker present") {
		t.Errorf("ferryctl logs %s prod-3 lacks the failed check's output:\n%s", id, logs)
	}
	wantNodeShow(t, f, "prod-3", first.ID, id)
}

// wantNodeShow checks `ferryctl node show` of a node that got tool@1.0.0
// from rollout installedBy and then failed its check in rollout failedIn,
// and the nodes filters by package.
func wantNodeShow(t *testing.T, f *rolloutFleet, node, installedBy, failedIn string) {
	t.Helper()
	text := f.h.MustCtl("node", "show", node)
	for _, want := range []string{
		"Node:         " + node + "\n", "Group:        production\n", "State:        healthy: ", "Stream:       connected from ", "Gossip:       alive\n",
		"Facts:        linux/", "\n  tool     1.0.0    ", "  " + installedBy + "  ",
		"\n  " + failedIn + "  tool@2.0.0  install  failed ",
		"Last error:   rollout " + failedIn + " (tool@2.0.0) at ", "logs: ferryctl logs " + failedIn + " " + node + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("ferryctl node show %s lacks %q:\n%s", node, want, text)
		}
	}
	var shown struct {
		Node struct {
			State     string `json:"state"`
			Installed []struct {
				Name, Version string
			} `json:"installed"`
		} `json:"node"`
		Jobs []struct {
			RolloutID string `json:"rollout_id"`
			Job       struct {
				Outcome string `json:"outcome"`
			} `json:"job"`
		} `json:"jobs"`
		LastFailure struct {
			RolloutID string `json:"rollout_id"`
			Job       struct {
				FailedStep string `json:"failed_step"`
			} `json:"job"`
		} `json:"last_failure"`
		InstalledBy map[string]string `json:"installed_by"`
	}
	out := f.h.MustCtl("-o", "json", "node", "show", node)
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatalf("ferryctl -o json node show %s: %v\n%s", node, err, out)
	}
	if shown.Node.State != "healthy" || shown.InstalledBy["tool@1.0.0"] != installedBy || len(shown.Jobs) < 3 ||
		shown.Jobs[0].RolloutID != failedIn || shown.Jobs[0].Job.Outcome != "failed" ||
		shown.LastFailure.RolloutID != failedIn || !strings.Contains(shown.LastFailure.Job.FailedStep, "check") {
		t.Errorf("ferryctl -o json node show %s: want healthy, tool@1.0.0 by %s, newest job %s failed at the check:\n%s", node, installedBy, failedIn, out)
	}
	// prod-1 and prod-2 took 2.0.0 before the abort; prod-3 failed, prod-4 was skipped.
	has := f.h.MustCtl("nodes", "--package", "tool@2.0.0")
	lacks := f.h.MustCtl("nodes", "--group", "production", "--not-package", "tool@2.0.0")
	for _, n := range productionNodes {
		on2 := n == "prod-1" || n == "prod-2"
		if strings.Contains(has, "\n"+n+" ") != on2 || strings.Contains(lacks, "\n"+n+" ") == on2 {
			t.Errorf("%s (has tool@2.0.0: %v) is misfiled:\nnodes --package tool@2.0.0:\n%s\nnodes --not-package tool@2.0.0:\n%s", n, on2, has, lacks)
		}
	}
}

// logLine is a line of ferryctl logs: TIME NODE STREAM [STEP] TEXT.
var logLine = regexp.MustCompile(`^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (stdout|stderr|ferry) +(\[[^]]*\] )?(.*)$`)

// wantFailedLogs checks ferryctl logs of rollout id, whose only failed node
// is prod-3 (its check failed, the other nodes were rolled back): one
// record a line, the check's output under its step, -o json one object a
// line, and the rollback jobs' steps in the other nodes' logs.
func wantFailedLogs(t *testing.T, h *e2e.Harness, id string) {
	t.Helper()
	out := h.MustCtl("logs", id, "--failed")
	var sawOutput, sawFailed bool
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		m := logLine.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("ferryctl logs %s --failed: line %q is not TIME NODE STREAM [STEP] TEXT", id, l)
			continue
		}
		if m[2] != "prod-3" {
			t.Errorf("ferryctl logs %s --failed shows node %s, which did not fail: %q", id, m[2], l)
		}
		step := strings.TrimSuffix(strings.TrimPrefix(m[4], "["), "] ")
		sawOutput = sawOutput || m[3] == "stdout" && strings.HasPrefix(step, "check") && m[5] == "fail-check marker present"
		sawFailed = sawFailed || m[3] == "ferry" && strings.HasPrefix(step, "check") && strings.HasPrefix(m[5], "FAILED: ") && strings.Contains(m[5], "status 7")
	}
	if !sawOutput || !sawFailed {
		t.Errorf("ferryctl logs %s --failed lacks the failing check's output (%v) or its failure (%v):\n%s", id, sawOutput, sawFailed, out)
	}
	js := h.MustCtl("logs", id, "--failed", "-o", "json")
	n := 0
	for _, l := range strings.Split(strings.TrimSuffix(js, "\n"), "\n") {
		var rec struct{ At, NodeID, Stream, Step, Text string }
		var raw map[string]any
		if err := json.Unmarshal([]byte(l), &raw); err != nil {
			t.Fatalf("ferryctl logs -o json: line %q: %v", l, err)
		}
		rec.At, _ = raw["at"].(string)
		rec.NodeID, _ = raw["node_id"].(string)
		rec.Stream, _ = raw["stream"].(string)
		rec.Text, _ = raw["text"].(string)
		if _, err := time.Parse(time.RFC3339, rec.At); err != nil || rec.NodeID != "prod-3" || rec.Stream == "" {
			t.Errorf("ferryctl logs -o json: record %s", l)
		}
		if rec.Text == "fail-check marker present" && rec.Stream == "stdout" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("ferryctl logs -o json has the check's output line %d times, want once:\n%s", n, js)
	}
	rb := h.MustCtl("logs", id, "prod-1")
	if !strings.Contains(rb, "ferry  rollback of tool started") || !strings.Contains(rb, "[rollback: restore /opt/tool]") {
		t.Errorf("ferryctl logs %s prod-1 lacks the rollback job's steps:\n%s", id, rb)
	}
}

// TestE2ERolloutKilledAgentDoesNotBlockTheRest SIGKILLs an agent in the
// middle of its check: it is reported unreachable at the progress
// deadline, while the window moves on and the other nodes finish. Restarted,
// the agent has undone the interrupted job.
func TestE2ERolloutKilledAgentDoesNotBlockTheRest(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t)
	f.publish("1.0.0", 0)
	f.publish("2.0.0", 3*time.Second)
	f.mustRollout(rolloutArgs("production", "tool@1.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "4")...)

	// prod-1 is the canary; then prod-2 and prod-3 run together, and
	// prod-4 takes the slot prod-2 frees while prod-3 is dead.
	const deadline = 10 * time.Second
	bg := f.startCtl(rolloutArgs("production", "tool@2.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "2",
		"--max-failures", "1", "--progress-deadline", deadline.String())...)
	id := bg.id(t)
	f.waitCheckRunning("prod-3", "2.0.0", rolloutTimeout)
	f.agents["prod-3"].Kill()
	killed := time.Now()

	res := bg.wait(t, rolloutTimeout)
	if res.Exit != 1 {
		t.Errorf("ferryctl rollout with a node killed mid-job: exit %d, want 1\n%s", res.Exit, res)
	}
	r := f.mustStatus(id)
	if r.State != "failed" {
		t.Errorf("rollout with one node killed and --max-failures 1: %s; want failed", r.outcomes())
	}
	f.wantStatusExit(id, 1)
	f.wantOutcomes(r, merge(outcomesOf("succeeded", "prod-1", "prod-2", "prod-4"), outcomesOf("unreachable", "prod-3")))
	dead := r.node("prod-3")
	if dead.StartedAt == nil || dead.FinishedAt == nil {
		t.Fatalf("prod-3 has no start or end time: %+v", dead)
	}
	if took := dead.FinishedAt.Sub(*dead.StartedAt); took < deadline {
		t.Errorf("prod-3 was given up after %v, before its progress deadline %v", took, deadline)
	}
	t.Logf("prod-3 killed %v after its job started; declared %s %v after the kill: %s",
		killed.Sub(*dead.StartedAt).Round(100*time.Millisecond), dead.Outcome, dead.FinishedAt.Sub(killed).Round(100*time.Millisecond), dead.Message)
	if p4 := r.node("prod-4"); p4.StartedAt == nil || !p4.StartedAt.Before(*dead.FinishedAt) {
		t.Errorf("prod-4 started at %v, not before prod-3 was given up at %v: the dead node blocked the window", p4.StartedAt, dead.FinishedAt)
	}
	f.wantVersions("after the rollout", map[string]string{"prod-1": "2.0.0", "prod-2": "2.0.0", "prod-4": "2.0.0"})

	// Back up, the agent has undone the job the kill interrupted.
	f.agents["prod-3"].Start()
	// A member gossip declared dead comes back alive at once when the
	// controller takes its rejoin; when the rejoin beats the new stream's
	// hello (which vouches for its gossip address), the controller's next
	// push/pull (15 s on the local profile) brings it: wait past that.
	f.h.WaitNode("prod-3", healthyWithin+20*time.Second, "healthy and alive in gossip after a restart", healthyAndAlive)
	f.wantVersions("prod-3 after its restart", map[string]string{"prod-3": "1.0.0"})
	if r := f.mustStatus(id); r.node("prod-3").Outcome != "unreachable" {
		t.Errorf("prod-3 changed outcome after the rollout ended: %s", r.outcomes())
	}
}

// TestE2ERolloutSurvivesControllerSIGKILL kills the controller twice in the
// middle of a one-at-a-time rollout: once while a node runs its check (the
// agent finishes with no controller and reports on reconnect), once while a
// node serves out its healthy period. The rollout completes after each
// restart, and every node installed exactly once: one check run per node
// (agent side), one job per node in the rollout record and in the
// controller's log.
//
// After a restart the engine starts the next node as soon as the node in
// flight is done, and marks it unreachable if its agent has not reconnected
// yet, even though gossip sees it alive. So that this test checks the
// resume rather than that race, the agents reconnect within 1.25 s
// (--reconnect-max 1s: at most 1 s plus half the 500 ms base) and each node
// must stay healthy 3 s before the next one starts.
func TestE2ERolloutSurvivesControllerSIGKILL(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t, "--reconnect-max", "1s")
	f.publish("1.0.0", time.Second)

	out := f.h.MustCtl(rolloutArgs("production", "tool@1.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "1",
		"--healthy-for", "3s", "--detach")...)
	id := strings.TrimSpace(out)

	f.waitCheckRunning("prod-2", "1.0.0", rolloutTimeout)
	f.c.Kill()
	t.Log("controller killed while prod-2 runs its check")
	// Restart only once prod-2 has finished the job with no controller to
	// report to: its result must arrive with its reconnect.
	finished := regexp.MustCompile(`"msg":"job finished".*"job":"` + regexp.QuoteMeta(id+"/job/prod-2") + `"`)
	f.h.WaitFor("prod-2 to finish its job while the controller is down", 15*time.Second, func() (bool, string) {
		return finished.MatchString(f.agents["prod-2"].Log()), "not yet"
	})
	f.c.Start()
	f.c.WaitLog("resuming rollout", 5*time.Second)

	var phase string
	f.waitRollout(id, "at prod-3's healthy period, or past it", func(r rolloutStatus) bool {
		n := r.node("prod-3")
		switch {
		case n.Outcome == "checking" && n.FinishedAt != nil:
			phase = "prod-3 waiting out its healthy period"
		case n.FinishedAt != nil:
			phase = "prod-3 " + n.Outcome + " (the healthy period was missed)"
		default:
			return false
		}
		return true
	})
	f.c.Kill()
	t.Logf("controller killed again: %s", phase)
	f.c.Start()

	r := f.waitRollout(id, "ended", func(r rolloutStatus) bool {
		switch r.State {
		case "running", "paused", "waiting_promotion", "rolling_back":
			return false
		}
		return true
	})
	if r.State != "succeeded" {
		t.Errorf("rollout after two controller crashes: %s", r.outcomes())
	}
	f.wantOutcomes(r, outcomesOf("succeeded", productionNodes...))
	f.wantVersions("after the rollout", merge(allAt("1.0.0", productionNodes), allAt("", stagingNodes)))

	// Exactly once, from the agents' side: one check run per node.
	for _, node := range productionNodes {
		if got := f.runs(node); got["1.0.0"] != 1 || len(got) != 1 {
			t.Errorf("%s ran checks %v, want 1.0.0 exactly once", node, got)
		}
	}
	// From the rollout record: one job per node, with the stable ID.
	for _, n := range r.Nodes {
		if want := id + "/job/" + n.NodeID; n.JobID != want {
			t.Errorf("%s: job %q, want %q", n.NodeID, n.JobID, want)
		}
	}
	// From the controller's log, across its three runs: each job sent once.
	log := f.c.FullLog()
	for _, node := range productionNodes {
		sent := regexp.MustCompile(`"msg":"job sent".*"node":"`+node+`"`).FindAllString(log, -1)
		if len(sent) != 1 {
			t.Errorf("the controller logged %d \"job sent\" for %s across restarts, want 1:\n%s", len(sent), node, strings.Join(sent, "\n"))
		}
	}
	if _, stderr, code := f.h.Ctl("rollout", "status", id, "--watch"); code != 0 {
		t.Errorf("ferryctl rollout status %s --watch: exit %d for a succeeded rollout: %s", id, code, stderr)
	}
}
