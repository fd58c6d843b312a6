// Undo: which nodes an undo rollout returns to their previous version, and
// to which version.

package rollout

import (
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Undo starts a rollout of JOB_KIND_ROLLBACK jobs that returns to their
// previous version the nodes of group req.Group that the package's last
// rollout there changed and that still have its version (per the fleet's
// installed packages). The last rollout must have ended. The undo rollout
// records undo_of, the undone version as package_version and, per node, the
// undone version as previous_version; its strategy takes the same defaults
// as Create's.
func (e *Engine) Undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.Rollout, error) {
	r, err := e.undo(actor, req)
	if err != nil {
		e.refused(e.auditEntry(actor, "rollout.undo", req.GetPackageName()+" group="+req.GetGroup(), undoDetail(req.GetPackageName(), req.GetGroup())), err)
	}
	return r, err
}

func undoDetail(pkg, group string) string { return "package " + pkg + " group " + group }

func (e *Engine) undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.Rollout, error) {
	name, group := req.GetPackageName(), req.GetGroup()
	if name == "" || group == "" {
		return nil, fmt.Errorf("%w: undo needs a package and a group, e.g. --package go --group production", ErrInvalid)
	}
	strat, err := withDefaults(req.GetStrategy())
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	now := e.cfg.Clock.Now()
	last, _, err := e.undoTargetsLocked(name, group)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	e.mu.Unlock()
	pkg, err := e.cfg.Packages.Package(name, last.GetPackageVersion())
	if err == nil && pkg == nil {
		err = ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("undo %s in %s: package %s@%s: %w", name, group, name, last.GetPackageVersion(), err)
	}
	e.mu.Lock()
	// Look again under the lock: something may have started meanwhile.
	last, nodes, err := e.undoTargetsLocked(name, group)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	if err := e.conflictLocked(name, nodes); err != nil {
		e.mu.Unlock()
		return nil, err
	}
	r := &ferryv1.Rollout{
		Id:             e.newIDLocked(),
		PackageName:    name,
		PackageVersion: last.GetPackageVersion(),
		Target:         &ferryv1.Target{Group: group},
		Strategy:       strat,
		State:          stRunning,
		CreatedAt:      timestamppb.New(now),
		CreatedBy:      actor,
		UpdatedAt:      timestamppb.New(now),
		JobKind:        kindRollback,
		UndoOf:         last.GetId(),
	}
	r.Nodes = buildNodes(nodes, int(strat.GetCanary()), now, e.cfg.DisconnectGrace, func(*ferryv1.Node) string { return last.GetPackageVersion() })
	r.Message = fmt.Sprintf("undo of %s by %s: %s", last.GetId(), actor, startSummary(r))
	ru, err := e.insertLocked(r, pkg, now, e.auditEntry(actor, "rollout.undo", r.GetId(), undoDetail(name, group)))
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	return e.advanceAndRelease(ru, now), nil
}

// undoTargetsLocked finds the package's last install rollout touching the
// group and the group's nodes it changed that still have its version.
func (e *Engine) undoTargetsLocked(name, group string) (*ferryv1.Rollout, []*ferryv1.Node, error) {
	inGroup := map[string]*ferryv1.Node{}
	for _, n := range e.cfg.Fleet.Match(&ferryv1.Target{Group: group}) {
		if n.GetGroup() == group && n.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED {
			inGroup[n.GetId()] = n
		}
	}
	var installs []*ferryv1.Rollout
	for _, ru := range e.runs {
		r := ru.r
		if r.GetPackageName() != name || r.GetJobKind() == kindRollback || r.GetKind() == rkCatchUp {
			continue
		}
		touches := r.GetTarget().GetGroup() == group
		for _, n := range r.GetNodes() {
			if inGroup[n.GetNodeId()] != nil {
				touches = true
			}
		}
		if touches {
			installs = append(installs, r)
		}
	}
	if len(installs) == 0 {
		return nil, nil, fmt.Errorf("%w: nothing to undo: package %s was never rolled out to group %s", ErrState, name, group)
	}
	sortNewestFirst(installs)
	last := installs[0]
	if !e.runs[last.GetId()].ended() {
		return nil, nil, fmt.Errorf("package %s: %w: its last rollout %s in group %s is still %s; abort it first with `ferryctl rollout abort %s`", name, ErrConflict, last.GetId(), group, enumword.Of(last.GetState()), last.GetId())
	}
	var nodes []*ferryv1.Node
	for _, id := range e.nodesWithCatchUpsLocked(e.runs[last.GetId()]) {
		nj := e.nodeRecordLocked(e.runs[last.GetId()], id)
		fn := inGroup[nj.GetNodeId()]
		if fn == nil || nj.GetJobId() == "" {
			continue
		}
		switch nj.GetOutcome() {
		case ocUnchanged, ocSkipped, ocPending, ocRolledBack:
			continue
		}
		have := installedVersion(fn, name)
		if have == last.GetPackageVersion() || (have == "" && nj.GetOutcome() == ocSucceeded) {
			nodes = append(nodes, fn)
		}
	}
	if len(nodes) == 0 {
		return nil, nil, fmt.Errorf("%w: nothing to undo: no node of group %s still has %s@%s from rollout %s", ErrState, group, name, last.GetPackageVersion(), last.GetId())
	}
	return last, nodes, nil
}

// undoTarget is the version a node of an undo rollout goes back to, as far
// as the undone rollout recorded it.
func (e *Engine) undoTarget(ru *run, nodeID string) string {
	if o := e.runs[ru.r.GetUndoOf()]; o != nil {
		if n := e.nodeRecordLocked(o, nodeID); n != nil {
			return n.GetPreviousVersion()
		}
	}
	return ""
}
