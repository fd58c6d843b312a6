package e2e_test

// Drift and doctor with the real binaries (issue 13): an agent checking
// its files every second reports a file changed under an installed tree,
// the controller shows it in `ferryctl nodes`, and `ferry-agent verify`
// and `ferry-agent doctor` say the same on the node; doctor also fails
// once the controller is gone.

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

func TestE2EDriftAndDoctor(t *testing.T) {
	t.Parallel()
	f := newEmptyFleet(t)
	h := f.h
	a := h.NewAgent("node-1", e2e.AgentOptions{Args: []string{"--drift-interval", "1s"}})
	a.MustEnroll(h.Token("staging", 1))
	a.Start()
	f.agents["node-1"] = a
	h.WaitNode("node-1", healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	f.publish("1.0.0", 0)
	f.mustRollout(rolloutArgs("staging", "tool@1.0.0")...)
	h.WaitNode("node-1", healthyWithin, "checked for drift, with none", func(n e2e.Node) bool {
		return n.Drift != nil && n.Drift.Checked == 1 && len(n.Drift.Packages) == 0
	})

	doctor := func() e2e.Result {
		return h.Exec(nil, h.Bin(e2e.AgentBinary), "doctor", "--state-dir", a.StateDir, "--root", a.Root, "--timeout", "5s")
	}
	// visudo may be missing on the test machine: every other line must be ok.
	wantOK := func(r e2e.Result, checks ...string) {
		t.Helper()
		for _, c := range checks {
			if !strings.Contains(r.Stdout, "ok       "+c) {
				t.Errorf("doctor does not say %q is ok:\n%s", c, r)
			}
		}
	}
	// The daemon rewrites status.json at the heartbeat after its view
	// changes: wait for the one that has seen the controller in gossip.
	var r e2e.Result
	h.WaitFor("doctor to see the gossip peer", healthyWithin, func() (bool, string) {
		r = doctor()
		return strings.Contains(r.Stdout, "ok       gossip"), r.Stdout
	})
	t.Logf("ferry-agent doctor on a fresh node:\n%s", r.Stdout)
	wantOK(r, "certificate: node node-1, valid until", "controller "+f.c.Advertise+": reachable over mTLS", "agent: running, connected", "clock: within", "gossip:", "installed files: 1 package checked, all as Ferry installed them", "disk ")
	if strings.Count(r.Stdout, "PROBLEM") != strings.Count(r.Stdout, "PROBLEM  visudo") {
		t.Errorf("doctor on a fresh node found problems:\n%s", r)
	}

	// An operator edits a file of the installed tree.
	if err := os.WriteFile(filepath.Join(a.Root, "opt/tool/VERSION"), []byte("edited by hand\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n := h.WaitNode("node-1", healthyWithin, "reporting drift", func(n e2e.Node) bool { return n.Drift != nil && len(n.Drift.Packages) == 1 })
	if p := n.Drift.Packages[0]; p.Name != "tool" || p.Version != "1.0.0" || p.Changed != 1 || len(p.Examples) != 1 || !strings.HasPrefix(p.Examples[0], "/opt/tool/VERSION: ") {
		t.Errorf("drift %+v", n.Drift)
	}
	if out := h.MustCtl("nodes"); !strings.Contains(out, "DRIFT: tool 1.0.0 (1 changed)") {
		t.Errorf("ferryctl nodes does not show the drift:\n%s", out)
	}
	if out := h.MustCtl("node", "show", "node-1"); !strings.Contains(out, "Drift:\n") || !strings.Contains(out, "tool 1.0.0: 1 changed since Ferry installed it\n      /opt/tool/VERSION: ") {
		t.Errorf("ferryctl node show does not show the drift:\n%s", out)
	}
	v := h.Exec(nil, h.Bin(e2e.AgentBinary), "verify", "--state-dir", a.StateDir, "--root", a.Root, "--full")
	if v.Exit != 1 || !strings.Contains(v.Stdout, "tool 1.0.0: 1 entries differ") || !strings.Contains(v.Stdout, "/opt/tool/VERSION") {
		t.Errorf("ferry-agent verify --full on a drifted node: %s", v)
	}
	r = doctor()
	if r.Exit != 1 || !strings.Contains(r.Stdout, "PROBLEM  installed files: drift in 1 of 1 package checked") || !strings.Contains(r.Stdout, "fix: run ferry-agent verify") {
		t.Errorf("doctor on a drifted node: %s", r)
	}

	// Rolling the same version out again repairs the node; the next check
	// finds no drift.
	f.mustRollout(rolloutArgs("staging", "tool@1.0.0")...)
	if got, err := f.installed("node-1"); err != nil || got != "1.0.0" {
		t.Errorf("after the repair: tool %q, %v", got, err)
	}
	h.WaitNode("node-1", healthyWithin, "without drift after the repair", func(n e2e.Node) bool { return n.Drift != nil && len(n.Drift.Packages) == 0 })

	// The controller gone: doctor says so, within its timeout.
	f.c.Stop()
	r = doctor()
	t.Logf("ferry-agent doctor with the controller stopped:\n%s", r.Stdout)
	if r.Exit != 1 || !strings.Contains(r.Stdout, "PROBLEM  controller "+f.c.Advertise) || !strings.Contains(r.Stdout, "fix: check that the controller runs") {
		t.Errorf("doctor with the controller stopped: %s", r)
	}
}
