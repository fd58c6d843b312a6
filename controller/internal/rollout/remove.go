// Removal rollouts (ferryctl rollout --remove), and which job and package
// each node of a rollout is sent when they differ from the rollout's own.

package rollout

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func (e *Engine) createOrPlanRemove(actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.CreateRolloutResponse, error) {
	if req.GetPlan() {
		plan, err := e.planRemove(req)
		if err != nil {
			return nil, err
		}
		return &ferryv1.CreateRolloutResponse{Plan: plan}, nil
	}
	r, err := e.createRemove(actor, req)
	if err != nil {
		e.refused(e.auditEntry(actor, "rollout.create", "remove "+req.GetPackageName(), describe(req.GetTarget(), nil)), err)
		return nil, err
	}
	return &ferryv1.CreateRolloutResponse{Rollout: r}, nil
}

// createRemove starts a rollout of JOB_KIND_REMOVE jobs: every node of the
// target deletes what the package's installed version put in place. It
// goes through the window, canaries and failure policy like any rollout
// (on_failure rollback is refused: a removal is not rolled back). Nodes
// that do not have the package report UNCHANGED.
func (e *Engine) createRemove(actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.Rollout, error) {
	strat, err := e.prepareRemove(req)
	if err != nil {
		return nil, err
	}
	name := req.GetPackageName()
	e.mu.Lock()
	now := e.cfg.Clock.Now()
	nodes, err := e.matchLocked(name, req.GetTarget())
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	r := &ferryv1.Rollout{
		Id:          e.newIDLocked(),
		PackageName: name,
		Target:      proto.Clone(targetOrEmpty(req.GetTarget())).(*ferryv1.Target),
		Strategy:    strat,
		State:       stRunning,
		CreatedAt:   timestamppb.New(now),
		CreatedBy:   actor,
		UpdatedAt:   timestamppb.New(now),
		JobKind:     kindRemove,
	}
	r.Nodes = buildNodes(nodes, int(strat.GetCanary()), now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string {
		return installedVersion(n, name)
	})
	r.Message = fmt.Sprintf("removal of %s started by %s: %s", name, actor, transitionsText(r.GetNodes()))
	ev := e.auditEntry(actor, "rollout.create", r.GetId(), "remove "+name+" "+describe(r.GetTarget(), r.GetStrategy()))
	ru, err := e.insertLocked(r, nil, now, ev)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	return e.advanceAndRelease(ru, now), nil
}

func (e *Engine) prepareRemove(req *ferryv1.CreateRolloutRequest) (*ferryv1.Strategy, error) {
	name := req.GetPackageName()
	if name == "" {
		return nil, fmt.Errorf("%w: no package: name the package to remove, e.g. --remove go", ErrInvalid)
	}
	if req.GetPackageVersion() != "" {
		return nil, fmt.Errorf("%w: --remove takes a package name without a version (remove %s, not %s@%s): a node removes whichever version it has", ErrInvalid, name, name, req.GetPackageVersion())
	}
	if req.GetTarget().GetGroup() == "" && len(req.GetTarget().GetSelector()) == 0 {
		return nil, fmt.Errorf("%w: no target: set a group and/or a selector", ErrInvalid)
	}
	strat, err := withDefaults(req.GetStrategy())
	if err != nil {
		return nil, err
	}
	if strat.GetOnFailure() == ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK {
		return nil, fmt.Errorf("%w: --on-failure rollback: a removal is not rolled back; use pause or abort, and reinstall with `ferryctl rollout --package %s@VERSION`", ErrInvalid, name)
	}
	return strat, nil
}

// planRemove says per node what a removal would do, changing nothing: the
// version it would remove, or that it has none.
func (e *Engine) planRemove(req *ferryv1.CreateRolloutRequest) ([]*ferryv1.NodePlan, error) {
	strat, err := e.prepareRemove(req)
	if err != nil {
		return nil, err
	}
	name := req.GetPackageName()
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Clock.Now()
	fleet, err := e.matchLocked(name, req.GetTarget())
	if err != nil {
		return nil, err
	}
	byID := map[string]*ferryv1.Node{}
	for _, n := range fleet {
		byID[n.GetId()] = n
	}
	var out []*ferryv1.NodePlan
	for _, nj := range buildNodes(fleet, int(strat.GetCanary()), now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string { return installedVersion(n, name) }) {
		p := &ferryv1.NodePlan{NodeId: nj.GetNodeId(), Wave: nj.GetWave(), FromVersion: nj.GetPreviousVersion(), Removed: true}
		switch {
		case nj.GetOutcome() == ocUnreachable:
			p.Note = "unreachable: " + nodeStatus(byID[nj.GetNodeId()], true) + "; it would not be waited on"
		case nj.GetPreviousVersion() == "":
			p.Removed = false
			p.Note = "it does not have " + name + "; unchanged"
		default:
			p.Note = "removes " + name + " " + nj.GetPreviousVersion()
		}
		out = append(out, p)
	}
	return out, nil
}

// nodeJob is the job kind and package a node of the rollout is sent, for
// a job of kind (the rollout's, or a rollback of an install rollout). An
// install rollout sends its package. An undo sends, per node, an install
// of the stored target version, or a rollback or removal, for which the
// agent needs only the package's name (the installed version, for logs):
// a deleted package record never stops a node from going back.
func (e *Engine) nodeJob(ru *run, n *ferryv1.NodeJob, kind ferryv1.JobKind) (ferryv1.JobKind, *ferryv1.Package, error) {
	name := ru.r.GetPackageName()
	if kind == ru.r.GetJobKind() && n.GetJobKind() != ferryv1.JobKind_JOB_KIND_UNSPECIFIED {
		kind = n.GetJobKind()
	}
	switch {
	case ru.r.GetJobKind() == kindInstall:
		pkg, err := e.loadPackage(ru)
		return kind, pkg, err
	case kind == kindInstall:
		p, err := e.undoPackage(ru, n.GetTargetVersion())
		if err == nil && p == nil {
			err = ErrNotFound
		}
		if err != nil {
			return kind, nil, fmt.Errorf("package %s@%s: %w", name, n.GetTargetVersion(), err)
		}
		return kind, p, nil
	case kind == kindRollback:
		// The version rolled back from, as install rollouts' rollbacks
		// send it, when it is still stored.
		if p, err := e.undoPackage(ru, n.GetPreviousVersion()); err == nil && p != nil {
			return kind, p, nil
		}
	}
	return kind, &ferryv1.Package{Name: name, Version: n.GetPreviousVersion()}, nil
}

// undoPackage loads a version of the rollout's package once; nil when it
// is not stored.
func (e *Engine) undoPackage(ru *run, version string) (*ferryv1.Package, error) {
	if version == "" {
		return nil, nil
	}
	if p, ok := ru.pkgs[version]; ok {
		return p, nil
	}
	p, err := e.storedPackage(ru.r.GetPackageName(), version)
	if err != nil {
		return nil, err
	}
	ru.pkgs[version] = p
	return p, nil
}

// storedPackage is a stored package version; nil when it is not stored.
func (e *Engine) storedPackage(name, version string) (*ferryv1.Package, error) {
	all, err := e.cfg.Packages.Packages(name)
	if err != nil {
		return nil, err
	}
	for _, p := range all {
		if p.GetVersion() == version {
			return e.cfg.Packages.Package(name, version)
		}
	}
	return nil, nil
}

// jobMessage is a node's message when its job is sent.
func jobMessage(ru *run, n *ferryv1.NodeJob, kind ferryv1.JobKind) string {
	if ru.r.GetJobKind() == kindInstall {
		if kind == kindRollback {
			return "rolling back to " + versionOrNone(n.GetPreviousVersion())
		}
		return ""
	}
	t := transition(n.GetPreviousVersion(), n.GetTargetVersion())
	switch kind {
	case kindInstall:
		return t + ": installing " + n.GetTargetVersion()
	case kindRemove:
		return t + ": removing " + ru.r.GetPackageName()
	}
	return t + ": rolling back to " + versionOrRemoved(n.GetTargetVersion())
}
