package rollout

import (
	"testing"
	"time"
)

// A node's jobs come newest rollout first, one record per rollout, with
// the package and the node's own outcome; another node's jobs are not in it.
func TestNodeJobs(t *testing.T) {
	h := newHarness(t, 2)
	first := h.create(strat{noCanary: true, auto: true, parallel: "100%", failures: "100%"})
	h.fail(first.Id, "n00")
	h.fail(first.Id, "n01")
	if r := h.get(first.Id); r.State != stFailed {
		t.Fatalf("first rollout %v, want failed", r.State)
	}
	h.tick(time.Second)
	second := h.create(strat{noCanary: true, auto: true, parallel: "100%"})
	got := h.e.NodeJobs("n00")
	if len(got) != 2 || got[0].RolloutId != second.Id || got[1].RolloutId != first.Id {
		t.Fatalf("NodeJobs(n00) = %v, want %s then %s", got, second.Id, first.Id)
	}
	if j := got[1]; j.PackageName != "go" || j.JobKind != kindInstall || j.Job.GetNodeId() != "n00" || j.Job.GetOutcome() != ocFailed {
		t.Errorf("first rollout's record = %v", j)
	}
	if len(h.e.NodeJobs("nobody")) != 0 {
		t.Error("a node in no rollout has jobs")
	}
}
