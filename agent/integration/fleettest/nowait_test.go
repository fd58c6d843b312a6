package fleettest

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// With --healthy-for 0s a rollout waits for nothing but the agents: the
// first job is sent by CreateRollout itself, a node succeeds on its job
// report (the report proves it is alive; no heartbeat is waited for), the
// next node of a one-slot window starts in the same step, and the rollout
// ends with the last report. Heartbeats come every 3 s here, so a wait for
// one, or for the engine's tick, would put time between those events; the
// test asserts they carry the same engine timestamp (one engine step), not
// how long anything took. The figures are logged.
func TestRolloutWithoutFixedWaits(t *testing.T) {
	f := newFleet(t, func(c *controller.Config) { c.HeartbeatInterval = 3 * time.Second })
	tok := f.token("staging", 3)
	ids := []string{"w1", "w2", "w3"}
	for _, id := range ids {
		f.start(f.enroll(id, tok))
	}
	for _, id := range ids {
		f.waitState(id, healthy, 10*time.Second)
	}
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := ferryv1.NewRolloutServiceClient(f.admin)
	asked := time.Now()
	resp, err := c.CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
		PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "1", HealthyFor: durationpb.New(0), ProgressDeadline: durationpb.New(20 * time.Second)},
	})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	created := resp.GetRollout()
	var first *ferryv1.NodeJob
	for _, n := range created.GetNodes() {
		if n.GetStartedAt() != nil {
			if first != nil {
				t.Errorf("nodes %s and %s both started in a one-slot window", first.GetNodeId(), n.GetNodeId())
			}
			first = n
		}
	}
	if first == nil {
		t.Fatalf("CreateRollout returned with no job sent: %v", created.GetNodes())
	}
	t.Logf("create call to first job sent: %v", first.GetStartedAt().AsTime().Sub(asked).Round(time.Microsecond))

	stream, err := c.WatchRollout(ctx, &ferryv1.WatchRolloutRequest{Id: created.GetId()})
	if err != nil {
		t.Fatal(err)
	}
	var events []*ferryv1.WatchRolloutResponse
	var last *ferryv1.Rollout
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		events, last = append(events, ev), ev.GetRollout()
	}
	if last.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s", last.GetState(), last.GetMessage())
	}

	// Per node: when its report arrived, when it succeeded, when it
	// started; and when the rollout succeeded.
	reported, succeeded, started := map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
	var done time.Time
	for _, ev := range events {
		at, node := ev.GetAt().AsTime(), ev.GetNodeId()
		switch {
		case node == "" && strings.HasPrefix(ev.GetEvent(), "succeeded:"):
			done = at
		case strings.HasPrefix(ev.GetEvent(), "checking: checks passed"):
			reported[node] = at
		case strings.HasPrefix(ev.GetEvent(), "succeeded:"):
			succeeded[node] = at
		}
	}
	for _, n := range last.GetNodes() {
		started[n.GetNodeId()] = n.GetStartedAt().AsTime()
	}
	var order []string // nodes by start
	for _, n := range last.GetNodes() {
		order = append(order, n.GetNodeId())
	}
	for i := range order {
		for j := i + 1; j < len(order); j++ {
			if started[order[j]].Before(started[order[i]]) {
				order[i], order[j] = order[j], order[i]
			}
		}
	}
	for i, id := range order {
		if reported[id].IsZero() || succeeded[id].IsZero() {
			t.Fatalf("%s: no report or success among the events %v", id, events)
		}
		if !succeeded[id].Equal(reported[id]) {
			t.Errorf("%s succeeded %v after its report; with healthy-for 0 the report is enough", id, succeeded[id].Sub(reported[id]))
		}
		if i > 0 {
			prev := order[i-1]
			t.Logf("%s: report to success %v; %s's success to %s's start %v", prev, succeeded[prev].Sub(reported[prev]), prev, id, started[id].Sub(succeeded[prev]))
			if !started[id].Equal(succeeded[prev]) {
				t.Errorf("%s started %v after %s freed the slot; want the same step", id, started[id].Sub(succeeded[prev]), prev)
			}
		}
	}
	t.Logf("create call to %s's final report (its whole job): %v", order[0], reported[order[0]].Sub(asked).Round(time.Microsecond))
	lastNode := order[len(order)-1]
	t.Logf("last report to rollout success: %v", done.Sub(reported[lastNode]))
	if !done.Equal(reported[lastNode]) {
		t.Errorf("the rollout succeeded %v after the last report; want the same step", done.Sub(reported[lastNode]))
	}
}
