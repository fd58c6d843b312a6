// Tests of creating a rollout: defaults, refused requests, unreachable nodes
// at the start, conflicts (create.go).

package rollout

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestCreateFillsCautiousDefaults(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{})
	s := r.Strategy
	if s.GetCanary() != 1 || s.AutoPromote || s.MaxParallel != "1" || s.MaxFailures != "0" ||
		s.OnFailure != actPause || s.ProgressDeadline.AsDuration() != 10*time.Minute || s.HealthyFor.AsDuration() != 10*time.Second {
		t.Errorf("defaults = %v", s)
	}
	if r.State != stRunning || r.CreatedBy != "admin/alice" || r.JobKind != kindInstall {
		t.Errorf("rollout = state %v by %q kind %v", r.State, r.CreatedBy, r.JobKind)
	}
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00"}) {
		t.Errorf("jobs sent at create = %v, want only the canary n00", got)
	}
	job := h.disp.job(r.Id, "n00")
	if job.Kind != kindInstall || job.Package.Version != "1.20.3" || job.Deadline.AsDuration() != 10*time.Minute || job.Id != r.Id+"/job/n00" {
		t.Errorf("job = %v", job)
	}
	// The job ID was on disk when the job was sent.
	if n := nodeOf(h.store.get(r.Id), "n00"); n.JobId != job.Id || n.Outcome != ocDownloading {
		t.Errorf("stored n00 = %v", n)
	}
	waves := map[string]uint32{}
	for _, n := range r.Nodes {
		waves[n.NodeId] = n.Wave
	}
	if waves["n00"] != 0 || waves["n01"] != 1 || waves["n02"] != 1 {
		t.Errorf("waves = %v", waves)
	}
}

func TestCreateRefusesBadRequests(t *testing.T) {
	tests := []struct {
		name string
		req  func(*ferryv1.CreateRolloutRequest)
		is   error
		want string
	}{
		{"no package", func(r *ferryv1.CreateRolloutRequest) { r.PackageName = "" }, ErrInvalid, "no package"},
		{"no version", func(r *ferryv1.CreateRolloutRequest) { r.PackageVersion = "" }, ErrInvalid, "stored versions: 1.20.2, 1.20.3"},
		{"unknown version", func(r *ferryv1.CreateRolloutRequest) { r.PackageVersion = "9.9" }, ErrNotFound, "ferryctl package apply"},
		{"no target", func(r *ferryv1.CreateRolloutRequest) { r.Target = nil }, ErrInvalid, "no target"},
		{"no matching node", func(r *ferryv1.CreateRolloutRequest) { r.Target.Group = "staging" }, ErrInvalid, "no enrolled node matches group=staging"},
		{"selector matches nothing", func(r *ferryv1.CreateRolloutRequest) { r.Target.Selector = map[string]string{"dc": "sh1"} }, ErrInvalid, "selector=dc=sh1"},
		{"max-parallel zero", func(r *ferryv1.CreateRolloutRequest) { r.Strategy.MaxParallel = "0" }, ErrInvalid, `max-parallel "0"`},
		{"max-parallel words", func(r *ferryv1.CreateRolloutRequest) { r.Strategy.MaxParallel = "lots" }, ErrInvalid, `max-parallel "lots"`},
		{"max-failures over 100%", func(r *ferryv1.CreateRolloutRequest) { r.Strategy.MaxFailures = "150%" }, ErrInvalid, `max-failures "150%"`},
		{"bad action", func(r *ferryv1.CreateRolloutRequest) { r.Strategy.OnFailure = 42 }, ErrInvalid, "on-failure"},
		{"healthy-for past deadline", func(r *ferryv1.CreateRolloutRequest) {
			r.Strategy.ProgressDeadline = durationpb.New(time.Minute)
			r.Strategy.HealthyFor = durationpb.New(2 * time.Minute)
		}, ErrInvalid, "shorter than progress-deadline"},
		{"negative deadline", func(r *ferryv1.CreateRolloutRequest) { r.Strategy.ProgressDeadline = durationpb.New(-time.Minute) }, ErrInvalid, "progress-deadline"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 2)
			req := strat{}.request()
			tt.req(req)
			_, err := h.e.Create(context.Background(), "admin/bob", req)
			if err == nil {
				t.Fatal("Create succeeded, want an error")
			}
			if !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %q, want %v containing %q", err, tt.is, tt.want)
			}
			if len(h.disp.deliveries()) != 0 || h.store.saveCount() != 0 {
				t.Error("a refused rollout sent jobs or was stored")
			}
			if ev := h.audit.list(); len(ev) != 1 || !strings.HasPrefix(ev[0], "admin/bob rollout.create ") || strings.HasSuffix(ev[0], " ok") {
				t.Errorf("audit = %v, want one failed rollout.create", ev)
			}
		})
	}
}

func TestUnreachableAtStartIsNeverWaitedOn(t *testing.T) {
	h := newHarness(t, 4)
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_DOWN, false)
	h.fleet.setState("n02", ferryv1.NodeState_NODE_STATE_UNREACHABLE, false)
	h.fleet.mu.Lock()
	h.fleet.nodes["n03"].Connected = false // healthy-looking but no stream
	h.fleet.mu.Unlock()
	r := h.create(strat{canary: 1, parallel: "3", healthy: time.Second})
	got := outcomes(r)
	if got["n00"] != ocUnreachable || got["n02"] != ocUnreachable || got["n03"] != ocUnreachable {
		t.Fatalf("outcomes = %v", got)
	}
	if n := nodeOf(r, "n01"); n.Wave != 0 {
		t.Errorf("the canary should be the first reachable node: n01 wave %d", n.Wave)
	}
	if !strings.Contains(nodeOf(r, "n00").Message, "not connected at the start (down") {
		t.Errorf("n00 message %q", nodeOf(r, "n00").Message)
	}
	if sent := h.sentTo(r.Id); !slices.Equal(sent, []string{"n01"}) {
		t.Fatalf("sent %v", sent)
	}
	// Unreachable nodes are not failures (max-failures 0 did not pause).
	h.succeed(r.Id, "n01")
	h.tick(time.Second)
	final := h.get(r.Id)
	if final.State != stFailed || !strings.Contains(final.Message, "1 succeeded, 3 unreachable") {
		t.Errorf("final %v %q, want failed: not every node succeeded", final.State, final.Message)
	}
}

// A node whose stream dropped moments before the rollout was created (a
// flapping link) is waited for, not marked unreachable, and gets its job
// when its agent is back; the canary is a node connected now. A node gone
// for longer than the grace, or that gossip reports down, is unreachable
// at once as before, and one that does not come back within the grace is
// unreachable when its turn comes.
func TestNodeReconnectingAtStartIsWaitedFor(t *testing.T) {
	h := newHarness(t, 5)
	h.disconnectGrace = 15 * time.Second
	h.e = h.newEngine()
	unreachable := ferryv1.NodeState_NODE_STATE_UNREACHABLE // stream closed, gossip alive
	h.fleet.setState("n03", unreachable, false)
	h.tick(time.Minute)
	h.fleet.setState("n00", unreachable, false)
	h.fleet.setState("n02", unreachable, false)
	h.fleet.setState("n04", ferryv1.NodeState_NODE_STATE_DOWN, false)
	h.clock.Advance(2 * time.Second)

	r := h.create(strat{canary: 1, auto: true, parallel: "3", healthy: time.Second})
	want := map[string]ferryv1.NodeOutcome{"n00": ocPending, "n01": ocDownloading, "n02": ocPending, "n03": ocUnreachable, "n04": ocUnreachable}
	if got := outcomes(r); !maps.Equal(got, want) {
		t.Fatalf("at creation: outcomes %v, want %v", got, want)
	}
	if n := nodeOf(r, "n01"); n.Wave != 0 {
		t.Errorf("canary: n01 in wave %d, want the connected node as the canary", n.Wave)
	}
	if !strings.Contains(nodeOf(r, "n03").Message, "not connected at the start (unreachable, not connected") {
		t.Errorf("n03 message %q", nodeOf(r, "n03").Message)
	}

	h.succeed(r.Id, "n01")
	h.tick(time.Second)
	h.tick(time.Second)
	if got := outcomes(h.get(r.Id)); got["n00"] != ocPending || got["n02"] != ocPending {
		t.Fatalf("while reconnecting: outcomes %v, want n00 and n02 still pending", got)
	}
	// n00's agent is back 5 s after its stream dropped; n02's never is.
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
	h.tick(time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocDownloading || h.disp.job(r.Id, "n00") == nil {
		t.Fatalf("after it reconnected n00 = %v (job %v), want its job sent", got, h.disp.job(r.Id, "n00"))
	}
	h.succeed(r.Id, "n00")
	for range 12 {
		h.tick(time.Second)
	}
	cur := h.get(r.Id)
	n02 := nodeOf(cur, "n02")
	if n02.Outcome != ocUnreachable || !strings.Contains(n02.Message, "not connected when its turn came") {
		t.Errorf("n02 past the grace = %v %q, want unreachable", n02.Outcome, n02.Message)
	}
	if got := outcomes(cur); got["n00"] != ocSucceeded || got["n01"] != ocSucceeded {
		t.Errorf("outcomes %v, want n00 and n01 succeeded", got)
	}
}

func TestConflictingRolloutIsRefused(t *testing.T) {
	h := newHarness(t, 3)
	h.fleet.add("s00", "staging")
	r := h.create(strat{healthy: time.Second})
	_, err := h.e.Create(context.Background(), "admin/bob", strat{version: "1.20.2"}.request())
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("err = %v, want ErrConflict", err)
	}
	for _, want := range []string{"rollout " + r.Id, "go@1.20.3", "running", "n00, n01, n02", "ferryctl rollout abort " + r.Id} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// Other nodes, or another package, are fine.
	if _, err := h.e.Create(context.Background(), "admin/bob", strat{group: "staging"}.request()); err != nil {
		t.Errorf("other group: %v", err)
	}
	if _, err := h.e.Create(context.Background(), "admin/bob", strat{pkg: "tool", version: "1.0"}.request()); err != nil {
		t.Errorf("other package: %v", err)
	}
	// Once the first ends, the package can be rolled out again.
	if _, err := h.e.Abort("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	h.report(r.Id, "n00", phFailed, "cancelled")
	if _, err := h.e.Create(context.Background(), "admin/bob", strat{version: "1.20.2"}.request()); err != nil {
		t.Errorf("after the first ended: %v", err)
	}
}
