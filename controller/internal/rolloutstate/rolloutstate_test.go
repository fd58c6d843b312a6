package rolloutstate

import (
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestTerminal(t *testing.T) {
	terminal := map[ferryv1.RolloutState]bool{
		ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED:   true,
		ferryv1.RolloutState_ROLLOUT_STATE_FAILED:      true,
		ferryv1.RolloutState_ROLLOUT_STATE_ABORTED:     true,
		ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK: true,
	}
	// Every state the proto defines, so a new one is checked here too.
	for v, name := range ferryv1.RolloutState_name {
		s := ferryv1.RolloutState(v)
		if got := Terminal(s); got != terminal[s] {
			t.Errorf("Terminal(%s) = %t, want %t", name, got, terminal[s])
		}
	}
}
