package e2e_test

// Catch-up with the real binaries (issue 13, item 6): a node enrolled into
// a group after its rollout gets the group's version by itself, once, even
// when the controller is killed during its catch-up; `ferryctl group show`
// and `ferryctl rollout list` show it; catch-up can be turned off.

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// groupView is `ferryctl group show G -o json`.
type groupView struct {
	Group struct {
		Name    string `json:"name"`
		Desired []struct {
			Name      string `json:"name"`
			Version   string `json:"version"`
			RolloutID string `json:"rollout_id"`
		} `json:"desired"`
		Behind []struct {
			NodeID string `json:"node_id"`
			Status string `json:"status"`
			Reason string `json:"reason"`
		} `json:"behind"`
	} `json:"group"`
}

func (f *rolloutFleet) group(name string) (groupView, error) {
	out, stderr, code := f.h.Ctl("group", "show", name, "-o", "json")
	var g groupView
	if err := json.Unmarshal([]byte(out), &g); err != nil {
		return g, fmt.Errorf("ferryctl group show %s -o json: exit %d: %w\n%s%s", name, code, err, out, stderr)
	}
	return g, nil
}

// catchUps lists the catch-up rollouts (`ferryctl rollout list -o json`),
// newest first.
func (f *rolloutFleet) catchUps() []rolloutStatus {
	f.t.Helper()
	var list struct {
		Rollouts []struct {
			ID        string `json:"id"`
			Kind      string `json:"kind"`
			CatchUpOf string `json:"catch_up_of"`
		} `json:"rollouts"`
	}
	out := f.h.MustCtl("rollout", "list", "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		f.t.Fatalf("rollout list -o json: %v\n%s", err, out)
	}
	var cus []rolloutStatus
	for _, r := range list.Rollouts {
		if r.Kind == "catch_up" {
			cus = append(cus, f.mustStatus(r.ID))
		}
	}
	return cus
}

// enrollLate enrolls and starts one more agent into group.
func (f *rolloutFleet) enrollLate(id string, tok e2e.Token) {
	f.t.Helper()
	a := f.h.NewAgent(id, e2e.AgentOptions{Labels: map[string]string{"node": id}, Args: []string{"--reconnect-max", "1s"}})
	a.MustEnroll(tok)
	a.Start()
	f.agents[id] = a
}

// waitCaughtUp waits until the node has the version and the group lists
// no node behind.
func (f *rolloutFleet) waitCaughtUp(group, id, version string) groupView {
	f.t.Helper()
	var g groupView
	f.h.WaitFor(id+" to catch up to "+version, rolloutTimeout, func() (bool, string) {
		var err error
		if g, err = f.group(group); err != nil {
			return false, err.Error()
		}
		have, err := f.installed(id)
		if err != nil {
			return false, err.Error()
		}
		return have == version && len(g.Group.Behind) == 0, fmt.Sprintf("%s has %q; behind: %+v", id, have, g.Group.Behind)
	})
	return g
}

func TestE2ELateNodeCatchesUp(t *testing.T) {
	t.Parallel()
	f := newRolloutFleet(t, "--reconnect-max", "1s")
	f.publish("1.0.0", time.Second)
	r := f.mustRollout(rolloutArgs("staging", "tool@1.0.0", "--canary", "0", "--max-parallel", "2")...)
	if r.State != "succeeded" {
		t.Fatalf("rollout: %s", r.outcomes())
	}
	tok := f.h.CreateToken(e2e.TokenOptions{Group: "staging", Uses: 3, AllowLabels: []string{"node=*"}})

	// Enrolled after the rollout; the controller is killed while its
	// catch-up job runs the check, and restarted.
	f.enrollLate("stage-3", tok)
	f.waitCheckRunning("stage-3", "1.0.0", rolloutTimeout)
	f.c.Kill()
	t.Log("controller killed during stage-3's catch-up")
	f.c.Start()
	g := f.waitCaughtUp("staging", "stage-3", "1.0.0")
	if len(g.Group.Desired) != 1 || g.Group.Desired[0].Version != "1.0.0" || g.Group.Desired[0].RolloutID != r.ID {
		t.Errorf("desired %+v, want tool 1.0.0 from %s", g.Group.Desired, r.ID)
	}
	cus := f.catchUps()
	if len(cus) != 1 {
		t.Fatalf("catch-up rollouts %d, want 1", len(cus))
	}
	cu := f.waitRollout(cus[0].ID, "succeeded", inState("succeeded"))
	f.wantOutcomes(cu, outcomesOf("succeeded", "stage-3"))

	show := f.h.MustCtl("group", "show", "staging")
	for _, want := range []string{"group staging: 3 nodes, catch-up on, 1 at a time", "tool", "1.0.0", r.ID, "every node is on the desired versions"} {
		if !strings.Contains(show, want) {
			t.Errorf("group show lacks %q:\n%s", want, show)
		}
	}
	if list := f.h.MustCtl("rollout", "list"); !strings.Contains(list, "catch-up "+r.ID) {
		t.Errorf("rollout list does not show the catch-up:\n%s", list)
	}

	// A second late node gets a catch-up of its own; stage-3 is not sent
	// its job again (the restart lost or duplicated nothing).
	f.enrollLate("stage-4", tok)
	f.waitCaughtUp("staging", "stage-4", "1.0.0")
	cus = f.catchUps()
	if len(cus) != 2 {
		t.Fatalf("catch-up rollouts %d, want 2", len(cus))
	}
	f.wantOutcomes(f.waitRollout(cus[0].ID, "succeeded", inState("succeeded")), outcomesOf("succeeded", "stage-4"))
	for _, id := range []string{"stage-3", "stage-4"} {
		if got := f.runs(id); got["1.0.0"] != 1 || len(got) != 1 {
			t.Errorf("%s ran checks %v, want 1.0.0 exactly once", id, got)
		}
	}
	audit := f.h.MustCtl("audit")
	for _, want := range []string{"group.desired", "rollout.catch-up"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %s:\n%s", want, audit)
		}
	}

	// Turned off, a late node stays behind and the group says why.
	if out := f.h.MustCtl("group", "set", "staging", "--catch-up=false"); !strings.Contains(out, "catch-up off") {
		t.Errorf("group set: %s", out)
	}
	f.enrollLate("stage-5", tok)
	f.h.WaitFor("stage-5 to be listed behind with catch-up off", rolloutTimeout, func() (bool, string) {
		g, err := f.group("staging")
		if err != nil {
			return false, err.Error()
		}
		for _, b := range g.Group.Behind {
			if b.NodeID == "stage-5" && b.Status == "off" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("behind: %+v", g.Group.Behind)
	})
	if n := len(f.catchUps()); n != 2 {
		t.Errorf("catch-up rollouts %d with catch-up off, want still 2", n)
	}
	if v, _ := f.installed("stage-5"); v != "" {
		t.Errorf("stage-5 has %q with catch-up off", v)
	}
}
