// Tests of the failure threshold and its actions (failures.go).

package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

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
						// Every node is already started: a pause would hold a
						// rollout that can only fail, so it goes on running.
						want := map[ferryv1.FailureAction]ferryv1.RolloutState{actPause: stRunning, actAbort: stAborted}[action]
						if got.State != want {
							t.Fatalf("after %d failures state = %v, want %v", k, got.State, want)
						}
						if !strings.Contains(got.Message, fmt.Sprintf("%d of 10 nodes failed, more than max-failures %s", k, tt.failures)) {
							t.Errorf("message = %q", got.Message)
						}
						if action == actPause {
							for j := k + 1; j <= 9; j++ {
								h.fail(r.Id, fmt.Sprintf("n%02d", j))
							}
							if got := h.get(r.Id); got.State != stFailed || strings.Contains(got.Message, "resume") {
								t.Errorf("after the last job: state %v (%s), want failed without a word of resume", got.State, got.Message)
							}
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
