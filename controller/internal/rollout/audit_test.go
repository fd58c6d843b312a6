// Tests of the audit entries admin actions save with their change
// (commitAction, insertLocked).

package rollout

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// An admin action whose audit entry cannot be written fails and changes
// nothing: not the stored rollout, not the engine's view of it, no job or
// cancel reaches an agent and no watcher hears of it. Once the log can be
// written again the same actions go through, each with one entry.
func TestActionFailsWhenItsAuditEntryCannotBeWritten(t *testing.T) {
	h := newHarness(t, 4)
	ctx := context.Background()
	r := h.create(strat{canary: 1, parallel: "2", healthy: time.Second})
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	h.tick(time.Second)
	if got := h.state(r.Id); got != stWaiting {
		t.Fatalf("state = %v, want waiting for promotion", got)
	}
	ch, err := h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	<-ch // the rollout as it is

	diskFull := errors.New("could not record the audit entry: write ferry.db: no space left on device; nothing was changed")
	h.audit.setFail(diskFull)
	stored, held, sent, saves := h.store.get(r.Id), h.get(r.Id), h.sentTo(r.Id), h.store.saveCount()
	actions := []struct {
		name string
		do   func() error
	}{
		{"promote", func() error { _, err := h.e.Promote("admin/bob", r.Id); return err }},
		{"pause", func() error { _, err := h.e.Pause("admin/bob", r.Id); return err }},
		{"abort", func() error { _, err := h.e.Abort("admin/bob", r.Id); return err }},
		{"create", func() error {
			_, err := h.e.Create(ctx, "admin/bob", strat{pkg: "tool", version: "1.0"}.request())
			return err
		}},
	}
	for _, a := range actions {
		t.Run(a.name, func(t *testing.T) {
			err := a.do()
			if !errors.Is(err, diskFull) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Fatalf("err = %v, want the audit failure", err)
			}
			if got := h.store.get(r.Id); !proto.Equal(got, stored) {
				t.Errorf("stored rollout changed:\n%v\nwant\n%v", got, stored)
			}
			if got := h.get(r.Id); !proto.Equal(got, held) {
				t.Errorf("engine's rollout changed:\n%v\nwant\n%v", got, held)
			}
			if got := h.store.saveCount(); got != saves {
				t.Errorf("%d saves, want %d", got, saves)
			}
			if got := h.e.List("", 0); len(got) != 1 {
				t.Errorf("rollouts %v, want only %s", got, r.Id)
			}
			if got := h.sentTo(r.Id); !slices.Equal(got, sent) {
				t.Errorf("jobs sent to %v, want %v", got, sent)
			}
			if c := h.disp.cancelled(); len(c) != 0 {
				t.Errorf("cancels sent: %v", c)
			}
			select {
			case ev := <-ch:
				t.Errorf("a watcher heard %q", ev.GetEvent())
			default:
			}
		})
	}

	h.audit.setFail(nil)
	if _, err := h.e.Pause("admin/bob", r.Id); err != nil {
		t.Fatal(err)
	}
	// A no-op only writes its entry, and fails without it.
	h.audit.setFail(diskFull)
	if _, err := h.e.Pause("admin/bob", r.Id); !errors.Is(err, diskFull) {
		t.Errorf("pausing a paused rollout without an audit log: %v, want the audit failure", err)
	}
	h.audit.setFail(nil)
	if _, err := h.e.Resume("admin/bob", r.Id); err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.Promote("admin/bob", r.Id); err != nil {
		t.Fatal(err)
	}
	if got := h.sentTo(r.Id); !slices.Equal(got, []string{"n00", "n01", "n02"}) {
		t.Errorf("after promote sent %v", got)
	}
	want := []string{
		"admin/alice rollout.create " + r.Id + " ok",
		"admin/bob rollout.pause " + r.Id + " ok",
		"admin/bob rollout.resume " + r.Id + " ok",
		"admin/bob rollout.promote " + r.Id + " ok",
	}
	if got := h.audit.list(); !slices.Equal(got, want) {
		t.Errorf("audit = %v, want %v", got, want)
	}
}
