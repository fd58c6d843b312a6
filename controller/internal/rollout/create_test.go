// Tests of creating a rollout: defaults, refused requests, unreachable nodes
// at the start, conflicts (create.go).

package rollout

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
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

func TestConflictingRolloutIsRefused(t *testing.T) {
	h := newHarness(t, 3)
	h.fleet.add("s00", "staging", nil)
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
