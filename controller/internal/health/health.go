// Package health turns the controller's two independent signals about a
// node, the agent's stream (is it open, how old is the last heartbeat) and
// SWIM gossip among the agents (alive, suspect, dead, left), into one node
// state with a reason naming the signals, so an operator can tell a dead
// node from one the controller merely cannot reach.
//
// The stream is direct evidence and gossip is indirect: when the stream is
// open and its heartbeat fresh the node is healthy whatever gossip says, and
// a gossip complaint only shows in the reason. Gossip decides between the
// states only when the stream has gone quiet:
//
//	stream open, heartbeat fresh   gossip any           -> HEALTHY
//	stream closed or heartbeat stale:
//	                               gossip alive         -> UNREACHABLE
//	                               gossip suspect       -> SUSPECT
//	                               gossip dead          -> DOWN
//	                               gossip left          -> LEFT
//	                               no gossip view       -> STALE (PENDING if never connected)
//	goodbye on the stream (Left), not reconnected       -> LEFT
//	removed by an admin                                 -> REMOVED
//
// A node whose clock is more than ClockSkewTolerance off the controller's
// keeps its state, and the reason says so: its certificate is judged by
// the controller's clock, so a wrong clock shows up late, as refused
// connections.
//
// A heartbeat is fresh while it is at most StaleAfter heartbeat intervals
// old. A closed stream makes the stream signal bad at once, whatever the
// heartbeat's age: a node whose stream is closed cannot be sent a job, and
// a killed agent's stream closes long before three heartbeats are missed,
// so it is reported down as soon as gossip agrees.
//
// # Metrics at 5,000 nodes
//
// Heartbeat age is exported as a histogram, ferry_heartbeat_age_seconds,
// observed on each heartbeat with the age of the node's previous one, plus a
// single gauge, ferry_heartbeat_max_age_seconds, computed at scrape time, and
// node counts come from ferry_nodes{state,group}. A gauge per node would cost
// 5,000 series (more as nodes are replaced and their series churn), make
// every scrape carry 5,000 samples, and still miss the jitter between
// scrapes; the histogram costs a dozen series whatever the fleet size and
// its buckets show how many heartbeats arrive late, while the max-age gauge
// catches the one node that stopped, which the histogram cannot (a node that
// sends nothing observes nothing). Who is stale is answered by
// `ferryctl nodes --state stale`, not by the metrics.
package health

import (
	"fmt"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/approxdur"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// StaleAfter is how many heartbeat intervals may pass before a heartbeat is
// stale: three missed heartbeats, so one lost or late one does not count.
const StaleAfter = 3

// ClockSkewTolerance is how far a node's clock may be off the controller's
// before the node's reason mentions it.
const ClockSkewTolerance = 30 * time.Second

// DefaultHeartbeatInterval applies when Signals.HeartbeatInterval is zero.
const DefaultHeartbeatInterval = 5 * time.Second

// Gossip states as shared/gossip reports them.
const (
	GossipAlive   = gossip.StateAlive
	GossipSuspect = gossip.StateSuspect
	GossipDead    = gossip.StateDead
	GossipLeft    = gossip.StateLeft
)

// Signals are what the controller knows of one node; the fleet registry
// gathers them (fleet.Signals is this type).
type Signals struct {
	Removed       bool // an admin removed the node
	Left          bool // the agent said goodbye on its stream before closing it
	Connected     bool // the agent's stream is open now
	EverConnected bool // the stream was open at least once since enrollment
	// LastHeartbeat is when the last heartbeat arrived (controller clock);
	// opening the stream counts as one. Zero means none.
	LastHeartbeat     time.Time
	HeartbeatInterval time.Duration
	// GossipState is gossip's view of the node: GossipAlive, GossipSuspect,
	// GossipDead, GossipLeft, or "" when gossip has never seen it.
	GossipState string
	// ClockSkew is how far the controller's clock is ahead of the node's
	// (negative: the node's is ahead), as the agent last measured it.
	ClockSkew time.Duration
	// BadPiece says when and to whom the node last served a corrupt piece
	// of an artifact to a peer (peer exchange), "" for never: its disk or
	// memory may be failing. The state stays; the reason says so.
	BadPiece string
}

// Evaluate returns the node's state and a short reason naming the signals,
// e.g. "stream up, heartbeat 21s old (stale after 15s); gossip alive:
// partition or broken controller link".
func Evaluate(now time.Time, s Signals) (ferryv1.NodeState, string) {
	state, reason := evaluate(now, s)
	if clock := describeClock(s.ClockSkew); clock != "" && state != ferryv1.NodeState_NODE_STATE_REMOVED {
		reason += "; " + clock
	}
	if s.BadPiece != "" && state != ferryv1.NodeState_NODE_STATE_REMOVED {
		reason += "; " + s.BadPiece
	}
	return state, reason
}

func evaluate(now time.Time, s Signals) (ferryv1.NodeState, string) {
	if s.Removed {
		return ferryv1.NodeState_NODE_STATE_REMOVED, "removed by an admin"
	}
	interval := s.HeartbeatInterval
	if interval <= 0 {
		interval = DefaultHeartbeatInterval
	}
	staleAfter := StaleAfter * interval
	hasHeartbeat := !s.LastHeartbeat.IsZero()
	age := max(now.Sub(s.LastHeartbeat), 0)
	fresh := hasHeartbeat && age <= staleAfter
	stream := describeStream(s, hasHeartbeat, fresh, age, staleAfter)
	gossip := describeGossip(s.GossipState)

	if s.Left && !s.Connected {
		return ferryv1.NodeState_NODE_STATE_LEFT, "agent said goodbye, " + stream + "; " + gossip
	}
	if s.Connected && fresh {
		switch s.GossipState {
		case "", GossipAlive:
			return ferryv1.NodeState_NODE_STATE_HEALTHY, stream + "; " + gossip
		default:
			return ferryv1.NodeState_NODE_STATE_HEALTHY, stream + "; " + gossip + ": gossip-only problem, the stream is up"
		}
	}
	switch s.GossipState {
	case GossipAlive:
		return ferryv1.NodeState_NODE_STATE_UNREACHABLE, stream + "; " + gossip + ": partition or broken controller link"
	case GossipSuspect:
		return ferryv1.NodeState_NODE_STATE_SUSPECT, stream + "; " + gossip
	case GossipDead:
		return ferryv1.NodeState_NODE_STATE_DOWN, stream + "; " + gossip
	case GossipLeft:
		return ferryv1.NodeState_NODE_STATE_LEFT, stream + "; " + gossip
	}
	if !s.EverConnected && !s.Connected {
		return ferryv1.NodeState_NODE_STATE_PENDING, "enrolled, never connected; " + gossip
	}
	return ferryv1.NodeState_NODE_STATE_STALE, stream + "; " + gossip
}

func describeStream(s Signals, hasHeartbeat, fresh bool, age, staleAfter time.Duration) string {
	switch {
	case !s.Connected && !s.EverConnected:
		return "never connected"
	case !hasHeartbeat && s.Connected:
		return "stream up, no heartbeat yet"
	case !hasHeartbeat:
		return "stream closed, no heartbeat since the controller started"
	}
	hb := "heartbeat " + formatAge(age) + " old"
	if !fresh {
		hb += " (stale after " + formatAge(staleAfter) + ")"
	}
	if s.Connected {
		return "stream up, " + hb
	}
	return "stream closed, last " + hb
}

func describeGossip(state string) string {
	switch state {
	case "":
		return "not seen by gossip"
	case GossipAlive:
		return "gossip alive"
	case GossipSuspect:
		return "gossip suspects it"
	case GossipDead:
		return "gossip says dead"
	case GossipLeft:
		return "gossip says left"
	}
	return fmt.Sprintf("gossip state %q not understood", state)
}

// describeClock names a node clock that is off the controller's by more
// than ClockSkewTolerance, or returns "".
func describeClock(skew time.Duration) string {
	if skew.Abs() <= ClockSkewTolerance {
		return ""
	}
	side := "ahead of"
	if skew > 0 {
		side = "behind"
	}
	return "node clock " + approxdur.String(skew) + " " + side + " the controller's: fix it (NTP)"
}

// formatAge rounds to what a reader needs: whole seconds, tenths below ten
// seconds.
func formatAge(d time.Duration) string {
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}
