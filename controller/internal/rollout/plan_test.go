// Tests of plans (plan.go).

package rollout

import (
	"context"
	"maps"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestPlan(t *testing.T) {
	h := newHarness(t, 4)
	h.fleet.setInstalled("n01", "go", "1.20.3", "1.20.2")
	h.fleet.setInstalled("n02", "go", "1.20.2", "")
	h.fleet.setState("n03", ferryv1.NodeState_NODE_STATE_DOWN, false)
	h.disp.onJob = func(node string, job *ferryv1.Job) {
		if job.Kind != kindPlan {
			t.Errorf("plan sent a %v job", job.Kind)
		}
		u := &ferryv1.JobUpdate{JobId: job.Id, RolloutId: job.RolloutId}
		switch node {
		case "n00":
			return // never answers
		case "n01":
			u.Phase = phUnchanged
		case "n02":
			u.Phase = phSucceeded
			u.Steps = []*ferryv1.StepResult{{Kind: "archive", Name: "archive -> /usr/local/go", Changed: true}, {Kind: "check", Name: "go version"}}
		}
		go h.e.HandleJobUpdate(node, u)
	}
	resp, err := h.e.Create(context.Background(), "admin/alice", (&strat{canary: 1}).request2(true))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Rollout != nil {
		t.Error("a plan returned a rollout")
	}
	notes := map[string]string{}
	waves := map[string]uint32{}
	failed := map[string]bool{}
	for _, p := range resp.Plan {
		notes[p.NodeId] = p.Note
		waves[p.NodeId] = p.Wave
		failed[p.NodeId] = p.Failed
	}
	// No answer is a failed plan (ferryctl exits 1); an unreachable node is
	// not: the rollout would report it, not fail on it.
	if want := map[string]bool{"n00": true, "n01": false, "n02": false, "n03": false}; !maps.Equal(failed, want) {
		t.Errorf("failed = %v, want %v", failed, want)
	}
	wantNotes := map[string]string{
		"n00": "no plan from the agent within 200ms",
		"n01": "already has go@1.20.3; nothing would change",
		"n02": "go: 1.20.2 -> 1.20.3; 1 of 2 steps would change",
		"n03": "unreachable: not connected at the start (down",
	}
	for n, want := range wantNotes {
		if !strings.Contains(notes[n], want) {
			t.Errorf("%s note = %q, want %q", n, notes[n], want)
		}
	}
	if waves["n00"] != 0 || waves["n01"] != 1 {
		t.Errorf("waves = %v", waves)
	}
	if h.store.saveCount() != 0 || len(h.e.List("", 0)) != 0 {
		t.Error("a plan stored a rollout")
	}
	if len(h.audit.list()) != 0 {
		t.Errorf("a plan was audited as an action: %v", h.audit.list())
	}
}

func (s *strat) request2(plan bool) *ferryv1.CreateRolloutRequest {
	r := s.request()
	r.Plan = plan
	return r
}
