// The fleet view of a node: whether it can take a job now, its state in
// words, the version of a package it has installed.

package rollout

import (
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

func reachable(n *ferryv1.Node) bool {
	return n.GetConnected() && n.GetState() == ferryv1.NodeState_NODE_STATE_HEALTHY
}

// gone: the node is known not to come straight back (gossip says it is
// dead or left, or an admin removed it), whatever its last heartbeat.
func gone(n *ferryv1.Node) bool {
	switch n.GetState() {
	case ferryv1.NodeState_NODE_STATE_DOWN, ferryv1.NodeState_NODE_STATE_LEFT, ferryv1.NodeState_NODE_STATE_REMOVED:
		return true
	}
	return false
}

// reconnecting: the node's stream is down, but its last heartbeat is
// within grace and it is not gone: its agent is most likely redialling a
// dropped connection (a flapping link reconnects within a second).
func reconnecting(n *ferryv1.Node, now time.Time, grace time.Duration) bool {
	hb := n.GetLastHeartbeat()
	return !n.GetConnected() && !gone(n) && hb != nil && now.Sub(hb.AsTime()) <= grace
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
