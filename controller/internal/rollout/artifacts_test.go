// Tests of which artifacts a node may download (artifacts.go).

package rollout

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

const (
	digest1202 = "sha256:aa" // go@1.20.2's artifact in the harness
	digest1203 = "sha256:bb" // go@1.20.3's
)

// mayFetch asserts NodeMayFetch for each node and digest.
func (h *harness) mayFetch(when string, want map[[2]string]bool) {
	h.t.Helper()
	for k, w := range want {
		if got := h.e.NodeMayFetch(k[0], k[1]); got != w {
			h.t.Errorf("%s: NodeMayFetch(%s, %s) = %v, want %v", when, k[0], k[1], got, w)
		}
	}
}

// A node may fetch the artifact of a job sent to it while the job runs,
// also after a controller restart, and for FetchGrace after it ended; not
// the artifact of another package, nor before its turn.
func TestNodeMayFetchFollowsJobs(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{canary: 1, parallel: "1", healthy: time.Second})
	h.mayFetch("canary sent", map[[2]string]bool{
		{"n00", digest1203}:       true,
		{"n00", digest1202}:       false, // another package's artifact
		{"n01", digest1203}:       false, // pending: no job yet
		{"n00", ""}:               false,
		{"elsewhere", digest1203}: false,
	})
	h.restart()
	h.mayFetch("after a restart", map[[2]string]bool{{"n00", digest1203}: true, {"n01", digest1203}: false})

	h.succeed(r.Id, "n00")
	h.tick(2 * time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocSucceeded {
		t.Fatalf("n00 is %v, want succeeded", got)
	}
	h.mayFetch("just ended", map[[2]string]bool{{"n00", digest1203}: true})
	h.restart()
	h.tick(defaultFetchGrace - time.Second)
	h.mayFetch("within the grace, after a restart", map[[2]string]bool{{"n00", digest1203}: true})
	h.tick(2 * time.Second)
	h.mayFetch("past the grace", map[[2]string]bool{{"n00", digest1203}: false})
}

// Rollback and undo jobs carry the undone package; their nodes may fetch
// its artifact while they run.
func TestNodeMayFetchRollbackJobs(t *testing.T) {
	h := newHarness(t, 2)
	for _, n := range []string{"n00", "n01"} {
		h.fleet.setInstalled(n, "go", "1.20.2", "")
	}
	r := h.create(strat{canary: 1, auto: true, parallel: "2", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	h.succeed(r.Id, "n01")
	h.tick(time.Second)
	h.tick(defaultFetchGrace)
	h.mayFetch("rollout long over", map[[2]string]bool{{"n00", digest1203}: false})

	resp, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go", Strategy: &ferryv1.Strategy{AutoPromote: true, MaxParallel: "1", HealthyFor: durationpb.New(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Rollout
	if job := h.disp.job(u.Id, "n00"); job == nil || job.Kind != kindRollback {
		t.Fatalf("n00 got %v, want a rollback job", job)
	}
	h.mayFetch("undo running", map[[2]string]bool{
		{"n00", digest1203}: true,
		{"n01", digest1203}: false, // its turn has not come
		{"n00", digest1202}: false,
	})
}

// A plan job lets its node fetch the package's artifact (agents download
// it to plan an archive step) while the plan waits, and not after.
func TestNodeMayFetchDuringPlan(t *testing.T) {
	h := newHarness(t, 2)
	h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_DOWN, false)
	during := map[string]bool{}
	h.disp.onJob = func(node string, job *ferryv1.Job) {
		during[node+" "+digest1203] = h.e.NodeMayFetch(node, digest1203)
		during[node+" "+digest1202] = h.e.NodeMayFetch(node, digest1202)
		during["n01 "+digest1203] = h.e.NodeMayFetch("n01", digest1203)
	}
	if _, err := h.e.Create(context.Background(), "admin/alice", (&strat{canary: 1}).request2(true)); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"n00 " + digest1203: true, "n00 " + digest1202: false, "n01 " + digest1203: false}
	for k, w := range want {
		if during[k] != w {
			t.Errorf("during the plan, %s: may fetch = %v, want %v", k, during[k], w)
		}
	}
	h.mayFetch("after the plan", map[[2]string]bool{{"n00", digest1203}: false})
}
