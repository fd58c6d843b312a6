// Tests of the Watch fan-out (watch.go).

package rollout

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestWatchReportsProgress(t *testing.T) {
	h := newHarness(t, 3)
	r := h.create(strat{canary: 1, parallel: "2", failures: "1", healthy: time.Second})
	ctx := context.Background()
	ch, err := h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	h.report(r.Id, "n00", phInstalling, "")
	h.succeed(r.Id, "n00")
	h.tick(time.Second)
	if _, err := h.e.Promote("admin/alice", r.Id); err != nil {
		t.Fatal(err)
	}
	h.fail(r.Id, "n01")
	h.succeed(r.Id, "n02")
	h.tick(time.Second)
	var lines []string
	evs := drain(t, ch)
	last := evs[len(evs)-1]
	for _, ev := range evs {
		lines = append(lines, ev.NodeId+"|"+ev.Event)
	}
	text := strings.Join(lines, "\n")
	for _, want := range []string{
		"|running: started by admin/alice",
		"n00|installing",
		"n00|checking: checks passed",
		"n00|succeeded: healthy for 1s",
		"|waiting_promotion: canaries done (1 succeeded)",
		"|running: promoted by admin/alice",
		"|wave 1 started",
		"n01|downloading",
		"n01|failed at check: go version: exit status 1",
		"|failed: 3 nodes: 2 succeeded, 1 failed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("events lack %q:\n%s", want, text)
		}
	}
	if last.Rollout.State != stFailed {
		t.Errorf("last event rollout state %v", last.Rollout.State)
	}
	// Watching an ended rollout returns its state and closes.
	ch, err = h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(drain(t, ch)); n != 1 {
		t.Errorf("watch of an ended rollout sent %d events, want 1", n)
	}
	if _, err := h.e.Watch(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("watch unknown: %v", err)
	}
}

// drain reads the events a watch channel holds and fails the test unless it
// is closed: the engine sends events synchronously, so by the time a test
// drains, an ended rollout's channel is already closed.
func drain(t *testing.T, ch <-chan *ferryv1.WatchRolloutResponse) []*ferryv1.WatchRolloutResponse {
	t.Helper()
	var out []*ferryv1.WatchRolloutResponse
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				if len(out) == 0 {
					t.Fatal("watch channel closed without events")
				}
				return out
			}
			out = append(out, ev)
		default:
			t.Fatalf("watch channel still open after %d events; the rollout has not ended", len(out))
		}
	}
}

func TestWatchStopsWithContext(t *testing.T) {
	h := newHarness(t, 2)
	r := h.create(strat{healthy: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := h.e.Watch(ctx, r.Id)
	if err != nil {
		t.Fatal(err)
	}
	<-ch
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			// drain until closed
			for range ch {
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch channel not closed after the context ended")
	}
}
