// Artifacts: which artifacts a node may download, read from the jobs the
// engine sent it.

package rollout

import (
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// defaultFetchGrace is Config.FetchGrace unless set: a job's deadline is
// minutes, and an agent that reconnects after it was given up on resumes
// its download within that.
const defaultFetchGrace = 10 * time.Minute

// NodeMayFetch reports whether the artifact with this digest belongs to a
// job sent to the node: an install or rollback job of a rollout that is
// in flight or ended less than FetchGrace ago, or a plan job still waited
// for. Rollout jobs are read from the stored records (job IDs and their
// times) and the stored packages, so a restarted controller answers as the
// one before it did, and an in-flight download resumes.
func (e *Engine) NodeMayFetch(nodeID, digest string) bool {
	if digest == "" {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for planID, pw := range e.plans {
		if pw.digest == digest && pw.jobs[planJobID(planID, nodeID)] == nodeID {
			return true
		}
	}
	now := e.cfg.Clock.Now()
	for _, ru := range e.runs {
		n := ru.node(nodeID)
		if n == nil || n.GetJobId() == "" || !e.jobRecent(ru, n, now) {
			continue
		}
		if _, pkg, err := e.nodeJob(ru, n, ru.r.GetJobKind()); err == nil && pkg.GetArtifact().GetDigest() == digest {
			return true
		}
	}
	return false
}

// jobRecent: the node's job is in flight, or ended less than FetchGrace
// before now. A job with no end time of its own (in a record this engine
// cannot advance, or an older one) ended with the rollout's last change.
func (e *Engine) jobRecent(ru *run, n *ferryv1.NodeJob, now time.Time) bool {
	if inFlight(n) && !ru.frozen {
		return true
	}
	end := n.GetFinishedAt()
	if end == nil {
		end = ru.r.GetUpdatedAt()
	}
	return now.Sub(end.AsTime()) < e.cfg.FetchGrace
}
