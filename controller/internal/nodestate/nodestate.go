// Package nodestate names node health states with the words operators
// read: ferryctl's node tables and the controller's Prometheus state label
// use the same ones. It depends on nothing but the API types, so the admin
// CLI can link it.
package nodestate

import (
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Name is the lowercase word for a node state ("healthy", "down", ...),
// "unknown" for the unset state and values the API does not define.
func Name(s ferryv1.NodeState) string {
	if _, defined := ferryv1.NodeState_name[int32(s)]; !defined || s == ferryv1.NodeState_NODE_STATE_UNSPECIFIED {
		return "unknown"
	}
	return enumword.Of(s)
}
