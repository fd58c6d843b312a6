package rollout

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// reportAll sends every node's "installing" report for its job of the
// rollout at once, from one goroutine per node, as many agent streams do.
func reportAll(t *testing.T, h *harness, id string, nodes int) {
	t.Helper()
	updates := make([]*ferryv1.JobUpdate, nodes)
	for i := range nodes {
		node := fmt.Sprintf("n%02d", i)
		job := h.disp.job(id, node)
		if job == nil {
			t.Fatalf("node %s got no job of rollout %s", node, id)
		}
		updates[i] = &ferryv1.JobUpdate{JobId: job.Id, RolloutId: id, Phase: ferryv1.JobPhase_JOB_PHASE_INSTALLING}
	}
	var wg sync.WaitGroup
	for i, u := range updates {
		wg.Go(func() { h.e.HandleJobUpdate(fmt.Sprintf("n%02d", i), u) })
	}
	wg.Wait()
}

func storedInstalling(h *harness, id string) int {
	n := 0
	for _, nj := range h.store.get(id).GetNodes() {
		if nj.GetOutcome() == ocInstalling {
			n++
		}
	}
	return n
}

// Concurrent reports are saved together: 40 reports, a batch of 40, one
// save holding all of them.
func TestJobReportsSavedTogether(t *testing.T) {
	const nodes = 40
	h := newHarness(t, nodes)
	h.saveWindow, h.saveBatch = time.Hour, nodes // the batch fills before the window ends
	h.restart()
	r := h.create(strat{noCanary: true, auto: true, parallel: "100%"})
	before := h.store.saveCount()

	reportAll(t, h, r.Id, nodes)

	if got := h.store.saveCount() - before; got != 1 {
		t.Errorf("%d concurrent reports took %d saves of the rollout, want 1", nodes, got)
	}
	if got := storedInstalling(h, r.Id); got != nodes {
		t.Errorf("stored rollout has %d of %d nodes installing, want all", got, nodes)
	}
}

// Reports that do not fill a batch are saved when the window ends, all of
// them in fewer saves than reports.
func TestJobReportsSavedAtWindowEnd(t *testing.T) {
	const nodes = 10
	h := newHarness(t, nodes)
	h.saveWindow = 20 * time.Millisecond
	h.restart()
	r := h.create(strat{noCanary: true, auto: true, parallel: "100%"})
	before := h.store.saveCount()

	reportAll(t, h, r.Id, nodes)

	deadline := time.Now().Add(10 * time.Second)
	for storedInstalling(h, r.Id) != nodes {
		if time.Now().After(deadline) {
			t.Fatalf("after 10s the stored rollout has %d of %d nodes installing", storedInstalling(h, r.Id), nodes)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := h.store.saveCount() - before; got >= nodes {
		t.Errorf("%d concurrent reports took %d saves, want fewer than one each", nodes, got)
	}
	if got := h.outcome(r.Id, "n00"); got != ocInstalling {
		t.Errorf("n00 is %v in the engine, want installing", got)
	}
}

// A coalesced save the store refuses (a fenced write after losing the
// leadership, etcd down) leaves the rollout unsaved, and the next tick
// saves it.
func TestJobReportsSaveFailureRetriedAtTick(t *testing.T) {
	const nodes = 8
	h := newHarness(t, nodes)
	h.saveWindow, h.saveBatch = time.Hour, nodes
	h.restart()
	r := h.create(strat{noCanary: true, auto: true, parallel: "100%"})
	h.store.setFail(errors.New("store: not the leader"))

	reportAll(t, h, r.Id, nodes)

	if got := storedInstalling(h, r.Id); got != 0 {
		t.Fatalf("refused save: stored rollout has %d nodes installing, want 0", got)
	}
	h.store.setFail(nil)
	h.tick(time.Second)
	if got := storedInstalling(h, r.Id); got != nodes {
		t.Errorf("after the tick the stored rollout has %d of %d nodes installing, want all", got, nodes)
	}
}
