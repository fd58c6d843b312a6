// Tests of restarts: a controller killed after any save carries on without
// sending a job twice.

package rollout

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
)

// world is a fleet of simulated agents and a controller that can be killed
// right after any save to its store, before it does anything else (the
// worst moment: the jobs it just recorded were never sent). A new engine
// then starts over the same store and the agents reconnect and re-report
// their jobs, as they do after a controller restart.
type world struct {
	t       *testing.T
	clock   *clocktest.Clock
	fleet   *fakeFleet
	store   *fakeStore
	pkgs    *fakePackages
	failing map[string]bool // nodes whose install fails its check

	mu        sync.Mutex
	gen       int
	crashAt   int // kill the controller after this save (0: never)
	crashed   bool
	restarted bool
	delivered map[string]int // job ID -> deliveries
	agents    map[string][]*simJob

	e             *Engine
	restartStates []ferryv1.RolloutState
	lostJobs      map[string]bool // job IDs stored as sent but never delivered
}

type simJob struct {
	node      string
	job       *ferryv1.Job
	step      int
	cancelled bool
	done      bool
	last      *ferryv1.JobUpdate
}

var errCrashed = errors.New("controller killed")

func newWorld(t *testing.T, nodes int, failing ...string) *world {
	clock := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	w := &world{
		t:         t,
		clock:     clock,
		fleet:     &fakeFleet{clock: clock, nodes: map[string]*ferryv1.Node{}},
		store:     newFakeStore(),
		failing:   map[string]bool{},
		delivered: map[string]int{},
		agents:    map[string][]*simJob{},
		lostJobs:  map[string]bool{},
		pkgs: &fakePackages{pkgs: map[string]*ferryv1.Package{
			"go@1.20.3": {Name: "go", Version: "1.20.3", Artifact: &ferryv1.ArtifactRef{Digest: "sha256:bb"}},
		}},
	}
	for i := range nodes {
		id := fmt.Sprintf("n%02d", i)
		w.fleet.add(id, "prod")
		w.fleet.setInstalled(id, "go", "1.20.2", "")
	}
	for _, f := range failing {
		w.failing[f] = true
	}
	w.store.afterSave = func(n int) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.crashAt > 0 && n == w.crashAt && !w.crashed {
			w.crashed = true
			w.store.setFail(errCrashed) // the store calls this hook unlocked
		}
	}
	w.e = w.newEngine()
	return w
}

// genDispatcher delivers jobs for one controller generation; a dead
// controller delivers nothing.
type genDispatcher struct {
	w   *world
	gen int
}

func (d genDispatcher) Dispatch(nodeID string, job *ferryv1.Job) error {
	w := d.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.crashed || d.gen != w.gen {
		return errCrashed
	}
	if n, ok := w.fleet.Node(nodeID); !ok || !n.Connected {
		return errNotConnected
	}
	w.delivered[job.Id]++
	w.agents[nodeID] = append(w.agents[nodeID], &simJob{node: nodeID, job: job})
	return nil
}

func (d genDispatcher) Cancel(nodeID, jobID string) error {
	w := d.w
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.crashed || d.gen != w.gen {
		return errCrashed
	}
	for _, j := range w.agents[nodeID] {
		if j.job.Id == jobID && !j.done {
			j.cancelled = true
		}
	}
	return nil
}

func (w *world) newEngine() *Engine {
	e, err := New(Config{
		Store:      w.store,
		Dispatcher: genDispatcher{w: w, gen: w.gen},
		Fleet:      w.fleet,
		Packages:   w.pkgs,
		Clock:      w.clock,
		NewID:      func() string { return "ro-1" },
		// Fleets here are connected; no grace needed.
		ReconnectGrace: -1,
	})
	if err != nil {
		w.t.Fatalf("New: %v", err)
	}
	return e
}

// alive restarts the controller if it was killed, and reports whether it
// had to.
func (w *world) alive() {
	w.mu.Lock()
	crashed := w.crashed
	w.mu.Unlock()
	if !crashed {
		return
	}
	w.mu.Lock()
	w.crashed, w.crashAt, w.restarted = false, 0, true
	w.gen++
	w.store.setFail(nil)
	w.mu.Unlock()
	w.e = w.newEngine()
	rs, _ := w.store.Rollouts()
	for _, r := range rs {
		w.restartStates = append(w.restartStates, r.State)
		for _, n := range r.Nodes {
			if inFlight(n) && w.deliveredCount(n.JobId) == 0 {
				w.lostJobs[n.JobId] = true
			}
		}
	}
	// Agents reconnect and re-report every job they hold (recent_jobs).
	for _, j := range w.allJobs() {
		w.mu.Lock()
		last := j.last
		w.mu.Unlock()
		if last != nil {
			w.e.HandleJobUpdate(j.node, last)
		}
	}
}

func (w *world) deliveredCount(id string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.delivered[id]
}

func (w *world) allJobs() []*simJob {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*simJob
	for _, node := range slices.Sorted(maps.Keys(w.agents)) {
		out = append(out, w.agents[node]...)
	}
	return out
}

// stepAgents moves every unfinished job one phase on and reports it.
func (w *world) stepAgents() {
	for _, j := range w.allJobs() {
		w.alive()
		w.mu.Lock()
		if j.done {
			w.mu.Unlock()
			continue
		}
		u := &ferryv1.JobUpdate{JobId: j.job.Id, RolloutId: j.job.RolloutId}
		phases := []ferryv1.JobPhase{phDownloading, phInstalling, phChecking}
		if j.job.Kind == kindRollback {
			phases = []ferryv1.JobPhase{phInstalling}
		}
		switch {
		case j.cancelled:
			u.Phase, u.Message, j.done = phFailed, "cancelled; applied steps undone", true
		case j.step < len(phases):
			u.Phase = phases[j.step]
		case j.job.Kind == kindInstall && w.failing[j.node]:
			u.Phase, u.FailedStep, u.Message, j.done = phFailed, "check: go version", "exit status 1", true
		default:
			u.Phase, j.done = phSucceeded, true
			if j.job.Kind == kindInstall {
				w.fleet.setInstalled(j.node, "go", "1.20.3", "1.20.2")
			} else {
				w.fleet.setInstalled(j.node, "go", "1.20.2", "")
			}
		}
		j.step++
		j.last = u
		w.mu.Unlock()
		w.e.HandleJobUpdate(j.node, u)
	}
}

// run creates the rollout and drives it to its end, applying policy (admin
// actions) at every step. It returns the final rollout.
func (w *world) run(s strat, policy func(e *Engine, r *ferryv1.Rollout)) *ferryv1.Rollout {
	w.t.Helper()
	if _, err := w.e.Create(context.Background(), "admin/alice", s.request()); err != nil && !w.isCrashed() {
		w.t.Fatalf("Create: %v", err)
	}
	for range 600 {
		w.alive()
		r, err := w.e.Get("ro-1")
		if err != nil {
			w.t.Fatalf("Get after restart: %v", err)
		}
		if rolloutstate.Terminal(r.State) && len(inFlightNodes(r)) == 0 {
			return r
		}
		if policy != nil {
			policy(w.e, r)
			w.alive()
		}
		w.stepAgents()
		w.alive()
		w.e.Tick(w.clock.Advance(time.Second))
	}
	r, _ := w.e.Get("ro-1")
	w.t.Fatalf("rollout did not end: %v %s %v", r.State, r.Message, outcomes(r))
	return nil
}

func (w *world) isCrashed() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.crashed
}

func promoteAndResume(e *Engine, r *ferryv1.Rollout) {
	switch r.State {
	case stWaiting:
		_, _ = e.Promote("admin/alice", r.Id)
	case stPaused:
		_, _ = e.Resume("admin/alice", r.Id)
	}
}

func abortWhenN02Runs(e *Engine, r *ferryv1.Rollout) {
	if n := nodeOf(r, "n02"); r.State == stRunning && inFlight(n) {
		_, _ = e.Abort("admin/alice", r.Id)
	}
}

// Kill the controller after every save of several scenarios; each time a
// new engine over the same store must finish the rollout without sending
// any job twice, and every node must end as it would have without the
// crash, except a node whose job was recorded but never sent before the
// crash: no agent will ever report it, so it fails at its deadline.
func TestRestartFromEveryPersistedState(t *testing.T) {
	scenarios := []struct {
		name    string
		nodes   int
		failing []string
		s       strat
		policy  func(*Engine, *ferryv1.Rollout)
		state   ferryv1.RolloutState
		// expected outcome per node when its job was not lost
		want func(node string, r *ferryv1.Rollout) []ferryv1.NodeOutcome
	}{
		{
			name: "canary promote succeed", nodes: 4,
			s:      strat{canary: 1, parallel: "2", deadline: 20 * time.Second, healthy: 2 * time.Second},
			policy: promoteAndResume, state: stSucceeded,
			want: func(string, *ferryv1.Rollout) []ferryv1.NodeOutcome { return []ferryv1.NodeOutcome{ocSucceeded} },
		},
		{
			name: "failure pauses then resumed", nodes: 5, failing: []string{"n02"},
			s:      strat{canary: 1, parallel: "2", failures: "0", onFailure: actPause, deadline: 20 * time.Second, healthy: 2 * time.Second},
			policy: promoteAndResume, state: stFailed,
			want: func(n string, _ *ferryv1.Rollout) []ferryv1.NodeOutcome {
				if n == "n02" {
					return []ferryv1.NodeOutcome{ocFailed}
				}
				return []ferryv1.NodeOutcome{ocSucceeded}
			},
		},
		{
			name: "failure rolls back", nodes: 5, failing: []string{"n03"},
			s:     strat{canary: 1, auto: true, parallel: "2", failures: "0", onFailure: actRollback, deadline: 20 * time.Second, healthy: 2 * time.Second},
			state: stRolled,
			want: func(n string, _ *ferryv1.Rollout) []ferryv1.NodeOutcome {
				if n == "n03" {
					return []ferryv1.NodeOutcome{ocFailed}
				}
				// Started and changed: rolled back; cancelled: failed;
				// never started: skipped.
				return []ferryv1.NodeOutcome{ocRolledBack, ocFailed, ocSkipped}
			},
		},
		{
			name: "admin abort", nodes: 5,
			s:      strat{canary: 1, auto: true, parallel: "2", failures: "100%", deadline: 20 * time.Second, healthy: 2 * time.Second},
			policy: abortWhenN02Runs, state: stAborted,
			want: func(n string, _ *ferryv1.Rollout) []ferryv1.NodeOutcome {
				return []ferryv1.NodeOutcome{ocSucceeded, ocFailed, ocSkipped}
			},
		},
	}
	seen := map[ferryv1.RolloutState]bool{}
	for _, sc := range scenarios {
		// A run without a crash counts the saves.
		w := newWorld(t, sc.nodes, sc.failing...)
		clean := w.run(sc.s, sc.policy)
		if clean.State != sc.state {
			t.Fatalf("%s without a crash ended %v (%s) %v, want %v", sc.name, clean.State, clean.Message, outcomes(clean), sc.state)
		}
		saves := w.store.saveCount()
		for k := 1; k <= saves; k++ {
			t.Run(fmt.Sprintf("%s/crash_after_save_%d", sc.name, k), func(t *testing.T) {
				w := newWorld(t, sc.nodes, sc.failing...)
				w.crashAt = k
				r := w.run(sc.s, sc.policy)
				if !w.restarted {
					t.Fatalf("the controller was never killed (save %d of %d)", k, saves)
				}
				seen[w.restartStates[0]] = true
				for id, n := range w.delivered {
					if n != 1 {
						t.Errorf("job %s delivered %d times", id, n)
					}
				}
				lost := len(w.lostJobs) > 0
				t.Logf("restart in %v, lost jobs %v, final %v %v", w.restartStates[0], w.lostJobs, r.State, outcomes(r))
				if !lost && r.State != sc.state {
					t.Errorf("ended %v (%s), want %v", r.State, r.Message, sc.state)
				}
				for _, n := range r.Nodes {
					if w.lostJobs[n.JobId] {
						if n.Outcome != ocFailed || !strings.Contains(n.Message, "progress deadline") {
							t.Errorf("%s: job lost in the crash: %v %q, want failed at the deadline", n.NodeId, n.Outcome, n.Message)
						}
						continue
					}
					if lost {
						if !terminalOutcome(n.Outcome) {
							t.Errorf("%s: %v is not final", n.NodeId, n.Outcome)
						}
						continue
					}
					if want := sc.want(n.NodeId, r); !slices.Contains(want, n.Outcome) {
						t.Errorf("%s: %v (%s), want one of %v", n.NodeId, n.Outcome, n.Message, want)
					}
				}
			})
		}
	}
	for _, s := range []ferryv1.RolloutState{stRunning, stWaiting, stPaused, stRolling, stSucceeded, stFailed, stAborted, stRolled} {
		if !seen[s] {
			t.Errorf("no crash happened in state %v; the scenarios do not cover it", s)
		}
	}
}

// A restarted engine does not resend jobs that were in flight; it finishes
// them from the agents' re-reports, or at their deadline if no report comes.
func TestRestartDoesNotResendInFlightJobs(t *testing.T) {
	h := newHarness(t, 4)
	r := h.create(strat{canary: 1, auto: true, parallel: "3", failures: "100%", deadline: time.Minute, healthy: 2 * time.Second})
	h.succeed(r.Id, "n00")
	h.tick(2 * time.Second) // n01..n03 in flight
	h.report(r.Id, "n01", phInstalling, "")
	h.report(r.Id, "n02", phSucceeded, "") // healthy period under way
	before := len(h.disp.deliveries())

	h.clock.Advance(1500 * time.Millisecond) // the controller is down a while
	h.restart()
	// The healthy period restarts with the new controller, which did not
	// watch the node meanwhile: 2.5s after the report, 1s after restart.
	h.tick(time.Second)
	if got := len(h.disp.deliveries()); got != before {
		t.Fatalf("restart resent jobs: %d deliveries, had %d", got, before)
	}
	cur := h.get(r.Id)
	if got := outcomes(cur); got["n01"] != ocInstalling || got["n02"] != ocChecking || got["n03"] != ocDownloading {
		t.Fatalf("after restart outcomes = %v", got)
	}
	h.tick(time.Second)
	if got := h.outcome(r.Id, "n02"); got != ocSucceeded {
		t.Errorf("n02 = %v two seconds after restart, want succeeded", got)
	}
	// n01's agent re-reports success; n03's agent never got its job.
	h.succeed(r.Id, "n01")
	h.tick(2 * time.Second)
	h.tick(time.Minute)
	final := h.get(r.Id)
	got := outcomes(final)
	if got["n01"] != ocSucceeded || got["n03"] != ocFailed || final.State != stFailed {
		t.Fatalf("final %v %v", final.State, got)
	}
	if len(h.disp.deliveries()) != before {
		t.Errorf("jobs resent after restart")
	}
}

// Cancels are not persisted; a restarted engine sends them again for an
// aborted rollout's jobs that have not reported.
func TestRestartResendsCancelsOfAnAbortedRollout(t *testing.T) {
	h := newHarness(t, 4)
	r := h.create(strat{canary: 1, auto: true, parallel: "2", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second) // n01, n02 in flight
	h.report(r.Id, "n02", phSucceeded, "")
	if _, err := h.e.Abort("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	want := []cancelReq{{"n01", r.Id + "/job/n01"}}
	if got := h.disp.cancelled(); !slices.Equal(got, want) {
		t.Fatalf("cancels = %v, want %v (n02 already finished its job)", got, want)
	}
	h.restart()
	h.tick(time.Second)
	want = append(want, want...)
	if got := h.disp.cancelled(); !slices.Equal(got, want) {
		t.Fatalf("cancels after restart = %v, want %v", got, want)
	}
	h.tick(time.Second)
	if got := h.disp.cancelled(); len(got) != 2 {
		t.Errorf("cancels sent again at every tick: %v", got)
	}
}
