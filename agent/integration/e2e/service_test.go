package e2e_test

// The service step with the real binaries (issue 13): each agent runs with
// a stub systemctl first on its PATH (systemctltest: a shell script that
// records its calls and whose unit comes up only when its config file
// holds "ok"). A package writes the config and restarts the unit; a later
// version with a broken config never becomes active, so the node rolls
// back: the old config is back and the unit restarted on it.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	"github.com/ferrydeploy/ferry/agent/internal/install/systemctltest"
)

func TestE2EServiceStepRestartsAndRollsBack(t *testing.T) {
	t.Parallel()
	f := newEmptyFleet(t)
	h := f.h
	ids := []string{"web-1", "web-2"}
	stubs := map[string]*systemctltest.Stub{}
	tok := h.CreateToken(e2e.TokenOptions{Group: "web", Uses: len(ids)})
	for _, id := range ids {
		stub, err := systemctltest.New(filepath.Join(h.Dir(), "stubs", id))
		if err != nil {
			t.Fatal(err)
		}
		a := h.NewAgent(id, e2e.AgentOptions{NoGossip: true, Env: []string{"PATH=" + stub.Dir() + ":" + os.Getenv("PATH")}})
		if err := errors.Join(stub.SetActive("active"), stub.Watch(filepath.Join(a.Root, "etc/myapp/config"), "ok")); err != nil {
			t.Fatal(err)
		}
		a.MustEnroll(tok)
		a.Start()
		f.agents[id], stubs[id] = a, stub
	}
	for _, id := range ids {
		h.WaitNode(id, healthyWithin, "connected", func(n e2e.Node) bool { return n.Connected })
	}
	apply := func(version, config string) {
		file := filepath.Join(f.work, "myapp-"+version+".yaml")
		pkg := fmt.Sprintf(`name: myapp
version: "%s"
steps:
  - file: {path: /etc/myapp/config, content: "%s\n", mode: "0644"}
  - service: {unit: myapp, timeout: 2s}
`, version, config)
		if err := os.WriteFile(file, []byte(pkg), 0o644); err != nil {
			t.Fatal(err)
		}
		h.MustCtl("package", "apply", "-f", file)
	}
	config := func(id string) string {
		b, err := os.ReadFile(filepath.Join(f.root(id), "etc/myapp/config"))
		if err != nil {
			return "(none: " + err.Error() + ")"
		}
		return strings.TrimSpace(string(b))
	}
	wantRestarts := func(id string, n int) {
		t.Helper()
		got, err := stubs[id].Actions()
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Repeat([]string{"restart -- myapp.service"}, n)
		if !slices.Equal(got, want) {
			t.Errorf("%s: systemctl was run with %q, want %q", id, got, want)
		}
		if s := stubs[id].Active(); s != "active" {
			t.Errorf("%s: the unit is %s, want active", id, s)
		}
	}

	// A unit name that systemctl would read as an option, or a shell as
	// a command, is refused at apply, with the file and line.
	bad := filepath.Join(f.work, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: myapp\nversion: \"0\"\nsteps:\n  - service: {unit: \"--now\"}\n  - service: {unit: \"myapp;reboot\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := h.Ctl("package", "apply", "-f", bad)
	if code == 0 || !strings.Contains(stderr, "bad.yaml:4: steps[0].service.unit: unit \"--now\" starts with '-'") || !strings.Contains(stderr, "bad.yaml:5: steps[1].service.unit:") {
		t.Errorf("ferryctl package apply of bad unit names: exit %d\n%s%s", code, out, stderr)
	}

	apply("1", "ok 1")
	f.mustRollout(rolloutArgs("web", "myapp@1", "--canary", "1", "--auto-promote")...)
	for _, id := range ids {
		if got := config(id); got != "ok 1" {
			t.Errorf("%s: config %q after myapp 1", id, got)
		}
		wantRestarts(id, 1)
	}

	// myapp 2's config keeps the unit from starting: web-1 (the canary)
	// times out waiting for it, puts config 1 back, restarts the unit on
	// it, and the rollout stops there.
	apply("2", "bad 2")
	id, res := f.rollout(rolloutArgs("web", "myapp@2", "--canary", "1", "--auto-promote", "--max-parallel", "1", "--max-failures", "0", "--on-failure", "abort")...)
	if res.Exit == 0 {
		t.Fatalf("a rollout whose service never comes up exited 0:\n%s", res)
	}
	r := f.mustStatus(id)
	f.wantOutcomes(r, map[string]string{"web-1": "failed", "web-2": "skipped"})
	n := r.node("web-1")
	if n.FailedStep != "service restart myapp.service" || !strings.Contains(n.Message, "did not become active within 2s") || !strings.Contains(n.Message, "undone") {
		t.Errorf("web-1 failed at %q: %s; want the service step, its timeout and the undo", n.FailedStep, n.Message)
	}
	for _, id := range ids {
		if got := config(id); got != "ok 1" {
			t.Errorf("%s: config %q after the failed rollout, want myapp 1's", id, got)
		}
	}
	wantRestarts("web-1", 3) // 1, then 2 (never active), then 1 again
	wantRestarts("web-2", 1)
	logs := h.MustCtl("logs", id, "web-1")
	if !strings.Contains(logs, "ran systemctl restart myapp.service") {
		t.Errorf("ferryctl logs %s web-1 does not show the restart:\n%s", id, logs)
	}
}
