// Tests of commit when the store fails (effects.go).

package rollout

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

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
