package fleet

import (
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A reload that changes the heartbeat interval: agents are told the new
// one, and while connected agents switch, a node is judged by the longer
// of the two, so shortening the interval never makes a node that still
// heartbeats at the old pace look stale; three old intervals later the new
// interval alone counts.
func TestSetHeartbeatInterval(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	f.attach("n1")
	if f.SetHeartbeatInterval(hb) {
		t.Error("setting the same interval reports a change")
	}
	changes := f.Changes()
	if !f.SetHeartbeatInterval(time.Second) || f.HeartbeatInterval() != time.Second {
		t.Fatalf("interval %v after setting 1s", f.HeartbeatInterval())
	}
	select {
	case <-changes:
	default:
		t.Error("a new interval does not wake the watchers of node states")
	}
	// 10 s without a heartbeat: stale by 1 s (after 3 s), not by 5 s.
	f.clock.Advance(2 * hb)
	if n := f.node("n1"); n.State != healthy {
		t.Errorf("during the switch n1 is %s (%q), want healthy: judged by the old 5s interval", n.State, n.StateReason)
	}
	f.Heartbeat("n1", &ferryv1.Heartbeat{})
	f.clock.Advance(hb + time.Second) // past the 15 s grace since the change
	if n := f.node("n1"); n.State != staleState {
		t.Errorf("after the switch n1 is %s (%q), want stale: 6s without a heartbeat at a 1s interval", n.State, n.StateReason)
	}

	// Lengthening applies at once: nothing was judged by a longer one.
	if !f.SetHeartbeatInterval(time.Minute) {
		t.Fatal("no change reported")
	}
	if n := f.node("n1"); n.State != healthy {
		t.Errorf("at a 1m interval n1 is %s (%q), want healthy", n.State, n.StateReason)
	}
	if f.SetHeartbeatInterval(0); f.HeartbeatInterval() != 5*time.Second {
		t.Errorf("0 sets %v, want the default 5s", f.HeartbeatInterval())
	}
}
