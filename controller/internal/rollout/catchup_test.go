// Tests of desired state and catch-up (catchup.go).

package rollout

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
)

// fakeGroups keeps group records marshalled, with their audit entries in
// the same "transaction".
type fakeGroups struct {
	mu    sync.Mutex
	data  map[string][]byte
	audit *fakeAuditor
	fail  error
}

func (g *fakeGroups) SaveGroup(r *ferryv1.GroupRecord, ev *ferryv1.AuditEvent) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return g.fail
	}
	b, err := proto.Marshal(r)
	if err != nil {
		return err
	}
	if ev != nil {
		if err := g.audit.AppendAudit(ev); err != nil {
			return err
		}
	}
	g.data[r.GetName()] = b
	return nil
}

func (g *fakeGroups) Groups() ([]*ferryv1.GroupRecord, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*ferryv1.GroupRecord
	for _, b := range g.data {
		r := &ferryv1.GroupRecord{}
		if err := proto.Unmarshal(b, r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// newCatchUpHarness is newHarness with group records, looking for
// catch-ups at every tick.
func newCatchUpHarness(t *testing.T, count int) *harness {
	t.Helper()
	h := newHarness(t, count)
	h.groups = &fakeGroups{data: map[string][]byte{}, audit: h.audit}
	h.restart()
	return h
}

// rollOut rolls go@version out to every prod node that is up, all at
// once, and returns it once it ended.
func (h *harness) rollOut(version string) *ferryv1.Rollout {
	h.t.Helper()
	r := h.create(strat{noCanary: true, parallel: "10", healthy: time.Second, version: version})
	for _, n := range r.Nodes {
		if n.Outcome != ocUnreachable {
			h.succeed(r.Id, n.NodeId)
		}
	}
	h.tick(time.Second)
	if got := h.get(r.Id); !ended(got) {
		h.t.Fatalf("rollout %s did not end: %v %s", r.Id, got.State, got.Message)
	}
	return h.get(r.Id)
}

func ended(r *ferryv1.Rollout) bool {
	return r.State == stSucceeded || r.State == stFailed || r.State == stAborted || r.State == stRolled
}

// catchUps returns the catch-up rollouts, oldest first.
func (h *harness) catchUps() []*ferryv1.Rollout {
	var out []*ferryv1.Rollout
	for _, r := range h.e.List("", 1000) {
		if r.Kind == rkCatchUp {
			out = append(out, h.get(r.Id))
		}
	}
	slices.Reverse(out)
	return out
}

// group is h.e.Group("prod").
func (h *harness) group() *ferryv1.Group {
	h.t.Helper()
	g, err := h.e.Group("prod")
	if err != nil {
		h.t.Fatalf("Group(prod): %v", err)
	}
	return g
}

// behindStatus maps node -> status of a group's behind list.
func behindStatus(g *ferryv1.Group) map[string]ferryv1.CatchUpStatus {
	out := map[string]ferryv1.CatchUpStatus{}
	for _, b := range g.Behind {
		out[b.NodeId] = b.Status
	}
	return out
}

func nodeIDs(r *ferryv1.Rollout) []string {
	var ids []string
	for _, n := range r.Nodes {
		ids = append(ids, n.NodeId)
	}
	return ids
}

func (h *harness) jobsTo(node string) int {
	c := 0
	for _, d := range h.disp.deliveries() {
		if d.node == node {
			c++
		}
	}
	return c
}

const (
	cuPending = ferryv1.CatchUpStatus_CATCH_UP_STATUS_PENDING
	cuRunning = ferryv1.CatchUpStatus_CATCH_UP_STATUS_RUNNING
	cuFailed  = ferryv1.CatchUpStatus_CATCH_UP_STATUS_FAILED
	cuWaiting = ferryv1.CatchUpStatus_CATCH_UP_STATUS_WAITING
	cuBlocked = ferryv1.CatchUpStatus_CATCH_UP_STATUS_BLOCKED
	cuOff     = ferryv1.CatchUpStatus_CATCH_UP_STATUS_OFF
	cuHeld    = ferryv1.CatchUpStatus_CATCH_UP_STATUS_HELD
)

func TestCatchUpLateNode(t *testing.T) {
	h := newCatchUpHarness(t, 2)
	r := h.rollOut("1.20.3")
	g := h.group()
	if len(g.Desired) != 1 || g.Desired[0].Name != "go" || g.Desired[0].Version != "1.20.3" || g.Desired[0].RolloutId != r.Id || g.Desired[0].SetBy != "admin/alice" {
		t.Fatalf("desired = %v", g.Desired)
	}
	if len(g.Behind) != 0 || !g.CatchUp || g.CatchUpParallel != 1 || g.NodeCount != 2 {
		t.Fatalf("group = %v", g)
	}
	if len(h.catchUps()) != 0 {
		t.Fatal("a catch-up started with no node behind")
	}

	h.fleet.add("n02", "prod") // enrolled after the rollout
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 1 {
		t.Fatalf("catch-ups = %d, want 1", len(cus))
	}
	cu := cus[0]
	if cu.CatchUpOf != r.Id || cu.CreatedBy != CatchUpActor || cu.PackageVersion != "1.20.3" || cu.Target.Group != "prod" || !slices.Equal(nodeIDs(cu), []string{"n02"}) {
		t.Fatalf("catch-up = %v", cu)
	}
	if job := h.disp.job(cu.Id, "n02"); job == nil || job.Kind != kindInstall || job.Package.Version != "1.20.3" {
		t.Fatalf("n02 job = %v", job)
	}
	if st := behindStatus(h.group()); st["n02"] != cuRunning {
		t.Errorf("n02 status %v, want running", st["n02"])
	}
	h.succeed(cu.Id, "n02")
	h.tick(time.Second)
	if got := h.state(cu.Id); got != stSucceeded {
		t.Fatalf("catch-up ended %v", got)
	}
	if g := h.group(); len(g.Behind) != 0 || g.Desired[0].RolloutId != r.Id {
		t.Errorf("after catch-up: behind %v, desired %v (a catch-up does not set the desired state)", g.Behind, g.Desired)
	}
	h.tick(time.Second)
	if len(h.catchUps()) != 1 || h.jobsTo("n02") != 1 {
		t.Errorf("catch-ups %d, jobs to n02 %d: want 1 and 1", len(h.catchUps()), h.jobsTo("n02"))
	}
	ev := h.audit.list()
	for _, want := range []string{CatchUpActor + " group.desired prod ok", CatchUpActor + " rollout.catch-up " + cu.Id + " ok"} {
		if !slices.Contains(ev, want) {
			t.Errorf("audit %v lacks %q", ev, want)
		}
	}
	// Undo treats the catch-up as part of the rollout: n02 goes back too.
	ur, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go", Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "3"}})
	if err != nil {
		t.Fatal(err)
	}
	u := ur.GetRollout()
	// Each node goes back from its own latest change: the rollout's for
	// n00 and n01, the catch-up's for n02 (the undo names the newest).
	if (u.UndoOf != r.Id && u.UndoOf != cu.Id) || !slices.Equal(nodeIDs(u), []string{"n00", "n01", "n02"}) {
		t.Fatalf("undo of %s on %v, want %s or %s on n00, n01, n02", u.UndoOf, nodeIDs(u), r.Id, cu.Id)
	}
	if n := nodeOf(h.get(u.Id), "n02"); !strings.Contains(n.Message, "1.20.3 → removed") {
		t.Errorf("n02 undo message %q", n.Message)
	}
}

func TestCatchUpUnreachableDuringRollout(t *testing.T) {
	h := newCatchUpHarness(t, 3)
	h.fleet.setState("n02", ferryv1.NodeState_NODE_STATE_DOWN, false)
	r := h.rollOut("1.20.3")
	if r.State != stFailed {
		t.Fatalf("rollout %v, want failed (n02 unreachable)", r.State)
	}
	g := h.group()
	if len(g.Desired) != 1 || g.Desired[0].Version != "1.20.3" {
		t.Fatalf("desired = %v: a rollout that failed only to reach nodes sets it", g.Desired)
	}
	if st := behindStatus(g); st["n02"] != cuWaiting || len(st) != 1 {
		t.Errorf("behind %v, want n02 waiting", g.Behind)
	}
	h.tick(time.Second)
	if len(h.catchUps()) != 0 {
		t.Fatal("catch-up for a node that is down")
	}
	h.fleet.setState("n02", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 1 || !slices.Equal(nodeIDs(cus[0]), []string{"n02"}) {
		t.Fatalf("catch-ups = %v", cus)
	}
}

func TestCatchUpNotForFailedRollouts(t *testing.T) {
	h := newCatchUpHarness(t, 2)
	r := h.create(strat{noCanary: true, parallel: "2", failures: "1", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.fail(r.Id, "n01")
	h.tick(time.Second)
	if h.state(r.Id) != stFailed {
		t.Fatalf("state %v", h.state(r.Id))
	}
	h.fleet.add("n02", "prod")
	h.tick(time.Second)
	if _, err := h.e.Group("prod"); err != nil {
		t.Fatal(err)
	}
	if g := h.group(); len(g.Desired) != 0 || len(h.catchUps()) != 0 {
		t.Errorf("desired %v, catch-ups %d: a rollout with a failed node sets no desired state", g.Desired, len(h.catchUps()))
	}
	// Neither does a selector rollout (it is not the group's version).
	s := h.create(strat{noCanary: true, parallel: "10", healthy: time.Second, selector: map[string]string{"group": "prod"}, version: "1.20.2"})
	for _, n := range s.Nodes {
		h.succeed(s.Id, n.NodeId)
	}
	h.tick(time.Second)
	if g := h.group(); len(g.Desired) != 0 {
		t.Errorf("desired %v after a selector rollout", g.Desired)
	}
}

func TestCatchUpParallelLimit(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	h.rollOut("1.20.3")
	for _, id := range []string{"n01", "n02", "n03"} {
		h.fleet.add(id, "prod")
	}
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 1 || len(cus[0].Nodes) != 3 {
		t.Fatalf("catch-ups %v, want one with the three late nodes", cus)
	}
	if got := inFlightNodes(cus[0]); len(got) != 1 {
		t.Fatalf("in flight %v, want 1 (default catch-up parallelism)", got)
	}
	st := behindStatus(h.group())
	if st["n01"] != cuRunning || st["n02"] != cuRunning {
		t.Errorf("status %v", st)
	}

	// With --catch-up-parallel 2, the next catch-up runs two at once.
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod", CatchUpParallel: proto.Uint32(2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.Abort("admin/alice", cus[0].Id); err != nil {
		t.Fatal(err)
	}
	h.report(cus[0].Id, "n01", phFailed, "cancelled")
	h.fleet.add("n04", "prod")
	h.fleet.add("n05", "prod")
	h.tick(time.Second)
	cus = h.catchUps()
	if len(cus) != 2 {
		t.Fatalf("catch-ups %d, want 2", len(cus))
	}
	if got := inFlightNodes(cus[1]); len(got) != 2 || !slices.Equal(nodeIDs(cus[1]), []string{"n04", "n05"}) {
		t.Errorf("second catch-up nodes %v, in flight %v: want n04, n05 both in flight (n02, n03 were skipped by the abort and are held)", nodeIDs(cus[1]), got)
	}
	if st := behindStatus(h.group()); st["n02"] != cuHeld {
		t.Errorf("n02 %v, want held after its catch-up was aborted", st["n02"])
	}
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod", CatchUpParallel: proto.Uint32(0)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("parallel 0: %v, want ErrInvalid", err)
	}
}

func TestCatchUpFailurePausesAndRetry(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	h.rollOut("1.20.3")
	h.fleet.add("n01", "prod")
	h.fleet.add("n02", "prod")
	h.tick(time.Second)
	cu := h.catchUps()[0]
	h.fail(cu.Id, "n01")
	h.tick(time.Second)
	if got := h.get(cu.Id); got.State != stPaused || !strings.Contains(got.Message, "paused") {
		t.Fatalf("catch-up %v (%s), want paused by the failure policy", got.State, got.Message)
	}
	h.fleet.add("n03", "prod")
	h.tick(time.Second)
	if len(h.catchUps()) != 1 || h.jobsTo("n02") != 0 {
		t.Fatalf("catch-ups %d, jobs to n02 %d: nothing may start while the group's catch-up is paused", len(h.catchUps()), h.jobsTo("n02"))
	}
	g := h.group()
	st := behindStatus(g)
	if st["n01"] != cuFailed || st["n02"] != cuRunning || st["n03"] != cuBlocked {
		t.Fatalf("status %v, want n01 failed, n02 running (its catch-up is paused), n03 blocked", g.Behind)
	}
	for _, b := range g.Behind {
		if b.NodeId == "n01" && !strings.Contains(b.Reason, "check: go version") {
			t.Errorf("n01 reason %q lacks the failed step", b.Reason)
		}
	}
	if _, err := h.e.Abort("admin/alice", cu.Id); err != nil {
		t.Fatal(err)
	}
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 2 || !slices.Equal(nodeIDs(cus[1]), []string{"n03"}) {
		t.Fatalf("catch-ups %v, want a second one for n03 only (n01 failed, n02 was skipped by the abort)", cus)
	}
	h.succeed(cus[1].Id, "n03")
	h.tick(time.Second)
	if st := behindStatus(h.group()); st["n01"] != cuFailed || st["n02"] != cuHeld || len(st) != 2 {
		t.Fatalf("status %v", st)
	}
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod", Retry: true}); err != nil {
		t.Fatal(err)
	}
	h.tick(time.Second)
	cus = h.catchUps()
	if len(cus) != 3 || !slices.Equal(nodeIDs(cus[2]), []string{"n01", "n02"}) {
		t.Fatalf("catch-ups after retry %v, want a third for n01 and n02", cus)
	}
	if ev := h.audit.list(); !slices.Contains(ev, "admin/alice group.update prod ok") {
		t.Errorf("audit %v", ev)
	}
}

func TestCatchUpOffPerGroup(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	h.rollOut("1.20.3")
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod", CatchUp: proto.Bool(false)}); err != nil {
		t.Fatal(err)
	}
	h.fleet.add("n01", "prod")
	h.tick(time.Second)
	if len(h.catchUps()) != 0 {
		t.Fatal("catch-up while off")
	}
	g := h.group()
	if g.CatchUp || behindStatus(g)["n01"] != cuOff {
		t.Fatalf("group %v", g)
	}
	// Turned off does not stop the desired state from being recorded.
	h.restart()
	h.tick(time.Second)
	if len(h.catchUps()) != 0 {
		t.Fatal("catch-up after a restart while off")
	}
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod", CatchUp: proto.Bool(true)}); err != nil {
		t.Fatal(err)
	}
	h.tick(time.Second)
	if len(h.catchUps()) != 1 {
		t.Fatal("no catch-up once turned back on")
	}
	ev := h.audit.list()
	if !slices.Contains(ev, "admin/alice group.update prod ok") {
		t.Errorf("audit %v", ev)
	}
	// Refusals are audited and change nothing.
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prodd", CatchUp: proto.Bool(false)}); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "ferryctl nodes") {
		t.Errorf("unknown group: %v", err)
	}
	if _, err := h.e.UpdateGroup("admin/alice", &ferryv1.UpdateGroupRequest{Name: "prod"}); !errors.Is(err, ErrInvalid) {
		t.Errorf("nothing to change: %v", err)
	}
	if !h.group().CatchUp {
		t.Error("a refused update changed the group")
	}
	if ev := h.audit.list(); !strings.HasPrefix(ev[len(ev)-1], "admin/alice group.update prod ") || strings.HasSuffix(ev[len(ev)-1], " ok") {
		t.Errorf("last audit %q, want the refusal", ev[len(ev)-1])
	}
}

func TestNoCatchUpDuringActiveRollout(t *testing.T) {
	h := newCatchUpHarness(t, 2)
	h.rollOut("1.20.3")
	// A new rollout waits for promotion after its canary.
	r := h.create(strat{canary: 1, healthy: time.Second, version: "1.20.2"})
	h.fleet.add("n02", "prod")
	h.tick(time.Second)
	if len(h.catchUps()) != 0 {
		t.Fatal("catch-up while a rollout of the package is active in the group")
	}
	if st := behindStatus(h.group()); st["n02"] != cuBlocked {
		t.Fatalf("n02 %v, want blocked", st)
	}
	if _, err := h.e.Abort("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	h.report(r.Id, "n00", phFailed, "cancelled")
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 1 || !slices.Equal(nodeIDs(cus[0]), []string{"n02"}) || cus[0].PackageVersion != "1.20.3" {
		t.Fatalf("catch-ups %v, want n02 to the desired 1.20.3 once the aborted rollout ended (n00, touched by it, is left)", cus)
	}
}

func TestCatchUpRestartDoesNotDuplicate(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	h.rollOut("1.20.3")
	h.fleet.add("n01", "prod")
	h.tick(time.Second)
	cu := h.catchUps()[0]
	if h.jobsTo("n01") != 1 {
		t.Fatalf("jobs to n01 = %d", h.jobsTo("n01"))
	}
	h.restart() // the job is in flight
	h.tick(time.Second)
	h.tick(time.Second)
	if len(h.catchUps()) != 1 || h.jobsTo("n01") != 1 {
		t.Fatalf("after restart: catch-ups %d, jobs to n01 %d, want 1 and 1", len(h.catchUps()), h.jobsTo("n01"))
	}
	// The agent reports success, but the fleet still shows no version
	// (its heartbeat is late): no second job, before or after a restart.
	h.e.HandleJobUpdate("n01", &ferryv1.JobUpdate{JobId: mainJobID(cu.Id, "n01"), RolloutId: cu.Id, Phase: phSucceeded})
	h.tick(time.Second)
	h.tick(time.Second)
	if got := h.state(cu.Id); got != stSucceeded {
		t.Fatalf("catch-up %v", got)
	}
	h.restart()
	h.tick(time.Second)
	h.tick(time.Second)
	if len(h.catchUps()) != 1 || h.jobsTo("n01") != 1 {
		t.Fatalf("after success and restart: catch-ups %d, jobs to n01 %d, want 1 and 1", len(h.catchUps()), h.jobsTo("n01"))
	}
	if st := behindStatus(h.group()); st["n01"] != cuHeld {
		t.Errorf("n01 %v, want held (its catch-up succeeded, the fleet shows otherwise)", st)
	}
}

func TestDesiredRecordedAfterRestart(t *testing.T) {
	// The controller stopped after the rollout ended but before the group
	// record was written: the next engine records it.
	h := newHarness(t, 1)
	r := h.rollOut("1.20.3")
	h.groups = &fakeGroups{data: map[string][]byte{}, audit: h.audit}
	h.restart()
	h.tick(time.Second)
	if g := h.group(); len(g.Desired) != 1 || g.Desired[0].RolloutId != r.Id {
		t.Fatalf("desired %v", g.Desired)
	}
	// A failing store leaves it for the next look.
	h.fleet.add("n01", "prod")
	h.groups.fail = errors.New("disk full")
	r2 := h.rollOut("1.20.2")
	h.tick(time.Second)
	if g := h.group(); g.Desired[0].RolloutId != r.Id {
		t.Fatalf("desired %v changed though the save failed", g.Desired)
	}
	h.groups.fail = nil
	h.tick(time.Second)
	if g := h.group(); g.Desired[0].RolloutId != r2.Id || g.Desired[0].Version != "1.20.2" {
		t.Fatalf("desired %v, want 1.20.2 from %s", g.Desired, r2.Id)
	}
}

func TestCatchUpAfterUndoAndMove(t *testing.T) {
	h := newCatchUpHarness(t, 2)
	h.fleet.add("s00", "staging")
	for _, n := range []string{"n00", "n01"} {
		h.fleet.setInstalled(n, "go", "1.20.2", "")
	}
	r := h.rollOut("1.20.3")
	ur, err := h.e.Undo("admin/alice", &ferryv1.UndoRolloutRequest{Group: "prod", PackageName: "go", Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "2"}})
	if err != nil {
		t.Fatal(err)
	}
	u := ur.GetRollout()
	h.succeed(u.Id, "n00")
	h.succeed(u.Id, "n01")
	h.tick(20 * time.Second)
	if got := h.state(u.Id); got != stSucceeded {
		t.Fatalf("undo %v", got)
	}
	h.tick(time.Second)
	g := h.group()
	if len(g.Desired) != 1 || g.Desired[0].Version != "1.20.2" || g.Desired[0].RolloutId != u.Id {
		t.Fatalf("desired after undo of %s: %v, want 1.20.2 from %s", r.Id, g.Desired, u.Id)
	}
	// A staging node that got go@1.20.3 in staging is moved into prod: its
	// staging job does not count, it is caught up to prod's 1.20.2.
	st := h.create(strat{group: "staging", healthy: time.Second})
	h.succeed(st.Id, "s00")
	h.tick(time.Second)
	h.fleet.mu.Lock()
	h.fleet.nodes["s00"].Group = "prod"
	h.fleet.mu.Unlock()
	h.tick(time.Second)
	cus := h.catchUps()
	if len(cus) != 1 || !slices.Equal(nodeIDs(cus[0]), []string{"s00"}) || cus[0].PackageVersion != "1.20.2" {
		t.Fatalf("catch-ups %v, want s00 to 1.20.2", cus)
	}
	if n := nodeOf(cus[0], "s00"); n.PreviousVersion != "1.20.3" {
		t.Errorf("previous version %q", n.PreviousVersion)
	}
}

// An undo of a rollout that found a node already at its version leaves
// that node there, so the group ends on two versions: the undo sets no
// desired state, and catch-up does not take the node it left alone back.
func TestCatchUpLeavesWhatAnUndoLeftAlone(t *testing.T) {
	h := newCatchUpHarness(t, 3)
	for _, n := range []string{"n00", "n01"} {
		h.fleet.setInstalled(n, "go", "1.20.2", "")
	}
	h.fleet.setInstalled("n02", "go", "1.20.3", "1.20.2")
	r := h.create(strat{noCanary: true, parallel: "10", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.succeed(r.Id, "n01")
	h.report(r.Id, "n02", phUnchanged, "")
	h.tick(time.Second)
	h.tick(time.Second)
	if got := h.state(r.Id); got != stSucceeded {
		t.Fatalf("rollout %v", got)
	}
	if g := h.group(); len(g.Desired) != 1 || g.Desired[0].RolloutId != r.Id {
		t.Fatalf("desired after the rollout: %v, want 1.20.3 from %s", g.Desired, r.Id)
	}
	resp, err := h.undo(&ferryv1.UndoRolloutRequest{ToRollout: r.Id, Strategy: noCanary})
	if err != nil {
		t.Fatal(err)
	}
	u := resp.Rollout
	if !slices.Equal(nodeIDs(u), []string{"n00", "n01"}) {
		t.Fatalf("undo nodes %v, want n00 and n01 (n02 was unchanged)", nodeIDs(u))
	}
	h.finishAll(u.Id)
	if got := h.state(u.Id); got != stSucceeded {
		t.Fatalf("undo %v", got)
	}
	for range 3 {
		h.tick(3 * time.Second)
	}
	if cus := h.catchUps(); len(cus) != 0 {
		t.Errorf("catch-ups after the undo: %v on %v, want none (n02 keeps 1.20.3, the undo left it alone)", cus[0].PackageVersion, nodeIDs(cus[0]))
	}
	if got := h.jobsTo("n02"); got != 1 {
		t.Errorf("n02 got %d jobs, want 1 (the rollout's only)", got)
	}
	if g := h.group(); len(g.Desired) != 1 || g.Desired[0].RolloutId != r.Id {
		t.Errorf("desired after the undo: %v, want still 1.20.3 from %s (the group is on two versions)", g.Desired, r.Id)
	}
}

func TestGroupUnknown(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	if _, err := h.e.Group("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Group(nope) = %v", err)
	}
	if _, err := h.e.Group(""); !errors.Is(err, ErrInvalid) {
		t.Errorf("Group(\"\") = %v", err)
	}
	if g := h.group(); len(g.Desired) != 0 || !g.CatchUp {
		t.Errorf("fresh group %v", g)
	}
}

// BenchmarkCatchUpLook is one look (Tick) over a group of 2000 nodes, all
// on the desired version, with 50 ended rollouts of 2000 nodes each: the
// cost catch-up adds under the engine's lock every CatchUpEvery.
func BenchmarkCatchUpLook(b *testing.B) {
	const nodes, rollouts = 2000, 50
	clock := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	fleet := &fakeFleet{clock: clock, nodes: map[string]*ferryv1.Node{}}
	store := newFakeStore()
	audit := &fakeAuditor{}
	store.audit = audit
	for i := range nodes {
		id := fmt.Sprintf("n%04d", i)
		fleet.add(id, "prod")
		fleet.setInstalled(id, "go", "1.20.3", "")
	}
	strat, err := withDefaults(nil)
	if err != nil {
		b.Fatal(err)
	}
	for k := range rollouts {
		r := &ferryv1.Rollout{Strategy: strat,
			Id: fmt.Sprintf("ro-%d", k), PackageName: "go", PackageVersion: "1.20.3", Target: &ferryv1.Target{Group: "prod"},
			State: stSucceeded, JobKind: kindInstall, CreatedAt: timestamppb.New(clock.Now().Add(time.Duration(k) * time.Minute)),
		}
		for i := range nodes {
			id := fmt.Sprintf("n%04d", i)
			r.Nodes = append(r.Nodes, &ferryv1.NodeJob{NodeId: id, JobId: mainJobID(r.Id, id), Outcome: ocSucceeded, Wave: 1})
		}
		if err := store.SaveRollout(r, nil); err != nil {
			b.Fatal(err)
		}
	}
	e, err := New(Config{
		Store: store, Dispatcher: &fakeDispatcher{fleet: fleet}, Fleet: fleet, Clock: clock, Auditor: audit,
		Packages: &fakePackages{pkgs: map[string]*ferryv1.Package{"go@1.20.3": {Name: "go", Version: "1.20.3"}}},
		Groups:   &fakeGroups{data: map[string][]byte{}, audit: audit}, CatchUpEvery: time.Nanosecond,
		ReconnectGrace: -1, DisconnectGrace: -1,
	})
	if err != nil {
		b.Fatal(err)
	}
	e.Tick(clock.Advance(time.Second)) // records the desired state
	for b.Loop() {
		e.Tick(clock.Advance(time.Second))
	}
	if g, err := e.Group("prod"); err != nil || len(g.Desired) != 1 || len(g.Behind) != 0 {
		b.Fatalf("group %v, %v", g, err)
	}
}

func TestCatchUpPackageGone(t *testing.T) {
	h := newCatchUpHarness(t, 1)
	h.rollOut("1.20.3")
	delete(h.pkgs.pkgs, "go@1.20.3") // `package rm` (refused while in use; here by hand)
	h.fleet.add("n01", "prod")
	h.tick(time.Second)
	if len(h.catchUps()) != 0 {
		t.Fatal("catch-up of a package version that is no longer stored")
	}
	g := h.group()
	if st := behindStatus(g); st["n01"] != cuHeld || g.Behind[0].Reason != "cannot be caught up: package go@1.20.3: not found; apply go@1.20.3 again with `ferryctl package apply`, or roll out another version" {
		t.Errorf("behind %v, want n01 held naming the package", g.Behind)
	}
}
