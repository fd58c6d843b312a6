// Failures: what a rollout does when its failures exceed max_failures
// (pause, abort or roll back), and what aborting does to its nodes.

package rollout

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// onFailure acts once failures exceed max_failures. It runs at each new
// failure (never at a tick), so a rollout an admin resumed past the limit
// goes on until the next failure, and a restart does not trip it again.
func (e *Engine) onFailure(ru *run, now time.Time, fx *effects) {
	switch ru.r.GetState() {
	case stRunning, stWaiting, stPaused:
	default:
		return
	}
	total := len(ru.r.GetNodes())
	f := ru.failures()
	if !ru.st.maxFailures.exceeded(f, total) {
		return
	}
	why := fmt.Sprintf("%d of %d nodes failed, more than max-failures %s", f, total, ru.st.maxFailures)
	action := ru.st.onFailure
	if action == ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK && ru.r.GetJobKind() != kindInstall {
		// An undo or a removal cannot be rolled back; stop and let an
		// admin decide.
		action = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
		why += " (an undo or a removal is not rolled back)"
	}
	e.log.Warn("rollout failure threshold exceeded", "rollout", ru.r.GetId(), "failures", f, "max_failures", ru.st.maxFailures.String(), "action", action.String())
	switch action {
	case ferryv1.FailureAction_FAILURE_ACTION_ABORT:
		e.abort(ru, now, fx, why+"; aborted")
	case ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK:
		ru.setState(now, stRolling, why+"; rolling back the nodes that changed")
		skipPending(ru, now, "skipped: the rollout is rolling back")
		cancelRunning(ru, fx)
	default:
		if !slices.ContainsFunc(ru.r.GetNodes(), func(n *ferryv1.NodeJob) bool { return n.GetOutcome() == ocPending }) {
			// Nothing is left to start: a pause would hold a rollout that can
			// only end failed (and resume would then refuse it), so it says
			// so and ends failed as soon as its last job is done.
			ru.setState(now, ru.r.GetState(), why+"; nothing is left to start, so it ends failed once the jobs still running finish")
			return
		}
		ru.setState(now, stPaused, fmt.Sprintf("%s; paused: fix the cause, then `ferryctl rollout resume %s` or `ferryctl rollout abort %s`", why, ru.r.GetId(), ru.r.GetId()))
	}
}

// abort stops the rollout: pending nodes are skipped and jobs the agents are
// still running are cancelled (the agents undo the steps they applied).
func (e *Engine) abort(ru *run, now time.Time, fx *effects, msg string) {
	ru.setState(now, stAborted, msg)
	skipPending(ru, now, "skipped: the rollout was aborted")
	cancelRunning(ru, fx)
}

// cancelRunning cancels the jobs the agents are still running (not those
// that reported success and are serving out healthy_for).
func cancelRunning(ru *run, fx *effects) {
	for _, n := range ru.r.GetNodes() {
		if inFlight(n) && n.GetFinishedAt() == nil {
			fx.cancel(n.GetNodeId(), n.GetJobId())
		}
	}
}

func skipPending(ru *run, now time.Time, msg string) {
	for _, n := range ru.r.GetNodes() {
		if n.GetOutcome() == ocPending {
			n.Outcome = ocSkipped
			n.FinishedAt = timestamppb.New(now)
			n.Message = msg
			ru.event(now, n.GetNodeId(), "skipped")
		}
	}
}
