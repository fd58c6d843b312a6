// Tests of agents' job reports and reconnects (reports.go).

package rollout

import (
	"slices"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

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
