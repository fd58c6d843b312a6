package health

import (
	"fmt"
	"strings"
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

const (
	healthy     = ferryv1.NodeState_NODE_STATE_HEALTHY
	stale       = ferryv1.NodeState_NODE_STATE_STALE
	unreachable = ferryv1.NodeState_NODE_STATE_UNREACHABLE
	suspect     = ferryv1.NodeState_NODE_STATE_SUSPECT
	down        = ferryv1.NodeState_NODE_STATE_DOWN
	left        = ferryv1.NodeState_NODE_STATE_LEFT
	removed     = ferryv1.NodeState_NODE_STATE_REMOVED
	pending     = ferryv1.NodeState_NODE_STATE_PENDING
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return now.Add(-d) }

func TestEvaluate(t *testing.T) {
	const iv = 5 * time.Second
	tests := []struct {
		name       string
		s          Signals
		want       ferryv1.NodeState
		wantReason string // exact when set
	}{
		{"healthy: stream up, fresh, gossip alive",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(2 * time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			healthy, "stream up, heartbeat 2s old; gossip alive"},
		{"healthy without gossip",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv},
			healthy, "stream up, heartbeat 1s old; not seen by gossip"},
		{"fresh at exactly three intervals",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(15 * time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			healthy, "stream up, heartbeat 15s old; gossip alive"},
		{"stale just past three intervals, gossip alive: unreachable",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(15*time.Second + time.Millisecond), HeartbeatInterval: iv, GossipState: GossipAlive},
			unreachable, "stream up, heartbeat 15s old (stale after 15s); gossip alive: partition or broken controller link"},
		{"stale, gossip alive: unreachable",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(21 * time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			unreachable, "stream up, heartbeat 21s old (stale after 15s); gossip alive: partition or broken controller link"},
		{"stream closed, heartbeat still fresh, gossip alive: unreachable",
			Signals{EverConnected: true, LastHeartbeat: ago(2 * time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			unreachable, "stream closed, last heartbeat 2s old; gossip alive: partition or broken controller link"},
		{"stale, gossip suspect: suspect",
			Signals{EverConnected: true, LastHeartbeat: ago(30 * time.Second), HeartbeatInterval: iv, GossipState: GossipSuspect},
			suspect, "stream closed, last heartbeat 30s old (stale after 15s); gossip suspects it"},
		{"stream closed just now, gossip suspect: suspect",
			Signals{EverConnected: true, LastHeartbeat: ago(3 * time.Second), HeartbeatInterval: iv, GossipState: GossipSuspect},
			suspect, ""},
		{"stream up and fresh, gossip suspect: healthy, noted",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipSuspect},
			healthy, "stream up, heartbeat 1s old; gossip suspects it: gossip-only problem, the stream is up"},
		{"stale, gossip dead: down",
			Signals{EverConnected: true, LastHeartbeat: ago(40 * time.Second), HeartbeatInterval: iv, GossipState: GossipDead},
			down, "stream closed, last heartbeat 40s old (stale after 15s); gossip says dead"},
		{"killed agent: stream closed, heartbeat fresh, gossip dead: down",
			Signals{EverConnected: true, LastHeartbeat: ago(8 * time.Second), HeartbeatInterval: iv, GossipState: GossipDead},
			down, "stream closed, last heartbeat 8s old; gossip says dead"},
		{"stream up but silent, gossip dead: down",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Minute), HeartbeatInterval: iv, GossipState: GossipDead},
			down, ""},
		{"stream up and fresh, gossip dead: healthy, gossip-only problem",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipDead},
			healthy, "stream up, heartbeat 1s old; gossip says dead: gossip-only problem, the stream is up"},
		{"goodbye on the stream: left",
			Signals{Left: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			left, "agent said goodbye, stream closed, last heartbeat 1s old; gossip alive"},
		{"goodbye, later stale and gossip dead: still left",
			Signals{Left: true, EverConnected: true, LastHeartbeat: ago(time.Hour), HeartbeatInterval: iv, GossipState: GossipDead},
			left, ""},
		{"gossip left, stream closed: left",
			Signals{EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipLeft},
			left, "stream closed, last heartbeat 1s old; gossip says left"},
		{"gossip left but stream up and fresh: healthy",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipLeft},
			healthy, ""},
		{"reconnected after a goodbye: the stream wins",
			Signals{Left: true, Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			healthy, ""},
		{"stale, no gossip: stale",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(20 * time.Second), HeartbeatInterval: iv},
			stale, "stream up, heartbeat 20s old (stale after 15s); not seen by gossip"},
		{"closed, no gossip: stale",
			Signals{EverConnected: true, LastHeartbeat: ago(2 * time.Second), HeartbeatInterval: iv},
			stale, "stream closed, last heartbeat 2s old; not seen by gossip"},
		{"closed, no heartbeat since restart, no gossip: stale",
			Signals{EverConnected: true, HeartbeatInterval: iv},
			stale, "stream closed, no heartbeat since the controller started; not seen by gossip"},
		{"connected, no heartbeat yet, gossip alive: unreachable until one arrives",
			Signals{Connected: true, EverConnected: true, HeartbeatInterval: iv, GossipState: GossipAlive},
			unreachable, "stream up, no heartbeat yet; gossip alive: partition or broken controller link"},
		{"never connected: pending",
			Signals{HeartbeatInterval: iv},
			pending, "enrolled, never connected; not seen by gossip"},
		{"never connected but gossip alive: unreachable",
			Signals{HeartbeatInterval: iv, GossipState: GossipAlive},
			unreachable, "never connected; gossip alive: partition or broken controller link"},
		{"never connected, gossip dead: down",
			Signals{HeartbeatInterval: iv, GossipState: GossipDead},
			down, "never connected; gossip says dead"},
		{"removed wins over everything",
			Signals{Removed: true, Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			removed, "removed by an admin"},
		{"removed and gone",
			Signals{Removed: true, Left: true, EverConnected: true, GossipState: GossipDead},
			removed, "removed by an admin"},
		{"zero interval means the 5s default",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(16 * time.Second), GossipState: GossipAlive},
			unreachable, "stream up, heartbeat 16s old (stale after 15s); gossip alive: partition or broken controller link"},
		{"longer interval stretches freshness",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(50 * time.Second), HeartbeatInterval: 30 * time.Second, GossipState: GossipAlive},
			healthy, "stream up, heartbeat 50s old; gossip alive"},
		{"heartbeat from the future counts as fresh",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: now.Add(time.Second), HeartbeatInterval: iv, GossipState: GossipAlive},
			healthy, "stream up, heartbeat 0s old; gossip alive"},
		{"sub-second age in tenths",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(340 * time.Millisecond), HeartbeatInterval: iv},
			healthy, "stream up, heartbeat 300ms old; not seen by gossip"},
		{"unknown gossip state on a quiet node: treated as no view",
			Signals{EverConnected: true, LastHeartbeat: ago(time.Minute), HeartbeatInterval: iv, GossipState: "zombie"},
			stale, `stream closed, last heartbeat 1m0s old (stale after 15s); gossip state "zombie" not understood`},
		{"unknown gossip state on a live stream: healthy, noted",
			Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv, GossipState: "zombie"},
			healthy, `stream up, heartbeat 1s old; gossip state "zombie" not understood: gossip-only problem, the stream is up`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := Evaluate(now, tt.s)
			if got != tt.want {
				t.Errorf("state = %s (%s), want %s", got, reason, tt.want)
			}
			if tt.wantReason != "" && reason != tt.wantReason {
				t.Errorf("reason = %q\n            want %q", reason, tt.wantReason)
			}
		})
	}
}

// TestEvaluateEveryCombination walks every combination of the signals and
// checks the rules that must hold whatever the combination.
func TestEvaluateEveryCombination(t *testing.T) {
	const iv = 5 * time.Second
	heartbeats := []struct {
		name  string
		at    time.Time
		fresh bool
	}{
		{"none", time.Time{}, false},
		{"fresh", ago(4 * time.Second), true},
		{"stale", ago(time.Minute), false},
	}
	gossips := []string{"", GossipAlive, GossipSuspect, GossipDead, GossipLeft, "bogus"}
	bools := []bool{false, true}
	n := 0
	for _, rm := range bools {
		for _, lf := range bools {
			for _, conn := range bools {
				for _, ever := range bools {
					if conn && !ever {
						continue // a connected node has connected
					}
					for _, hb := range heartbeats {
						for _, g := range gossips {
							s := Signals{Removed: rm, Left: lf, Connected: conn, EverConnected: ever,
								LastHeartbeat: hb.at, HeartbeatInterval: iv, GossipState: g}
							name := fmt.Sprintf("removed=%v/left=%v/connected=%v/ever=%v/heartbeat=%s/gossip=%q", rm, lf, conn, ever, hb.name, g)
							t.Run(name, func(t *testing.T) {
								checkRules(t, s, hb.fresh)
							})
							n++
						}
					}
				}
			}
		}
	}
	if n != 216 {
		t.Errorf("walked %d combinations, want 216", n)
	}
}

func checkRules(t *testing.T, s Signals, fresh bool) {
	t.Helper()
	got, reason := Evaluate(now, s)
	streamGood := s.Connected && fresh
	gossipNamed := s.GossipState == "" || strings.Contains(reason, "gossip")
	switch {
	case got == ferryv1.NodeState_NODE_STATE_UNSPECIFIED:
		t.Fatalf("unspecified state (%s)", reason)
	case reason == "":
		t.Fatalf("%s without a reason", got)
	case s.Removed != (got == removed):
		t.Errorf("removed=%v but state %s", s.Removed, got)
	case s.Removed:
		return
	case !gossipNamed:
		t.Errorf("reason %q does not name the gossip signal", reason)
	case streamGood != (got == healthy):
		t.Errorf("stream good=%v but state %s (%s): healthy exactly when the stream is up and fresh", streamGood, got, reason)
	case got == down && s.GossipState != GossipDead:
		t.Errorf("down without gossip saying dead (%s)", reason)
	case got == unreachable && s.GossipState != GossipAlive:
		t.Errorf("unreachable without gossip alive (%s)", reason)
	case got == suspect && s.GossipState != GossipSuspect:
		t.Errorf("suspect without gossip suspecting (%s)", reason)
	case got == left && !(s.Left || s.GossipState == GossipLeft):
		t.Errorf("left without a goodbye or gossip left (%s)", reason)
	case got == pending && (s.EverConnected || s.Connected):
		t.Errorf("pending for a node that connected (%s)", reason)
	case s.Left && !s.Connected && got != left:
		t.Errorf("said goodbye and not reconnected, but %s (%s)", got, reason)
	case !streamGood && !s.Left && s.GossipState == GossipDead && got != down:
		t.Errorf("stream bad and gossip dead, but %s (%s)", got, reason)
	case !streamGood && !s.Left && s.GossipState == GossipAlive && got != unreachable:
		t.Errorf("stream bad and gossip alive, but %s (%s)", got, reason)
	}
}
