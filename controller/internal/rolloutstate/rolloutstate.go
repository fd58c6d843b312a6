// Package rolloutstate answers what the rollout engine and ferryctl both
// ask of a rollout's state, so ferryctl need not link the engine.
package rolloutstate

import ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"

// Terminal reports whether a rollout in state s has ended: succeeded,
// failed, aborted or rolled back.
func Terminal(s ferryv1.RolloutState) bool {
	switch s {
	case ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED, ferryv1.RolloutState_ROLLOUT_STATE_FAILED,
		ferryv1.RolloutState_ROLLOUT_STATE_ABORTED, ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK:
		return true
	}
	return false
}
