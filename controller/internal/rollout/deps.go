// Dependencies: the small interfaces through which the engine reaches the
// rest of the controller.

package rollout

import (
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Store persists rollouts. The engine calls SaveRollout at every transition,
// always with a fresh copy it does not touch again, so the store may keep it.
type Store interface {
	// SaveRollout writes r. With audit (the entry of the admin action
	// that made the transition) it writes both in one transaction or
	// neither; audit is nil for the engine's own transitions.
	SaveRollout(r *ferryv1.Rollout, audit *ferryv1.AuditEvent) error
	// Rollouts returns every stored rollout (for restart and history).
	Rollouts() ([]*ferryv1.Rollout, error)
}

// Dispatcher delivers jobs on the nodes' agent streams. The engine calls it
// from one goroutine at a time, in the order its transitions were saved,
// and without holding its lock, so an implementation may call back into the
// engine (for example HandleJobUpdate). It should not block for long: queue
// the message on the stream and return.
type Dispatcher interface {
	// Dispatch sends a job to a node; it fails when the node is not
	// connected, and then the job was not delivered.
	Dispatch(nodeID string, job *ferryv1.Job) error
	// Cancel asks a node to stop a job (a JobCancel on its stream). Best
	// effort: the engine logs the error and goes on.
	Cancel(nodeID, jobID string) error
}

// Fleet is the controller's health view of the nodes.
type Fleet interface {
	// Match returns the nodes a target selects, with their state and
	// installed packages.
	Match(t *ferryv1.Target) []*ferryv1.Node
	// Node returns one node.
	Node(id string) (*ferryv1.Node, bool)
	// HeartbeatsSince is when the node's heartbeats became continuous
	// (none more than two heartbeat intervals after the one before,
	// whatever happened to its stream in between); zero when they are not
	// now.
	HeartbeatsSince(id string) time.Time
}

// Packages reads stored package versions.
type Packages interface {
	Package(name, version string) (*ferryv1.Package, error)
	// Packages lists the stored versions of a package.
	Packages(name string) ([]*ferryv1.Package, error)
}

// Clock tells the time; tests use a fake one and drive the engine with Tick.
type Clock interface {
	Now() time.Time
}

// Auditor writes the audit entries of admin actions that save no rollout:
// refusals, and actions that change nothing (pausing a paused rollout).
// The entries of the others go with their save (Store.SaveRollout).
type Auditor interface {
	AppendAudit(ev *ferryv1.AuditEvent) error
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
