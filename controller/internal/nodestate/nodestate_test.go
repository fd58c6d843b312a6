package nodestate

import (
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestName(t *testing.T) {
	want := map[ferryv1.NodeState]string{
		ferryv1.NodeState_NODE_STATE_UNSPECIFIED: "unknown",
		ferryv1.NodeState_NODE_STATE_HEALTHY:     "healthy",
		ferryv1.NodeState_NODE_STATE_STALE:       "stale",
		ferryv1.NodeState_NODE_STATE_UNREACHABLE: "unreachable",
		ferryv1.NodeState_NODE_STATE_SUSPECT:     "suspect",
		ferryv1.NodeState_NODE_STATE_DOWN:        "down",
		ferryv1.NodeState_NODE_STATE_LEFT:        "left",
		ferryv1.NodeState_NODE_STATE_REMOVED:     "removed",
		ferryv1.NodeState_NODE_STATE_PENDING:     "pending",
		ferryv1.NodeState(1000):                  "unknown",
	}
	for v := range ferryv1.NodeState_name {
		if _, ok := want[ferryv1.NodeState(v)]; !ok {
			t.Errorf("state %s has no expected word in this test: add it", ferryv1.NodeState(v))
		}
	}
	for s, w := range want {
		if got := Name(s); got != w {
			t.Errorf("Name(%s) = %q, want %q", s, got, w)
		}
	}
}
