// The sliding window: which nodes start next (canaries, the promotion gate,
// wave 1), and which nodes a rolling-back rollout sends rollback jobs to.

package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// fillWindow starts pending nodes while fewer than max_parallel jobs are in
// flight: canaries (wave 0) first; wave 1 once every canary has a final
// outcome and the rollout is promoted (or auto_promote).
func (e *Engine) fillWindow(ru *run, now time.Time, fx *effects) {
	r := ru.r
	slots := ru.st.maxParallel.parallel(len(r.GetNodes())) - ru.inFlightCount()
	canariesDone, wave1Started, hasCanaries := true, false, false
	for _, n := range r.GetNodes() {
		if n.GetWave() == 0 {
			hasCanaries = true
		}
		if n.GetWave() == 0 && !terminalOutcome(n.GetOutcome()) {
			canariesDone = false
		}
		if n.GetWave() > 0 && n.GetStartedAt() != nil {
			wave1Started = true
		}
	}
	for _, n := range r.GetNodes() {
		if slots <= 0 {
			return
		}
		if n.GetOutcome() != ocPending {
			continue
		}
		if n.GetWave() > 0 {
			if !canariesDone {
				return
			}
			// Without canaries (--canary 0) there is nothing to promote.
			if hasCanaries && !wave1Started && !ru.st.autoPromote && !ru.promoted {
				ru.setState(now, stWaiting, fmt.Sprintf("canaries done (%s); waiting for `ferryctl rollout promote %s`", canarySummary(r), r.GetId()))
				return
			}
			if !wave1Started {
				wave1Started = true
				ru.event(now, "", "wave 1 started")
			}
		}
		if e.start(ru, n, now, fx, r.GetJobKind(), mainJobID(r.GetId(), n.GetNodeId())) {
			slots--
		}
	}
}

func canarySummary(r *ferryv1.Rollout) string {
	c := map[ferryv1.NodeOutcome]int{}
	for _, n := range r.GetNodes() {
		if n.GetWave() == 0 {
			c[n.GetOutcome()]++
		}
	}
	return countsText(c)
}

// start sends a node its job, or marks it unreachable when it is not
// connected and healthy now. The job ID is set here and persisted by commit
// before the job is sent (apply runs after commit). It reports whether a
// job was sent.
func (e *Engine) start(ru *run, n *ferryv1.NodeJob, now time.Time, fx *effects, kind ferryv1.JobKind, jobID string) bool {
	before := proto.Clone(n).(*ferryv1.NodeJob)
	n.StartedAt = timestamppb.New(now)
	fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
	restarted := now.Sub(e.started) < e.cfg.ReconnectGrace && fn.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED
	if ok && !reachable(fn) && (restarted || reconnecting(fn, now, e.cfg.DisconnectGrace)) {
		// The controller has just (re)started and agents are still in
		// their reconnect backoff, or this node's stream dropped moments
		// ago and its agent is redialling: wait for it rather than mark
		// a healthy node unreachable. The node stays pending and takes
		// no window slot.
		n.StartedAt = before.GetStartedAt()
		return false
	}
	if !ok || !reachable(fn) {
		e.finish(ru, n, ocUnreachable, now, fx, "not connected when its turn came ("+nodeStatus(fn, ok)+"); no job sent")
		return false
	}
	kind, pkg, err := e.nodeJob(ru, n, kind)
	if err != nil {
		n.StartedAt = before.GetStartedAt()
		e.log.Error("cannot send rollout job", "rollout", ru.r.GetId(), "node", n.GetNodeId(), "err", err)
		return false
	}
	o := ocDownloading
	if kind != kindInstall || pkg.GetArtifact().GetDigest() == "" {
		o = ocInstalling
	}
	n.JobId = jobID
	n.FinishedAt = nil
	n.FailedStep = ""
	n.BytesDone = 0
	n.Steps = nil
	msg := jobMessage(ru, n, kind)
	setOutcome(ru, n, o, now, msg)
	ru.sent = append(ru.sent, sentNode{n: n, before: before})
	fx.ops = append(fx.ops, sendOp(ru, n.GetNodeId(), jobID, kind, pkg, o))
	return true
}

func versionOrNone(v string) string {
	if v == "" {
		return "no previous version"
	}
	return v
}

// fillRollbacks sends rollback jobs, within max_parallel, to every node the
// rollout changed. A node waiting out its healthy period is already in
// flight and switches to its rollback without taking a new slot.
func (e *Engine) fillRollbacks(ru *run, now time.Time, fx *effects) {
	r := ru.r
	slots := ru.st.maxParallel.parallel(len(r.GetNodes())) - ru.inFlightCount()
	for _, n := range r.GetNodes() {
		if !e.changedNode(ru, n) {
			continue
		}
		wasInFlight := inFlight(n)
		if !wasInFlight && slots <= 0 {
			continue
		}
		rbID := rollbackJobID(r.GetId(), n.GetNodeId())
		fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
		if !ok || !reachable(fn) {
			n.JobId = rbID
			notRolledBack(ru, n, now, "node not connected ("+nodeStatus(fn, ok)+")")
			continue
		}
		if e.start(ru, n, now, fx, kindRollback, rbID) && !wasInFlight {
			slots--
		}
	}
}

// changedNode: the rollout's own job changed the node and it has not been
// undone: the agent reported success, or (for nodes the rollout counted as
// failed) the fleet shows the rollout's version installed.
func (e *Engine) changedNode(ru *run, n *ferryv1.NodeJob) bool {
	if n.GetJobId() != mainJobID(ru.r.GetId(), n.GetNodeId()) {
		return false
	}
	switch n.GetOutcome() {
	case ocSucceeded:
		return true
	case ocChecking:
		return n.GetFinishedAt() != nil
	case ocFailed, ocUnreachable:
		fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
		return ok && installedVersion(fn, ru.r.GetPackageName()) == ru.r.GetPackageVersion() && n.GetPreviousVersion() != ru.r.GetPackageVersion()
	}
	return false
}
