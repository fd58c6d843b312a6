// Tests of the sliding window and the canary gate (window.go).

package rollout

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

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
				for step := 0; step < 2000 && !rolloutstate.Terminal(h.state(r.Id)); step++ {
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
				if !rolloutstate.Terminal(final.State) {
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
