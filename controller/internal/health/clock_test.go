package health

import (
	"testing"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A node clock far off the controller's keeps the node's state and is
// named in its reason; small skews are not.
func TestEvaluateClockSkew(t *testing.T) {
	const iv = 5 * time.Second
	up := Signals{Connected: true, EverConnected: true, LastHeartbeat: ago(time.Second), HeartbeatInterval: iv}
	with := func(s Signals, skew time.Duration) Signals { s.ClockSkew = skew; return s }
	for _, tc := range []struct {
		name   string
		s      Signals
		want   ferryv1.NodeState
		reason string
	}{
		{"two minutes behind", with(up, 2*time.Minute), healthy,
			"stream up, heartbeat 1s old; not seen by gossip; node clock 2m0s behind the controller's: fix it (NTP)"},
		{"30 days ahead, stream closed", with(Signals{EverConnected: true, LastHeartbeat: ago(time.Minute), HeartbeatInterval: iv}, -30*24*time.Hour), stale,
			"stream closed, last heartbeat 1m0s old (stale after 15s); not seen by gossip; node clock 30 days ahead of the controller's: fix it (NTP)"},
		{"at the tolerance", with(up, -ClockSkewTolerance), healthy, "stream up, heartbeat 1s old; not seen by gossip"},
		{"small", with(up, 1500*time.Millisecond), healthy, "stream up, heartbeat 1s old; not seen by gossip"},
		{"removed", with(Signals{Removed: true}, time.Hour), removed, "removed by an admin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, reason := Evaluate(now, tc.s)
			if state != tc.want || reason != tc.reason {
				t.Errorf("Evaluate = %s, %q; want %s, %q", state, reason, tc.want, tc.reason)
			}
		})
	}
}
