// Outcomes: what outcome a node or a rollout has, which outcomes are final,
// what counts as a failure, and the final state a rollout ends in.

package rollout

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Shorter names for the enums the state machine uses everywhere.
const (
	stRunning   = ferryv1.RolloutState_ROLLOUT_STATE_RUNNING
	stWaiting   = ferryv1.RolloutState_ROLLOUT_STATE_WAITING_PROMOTION
	stPaused    = ferryv1.RolloutState_ROLLOUT_STATE_PAUSED
	stSucceeded = ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	stFailed    = ferryv1.RolloutState_ROLLOUT_STATE_FAILED
	stAborted   = ferryv1.RolloutState_ROLLOUT_STATE_ABORTED
	stRolling   = ferryv1.RolloutState_ROLLOUT_STATE_ROLLING_BACK
	stRolled    = ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK

	ocPending     = ferryv1.NodeOutcome_NODE_OUTCOME_PENDING
	ocDownloading = ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING
	ocInstalling  = ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING
	ocChecking    = ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING
	ocSucceeded   = ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED
	ocUnchanged   = ferryv1.NodeOutcome_NODE_OUTCOME_UNCHANGED
	ocFailed      = ferryv1.NodeOutcome_NODE_OUTCOME_FAILED
	ocUnreachable = ferryv1.NodeOutcome_NODE_OUTCOME_UNREACHABLE
	ocSkipped     = ferryv1.NodeOutcome_NODE_OUTCOME_SKIPPED
	ocRolledBack  = ferryv1.NodeOutcome_NODE_OUTCOME_ROLLED_BACK

	kindInstall  = ferryv1.JobKind_JOB_KIND_INSTALL
	kindRollback = ferryv1.JobKind_JOB_KIND_ROLLBACK
	kindPlan     = ferryv1.JobKind_JOB_KIND_PLAN
	kindRemove   = ferryv1.JobKind_JOB_KIND_REMOVE
)

func terminalOutcome(o ferryv1.NodeOutcome) bool {
	switch o {
	case ocSucceeded, ocUnchanged, ocFailed, ocUnreachable, ocSkipped, ocRolledBack:
		return true
	}
	return false
}

// inFlight: a job was sent (its ID persisted) and has no final outcome yet.
func inFlight(n *ferryv1.NodeJob) bool {
	return n.GetJobId() != "" && !terminalOutcome(n.GetOutcome())
}

// waitingHealthy: the agent reported success; the node is serving out
// healthy_for.
func waitingHealthy(n *ferryv1.NodeJob) bool {
	return n.GetOutcome() == ocChecking && n.GetFinishedAt() != nil
}

// isFailure: counted against max_failures.
func isFailure(n *ferryv1.NodeJob) bool {
	switch n.GetOutcome() {
	case ocFailed:
		return true
	case ocUnreachable:
		return n.GetJobId() != ""
	}
	return false
}

func (ru *run) failures() int {
	c := 0
	for _, n := range ru.r.GetNodes() {
		if isFailure(n) {
			c++
		}
	}
	return c
}

func (ru *run) inFlightCount() int {
	c := 0
	for _, n := range ru.r.GetNodes() {
		if inFlight(n) {
			c++
		}
	}
	return c
}

// ended: the rollout reached a final state and no job of it is in flight.
// An aborted rollout keeps tracking the jobs it cancelled until they report
// or time out.
func (ru *run) ended() bool {
	return rolloutstate.Terminal(ru.r.GetState()) && ru.inFlightCount() == 0
}

// setOutcome moves an in-flight node to a new non-final outcome.
func setOutcome(ru *run, n *ferryv1.NodeJob, o ferryv1.NodeOutcome, now time.Time, msg string) {
	n.Outcome = o
	if msg == "" {
		ru.event(now, n.GetNodeId(), "%s", enumword.Of(o))
		return
	}
	n.Message = msg
	ru.event(now, n.GetNodeId(), "%s: %s", enumword.Of(o), msg)
}

// finish gives a node its final outcome and applies the failure threshold.
func (e *Engine) finish(ru *run, n *ferryv1.NodeJob, o ferryv1.NodeOutcome, now time.Time, fx *effects, msg string) {
	n.Outcome = o
	n.FinishedAt = timestamppb.New(now)
	n.Message = msg
	e.stopWaitingHealthy(ru, n.GetNodeId())
	if o == ocFailed && n.GetFailedStep() != "" {
		// The agent's message already starts with the step.
		ru.event(now, n.GetNodeId(), "failed at %s: %s", n.GetFailedStep(), strings.TrimPrefix(msg, n.GetFailedStep()+": "))
	} else {
		ru.event(now, n.GetNodeId(), "%s: %s", enumword.Of(o), msg)
	}
	if isFailure(n) && n.GetJobId() == mainJobID(ru.r.GetId(), n.GetNodeId()) {
		e.onFailure(ru, now, fx)
	}
}

// notRolledBack ends a changed node whose rollback job could not be sent,
// as SUCCEEDED, with a message saying why and that the version may remain.
func notRolledBack(ru *run, n *ferryv1.NodeJob, now time.Time, why string) {
	n.Outcome = ocSucceeded
	n.FinishedAt = timestamppb.New(now)
	n.Message = "not rolled back: " + why + "; it may still have " + ru.r.GetPackageVersion()
	ru.event(now, n.GetNodeId(), "%s", n.GetMessage())
}

// maybeFinish gives the rollout its final state once no job is in flight
// and nothing is left to start.
func (e *Engine) maybeFinish(ru *run, now time.Time) {
	r := ru.r
	if ru.inFlightCount() > 0 {
		return
	}
	counts := map[ferryv1.NodeOutcome]int{}
	for _, n := range r.GetNodes() {
		counts[n.GetOutcome()]++
	}
	summary := fmt.Sprintf("%d nodes: %s", len(r.GetNodes()), countsText(counts))
	switch r.GetState() {
	case stRunning, stPaused, stWaiting:
		if counts[ocPending] > 0 {
			return
		}
		if counts[ocSucceeded]+counts[ocUnchanged] == len(r.GetNodes()) {
			ru.setState(now, stSucceeded, summary)
		} else {
			ru.setState(now, stFailed, summary)
		}
	case stRolling:
		ru.setState(now, stRolled, summary)
	case stAborted:
		if !strings.Contains(r.GetMessage(), "; ended with ") {
			r.Message += "; ended with " + summary
			ru.dirty = true
		}
	}
}

// countsText renders outcome counts in a fixed order, e.g. "2 succeeded, 1 failed".
func countsText(c map[ferryv1.NodeOutcome]int) string {
	var parts []string
	for o := ocPending; o <= ocRolledBack; o++ {
		if c[o] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c[o], enumword.Of(o)))
		}
	}
	if len(parts) == 0 {
		return "no nodes"
	}
	return strings.Join(parts, ", ")
}
