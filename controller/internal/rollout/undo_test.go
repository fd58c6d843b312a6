// Tests of undo (undo.go) and removal rollouts (remove.go).

package rollout

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

var (
	undoStrategy = &ferryv1.Strategy{AutoPromote: true, MaxParallel: "10", HealthyFor: durationpb.New(time.Second)}
	noCanary     = &ferryv1.Strategy{Canary: new(uint32), MaxParallel: "10", HealthyFor: durationpb.New(time.Second)}
)

func (h *harness) undo(req *ferryv1.UndoRolloutRequest) (*ferryv1.UndoRolloutResponse, error) {
	h.t.Helper()
	req.Group, req.PackageName = "prod", "go"
	if req.Strategy == nil {
		req.Strategy = undoStrategy
	}
	return h.e.Undo("admin/alice", req)
}

// finishAll reports success for every node of the rollout that has a job
// in flight, then serves out the healthy period.
func (h *harness) finishAll(id string) {
	h.t.Helper()
	for range 4 {
		for _, n := range inFlightNodes(h.get(id)) {
			if nodeOf(h.get(id), n).GetFinishedAt() == nil {
				h.succeed(id, n)
			}
		}
		h.tick(time.Second)
	}
}

func planOf(t *testing.T, plan []*ferryv1.NodePlan) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range plan {
		s := transition(p.FromVersion, p.ToVersion)
		if p.Note != "" && strings.HasPrefix(p.Note, "left alone") {
			s = p.Note
		}
		out[p.NodeId] = s
	}
	return out
}

func TestUndo(t *testing.T) {
	h := newHarness(t, 4)
	h.fleet.add("s00", "staging")
	for _, n := range []string{"n00", "n01", "n02", "n03", "s00"} {
		h.fleet.setInstalled(n, "go", "1.20.2", "")
	}
	h.fleet.setInstalled("n03", "go", "1.20.3", "1.20.2") // already there
	r := h.create(strat{canary: 1, auto: true, parallel: "4", failures: "1", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	if _, err := h.undo(&ferryv1.UndoRolloutRequest{ToRollout: r.Id}); !errors.Is(err, ErrConflict) {
		t.Errorf("undo during the rollout: %v, want ErrConflict", err)
	}
	if _, err := h.undo(&ferryv1.UndoRolloutRequest{Plan: true}); !errors.Is(err, ErrConflict) {
		t.Errorf("undo plan during the rollout: %v, want ErrConflict (the plan fails as the undo would)", err)
	}
	h.succeed(r.Id, "n01")
	h.fail(r.Id, "n02")
	h.report(r.Id, "n03", phUnchanged, "")
	h.tick(time.Second)
	if got := h.state(r.Id); got != stFailed {
		t.Fatalf("state %v", got)
	}
	// A staging rollout afterwards does not hide the prod one.
	s := h.create(strat{group: "staging", healthy: time.Second})
	h.succeed(s.Id, "s00")
	h.tick(time.Second)

	resp, err := h.undo(&ferryv1.UndoRolloutRequest{ToRollout: r.Id})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Rollout
	if u.JobKind != kindRollback || u.UndoOf != r.Id || u.PackageVersion != "1.20.3" || u.Target.Group != "prod" {
		t.Errorf("undo rollout = kind %v undo_of %q version %q", u.JobKind, u.UndoOf, u.PackageVersion)
	}
	var ids []string
	for _, n := range u.Nodes {
		ids = append(ids, n.NodeId)
	}
	if !slices.Equal(ids, []string{"n00", "n01"}) {
		t.Fatalf("undo nodes = %v, want the two that changed (not failed n02, unchanged n03)", ids)
	}
	if want := "undo of " + r.Id + " by admin/alice: go: 1.20.3 → 1.20.2 on n00, n01"; u.Message != want {
		t.Errorf("announcement %q, want %q", u.Message, want)
	}
	job := h.disp.job(u.Id, "n00")
	if job.Kind != kindRollback || job.Package.Version != "1.20.3" {
		t.Errorf("undo job = %v", job)
	}
	if n := nodeOf(h.get(u.Id), "n00"); n.Message != "1.20.3 → 1.20.2: rolling back to its kept copy of 1.20.2" {
		t.Errorf("n00 message %q", n.Message)
	}
	h.finishAll(u.Id)
	if got := h.get(u.Id); got.State != stSucceeded {
		t.Fatalf("undo ended %v (%s)", got.State, got.Message)
	}
	if _, err := h.undo(&ferryv1.UndoRolloutRequest{ToRollout: r.Id}); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "nothing to undo") {
		t.Errorf("second undo: %v, want nothing to undo", err)
	}
	if ev := h.audit.list(); !slices.Contains(ev, "admin/alice rollout.undo "+u.Id+" ok") {
		t.Errorf("audit %v", ev)
	}
}

// The case: an aborted rollout that changed nothing does not block
// the undo; every node goes back to what it had before its latest change,
// and the announcement says so per node.
func TestUndoAfterAbortedNoopRollout(t *testing.T) {
	h := newHarness(t, 3)
	h.fleet.setInstalled("n01", "go", "1.20.2", "")
	r := h.create(strat{canary: 1, auto: true, parallel: "3", healthy: time.Second})
	h.finishAll(r.Id)
	if got := h.state(r.Id); got != stSucceeded {
		t.Fatalf("install ended %v", got)
	}
	for _, n := range []string{"n00", "n02"} {
		h.fleet.setInstalled(n, "go", "1.20.3", "") // first install
	}
	h.fleet.setInstalled("n01", "go", "1.20.3", "1.20.2")
	h.fleet.nodes["n00"].Labels["dc"] = "east"
	noop := h.create(strat{canary: 1, selector: map[string]string{"dc": "east"}, healthy: time.Second})
	if _, err := h.e.Abort("admin/alice", noop.Id); err != nil {
		t.Fatal(err)
	}
	h.report(noop.Id, "n00", phUnchanged, "")
	h.tick(time.Second)

	plan, err := h.undo(&ferryv1.UndoRolloutRequest{Plan: true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"n00": "1.20.3 → removed", "n01": "1.20.3 → 1.20.2", "n02": "1.20.3 → removed"}
	if got := planOf(t, plan.Plan); !maps.Equal(got, want) {
		t.Errorf("plan = %v, want %v", got, want)
	}
	if plan.Rollout != nil || len(h.e.List("go", 0)) != 2 {
		t.Errorf("a plan started a rollout")
	}
	resp, err := h.undo(&ferryv1.UndoRolloutRequest{Strategy: noCanary})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Rollout
	if u.UndoOf != r.Id {
		t.Errorf("undo_of %q, want %s, the newest rollout whose change it takes back (not the no-op %s)", u.UndoOf, r.Id, noop.Id)
	}
	if want := "undo by admin/alice: go: 1.20.3 → removed on n00, n02; 1.20.3 → 1.20.2 on n01"; u.Message != want {
		t.Errorf("announcement %q, want %q", u.Message, want)
	}
	for _, n := range []string{"n00", "n01", "n02"} {
		if j := h.disp.job(u.Id, n); j == nil || j.Kind != kindRollback {
			t.Errorf("%s got %v, want a rollback (the agent removes a first install itself)", n, j)
		}
	}
	h.finishAll(u.Id)
	if got := h.get(u.Id); got.State != stSucceeded {
		t.Fatalf("undo ended %v (%s)", got.State, got.Message)
	}
}

// --to-version takes every node to one stored version: a rollback where the
// node keeps that version, an install of it elsewhere; nodes on it already
// are left alone. --selector narrows the group.
func TestUndoToVersionAndSelector(t *testing.T) {
	h := newHarness(t, 3)
	h.fleet.setInstalled("n00", "go", "1.20.3", "")       // 1.20.2 not kept: install it
	h.fleet.setInstalled("n01", "go", "1.20.3", "1.20.2") // kept: roll back
	h.fleet.setInstalled("n02", "go", "1.20.2", "")       // there already
	h.fleet.nodes["n01"].Labels["dc"] = "east"

	if _, err := h.undo(&ferryv1.UndoRolloutRequest{ToVersion: "9.9"}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "stored versions: 1.20.2, 1.20.3") {
		t.Errorf("unknown version: %v", err)
	}
	plan, err := h.undo(&ferryv1.UndoRolloutRequest{ToVersion: "1.20.2", Plan: true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"n00": "1.20.3 → 1.20.2", "n01": "1.20.3 → 1.20.2", "n02": "left alone: it already has 1.20.2"}
	if got := planOf(t, plan.Plan); !maps.Equal(got, want) {
		t.Errorf("plan = %v, want %v", got, want)
	}
	sel, err := h.undo(&ferryv1.UndoRolloutRequest{ToVersion: "1.20.2", Selector: map[string]string{"dc": "east"}, Plan: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := planOf(t, sel.Plan); !maps.Equal(got, map[string]string{"n01": "1.20.3 → 1.20.2"}) {
		t.Errorf("plan with selector = %v", got)
	}
	resp, err := h.undo(&ferryv1.UndoRolloutRequest{ToVersion: "1.20.2", Strategy: noCanary})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Rollout
	if j := h.disp.job(u.Id, "n00"); j == nil || j.Kind != kindInstall || j.Package.Version != "1.20.2" || j.Package.Artifact.GetDigest() != "sha256:aa" {
		t.Errorf("n00 got %v, want an install of 1.20.2", j)
	}
	if j := h.disp.job(u.Id, "n01"); j == nil || j.Kind != kindRollback {
		t.Errorf("n01 got %v, want a rollback", j)
	}
	if !h.e.NodeMayFetch("n00", "sha256:aa") || h.e.NodeMayFetch("n01", "sha256:aa") {
		t.Error("only the node installing 1.20.2 may fetch its artifact")
	}
	if n := nodeOf(u, "n00"); n.JobKind != kindInstall || n.TargetVersion != "1.20.2" || n.PreviousVersion != "1.20.3" {
		t.Errorf("n00 record %v", n)
	}
	// The per-node job kinds survive a restart: a reconnecting node is
	// sent the same job again.
	h.restart()
	before := len(h.disp.deliveries())
	h.e.NodeConnected("n00", nil)
	if d := h.disp.deliveries(); len(d) != before+1 || d[before].job.Kind != kindInstall || d[before].job.Package.Version != "1.20.2" {
		t.Errorf("after a restart n00 got %v, want the install of 1.20.2 again", d[before:])
	}
	h.finishAll(u.Id)
	if got := h.get(u.Id); got.State != stSucceeded {
		t.Fatalf("undo ended %v (%s)", got.State, got.Message)
	}
}

// A node that keeps no earlier version, and whose version no rollout
// recorded, is left alone with the reason; with no node to change, the
// undo is refused naming them.
func TestUndoNothingKept(t *testing.T) {
	h := newHarness(t, 2)
	h.fleet.setInstalled("n00", "go", "1.20.3", "")
	h.fleet.nodes["n00"].Installed[0].Pruned = true
	_, err := h.undo(&ferryv1.UndoRolloutRequest{})
	if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "n00: it keeps no version before 1.20.3") || !strings.Contains(err.Error(), "n01: it does not have go") {
		t.Errorf("undo: %v", err)
	}
	if ev := h.audit.list(); len(ev) != 1 || !strings.Contains(ev[0], "rollout.undo") || strings.HasSuffix(ev[0], " ok") {
		t.Errorf("audit %v, want the refusal", ev)
	}
}

// A removal is a rollout like any other: canary first, then the rest;
// nodes without the package are unchanged; it cannot be rolled back.
func TestRemoveRollout(t *testing.T) {
	h := newHarness(t, 3)
	for _, n := range []string{"n00", "n01"} {
		h.fleet.setInstalled(n, "go", "1.20.3", "1.20.2")
	}
	req := strat{canary: 1, parallel: "2", healthy: time.Second}.request()
	req.PackageVersion, req.Remove = "", true
	bad := strat{}.request()
	bad.Remove = true
	if _, err := h.e.Create(t.Context(), "admin/alice", bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "without a version") {
		t.Errorf("remove with a version: %v", err)
	}
	rb := strat{onFailure: ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK}.request()
	rb.PackageVersion, rb.Remove = "", true
	if _, err := h.e.Create(t.Context(), "admin/alice", rb); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "not rolled back") {
		t.Errorf("remove with on-failure rollback: %v", err)
	}
	req.Plan = true
	plan, err := h.e.Create(t.Context(), "admin/alice", req)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"n00": "1.20.3 → removed", "n01": "1.20.3 → removed", "n02": "none → removed"}
	if got := planOf(t, plan.Plan); !maps.Equal(got, want) || plan.Plan[2].Removed || !strings.Contains(plan.Plan[2].Note, "does not have go") {
		t.Errorf("plan = %v (%v)", got, plan.Plan)
	}
	req.Plan = false
	resp, err := h.e.Create(t.Context(), "admin/alice", req)
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Rollout
	if r.JobKind != kindRemove || r.PackageVersion != "" || !strings.Contains(r.Message, "1.20.3 → removed on n00, n01; none → removed on n02") {
		t.Errorf("rollout %v: %s", r.JobKind, r.Message)
	}
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00"}) {
		t.Fatalf("sent to %v, want the canary only", got)
	}
	if j := h.disp.job(r.Id, "n00"); j.Kind != kindRemove || j.Package.Name != "go" || j.Package.Artifact != nil {
		t.Errorf("job %v", j)
	}
	h.succeed(r.Id, "n00")
	h.tick(2 * time.Second)
	if got := h.state(r.Id); got != stWaiting {
		t.Fatalf("state %v, want waiting for promotion", got)
	}
	if _, err := h.e.Promote("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	h.succeed(r.Id, "n01")
	h.report(r.Id, "n02", phUnchanged, "package go is not installed on this node; nothing to remove")
	h.tick(2 * time.Second)
	if got := h.get(r.Id); got.State != stSucceeded {
		t.Fatalf("removal ended %v (%s)", got.State, got.Message)
	}
	for _, n := range []string{"n00", "n01"} {
		if v := h.fleet.installed(n, "go"); v != "" {
			t.Errorf("%s still has go %s", n, v)
		}
	}
	// Undo after a removal: nothing is installed, nothing recorded to go
	// back to but the removal itself: back to 1.20.3 by install.
	p, err := h.undo(&ferryv1.UndoRolloutRequest{Plan: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := planOf(t, p.Plan); got["n00"] != "none → 1.20.3" {
		t.Errorf("undo of the removal = %v", got)
	}
}
