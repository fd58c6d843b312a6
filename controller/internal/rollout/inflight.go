// Jobs in flight: when a node whose job is running ends without a final
// report from its agent (the healthy period, the progress deadline).

package rollout

import (
	"fmt"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// checkInFlight applies the healthy period and the progress deadline. The
// deadline runs from the job's start; once the agent reported success it
// runs again from that report, so a late success still gets its healthy
// period, but a node that never settles is not waited on forever.
func (e *Engine) checkInFlight(ru *run, n *ferryv1.NodeJob, now time.Time, fx *effects) {
	healthy := waitingHealthy(n)
	start := n.GetStartedAt().AsTime()
	if healthy {
		start = n.GetFinishedAt().AsTime()
		if e.healthyDone(ru, n, now) {
			e.finish(ru, n, ocSucceeded, now, fx, fmt.Sprintf("healthy for %s after the checks passed", ru.st.healthyFor))
			return
		}
	}
	if now.Sub(start) < ru.st.progressDeadline {
		return
	}
	fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
	switch {
	case !ok || !reachable(fn):
		e.finish(ru, n, ocUnreachable, now, fx, fmt.Sprintf("node went away mid-job (%s); gave up at the progress deadline %s", nodeStatus(fn, ok), ru.st.progressDeadline))
	case healthy:
		e.finish(ru, n, ocFailed, now, fx, fmt.Sprintf("installed, but not healthy for %s within the progress deadline %s", ru.st.healthyFor, ru.st.progressDeadline))
	default:
		what := "job"
		if n.GetJobId() == rollbackJobID(ru.r.GetId(), n.GetNodeId()) {
			what = "rollback job"
		}
		e.finish(ru, n, ocFailed, now, fx, fmt.Sprintf("no result within the progress deadline %s; %s cancelled", ru.st.progressDeadline, what))
	}
	if !healthy {
		fx.cancel(n.GetNodeId(), n.GetJobId())
	}
}

// healthyDone: the node has been healthy for healthy_for since its
// report, and a heartbeat arrived after that (when the fleet reports
// heartbeat times). Healthy for D means: for the last D its heartbeats
// kept coming, never more than two heartbeat intervals apart (the fleet's
// HeartbeatsSince), it was HEALTHY at every look while its stream was up,
// and it was never gone (down, left, removed). A stream that drops and is
// redialled within that gap, as on a flapping link, does not restart the
// period. With healthy_for 0 the report itself, from a node that is
// connected and healthy, is the sign of life: no heartbeat is waited for.
func (e *Engine) healthyDone(ru *run, n *ferryv1.NodeJob, now time.Time) bool {
	id := n.GetNodeId()
	fn, ok := e.cfg.Fleet.Node(id)
	beating := e.cfg.Fleet.HeartbeatsSince(id)
	if !ok || beating.IsZero() || gone(fn) || fn.GetConnected() && !reachable(fn) {
		e.waitHealthy(ru, id, time.Time{})
		return false
	}
	if ru.st.healthyFor == 0 && reachable(fn) {
		return true
	}
	since, seen := ru.healthySince[id]
	switch {
	case !seen:
		// First look since the report, or since a restart: the engine did
		// not watch the node before, so count from now at the earliest.
		since = n.GetFinishedAt().AsTime()
		if e.started.After(since) {
			since = e.started
		}
		e.waitHealthy(ru, id, since)
	case since.IsZero():
		since = now
		e.waitHealthy(ru, id, since)
	}
	if beating.After(since) {
		since = beating
	}
	end := since.Add(ru.st.healthyFor)
	if now.Before(end) {
		return false
	}
	if hb := fn.GetLastHeartbeat(); hb != nil && hb.AsTime().Before(end) {
		return false
	}
	return true
}

// waitHealthy records since in ru.healthySince for node id, which waits
// out its healthy period, and indexes it for NodeHeartbeat.
func (e *Engine) waitHealthy(ru *run, id string, since time.Time) {
	ru.healthySince[id] = since
	rs := e.healthyWaits[id]
	if rs == nil {
		rs = map[*run]struct{}{}
		e.healthyWaits[id] = rs
	}
	rs[ru] = struct{}{}
}

// stopWaitingHealthy forgets node id's healthy period in ru: it has its
// final outcome.
func (e *Engine) stopWaitingHealthy(ru *run, id string) {
	delete(ru.healthySince, id)
	if rs := e.healthyWaits[id]; rs != nil {
		delete(rs, ru)
		if len(rs) == 0 {
			delete(e.healthyWaits, id)
		}
	}
}
