// Agent callbacks: what an agent's job report does to its node's record, and
// which jobs a reconnecting agent is sent again.

package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// HandleJobUpdate records an agent's report on a job. nodeID must come from
// the agent's certificate. Reports for jobs the node's record does not hold
// (another node's, an older job's) are ignored, as are reports after the
// node's final outcome and phases that go backwards, so duplicates and
// re-reports after a controller restart are harmless. The server should also
// pass every entry of AgentHello.recent_jobs here.
func (e *Engine) HandleJobUpdate(nodeID string, u *ferryv1.JobUpdate) {
	if e.leading() != nil {
		return
	}
	e.mu.Lock()
	if pw := e.plans[u.GetRolloutId()]; pw != nil {
		pw.deliver(nodeID, u)
		e.mu.Unlock()
		return
	}
	ru := e.runs[u.GetRolloutId()]
	var n *ferryv1.NodeJob
	if ru != nil && !ru.frozen {
		n = ru.node(nodeID)
	}
	if n == nil || n.GetJobId() != u.GetJobId() || terminalOutcome(n.GetOutcome()) {
		e.mu.Unlock()
		e.log.Debug("ignoring job update", "node", nodeID, "job", u.GetJobId(), "rollout", u.GetRolloutId(), "phase", u.GetPhase().String())
		return
	}
	now := e.cfg.Clock.Now()
	fx := &e.queue
	ops := len(fx.ops)
	e.update(ru, n, u, now, fx)
	e.settle(ru, now, fx)
	if len(fx.ops) == ops && len(ru.sent) == 0 && !ru.ended() && e.deferSave(ru) {
		e.mu.Unlock()
		return
	}
	e.saved(ru)
	_ = e.commit(ru, now, fx) // logged; retried at the next tick
	e.mu.Unlock()
	e.drain()
}

var phaseOutcome = map[ferryv1.JobPhase]ferryv1.NodeOutcome{
	ferryv1.JobPhase_JOB_PHASE_DOWNLOADING: ocDownloading,
	ferryv1.JobPhase_JOB_PHASE_INSTALLING:  ocInstalling,
	ferryv1.JobPhase_JOB_PHASE_CHECKING:    ocChecking,
}

func (e *Engine) update(ru *run, n *ferryv1.NodeJob, u *ferryv1.JobUpdate, now time.Time, fx *effects) {
	isRollback := u.GetJobId() == rollbackJobID(ru.r.GetId(), n.GetNodeId())
	if u.GetBytesDone() > n.GetBytesDone() {
		n.BytesDone = u.GetBytesDone()
	}
	if len(u.GetSteps()) > 0 {
		n.Steps = cloneSteps(u.GetSteps())
	}
	msg := u.GetMessage()
	switch ph := u.GetPhase(); ph {
	case ferryv1.JobPhase_JOB_PHASE_DOWNLOADING, ferryv1.JobPhase_JOB_PHASE_INSTALLING, ferryv1.JobPhase_JOB_PHASE_CHECKING:
		o := phaseOutcome[ph]
		if !waitingHealthy(n) && o > n.GetOutcome() {
			setOutcome(ru, n, o, now, msg)
		} else if msg != "" && !waitingHealthy(n) {
			n.Message = msg
		}
	case ferryv1.JobPhase_JOB_PHASE_SUCCEEDED:
		switch {
		case isRollback:
			e.finish(ru, n, ocRolledBack, now, fx, "rolled back to "+versionOrNone(n.GetPreviousVersion()))
		case !waitingHealthy(n):
			n.Outcome = ocChecking
			n.FinishedAt = timestamppb.New(now)
			n.Message = fmt.Sprintf("checks passed; waiting for %s of heartbeats", ru.st.healthyFor)
			e.waitHealthy(ru, n.GetNodeId(), now)
			ru.event(now, n.GetNodeId(), "checking: %s", n.GetMessage())
		}
	case ferryv1.JobPhase_JOB_PHASE_UNCHANGED:
		if msg == "" {
			msg = "already had " + ru.pkgRef()
		}
		if isRollback {
			e.finish(ru, n, ocRolledBack, now, fx, "nothing to roll back: "+msg)
		} else {
			e.finish(ru, n, ocUnchanged, now, fx, msg)
		}
	case ferryv1.JobPhase_JOB_PHASE_FAILED:
		n.FailedStep = u.GetFailedStep()
		if n.FailedStep == "" {
			for _, s := range u.GetSteps() {
				if s.GetError() != "" {
					n.FailedStep = s.GetKind() + ": " + s.GetName()
					if msg == "" {
						msg = s.GetError()
					}
				}
			}
		}
		if msg == "" {
			msg = "the agent reported a failure"
		}
		if isRollback {
			msg = "rollback failed: " + msg
		}
		e.finish(ru, n, ocFailed, now, fx, msg)
	default:
		if msg != "" {
			n.Message = msg
		}
	}
}

func cloneSteps(in []*ferryv1.StepResult) []*ferryv1.StepResult {
	out := make([]*ferryv1.StepResult, len(in))
	for i, s := range in {
		out[i] = proto.Clone(s).(*ferryv1.StepResult)
	}
	return out
}

// NodeHeartbeat is called for each heartbeat of a node's agent. A node
// serving out its healthy period succeeds on the first heartbeat after the
// period (which healthyDone asks for), and the window moves on at once,
// rather than at the next Tick.
func (e *Engine) NodeHeartbeat(nodeID string) {
	if e.leading() != nil {
		return
	}
	e.mu.Lock()
	now := e.cfg.Clock.Now()
	fx := &e.queue
	settled := false
	// Only the runs in which the node waits out a healthy period: for
	// any other node a heartbeat changes nothing. (An admin action that
	// could not be saved may leave a run out of the index; the next Tick
	// looks at it.)
	for ru := range e.healthyWaits[nodeID] {
		if _, waiting := ru.healthySince[nodeID]; !waiting || ru.frozen {
			continue
		}
		if n := ru.node(nodeID); n != nil && waitingHealthy(n) && e.healthyDone(ru, n, now) {
			e.settle(ru, now, fx)
			_ = e.commit(ru, now, fx) // logged; retried at the next tick
			settled = true
		}
	}
	e.mu.Unlock()
	if settled {
		e.drain()
	}
}

// NodeConnected is called when a node's agent opens its stream, with the
// job outcomes its hello re-reports. They are handled first; then every job
// the engine has in flight on the node that the agent did not mention is
// sent again under the same ID. The agent never runs a job twice (it keeps
// the results of the jobs it ran, and ignores a job it is running), so this
// only reaches jobs it never got or lost before installing anything: a job
// sent just before a controller crash, or one whose download an agent
// restart interrupted (the download then resumes from what is on disk).
func (e *Engine) NodeConnected(nodeID string, reported []*ferryv1.JobUpdate) {
	if e.leading() != nil {
		return
	}
	known := map[string]bool{}
	for _, u := range reported {
		known[u.GetJobId()] = true
		e.HandleJobUpdate(nodeID, u)
	}
	e.mu.Lock()
	for _, ru := range e.runs {
		if ru.frozen || ru.ended() {
			continue
		}
		n := ru.node(nodeID)
		if n == nil || n.GetJobId() == "" || known[n.GetJobId()] {
			continue
		}
		switch n.GetOutcome() {
		case ocDownloading, ocInstalling, ocChecking:
		default:
			continue
		}
		kind := ru.r.GetJobKind()
		if n.GetJobId() == rollbackJobID(ru.r.GetId(), nodeID) {
			kind = kindRollback
		}
		kind, pkg, err := e.nodeJob(ru, n, kind)
		if err != nil {
			e.log.Error("cannot resend job", "rollout", ru.r.GetId(), "node", nodeID, "err", err)
			continue
		}
		e.log.Info("resending in-flight job to a reconnected node", "rollout", ru.r.GetId(), "node", nodeID, "job", n.GetJobId())
		e.queue.ops = append(e.queue.ops, sendOp(ru, nodeID, n.GetJobId(), kind, pkg, n.GetOutcome()))
	}
	e.mu.Unlock()
	e.drain()
}
