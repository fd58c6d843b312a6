// Tests of the engine as a whole: construction, Run, and the read-only
// queries (engine.go).

package rollout

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestListAndCounts(t *testing.T) {
	h := newHarness(t, 2)
	h.fleet.add("s00", "staging")
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
