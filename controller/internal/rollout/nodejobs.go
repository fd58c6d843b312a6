package rollout

import (
	"google.golang.org/protobuf/proto"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// NodeJobs returns a node's jobs in every rollout kept, newest rollout
// first: what `ferryctl node show` lists as the node's history. It copies
// one job per rollout, never whole rollouts.
func (e *Engine) NodeJobs(nodeID string) []*ferryv1.NodeJobRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	var rs []*ferryv1.Rollout
	for _, ru := range e.runs {
		if ru.node(nodeID) != nil {
			rs = append(rs, ru.r)
		}
	}
	sortNewestFirst(rs)
	out := make([]*ferryv1.NodeJobRecord, 0, len(rs))
	for _, r := range rs {
		ru := e.runs[r.GetId()]
		out = append(out, &ferryv1.NodeJobRecord{
			RolloutId:      r.GetId(),
			PackageName:    r.GetPackageName(),
			PackageVersion: r.GetPackageVersion(),
			JobKind:        r.GetJobKind(),
			Job:            proto.CloneOf(ru.node(nodeID)),
		})
	}
	return out
}
