// The fleet view of a node: whether it can take a job now, its state in
// words, the version of a package it has installed.

package rollout

import (
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

func reachable(n *ferryv1.Node) bool {
	return n.GetConnected() && n.GetState() == ferryv1.NodeState_NODE_STATE_HEALTHY
}

func nodeStatus(n *ferryv1.Node, ok bool) string {
	if !ok {
		return "no longer enrolled"
	}
	s := enumword.Of(n.GetState())
	if !n.GetConnected() {
		s += ", not connected"
	}
	if n.GetStateReason() != "" {
		s += ": " + n.GetStateReason()
	}
	return s
}

func installedVersion(n *ferryv1.Node, pkg string) string {
	for _, p := range n.GetInstalled() {
		if p.GetName() == pkg {
			return p.GetVersion()
		}
	}
	return ""
}
