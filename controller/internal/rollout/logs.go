// Logs: which job output a node may store under a rollout.

package rollout

// NodeRanJob reports whether jobID is one the engine sends the node in the
// rollout: its install (or plan) job, or the rollback of it. Output of
// any other job is not stored, so a node cannot fill the store under
// other rollouts' or nodes' names; output of the install job still counts
// after a rollback replaced it, since a node that was offline sends it
// late.
func (e *Engine) NodeRanJob(rolloutID, nodeID, jobID string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, ok := e.runs[rolloutID]
	if !ok || ru.node(nodeID) == nil {
		return false
	}
	n := ru.node(nodeID)
	return jobID != "" && (jobID == n.GetJobId() || jobID == mainJobID(rolloutID, nodeID) || jobID == rollbackJobID(rolloutID, nodeID))
}
