// Tests of undo (undo.go).

package rollout

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestUndo(t *testing.T) {
	h := newHarness(t, 4)
	h.fleet.add("s00", "staging")
	for _, n := range []string{"n00", "n01", "n02", "n03", "s00"} {
		h.fleet.setInstalled(n, "go", "1.20.2", "")
	}
	h.fleet.setInstalled("n03", "go", "1.20.3", "1.20.2") // already there
	if _, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go"}); !errors.Is(err, ErrState) {
		t.Errorf("undo before any rollout: %v, want ErrState", err)
	}
	r := h.create(strat{canary: 1, auto: true, parallel: "4", failures: "1", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	if _, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go"}); !errors.Is(err, ErrConflict) {
		t.Errorf("undo during the rollout: %v, want ErrConflict", err)
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

	u, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go", Strategy: &ferryv1.Strategy{AutoPromote: true, MaxParallel: "10", HealthyFor: durationpb.New(time.Second)}})
	if err != nil {
		t.Fatal(err)
	}
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
	job := h.disp.job(u.Id, "n00")
	if job.Kind != kindRollback || job.Package.Version != "1.20.3" {
		t.Errorf("undo job = %v", job)
	}
	if n := nodeOf(h.get(u.Id), "n00"); !strings.Contains(n.Message, "rolling back to 1.20.2") {
		t.Errorf("n00 message %q", n.Message)
	}
	h.succeed(u.Id, "n00")
	h.tick(time.Second)
	h.succeed(u.Id, "n01")
	h.tick(time.Second)
	if got := h.get(u.Id); got.State != stSucceeded {
		t.Fatalf("undo ended %v (%s)", got.State, got.Message)
	}
	if _, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go"}); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "nothing to undo") {
		t.Errorf("second undo: %v, want nothing to undo", err)
	}
	if ev := h.audit.list(); !slices.Contains(ev, "admin/alice rollout.undo "+u.Id+" ok") {
		t.Errorf("audit %v", ev)
	}
}
