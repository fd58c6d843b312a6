package fleet

import (
	"fmt"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// DispatchSpare queues a message the node can do without (an
// acknowledgement of job output: without it the agent sends the lines
// again) only while the session's queue is at most half full, so such
// messages never take the room jobs and cancels need.
func (r *Registry) DispatchSpare(nodeID string, msg *ferryv1.ConnectResponse) error {
	r.mu.RLock()
	e, ok := r.nodes[nodeID]
	var s *Session
	if ok {
		s = e.session
	}
	r.mu.RUnlock()
	if s == nil || s.ctx.Err() != nil {
		return fmt.Errorf("node %s: %w", nodeID, ErrNotConnected)
	}
	if len(s.send) > cap(s.send)/2 {
		return fmt.Errorf("node %s: stream send queue is half full", nodeID)
	}
	select {
	case s.send <- msg:
		return nil
	default:
		return fmt.Errorf("node %s: stream send queue is full", nodeID)
	}
}
