// Tests of concurrent use: the dispatch order under many callers.

package rollout

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Ticks, agent reports and admin calls from many goroutines: every job is
// sent once, and a cancel never reaches the dispatcher before its job.
func TestConcurrentUseKeepsDispatchOrder(t *testing.T) {
	h := newHarness(t, 30)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Nodes n00-n09 finish at once; the others hold their jobs until the
	// rollout is aborted, so the window fills up and there is something to
	// cancel.
	var agents sync.WaitGroup
	release := make(chan struct{})
	h.disp.onJob = func(node string, job *ferryv1.Job) {
		agents.Add(1)
		go func() {
			defer agents.Done()
			report := func(ph ferryv1.JobPhase) {
				h.e.HandleJobUpdate(node, &ferryv1.JobUpdate{JobId: job.Id, RolloutId: job.RolloutId, Phase: ph})
			}
			report(phDownloading)
			if node >= "n10" {
				<-release
			}
			report(phInstalling)
			report(phSucceeded)
		}()
	}
	r := h.create(strat{canary: 1, auto: true, parallel: "5", failures: "100%", healthy: time.Millisecond, deadline: time.Hour})
	h.e.cfg.TickInterval = time.Millisecond
	runDone := make(chan error, 1)
	go func() { runDone <- h.e.Run(ctx) }()
	go func() {
		for ctx.Err() == nil {
			h.clock.Advance(time.Millisecond)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	var admins sync.WaitGroup
	for range 3 {
		admins.Add(1)
		go func() {
			defer admins.Done()
			for range 20 {
				_, _ = h.e.Pause("admin/a", r.Id)
				_, _ = h.e.Resume("admin/b", r.Id)
			}
		}()
	}
	admins.Wait()
	for len(h.sentTo(r.Id)) < 12 {
		time.Sleep(time.Millisecond)
	}
	if _, err := h.e.Abort("admin/c", r.Id); err != nil {
		t.Fatal(err)
	}
	close(release)
	deadline := time.After(20 * time.Second)
	for {
		cur := h.get(r.Id)
		if cur.State == stAborted && len(inFlightNodes(cur)) == 0 {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("rollout did not settle: %v %v", cur.State, outcomes(cur))
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	if err := <-runDone; err != nil {
		t.Errorf("Run = %v", err)
	}
	agents.Wait()

	h.disp.mu.Lock()
	defer h.disp.mu.Unlock()
	sent := map[string]int{}
	for _, l := range h.disp.log {
		id, isSend := strings.CutPrefix(l, "send ")
		if isSend {
			sent[id]++
			continue
		}
		id = strings.TrimPrefix(l, "cancel ")
		if sent[id] == 0 {
			t.Errorf("%q reached the dispatcher before its job was sent", l)
		}
	}
	for id, n := range sent {
		if n != 1 {
			t.Errorf("job %s sent %d times", id, n)
		}
	}
	if len(h.disp.cancels) == 0 {
		t.Error("the abort cancelled nothing; the test did not exercise cancels")
	}
}
