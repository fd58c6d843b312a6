// The run: what the engine keeps for one rollout besides its stored record,
// and the events a transition queues for watchers.

package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// run is the engine's working state for one rollout. Only r is persisted;
// everything else is rebuilt after a restart.
type run struct {
	r      *ferryv1.Rollout
	st     strategy
	frozen bool // unreadable record: kept for history, never advanced

	pkg *ferryv1.Package // loaded when the first job is sent
	// pkgs are the versions an undo installs on some nodes, by version,
	// loaded when first needed.
	pkgs map[string]*ferryv1.Package
	// healthySince: for nodes waiting out healthy_for, when their current
	// healthy stretch began; the zero time means "not healthy now".
	healthySince map[string]time.Time
	// promoted is set by Promote until the first wave-1 node starts, which
	// then records the promotion durably (a started wave-1 node).
	promoted bool
	// recancel: loaded after a restart while aborted or rolling back; the
	// cancels sent before the restart may have been lost, and sending a
	// cancel again is harmless, unlike sending a job again.
	recancel bool

	dirty    bool
	events   []*ferryv1.WatchRolloutResponse
	sent     []sentNode // nodes given a job since the last commit
	watchers map[*watcher]struct{}
}

func newRun(r *ferryv1.Rollout) (*run, error) {
	st, err := parseStrategy(r.GetStrategy())
	if err != nil {
		return nil, err
	}
	return &run{r: r, st: st, healthySince: map[string]time.Time{}, pkgs: map[string]*ferryv1.Package{}}, nil
}

// Job IDs are derived from the rollout and node so they are stable across
// restarts; rollout IDs contain no "/", so the two forms cannot collide.
func mainJobID(rolloutID, nodeID string) string     { return rolloutID + "/job/" + nodeID }
func rollbackJobID(rolloutID, nodeID string) string { return rolloutID + "/rollback/" + nodeID }

func (ru *run) node(id string) *ferryv1.NodeJob {
	for _, n := range ru.r.GetNodes() {
		if n.GetNodeId() == id {
			return n
		}
	}
	return nil
}

func (ru *run) pkgRef() string {
	if ru.r.GetJobKind() == kindRemove {
		return "removal of " + ru.r.GetPackageName()
	}
	return ru.r.GetPackageName() + "@" + ru.r.GetPackageVersion()
}

func (e *Engine) loadPackage(ru *run) (*ferryv1.Package, error) {
	if ru.pkg == nil {
		p, err := e.cfg.Packages.Package(ru.r.GetPackageName(), ru.r.GetPackageVersion())
		if err != nil {
			return nil, fmt.Errorf("package %s: %w", ru.pkgRef(), err)
		}
		ru.pkg = p
	}
	return ru.pkg, nil
}

// event queues a watch event; commit sends it with the rollout snapshot.
func (ru *run) event(now time.Time, nodeID, format string, args ...any) {
	ru.dirty = true
	ru.events = append(ru.events, &ferryv1.WatchRolloutResponse{
		NodeId: nodeID,
		Event:  fmt.Sprintf(format, args...),
		At:     timestamppb.New(now),
	})
}

func (ru *run) setState(now time.Time, s ferryv1.RolloutState, msg string) {
	ru.r.State = s
	ru.r.Message = msg
	ru.event(now, "", "%s: %s", enumword.Of(s), msg)
}
