package rollout

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const (
	phDownloading = ferryv1.JobPhase_JOB_PHASE_DOWNLOADING
	phInstalling  = ferryv1.JobPhase_JOB_PHASE_INSTALLING
	phChecking    = ferryv1.JobPhase_JOB_PHASE_CHECKING
	phSucceeded   = ferryv1.JobPhase_JOB_PHASE_SUCCEEDED
	phUnchanged   = ferryv1.JobPhase_JOB_PHASE_UNCHANGED
	phFailed      = ferryv1.JobPhase_JOB_PHASE_FAILED

	actPause    = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
	actAbort    = ferryv1.FailureAction_FAILURE_ACTION_ABORT
	actRollback = ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK
)

func TestParseLimit(t *testing.T) {
	tests := []struct {
		in      string
		min     int
		want    limit
		wantErr bool
	}{
		{"2", 1, limit{n: 2}, false},
		{" 25% ", 1, limit{n: 25, percent: true}, false},
		{"0", 0, limit{n: 0}, false},
		{"0%", 0, limit{n: 0, percent: true}, false},
		{"100%", 1, limit{n: 100, percent: true}, false},
		{"0", 1, limit{}, true},
		{"0%", 1, limit{}, true},
		{"101%", 0, limit{}, true},
		{"-1", 0, limit{}, true},
		{"abc", 0, limit{}, true},
		{"2.5", 0, limit{}, true},
		{"%", 0, limit{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseLimit("max-parallel", tt.in, tt.min)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseLimit(%q) error = %v, want error %t", tt.in, err, tt.wantErr)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "max-parallel") {
					t.Errorf("error %q should wrap ErrInvalid and name the flag", err)
				}
				return
			}
			if got != tt.want {
				t.Errorf("parseLimit(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestLimitArithmetic(t *testing.T) {
	tests := []struct {
		l            limit
		total        int
		wantParallel int
		// first failure count that exceeds the limit
		wantTrip int
	}{
		{limit{n: 1}, 10, 1, 2},
		{limit{n: 0}, 10, 1, 1},
		{limit{n: 25, percent: true}, 10, 2, 3}, // 2.5 nodes
		{limit{n: 20, percent: true}, 10, 2, 3}, // exactly 2
		{limit{n: 10, percent: true}, 5, 1, 1},  // 0.5 nodes: window at least 1
		{limit{n: 100, percent: true}, 7, 7, 8}, // never within the fleet
		{limit{n: 50, percent: true}, 3, 1, 2},  // 1.5
		{limit{n: 34, percent: true}, 3, 1, 2},  // 1.02
		{limit{n: 33, percent: true}, 3, 1, 1},  // 0.99
		{limit{n: 5}, 3, 5, 6},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s_of_%d", tt.l, tt.total), func(t *testing.T) {
			if got := tt.l.parallel(tt.total); got != tt.wantParallel {
				t.Errorf("parallel = %d, want %d", got, tt.wantParallel)
			}
			trip := 0
			for f := 0; f <= 100; f++ {
				if tt.l.exceeded(f, tt.total) {
					trip = f
					break
				}
			}
			if trip != tt.wantTrip {
				t.Errorf("first exceeding failure count = %d, want %d", trip, tt.wantTrip)
			}
		})
	}
}

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

// The sliding window never has more than max-parallel jobs in flight, and
// keeps exactly that many while nodes are waiting (it is not a batch).
func TestSlidingWindowNeverExceedsMaxParallel(t *testing.T) {
	tests := []struct {
		nodes    int
		parallel string
		want     int
		canary   uint32
	}{
		{12, "3", 3, 1},
		{20, "25%", 5, 2},
		{7, "100%", 7, 1},
		{5, "1", 1, 1},
		{9, "2", 2, 4},
		{3, "10", 10, 1},
	}
	for _, tt := range tests {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("%d_nodes_%s_seed%d", tt.nodes, tt.parallel, seed), func(t *testing.T) {
				h := newHarness(t, tt.nodes)
				rng := rand.New(rand.NewPCG(seed, 7))
				r := h.create(strat{canary: tt.canary, auto: true, parallel: tt.parallel, failures: "100%", healthy: time.Second})
				phases := map[string]int{} // node -> next phase index
				sequence := []ferryv1.JobPhase{phDownloading, phInstalling, phChecking}
				check := func(where string) {
					t.Helper()
					cur := h.get(r.Id)
					in := inFlightNodes(cur)
					if len(in) > tt.want {
						t.Fatalf("%s: %d jobs in flight %v, max-parallel %s allows %d", where, len(in), in, tt.parallel, tt.want)
					}
					canariesDone, pending := true, 0
					for _, n := range cur.Nodes {
						if n.Wave == 0 && !terminalOutcome(n.Outcome) {
							canariesDone = false
						}
						if n.Outcome == ocPending {
							pending++
						}
					}
					if cur.State == stRunning && canariesDone && pending > 0 && len(in) != min(tt.want, tt.nodes) {
						t.Fatalf("%s: %d in flight with %d pending; the window should keep %d in flight", where, len(in), pending, tt.want)
					}
				}
				check("after create")
				for step := 0; step < 2000 && !terminalState(h.state(r.Id)); step++ {
					for _, id := range inFlightNodes(h.get(r.Id)) {
						if rng.IntN(3) != 0 {
							continue
						}
						if n := nodeOf(h.get(r.Id), id); waitingHealthy(n) {
							continue // only time finishes this
						}
						i := phases[id]
						switch {
						case i < len(sequence):
							h.report(r.Id, id, sequence[i], "")
						default:
							switch rng.IntN(10) {
							case 0:
								h.fail(r.Id, id)
							case 1:
								h.report(r.Id, id, phUnchanged, "")
							default:
								h.succeed(r.Id, id)
							}
						}
						phases[id] = i + 1
						check("after a report from " + id)
					}
					h.tick(time.Duration(rng.IntN(800)) * time.Millisecond)
					check("after a tick")
				}
				final := h.get(r.Id)
				if !terminalState(final.State) {
					t.Fatalf("rollout did not end: %v", final.State)
				}
				sent := h.sentTo(r.Id)
				slices.Sort(sent)
				if len(sent) != tt.nodes || len(slices.Compact(sent)) != tt.nodes {
					t.Errorf("jobs sent to %v, want each of %d nodes exactly once", sent, tt.nodes)
				}
			})
		}
	}
}

// The failure threshold acts exactly when failures exceed max-failures, not
// before, counted over the whole rollout.
func TestFailureThresholdTripsExactlyWhenExceeded(t *testing.T) {
	tests := []struct {
		failures string
		trip     int // failures that trip it; 0: never
	}{
		{"0", 1},
		{"1", 2},
		{"3", 4},
		{"20%", 3},  // 2 of 10 allowed
		{"25%", 3},  // 2.5 of 10
		{"30%", 4},  // 3 of 10
		{"100%", 0}, // never
	}
	for _, tt := range tests {
		for _, action := range []ferryv1.FailureAction{actPause, actAbort} {
			t.Run(tt.failures+"_"+action.String(), func(t *testing.T) {
				h := newHarness(t, 10)
				r := h.create(strat{canary: 1, auto: true, parallel: "100%", failures: tt.failures, onFailure: action, healthy: time.Second})
				h.succeed(r.Id, "n00")
				h.tick(time.Second)
				if got := len(inFlightNodes(h.get(r.Id))); got != 9 {
					t.Fatalf("after the canary %d jobs in flight, want 9", got)
				}
				for k := 1; k <= 9; k++ {
					h.fail(r.Id, fmt.Sprintf("n%02d", k))
					got := h.get(r.Id)
					switch {
					case tt.trip == 0 || k < tt.trip:
						if k < 9 && got.State != stRunning {
							t.Fatalf("after %d failures state = %v (%s), want running", k, got.State, got.Message)
						}
					case k == tt.trip:
						want := map[ferryv1.FailureAction]ferryv1.RolloutState{actPause: stPaused, actAbort: stAborted}[action]
						if got.State != want {
							t.Fatalf("after %d failures state = %v, want %v", k, got.State, want)
						}
						if !strings.Contains(got.Message, fmt.Sprintf("%d of 10 nodes failed, more than max-failures %s", k, tt.failures)) {
							t.Errorf("message = %q", got.Message)
						}
						return
					}
				}
				if got := h.get(r.Id); got.State != stFailed {
					t.Errorf("all failed below the limit: state = %v, want failed", got.State)
				}
			})
		}
	}
}

func TestCanaryGateAndPromote(t *testing.T) {
	h := newHarness(t, 5)
	r := h.create(strat{canary: 2, parallel: "2", healthy: 5 * time.Second})
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01"}) {
		t.Fatalf("sent to %v, want the two canaries", got)
	}
	if _, err := h.e.Promote("admin/alice", r.Id); !errors.Is(err, ErrState) {
		t.Errorf("promote while canaries run: err = %v, want ErrState", err)
	}
	h.succeed(r.Id, "n00")
	h.report(r.Id, "n01", phUnchanged, "")
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("n00 right after success = %v, want checking (healthy period)", got)
	}
	h.tick(4 * time.Second)
	if got := h.state(r.Id); got != stRunning {
		t.Fatalf("state before healthy_for = %v, want running", got)
	}
	h.tick(time.Second)
	cur := h.get(r.Id)
	if cur.State != stWaiting || !strings.Contains(cur.Message, "ferryctl rollout promote "+r.Id) {
		t.Fatalf("after canaries: state %v %q, want waiting_promotion", cur.State, cur.Message)
	}
	for range 5 {
		h.tick(time.Minute)
	}
	if got := h.sentTo(r.Id); len(got) != 2 {
		t.Fatalf("jobs sent while waiting for promotion: %v", got)
	}
	p, err := h.e.Promote("admin/carol", r.Id)
	if err != nil {
		t.Fatal(err)
	}
	if p.State != stRunning || !slices.Equal(h.sentTo(r.Id), []string{"n00", "n01", "n02", "n03"}) {
		t.Fatalf("after promote: state %v, sent %v", p.State, h.sentTo(r.Id))
	}
	if ev := h.audit.list(); !slices.Contains(ev, "admin/carol rollout.promote "+r.Id+" ok") {
		t.Errorf("audit = %v", ev)
	}
	for _, n := range []string{"n02", "n03"} {
		h.succeed(r.Id, n)
	}
	h.tick(5 * time.Second)
	h.succeed(r.Id, "n04")
	h.tick(5 * time.Second)
	if got := h.get(r.Id); got.State != stSucceeded {
		t.Fatalf("final state %v (%s)", got.State, got.Message)
	}
}

func TestAutoPromoteDoesNotWait(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{canary: 1, auto: true, parallel: "5", healthy: time.Second})
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00"}) {
		t.Fatalf("canary first: sent %v", got)
	}
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01", "n02"}) {
		t.Fatalf("after the canary: sent %v, want wave 1 at once", got)
	}
	if got := h.state(r.Id); got != stRunning {
		t.Errorf("state %v", got)
	}
}

// --canary 0 skips the canary wave: no promotion wait, the window starts
// at once.
func TestNoCanary(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{noCanary: true, parallel: "2", healthy: time.Second})
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01"}) {
		t.Fatalf("without canaries: sent %v, want the first window at once", got)
	}
	for _, n := range r.Nodes {
		if n.Wave != 1 {
			t.Errorf("%s in wave %d, want 1", n.NodeId, n.Wave)
		}
	}
	if got := h.state(r.Id); got != stRunning {
		t.Errorf("state %v, want running", got)
	}
}

func TestPauseAndResume(t *testing.T) {
	h := newHarness(t, 4)
	r := h.create(strat{canary: 1, auto: true, parallel: "2", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second) // n01, n02 start
	p, err := h.e.Pause("admin/alice", r.Id)
	if err != nil || p.State != stPaused {
		t.Fatalf("Pause = %v, %v", p.GetState(), err)
	}
	if _, err := h.e.Pause("admin/alice", r.Id); err != nil {
		t.Errorf("pausing again: %v, want a no-op", err)
	}
	// Running jobs finish; nothing new starts.
	h.succeed(r.Id, "n01")
	h.succeed(r.Id, "n02")
	h.tick(time.Second)
	h.tick(time.Minute)
	if got := h.outcome(r.Id, "n01"); got != ocSucceeded {
		t.Errorf("n01 = %v, want succeeded while paused", got)
	}
	if got := h.sentTo(r.Id); len(got) != 3 {
		t.Fatalf("jobs sent while paused: %v", got)
	}
	if got := h.state(r.Id); got != stPaused {
		t.Fatalf("state = %v", got)
	}
	if _, err := h.e.Resume("admin/bob", r.Id); err != nil {
		t.Fatal(err)
	}
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01", "n02", "n03"}) {
		t.Fatalf("after resume sent %v", got)
	}
	h.succeed(r.Id, "n03")
	h.tick(time.Second)
	if got := h.state(r.Id); got != stSucceeded {
		t.Errorf("final = %v", got)
	}
	want := []string{"admin/alice rollout.pause " + r.Id + " ok", "admin/alice rollout.pause " + r.Id + " ok", "admin/bob rollout.resume " + r.Id + " ok"}
	if got := h.audit.list()[1:]; !slices.Equal(got, want) {
		t.Errorf("audit = %v, want %v", got, want)
	}
}

// Resuming a rollout paused by its failure threshold goes on; the next
// failure pauses it again.
func TestResumeAfterThresholdPauseTripsAgainOnNextFailure(t *testing.T) {
	h := newHarness(t, 5)
	r := h.create(strat{canary: 1, auto: true, parallel: "1", healthy: time.Second})
	h.fail(r.Id, "n00")
	if got := h.state(r.Id); got != stPaused {
		t.Fatalf("state = %v, want paused at the first failure", got)
	}
	h.tick(time.Minute)
	if got := h.sentTo(r.Id); len(got) != 1 {
		t.Fatalf("jobs sent while paused: %v", got)
	}
	// A restart does not trip it again either.
	h.restart()
	if _, err := h.e.Resume("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	if got := h.state(r.Id); got != stRunning {
		t.Fatalf("resumed state = %v", got)
	}
	h.succeed(r.Id, "n01")
	h.tick(time.Second)
	h.fail(r.Id, "n02")
	if got := h.get(r.Id); got.State != stPaused || !strings.Contains(got.Message, "2 of 5 nodes failed") {
		t.Fatalf("after the second failure: %v %q", got.State, got.Message)
	}
}

func TestAbortSkipsPendingAndCancelsRunning(t *testing.T) {
	h := newHarness(t, 5)
	r := h.create(strat{canary: 1, auto: true, parallel: "2", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second) // n01, n02 in flight
	ch, err := h.e.Watch(context.Background(), r.Id)
	if err != nil {
		t.Fatal(err)
	}
	a, err := h.e.Abort("admin/alice", r.Id)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != stAborted {
		t.Fatalf("state = %v", a.State)
	}
	got := outcomes(a)
	if got["n03"] != ocSkipped || got["n04"] != ocSkipped || got["n00"] != ocSucceeded || got["n01"] != ocDownloading {
		t.Errorf("outcomes after abort = %v", got)
	}
	c := h.disp.cancelled()
	if len(c) != 2 || c[0].jobID != r.Id+"/job/n01" || c[1].jobID != r.Id+"/job/n02" {
		t.Errorf("cancelled = %v, want the two running jobs", c)
	}
	if _, err := h.e.Abort("admin/alice", r.Id); !errors.Is(err, ErrState) {
		t.Errorf("second abort: %v, want ErrState", err)
	}
	// While cancelled jobs have not reported, the nodes stay covered.
	if _, err := h.e.Create(context.Background(), "admin/bob", strat{}.request()); !errors.Is(err, ErrConflict) {
		t.Errorf("create during cancelled jobs: %v, want ErrConflict", err)
	}
	h.report(r.Id, "n01", phFailed, "cancelled")
	h.succeed(r.Id, "n02") // finished before the cancel arrived
	h.tick(time.Second)
	final := h.get(r.Id)
	if final.State != stAborted || outcomes(final)["n01"] != ocFailed || outcomes(final)["n02"] != ocSucceeded {
		t.Errorf("final = %v %v", final.State, outcomes(final))
	}
	evs := drain(t, ch)
	if last := evs[len(evs)-1]; last.Rollout.State != stAborted {
		t.Errorf("watch ended with %v", last)
	}
	if got := h.sentTo(r.Id); len(got) != 3 {
		t.Errorf("sent %v", got)
	}
}

func TestProgressDeadline(t *testing.T) {
	tests := []struct {
		name    string
		down    bool
		want    ferryv1.NodeOutcome
		wantMsg string
	}{
		{"silent but connected node fails", false, ocFailed, "no result within the progress deadline 1m0s; job cancelled"},
		{"node that went down is unreachable", true, ocUnreachable, "node went away mid-job (down, not connected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, 4)
			r := h.create(strat{canary: 1, auto: true, parallel: "2", failures: "0", deadline: time.Minute, healthy: time.Second})
			h.succeed(r.Id, "n00")
			h.tick(time.Second) // n01, n02 start
			h.report(r.Id, "n01", phInstalling, "")
			if tt.down {
				h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_DOWN, false)
			}
			h.tick(59 * time.Second)
			if got := h.outcome(r.Id, "n01"); got != ocInstalling {
				t.Fatalf("before the deadline n01 = %v, want still installing (never given up early)", got)
			}
			h.succeed(r.Id, "n02")
			h.tick(time.Second)
			h.tick(time.Second)
			cur := h.get(r.Id)
			n := nodeOf(cur, "n01")
			if n.Outcome != tt.want || !strings.Contains(n.Message, tt.wantMsg) {
				t.Fatalf("n01 = %v %q, want %v %q", n.Outcome, n.Message, tt.want, tt.wantMsg)
			}
			if c := h.disp.cancelled(); len(c) != 1 || c[0].jobID != r.Id+"/job/n01" {
				t.Errorf("cancels = %v", c)
			}
			// Given up mid-job, either way it counts against max-failures 0.
			if cur.State != stPaused || outcomes(cur)["n02"] != ocSucceeded || outcomes(cur)["n03"] != ocPending {
				t.Errorf("state = %v %v, want paused before n03 started", cur.State, outcomes(cur))
			}
			// A late report does not change a final outcome.
			h.succeed(r.Id, "n01")
			if got := h.outcome(r.Id, "n01"); got != tt.want {
				t.Errorf("after a late success n01 = %v", got)
			}
		})
	}
}

func TestHealthyForNeedsUnbrokenHeartbeats(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, healthy: 10 * time.Second})
	h.succeed(r.Id, "n00")
	h.tick(6 * time.Second)
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_STALE, true)
	h.tick(3 * time.Second)
	h.fleet.setState("n00", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
	h.tick(time.Second) // healthy again at t=10s: the period restarts here
	h.tick(5 * time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("15s after success with a stale gap = %v, want still checking", got)
	}
	h.tick(5 * time.Second)
	n := nodeOf(h.get(r.Id), "n00")
	if n.Outcome != ocSucceeded || !strings.Contains(n.Message, "healthy for 10s") {
		t.Fatalf("n00 = %v %q, want succeeded after 10s of heartbeats", n.Outcome, n.Message)
	}
}

func TestHealthyForWaitsForAHeartbeatAfterThePeriod(t *testing.T) {
	h := newHarness(t, 1)
	r := h.create(strat{canary: 1, healthy: 10 * time.Second})
	h.succeed(r.Id, "n00")
	// A fleet that reports an old heartbeat: the period has passed, but no
	// heartbeat arrived after it.
	h.fleet.mu.Lock()
	h.fleet.nodes["n00"].State = ferryv1.NodeState_NODE_STATE_HEALTHY
	h.fleet.mu.Unlock()
	stale := &staleHeartbeatFleet{fakeFleet: h.fleet, at: h.clock.Now().Add(5 * time.Second)}
	h.e.cfg.Fleet = stale
	h.tick(11 * time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocChecking {
		t.Fatalf("with the last heartbeat inside the period n00 = %v, want checking", got)
	}
	stale.at = h.clock.Now()
	h.tick(time.Second)
	if got := h.outcome(r.Id, "n00"); got != ocSucceeded {
		t.Fatalf("after a fresh heartbeat n00 = %v, want succeeded", got)
	}
}

type staleHeartbeatFleet struct {
	*fakeFleet
	at time.Time
}

func (f *staleHeartbeatFleet) Node(id string) (*ferryv1.Node, bool) {
	n, ok := f.fakeFleet.Node(id)
	if ok {
		n.LastHeartbeat = timestamppb.New(f.at)
	}
	return n, ok
}

func TestUnchangedCountsAsSuccess(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, auto: true, healthy: time.Second})
	h.report(r.Id, "n00", phUnchanged, "")
	h.report(r.Id, "n01", phUnchanged, "already installed")
	cur := h.get(r.Id)
	if cur.State != stSucceeded || outcomes(cur)["n00"] != ocUnchanged {
		t.Fatalf("state %v outcomes %v", cur.State, outcomes(cur))
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

func TestUnreachableWhenItsTurnComes(t *testing.T) {
	h := newHarness(t, 5)
	r := h.create(strat{canary: 1, auto: true, parallel: "1", failures: "1", healthy: time.Second})
	h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_SUSPECT, true)
	h.disp.fail["n02"] = errors.New("stream send queue is full")
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	cur := h.get(r.Id)
	got := outcomes(cur)
	if got["n01"] != ocUnreachable || got["n02"] != ocUnreachable || got["n03"] != ocDownloading {
		t.Fatalf("outcomes = %v", got)
	}
	if n := nodeOf(cur, "n02"); n.JobId != "" || !strings.Contains(n.Message, "stream send queue is full") {
		t.Errorf("n02 = %v", n)
	}
	if cur.State != stRunning {
		t.Errorf("state %v: nodes never sent a job are not failures", cur.State)
	}
	// With max-failures 1, one real failure does not pause: the two
	// unreachable nodes are not counted.
	h.fail(r.Id, "n03")
	if cur := h.get(r.Id); cur.State != stRunning || outcomes(cur)["n04"] != ocDownloading {
		t.Errorf("after one failure: %v %v (%s), want running with n04 started", cur.State, outcomes(cur), cur.Message)
	}
	h.fail(r.Id, "n04")
	if cur := h.get(r.Id); !strings.Contains(cur.Message, "2 failed, 2 unreachable") {
		t.Errorf("final message %q", cur.Message)
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

func TestRollbackOnFailure(t *testing.T) {
	h := newHarness(t, 6)
	for i := range 6 {
		h.fleet.setInstalled(fmt.Sprintf("n%02d", i), "go", "1.20.2", "")
	}
	r := h.create(strat{canary: 1, auto: true, parallel: "3", failures: "0", onFailure: actRollback, healthy: 2 * time.Second})
	if nodeOf(r, "n00").PreviousVersion != "1.20.2" {
		t.Errorf("previous version not recorded: %v", nodeOf(r, "n00"))
	}
	h.succeed(r.Id, "n00")
	h.tick(2 * time.Second) // n01..n03 start
	h.succeed(r.Id, "n01")  // waiting out its healthy period
	h.report(r.Id, "n02", phUnchanged, "")
	h.report(r.Id, "n03", phInstalling, "")
	h.tick(time.Second) // n04 starts in n02's slot
	h.fail(r.Id, "n04") // exceeds max-failures 0
	cur := h.get(r.Id)
	if cur.State != stRolling {
		t.Fatalf("state = %v (%s), want rolling_back", cur.State, cur.Message)
	}
	if got := outcomes(cur)["n05"]; got != ocSkipped {
		t.Errorf("pending n05 = %v, want skipped", got)
	}
	if c := h.disp.cancelled(); len(c) != 1 || c[0].jobID != r.Id+"/job/n03" {
		t.Errorf("cancels = %v, want the running n03 job", c)
	}
	// n00 (succeeded) and n01 (healthy period) changed: rollback jobs.
	var rb []string
	for _, d := range h.disp.deliveries() {
		if d.job.Kind == kindRollback {
			rb = append(rb, d.node)
			if d.job.Id != r.Id+"/rollback/"+d.node {
				t.Errorf("rollback job id %q", d.job.Id)
			}
		}
	}
	if !slices.Equal(rb, []string{"n00", "n01"}) {
		t.Fatalf("rollback jobs to %v, want n00 n01", rb)
	}
	// n03's job finished despite the cancel: it is rolled back too.
	h.succeed(r.Id, "n03")
	if got := h.sentTo(r.Id); got[len(got)-1] != "n03" || h.disp.job(r.Id, "n03").Kind != kindRollback {
		t.Errorf("n03 not rolled back after its late success: %v", got)
	}
	// Late reports of the replaced install jobs are ignored.
	h.e.HandleJobUpdate("n00", &ferryv1.JobUpdate{JobId: r.Id + "/job/n00", RolloutId: r.Id, Phase: phFailed})
	for _, n := range []string{"n00", "n01", "n03"} {
		h.succeed(r.Id, n)
	}
	final := h.get(r.Id)
	want := map[string]ferryv1.NodeOutcome{"n00": ocRolledBack, "n01": ocRolledBack, "n02": ocUnchanged, "n03": ocRolledBack, "n04": ocFailed, "n05": ocSkipped}
	if final.State != stRolled || !mapsEqual(outcomes(final), want) {
		t.Fatalf("final %v %v, want rolled_back %v", final.State, outcomes(final), want)
	}
	if n := nodeOf(final, "n00"); !strings.Contains(n.Message, "rolled back to 1.20.2") {
		t.Errorf("n00 message %q", n.Message)
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func TestUndo(t *testing.T) {
	h := newHarness(t, 4)
	h.fleet.add("s00", "staging", nil)
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

func TestDuplicateAndStaleUpdatesAreIgnored(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, auto: true, healthy: time.Second})
	h.report(r.Id, "n00", phInstalling, "")
	saves := h.store.saveCount()
	h.report(r.Id, "n00", phInstalling, "still going")
	h.report(r.Id, "n00", phDownloading, "") // backwards
	if got := h.outcome(r.Id, "n00"); got != ocInstalling {
		t.Errorf("n00 = %v after a backwards phase", got)
	}
	if h.store.saveCount() != saves {
		t.Errorf("duplicate updates were persisted: %d saves, want %d", h.store.saveCount(), saves)
	}
	// Another node cannot report this node's job, nor a job it does not hold.
	h.e.HandleJobUpdate("n01", &ferryv1.JobUpdate{JobId: r.Id + "/job/n00", RolloutId: r.Id, Phase: phFailed})
	h.e.HandleJobUpdate("n00", &ferryv1.JobUpdate{JobId: "bogus", RolloutId: r.Id, Phase: phFailed})
	h.e.HandleJobUpdate("n00", &ferryv1.JobUpdate{JobId: "x", RolloutId: "no-such", Phase: phFailed})
	if got := h.outcome(r.Id, "n00"); got != ocInstalling {
		t.Fatalf("n00 = %v after foreign reports", got)
	}
	h.succeed(r.Id, "n00")
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	h.succeed(r.Id, "n00")
	h.fail(r.Id, "n00")
	if got := h.outcome(r.Id, "n00"); got != ocSucceeded {
		t.Errorf("n00 = %v after duplicate and late reports", got)
	}
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01"}) {
		t.Errorf("sent %v", got)
	}
}

func TestStoreFailureNeverSendsAnUnsavedJob(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, auto: true, healthy: time.Second})
	h.store.setFail(errors.New("disk full"))
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	h.tick(time.Second)
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00"}) {
		t.Fatalf("sent %v while the store failed", got)
	}
	if got := h.outcome(r.Id, "n01"); got != ocPending {
		t.Errorf("n01 = %v, want pending", got)
	}
	h.store.setFail(nil)
	h.tick(time.Second)
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01"}) {
		t.Fatalf("sent %v after the store recovered", got)
	}
	if n := nodeOf(h.store.get(r.Id), "n01"); n.JobId == "" {
		t.Errorf("n01's job ID was not stored")
	}
	if _, err := h.e.Create(context.Background(), "a", strat{pkg: "tool", version: "1.0"}.request()); err != nil {
		t.Fatal(err)
	}
	h.store.setFail(errors.New("disk full"))
	if _, err := h.e.Create(context.Background(), "a", strat{pkg: "tool", version: "1.0", group: "prod"}.request()); err == nil {
		t.Error("create with a failing store should fail")
	}
}

func TestWatchReportsProgress(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{canary: 1, parallel: "2", failures: "1", healthy: time.Second})
	ctx := context.Background()
	ch, err := h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	h.report(r.Id, "n00", phInstalling, "")
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	if _, err := h.e.Promote("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	h.fail(r.Id, "n01")
	h.succeed(r.Id, "n02")
	h.tick(time.Second)
	var lines []string
	evs := drain(t, ch)
	last := evs[len(evs)-1]
	for _, ev := range evs {
		lines = append(lines, ev.NodeId+"|"+ev.Event)
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"|running: started by admin/alice",
		"n00|installing",
		"n00|checking: checks passed",
		"n00|succeeded: healthy for 1s",
		"|waiting_promotion: canaries done (1 succeeded)",
		"|running: promoted by admin/alice",
		"|wave 1 started",
		"n01|downloading",
		"n01|failed at check: go version: exit status 1",
		"|failed: 3 nodes: 2 succeeded, 1 failed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("events lack %q:\n%s", want, text)
		}
	}
	if last.Rollout.State != stFailed {
		t.Errorf("last event rollout state %v", last.Rollout.State)
	}
	// Watching an ended rollout returns its state and closes.
	ch, err = h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(drain(t, ch)); n != 1 {
		t.Errorf("watch of an ended rollout sent %d events, want 1", n)
	}
	if _, err := h.e.Watch(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("watch unknown: %v", err)
	}
}

// drain reads the events a watch channel holds and fails the test unless it
// is closed: the engine sends events synchronously, so by the time a test
// drains, an ended rollout's channel is already closed.
func drain(t *testing.T, ch <-chan *ferryv1.WatchRolloutResponse) []*ferryv1.WatchRolloutResponse {
	t.Helper()
	var out []*ferryv1.WatchRolloutResponse
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				if len(out) == 0 {
					t.Fatal("watch channel closed without events")
				}
				return out
			}
			out = append(out, ev)
		default:
			t.Fatalf("watch channel still open after %d events; the rollout has not ended", len(out))
		}
	}
}

func TestWatchStopsWithContext(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{healthy: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	<-ch
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			// drain until closed
			for range ch {
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch channel not closed after the context ended")
	}
}

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
	for _, p := range resp.Plan {
		notes[p.NodeId] = p.Note
		waves[p.NodeId] = p.Wave
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

func TestListAndCounts(t *testing.T) {
	h := newHarness(t, 2)
	h.fleet.add("s00", "staging", nil)
	a := h.create(strat{group: "staging", healthy: time.Second})
	h.clock.Advance(time.Second)
	b := h.create(strat{pkg: "tool", version: "1.0", healthy: time.Second})
	h.succeed(a.Id, "s00")
	h.tick(time.Second)
	list := h.e.List("", 0)
	if len(list) != 2 || list[0].Id != b.Id || list[1].Id != a.Id {
		t.Fatalf("list = %v, want newest first", list)
	}
	if list[0].Nodes != nil {
		t.Error("list should omit node records")
	}
	if got := h.e.List("go", 0); len(got) != 1 || got[0].Id != a.Id {
		t.Errorf("list go = %v", got)
	}
	if got := h.e.List("", 1); len(got) != 1 {
		t.Errorf("limit 1 = %d", len(got))
	}
	c := h.e.Counts()
	if c[stSucceeded] != 1 || c[stRunning] != 1 {
		t.Errorf("counts = %v", c)
	}
	p := h.e.Progress()
	if len(p) != 1 || p[0].ID != b.Id || p[0].Outcomes[ocInstalling] != 1 || p[0].Outcomes[ocPending] != 1 {
		t.Errorf("progress = %+v", p)
	}
	if _, err := h.e.Get("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("get unknown: %v", err)
	}
}

func TestNewRequiresDependencies(t *testing.T) {
	_, err := New(Config{})
	if err == nil || !strings.Contains(err.Error(), "Store") || !strings.Contains(err.Error(), "Dispatcher") {
		t.Errorf("New(empty) = %v", err)
	}
}

func TestRunTicksUntilCancelled(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, auto: true, healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.clock.Advance(2 * time.Second)
	h.e.cfg.TickInterval = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.e.Run(ctx) }()
	deadline := time.After(10 * time.Second)
	for h.outcome(r.Id, "n00") != ocSucceeded {
		select {
		case <-deadline:
			t.Fatal("Run did not advance the rollout")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// Right after a controller restart, agents are still reconnecting: a node
// whose turn comes then is waited for (within the grace), not marked
// unreachable; after the grace it is.
func TestReconnectGraceAfterRestart(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{canary: 1, auto: true, parallel: "1", healthy: time.Second})
	h.grace = 30 * time.Second
	h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_STALE, false)
	h.fleet.setState("n02", ferryv1.NodeState_NODE_STATE_STALE, false)
	h.e = h.newEngine() // the restart
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	h.tick(5 * time.Second)
	if got := outcomes(h.get(r.Id)); got["n01"] != ocPending {
		t.Fatalf("within the grace: outcomes %v, want n01 still pending", got)
	}
	// n01 reconnects and gets its job; n02 never does.
	h.fleet.setState("n01", ferryv1.NodeState_NODE_STATE_HEALTHY, true)
	h.tick(time.Second)
	if sent := h.sentTo(r.Id); !slices.Contains(sent, "n01") {
		t.Fatalf("n01 reconnected but got no job: sent %v", sent)
	}
	h.succeed(r.Id, "n01")
	h.tick(time.Second)
	h.tick(40 * time.Second)
	if got := outcomes(h.get(r.Id)); got["n02"] != ocUnreachable {
		t.Errorf("after the grace: outcomes %v, want n02 unreachable", got)
	}
}

// A node that reconnects without mentioning its in-flight job (its agent
// restarted mid-download, or the job was lost in a controller crash) gets
// the same job again; a node that re-reports it does not.
func TestNodeConnectedResendsUnknownJobs(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{canary: 1, auto: true, parallel: "1", healthy: time.Second})
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00"}) {
		t.Fatalf("sent %v", got)
	}
	jobID := nodeOf(h.get(r.Id), "n00").JobId
	h.e.NodeConnected("n00", nil)
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n00"}) {
		t.Fatalf("after a reconnect without the job: sent %v, want n00 twice", got)
	}
	if d := h.disp.deliveries(); d[1].job.Id != jobID {
		t.Errorf("resent job %q, want the same ID %q", d[1].job.Id, jobID)
	}
	h.e.NodeConnected("n00", []*ferryv1.JobUpdate{{JobId: jobID, RolloutId: r.Id, Phase: ferryv1.JobPhase_JOB_PHASE_INSTALLING}})
	if got := h.sentTo(r.Id); len(got) != 2 {
		t.Errorf("a node that re-reports its job got it again: sent %v", got)
	}
	// Nodes with nothing in flight get nothing.
	h.e.NodeConnected("n01", nil)
	if got := h.sentTo(r.Id); len(got) != 2 {
		t.Errorf("pending node n01 got a job on connect: sent %v", got)
	}
}
