package e2e_test

// Day-2 operations with the real binaries (issue 13): an undo that an
// aborted no-op rollout does not block, with its per-node plan; a removal
// rollout that deletes the package's files on the nodes; and removing the
// records (package rm, then artifact rm and gc).

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestE2EUndoAfterAbortedRolloutThenRemoveAndCleanUp(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t)
	f.publish("1.0.0", 0)
	f.publish("2.0.0", 0)
	fast := []string{"--canary", "1", "--auto-promote", "--max-parallel", "4"}
	f.mustRollout(rolloutArgs("production", "tool@1.0.0", fast...)...)
	f.mustRollout(rolloutArgs("production", "tool@2.0.0", fast...)...)
	f.wantVersions("after 2.0.0", allAt("2.0.0", productionNodes))

	// A rollout that changes nothing (prod-1 already has 2.0.0), aborted.
	out := f.h.MustCtl(append(rolloutArgs("production", "tool@2.0.0", "--selector", "node=prod-1"), "--detach")...)
	noop := strings.TrimSpace(out)
	_, _, _ = f.h.Ctl("rollout", "abort", noop) // it may have ended already
	r := f.waitRollout(noop, "ended", func(r rolloutStatus) bool {
		switch r.node("prod-1").Outcome {
		case "pending", "downloading", "installing", "checking":
			return false // an aborted job still reports how it ended
		}
		return r.State == "aborted" || r.State == "succeeded"
	})
	t.Logf("the no-op rollout: %s", r.outcomes())
	f.wantVersions("after the aborted no-op rollout", allAt("2.0.0", productionNodes))

	plan, stderr, code := f.h.Ctl("rollout", "undo", "--group", "production", "--package", "tool", "--plan")
	if code != 0 {
		t.Fatalf("undo --plan: exit %d\n%s%s", code, plan, stderr)
	}
	for _, id := range productionNodes {
		if !strings.Contains(plan, id) || !regexpLine(plan, id+` \((canary|wave 1)\): 2\.0\.0 → 1\.0\.0`) {
			t.Errorf("undo plan does not say %s goes 2.0.0 → 1.0.0:\n%s", id, plan)
		}
	}
	f.wantVersions("after the undo plan", allAt("2.0.0", productionNodes))

	out, stderr, code = f.h.Ctl(append([]string{"rollout", "undo", "--group", "production", "--package", "tool", "--healthy-for", "1s", "--progress-deadline", "30s"}, fast...)...)
	if code != 0 {
		t.Fatalf("ferryctl rollout undo after an aborted rollout: exit %d\n%s\n%s", code, out, stderr)
	}
	if want := "tool: 2.0.0 → 1.0.0 on prod-1, prod-2, prod-3, prod-4"; !strings.Contains(out, want) {
		t.Errorf("the undo's announcement does not say %q:\n%s", want, out)
	}
	undo := f.mustStatus(rolloutID(t, out))
	f.wantOutcomes(undo, outcomesOf("succeeded", productionNodes...))
	f.wantVersions("after the undo", allAt("1.0.0", productionNodes))

	// tool@1.0.0 is installed: its record cannot go, and the refusal says why.
	_, stderr, code = f.h.Ctl("package", "rm", "tool@1.0.0")
	if code == 0 || !strings.Contains(stderr, "installed on node prod-1, prod-2, prod-3, prod-4") || !strings.Contains(stderr, "rollout --remove tool") {
		t.Errorf("package rm of an installed version: exit %d, stderr:\n%s", code, stderr)
	}

	// Remove the package from two nodes first (the selector), then all.
	plan = f.h.MustCtl("rollout", "--group", "production", "--remove", "tool", "--selector", "node=prod-1", "--plan")
	if !strings.Contains(plan, "prod-1 (canary): 1.0.0 → removed") {
		t.Errorf("remove --plan:\n%s", plan)
	}
	rm := f.mustRollout("rollout", "--group", "production", "--remove", "tool", "--healthy-for", "1s", "--canary", "1", "--auto-promote", "--max-parallel", "4")
	if rm.JobKind != "remove" {
		t.Errorf("removal rollout kind %q", rm.JobKind)
	}
	f.wantOutcomes(rm, outcomesOf("succeeded", productionNodes...))
	f.wantVersions("after the removal", allAt("", productionNodes))
	for _, id := range productionNodes {
		for _, p := range []string{"opt/tool", "etc/tool.conf", "etc/profile.d/tool.sh"} {
			if _, err := os.Lstat(filepath.Join(f.root(id), p)); !os.IsNotExist(err) {
				t.Errorf("%s: /%s is still there after the removal (%v)", id, p, err)
			}
		}
	}

	// Now the records go: package rm, then its artifact.
	f.h.MustCtl("package", "rm", "tool@1.0.0")
	if out := f.h.MustCtl("artifact", "rm", "tool-1.0.0.linux-amd64.tar.gz@1.0.0"); !strings.Contains(out, "removed") {
		t.Errorf("artifact rm: %s", out)
	}
	f.h.MustCtl("package", "rm", "tool@2.0.0")
	gcPlan := f.h.MustCtl("artifact", "gc", "--plan")
	if !strings.Contains(gcPlan, "would remove tool-2.0.0.linux-amd64.tar.gz@2.0.0") {
		t.Errorf("artifact gc --plan:\n%s", gcPlan)
	}
	if list := f.h.MustCtl("artifact", "list"); !strings.Contains(list, "tool-2.0.0") {
		t.Errorf("gc --plan removed the artifact:\n%s", list)
	}
	f.h.MustCtl("artifact", "gc")
	if list := f.h.MustCtl("artifact", "list"); strings.Contains(list, "tool-") {
		t.Errorf("artifacts left after gc:\n%s", list)
	}
	audit := f.h.MustCtl("audit", "-o", "json")
	for _, action := range []string{"package.rm", "artifact.gc", "rollout.undo"} {
		if !strings.Contains(audit, action) {
			t.Errorf("the audit log has no %s entry", action)
		}
	}
}

// regexpLine: some line of text matches pattern.
func regexpLine(text, pattern string) bool {
	re := regexp.MustCompile(`(?m)^` + pattern)
	return re.MatchString(text)
}
