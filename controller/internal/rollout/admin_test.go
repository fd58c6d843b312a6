// Tests of the admin verbs pause, resume and abort (admin.go).

package rollout

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

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
