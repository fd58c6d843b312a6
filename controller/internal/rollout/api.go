package rollout

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Create starts a rollout, or with req.Plan only plans it (see Plan). It
// refuses a request naming no target, a package version that is not stored,
// a malformed strategy, a target that matches no node, and a rollout of a
// package that another active rollout of the same package covers on any of
// the same nodes (the error names that rollout). Unset strategy fields take
// the Default* values. Reachable nodes are split into wave 0 (the first
// `canary` by node ID) and wave 1; nodes not connected and healthy now are
// UNREACHABLE at once and never waited on. The canaries' jobs are sent
// before Create returns.
func (e *Engine) Create(ctx context.Context, actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.CreateRolloutResponse, error) {
	if req.GetPlan() {
		plan, err := e.Plan(ctx, req)
		if err != nil {
			return nil, err
		}
		return &ferryv1.CreateRolloutResponse{Plan: plan}, nil
	}
	r, err := e.create(actor, req)
	target := req.GetPackageName() + "@" + req.GetPackageVersion()
	detail := describe(req.GetTarget(), r.GetStrategy())
	if r != nil {
		target = r.GetId()
		detail = r.GetPackageName() + "@" + r.GetPackageVersion() + " " + detail
	}
	e.audit(actor, "rollout.create", target, err, detail)
	if err != nil {
		return nil, err
	}
	return &ferryv1.CreateRolloutResponse{Rollout: r}, nil
}

func describe(t *ferryv1.Target, s *ferryv1.Strategy) string {
	var b strings.Builder
	if t.GetGroup() != "" {
		fmt.Fprintf(&b, "group=%s ", t.GetGroup())
	}
	if len(t.GetSelector()) > 0 {
		fmt.Fprintf(&b, "selector=%s ", selectorText(t.GetSelector()))
	}
	if s != nil {
		fmt.Fprintf(&b, "canary=%d auto-promote=%t max-parallel=%s max-failures=%s on-failure=%s progress-deadline=%s healthy-for=%s",
			s.GetCanary(), s.GetAutoPromote(), s.GetMaxParallel(), s.GetMaxFailures(),
			strings.ToLower(strings.TrimPrefix(s.GetOnFailure().String(), "FAILURE_ACTION_")),
			s.GetProgressDeadline().AsDuration(), s.GetHealthyFor().AsDuration())
	}
	return strings.TrimSpace(b.String())
}

func selectorText(sel map[string]string) string {
	keys := make([]string, 0, len(sel))
	for k := range sel {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + sel[k]
	}
	return strings.Join(parts, ",")
}

// prepared is a validated create request.
type prepared struct {
	strat *ferryv1.Strategy
	pkg   *ferryv1.Package
}

func (e *Engine) prepare(req *ferryv1.CreateRolloutRequest) (prepared, error) {
	var p prepared
	name, version := req.GetPackageName(), req.GetPackageVersion()
	if name == "" {
		return p, fmt.Errorf("%w: no package: name one as NAME@VERSION, e.g. go@1.20.3", ErrInvalid)
	}
	if version == "" {
		return p, fmt.Errorf("%w: package %s: no version: name one as %s@VERSION%s", ErrInvalid, name, name, e.versionsHint(name))
	}
	if req.GetTarget().GetGroup() == "" && len(req.GetTarget().GetSelector()) == 0 {
		return p, fmt.Errorf("%w: no target: set a group and/or a selector", ErrInvalid)
	}
	strat, err := withDefaults(req.GetStrategy())
	if err != nil {
		return p, err
	}
	pkg, err := e.cfg.Packages.Package(name, version)
	if err != nil {
		return p, fmt.Errorf("package %s@%s: %w; apply it first with `ferryctl package apply`%s", name, version, err, e.versionsHint(name))
	}
	if pkg == nil {
		return p, fmt.Errorf("package %s@%s: %w; apply it first with `ferryctl package apply`%s", name, version, ErrNotFound, e.versionsHint(name))
	}
	return prepared{strat: strat, pkg: pkg}, nil
}

// versionsHint lists the stored versions of a package, for error messages.
func (e *Engine) versionsHint(name string) string {
	pkgs, err := e.cfg.Packages.Packages(name)
	if err != nil || len(pkgs) == 0 {
		return ""
	}
	vs := make([]string, len(pkgs))
	for i, p := range pkgs {
		vs[i] = p.GetVersion()
	}
	return " (stored versions: " + strings.Join(vs, ", ") + ")"
}

func (e *Engine) create(actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.Rollout, error) {
	p, err := e.prepare(req)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	now := e.cfg.Clock.Now()
	nodes, err := e.matchLocked(req.GetPackageName(), req.GetTarget())
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	r := &ferryv1.Rollout{
		Id:             e.newIDLocked(),
		PackageName:    req.GetPackageName(),
		PackageVersion: req.GetPackageVersion(),
		Target:         proto.Clone(targetOrEmpty(req.GetTarget())).(*ferryv1.Target),
		Strategy:       p.strat,
		State:          stRunning,
		CreatedAt:      timestamppb.New(now),
		CreatedBy:      actor,
		UpdatedAt:      timestamppb.New(now),
		JobKind:        kindInstall,
	}
	r.Nodes = buildNodes(nodes, int(p.strat.GetCanary()), now, func(n *ferryv1.Node) string {
		return installedVersion(n, r.GetPackageName())
	})
	r.Message = "started by " + actor + ": " + startSummary(r)
	ru, err := e.insertLocked(r, p.pkg, now)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	return e.advanceAndRelease(ru, now), nil
}

func targetOrEmpty(t *ferryv1.Target) *ferryv1.Target {
	if t == nil {
		return &ferryv1.Target{}
	}
	return t
}

func (e *Engine) newIDLocked() string {
	for {
		id := e.cfg.NewID()
		if _, taken := e.runs[id]; !taken && !strings.Contains(id, "/") {
			return id
		}
	}
}

// matchLocked returns the nodes a target selects (removed nodes excluded),
// refusing an empty match and conflicts with active rollouts of pkg.
func (e *Engine) matchLocked(pkg string, t *ferryv1.Target) ([]*ferryv1.Node, error) {
	var nodes []*ferryv1.Node
	for _, n := range e.cfg.Fleet.Match(t) {
		if n.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%w: no enrolled node matches %s; list nodes with `ferryctl nodes`", ErrInvalid, describe(t, nil))
	}
	if err := e.conflictLocked(pkg, nodes); err != nil {
		return nil, err
	}
	return nodes, nil
}

// conflictLocked refuses a rollout of pkg on nodes where another rollout of
// the same package is active: one that has not reached a final state covers
// all of its nodes; an aborted one still covers the nodes whose cancelled
// jobs have not reported yet.
func (e *Engine) conflictLocked(pkg string, nodes []*ferryv1.Node) error {
	want := map[string]bool{}
	for _, n := range nodes {
		want[n.GetId()] = true
	}
	var others []*ferryv1.Rollout
	for _, ru := range e.runs {
		if ru.r.GetPackageName() == pkg && !ru.ended() {
			others = append(others, ru.r)
		}
	}
	sortNewestFirst(others)
	for _, o := range others {
		var blocked []string
		for _, n := range o.GetNodes() {
			if want[n.GetNodeId()] && (!terminalState(o.GetState()) || inFlight(n)) {
				blocked = append(blocked, n.GetNodeId())
			}
		}
		if len(blocked) == 0 {
			continue
		}
		on := strings.Join(blocked, ", ")
		if len(blocked) > 3 {
			on = fmt.Sprintf("%s and %d more", strings.Join(blocked[:3], ", "), len(blocked)-3)
		}
		return fmt.Errorf("package %s: %w: rollout %s (%s@%s, %s) is still active on node %s; wait for it to end or abort it with `ferryctl rollout abort %s`",
			pkg, ErrConflict, o.GetId(), o.GetPackageName(), o.GetPackageVersion(), stateName(o.GetState()), on, o.GetId())
	}
	return nil
}

// buildNodes orders a rollout's node records: canaries (the first `canary`
// reachable nodes by ID) in wave 0, the other reachable nodes in wave 1,
// then the unreachable ones, already UNREACHABLE.
func buildNodes(nodes []*ferryv1.Node, canary int, now time.Time, previous func(*ferryv1.Node) string) []*ferryv1.NodeJob {
	sorted := append([]*ferryv1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GetId() < sorted[j].GetId() })
	var up, down []*ferryv1.NodeJob
	for _, n := range sorted {
		nj := &ferryv1.NodeJob{NodeId: n.GetId(), Outcome: ocPending, Wave: 1, PreviousVersion: previous(n)}
		if reachable(n) {
			if len(up) < canary {
				nj.Wave = 0
			}
			up = append(up, nj)
			continue
		}
		nj.Outcome = ocUnreachable
		nj.FinishedAt = timestamppb.New(now)
		nj.Message = "not connected at the start (" + nodeStatus(n, true) + "); no job sent"
		down = append(down, nj)
	}
	return append(up, down...)
}

func startSummary(r *ferryv1.Rollout) string {
	canaries, unreachable := 0, 0
	for _, n := range r.GetNodes() {
		if n.GetOutcome() == ocUnreachable {
			unreachable++
		} else if n.GetWave() == 0 {
			canaries++
		}
	}
	s := fmt.Sprintf("%s@%s on %d nodes, %d canary", r.GetPackageName(), r.GetPackageVersion(), len(r.GetNodes()), canaries)
	if unreachable > 0 {
		s += fmt.Sprintf(", %d unreachable", unreachable)
	}
	return s
}

// insertLocked saves a new rollout and adds it to the engine. Called with
// e.mu held; on error nothing was added.
func (e *Engine) insertLocked(r *ferryv1.Rollout, pkg *ferryv1.Package, now time.Time) (*run, error) {
	ru, err := newRun(r)
	if err != nil {
		return nil, err
	}
	ru.pkg = pkg
	if err := e.cfg.Store.SaveRollout(proto.Clone(r).(*ferryv1.Rollout)); err != nil {
		return nil, fmt.Errorf("rollout %s: save: %w", r.GetId(), err)
	}
	e.runs[r.GetId()] = ru
	ru.event(now, "", "created: %s", r.GetMessage())
	for _, n := range r.GetNodes() {
		if n.GetOutcome() == ocUnreachable {
			ru.event(now, n.GetNodeId(), "unreachable: %s", n.GetMessage())
		}
	}
	e.log.Info("rollout created", "rollout", r.GetId(), "package", ru.pkgRef(), "nodes", len(r.GetNodes()), "by", r.GetCreatedBy())
	return ru, nil
}

// advanceAndRelease settles a newly saved rollout, commits it, releases
// e.mu, performs the effects and returns a copy of the rollout as it is
// then. The rollout exists once insertLocked saved it, so a failure to save
// its first jobs is only logged: they are retried at the next tick.
func (e *Engine) advanceAndRelease(ru *run, now time.Time) *ferryv1.Rollout {
	fx := &e.queue
	e.settle(ru, now, fx)
	_ = e.commit(ru, now, fx)
	e.mu.Unlock()
	e.drain()
	e.mu.Lock()
	out := proto.Clone(ru.r).(*ferryv1.Rollout)
	e.mu.Unlock()
	return out
}

// Promote lets a rollout waiting after its canaries start wave 1.
func (e *Engine) Promote(ctx context.Context, actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.promote", id, func(ru *run, now time.Time, _ *effects) error {
		if ru.r.GetState() != stWaiting {
			return fmt.Errorf("rollout %s: %w: it is %s, not waiting for promotion", id, ErrState, stateName(ru.r.GetState()))
		}
		ru.promoted = true
		ru.setState(now, stRunning, "promoted by "+actor)
		return nil
	})
}

// Pause stops a rollout from starting jobs; jobs in flight finish. Pausing a
// paused rollout is a no-op.
func (e *Engine) Pause(ctx context.Context, actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.pause", id, func(ru *run, now time.Time, _ *effects) error {
		switch ru.r.GetState() {
		case stPaused:
			return nil
		case stRunning, stWaiting:
			ru.setState(now, stPaused, fmt.Sprintf("paused by %s; `ferryctl rollout resume %s` goes on", actor, id))
			return nil
		}
		return fmt.Errorf("rollout %s: %w: it is %s and cannot be paused", id, ErrState, stateName(ru.r.GetState()))
	})
}

// Resume continues a paused rollout. A rollout paused by its failure
// threshold goes on; the next failure past the limit pauses it again. A
// rollout whose canaries finished while paused goes to WAITING_PROMOTION.
func (e *Engine) Resume(ctx context.Context, actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.resume", id, func(ru *run, now time.Time, _ *effects) error {
		switch ru.r.GetState() {
		case stRunning:
			return nil
		case stPaused:
			ru.setState(now, stRunning, "resumed by "+actor)
			return nil
		case stWaiting:
			return fmt.Errorf("rollout %s: %w: it is waiting for promotion; use `ferryctl rollout promote %s`", id, ErrState, id)
		}
		return fmt.Errorf("rollout %s: %w: it is %s and cannot be resumed", id, ErrState, stateName(ru.r.GetState()))
	})
}

// Abort stops a rollout: nodes not started are SKIPPED, jobs in flight are
// cancelled (their outcomes are still recorded when the agents report).
func (e *Engine) Abort(ctx context.Context, actor, id string) (*ferryv1.Rollout, error) {
	return e.admin(actor, "rollout.abort", id, func(ru *run, now time.Time, fx *effects) error {
		if terminalState(ru.r.GetState()) {
			return fmt.Errorf("rollout %s: %w: it already ended %s", id, ErrState, stateName(ru.r.GetState()))
		}
		e.abort(ru, now, fx, "aborted by "+actor)
		return nil
	})
}

func (e *Engine) admin(actor, action, id string, fn func(ru *run, now time.Time, fx *effects) error) (*ferryv1.Rollout, error) {
	e.mu.Lock()
	ru, ok := e.runs[id]
	var err error
	switch {
	case !ok:
		err = notFound(id)
	case ru.frozen:
		err = fmt.Errorf("rollout %s: %w: its stored record cannot be read by this controller", id, ErrState)
	}
	if err != nil {
		e.mu.Unlock()
		e.audit(actor, action, id, err, "")
		return nil, err
	}
	now := e.cfg.Clock.Now()
	fx := &e.queue
	if err := fn(ru, now, fx); err != nil {
		e.mu.Unlock()
		e.drain()
		e.audit(actor, action, id, err, "")
		return nil, err
	}
	e.log.Info("rollout admin action", "rollout", id, "action", action, "by", actor)
	e.settle(ru, now, fx)
	err = e.commit(ru, now, fx)
	e.mu.Unlock()
	e.drain()
	e.audit(actor, action, id, err, "")
	out, gerr := e.Get(id)
	if err != nil {
		return out, err
	}
	return out, gerr
}

// Undo starts a rollout of JOB_KIND_ROLLBACK jobs that returns to their
// previous version the nodes of group req.Group that the package's last
// rollout there changed and that still have its version (per the fleet's
// installed packages). The last rollout must have ended. The undo rollout
// records undo_of, the undone version as package_version and, per node, the
// undone version as previous_version; its strategy takes the same defaults
// as Create's.
func (e *Engine) Undo(ctx context.Context, actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.Rollout, error) {
	r, err := e.undo(actor, req)
	target := req.GetPackageName() + " group=" + req.GetGroup()
	if r != nil {
		target = r.GetId()
	}
	e.audit(actor, "rollout.undo", target, err, "package "+req.GetPackageName()+" group "+req.GetGroup())
	return r, err
}

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
	last, nodes, err := e.undoTargetsLocked(name, group)
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
	last, nodes, err = e.undoTargetsLocked(name, group)
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
	r.Nodes = buildNodes(nodes, int(strat.GetCanary()), now, func(*ferryv1.Node) string { return last.GetPackageVersion() })
	r.Message = fmt.Sprintf("undo of %s by %s: %s", last.GetId(), actor, startSummary(r))
	ru, err := e.insertLocked(r, pkg, now)
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
		if r.GetPackageName() != name || r.GetJobKind() == kindRollback {
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
		return nil, nil, fmt.Errorf("package %s: %w: its last rollout %s in group %s is still %s; abort it first with `ferryctl rollout abort %s`", name, ErrConflict, last.GetId(), group, stateName(last.GetState()), last.GetId())
	}
	var nodes []*ferryv1.Node
	for _, nj := range last.GetNodes() {
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
		if n := o.node(nodeID); n != nil {
			return n.GetPreviousVersion()
		}
	}
	return ""
}

// HandleJobUpdate records an agent's report on a job. nodeID must come from
// the agent's certificate. Reports for jobs the node's record does not hold
// (another node's, an older job's) are ignored, as are reports after the
// node's final outcome and phases that go backwards, so duplicates and
// re-reports after a controller restart are harmless. The server should also
// pass every entry of AgentHello.recent_jobs here.
func (e *Engine) HandleJobUpdate(nodeID string, u *ferryv1.JobUpdate) {
	e.mu.Lock()
	if pw := e.plans[u.GetRolloutId()]; pw != nil {
		pw.deliver(nodeID, u)
		e.mu.Unlock()
		return
	}
	ru := e.runs[u.GetRolloutId()]
	var n *ferryv1.NodeJob
	if ru != nil && !ru.frozen {
		n = ru.node(nodeID)
	}
	if n == nil || n.GetJobId() != u.GetJobId() || terminalOutcome(n.GetOutcome()) {
		e.mu.Unlock()
		e.log.Debug("ignoring job update", "node", nodeID, "job", u.GetJobId(), "rollout", u.GetRolloutId(), "phase", u.GetPhase().String())
		return
	}
	now := e.cfg.Clock.Now()
	fx := &e.queue
	e.update(ru, n, u, now, fx)
	e.settle(ru, now, fx)
	_ = e.commit(ru, now, fx) // logged; retried at the next tick
	e.mu.Unlock()
	e.drain()
}

var phaseOutcome = map[ferryv1.JobPhase]ferryv1.NodeOutcome{
	ferryv1.JobPhase_JOB_PHASE_DOWNLOADING: ocDownloading,
	ferryv1.JobPhase_JOB_PHASE_INSTALLING:  ocInstalling,
	ferryv1.JobPhase_JOB_PHASE_CHECKING:    ocChecking,
}

func (e *Engine) update(ru *run, n *ferryv1.NodeJob, u *ferryv1.JobUpdate, now time.Time, fx *effects) {
	isRollback := u.GetJobId() == rollbackJobID(ru.r.GetId(), n.GetNodeId())
	if u.GetBytesDone() > n.GetBytesDone() {
		n.BytesDone = u.GetBytesDone()
	}
	if len(u.GetSteps()) > 0 {
		n.Steps = cloneSteps(u.GetSteps())
	}
	msg := u.GetMessage()
	switch ph := u.GetPhase(); ph {
	case ferryv1.JobPhase_JOB_PHASE_DOWNLOADING, ferryv1.JobPhase_JOB_PHASE_INSTALLING, ferryv1.JobPhase_JOB_PHASE_CHECKING:
		o := phaseOutcome[ph]
		if !waitingHealthy(n) && o > n.GetOutcome() {
			setOutcome(ru, n, o, now, msg)
		} else if msg != "" && !waitingHealthy(n) {
			n.Message = msg
		}
	case ferryv1.JobPhase_JOB_PHASE_SUCCEEDED:
		switch {
		case isRollback:
			e.finish(ru, n, ocRolledBack, now, fx, "rolled back to "+versionOrNone(n.GetPreviousVersion()))
		case !waitingHealthy(n):
			n.Outcome = ocChecking
			n.FinishedAt = timestamppb.New(now)
			n.Message = fmt.Sprintf("checks passed; waiting for %s of heartbeats", ru.st.healthyFor)
			ru.healthySince[n.GetNodeId()] = now
			ru.event(now, n.GetNodeId(), "checking: %s", n.GetMessage())
		}
	case ferryv1.JobPhase_JOB_PHASE_UNCHANGED:
		if msg == "" {
			msg = "already had " + ru.pkgRef()
		}
		if isRollback {
			e.finish(ru, n, ocRolledBack, now, fx, "nothing to roll back: "+msg)
		} else {
			e.finish(ru, n, ocUnchanged, now, fx, msg)
		}
	case ferryv1.JobPhase_JOB_PHASE_FAILED:
		n.FailedStep = u.GetFailedStep()
		if n.FailedStep == "" {
			for _, s := range u.GetSteps() {
				if s.GetError() != "" {
					n.FailedStep = s.GetKind() + ": " + s.GetName()
					if msg == "" {
						msg = s.GetError()
					}
				}
			}
		}
		if msg == "" {
			msg = "the agent reported a failure"
		}
		if isRollback {
			msg = "rollback failed: " + msg
		}
		e.finish(ru, n, ocFailed, now, fx, msg)
	default:
		if msg != "" {
			n.Message = msg
		}
	}
}

func cloneSteps(in []*ferryv1.StepResult) []*ferryv1.StepResult {
	out := make([]*ferryv1.StepResult, len(in))
	for i, s := range in {
		out[i] = proto.Clone(s).(*ferryv1.StepResult)
	}
	return out
}

// Watch streams a rollout's events: node outcome changes (failures with the
// failed step), wave 1 starting, state changes. The first event is the
// rollout as it is now. The channel closes when the rollout has ended (after
// its last event) or ctx ends. A consumer that falls behind loses its oldest
// events, never the last one; every event carries the whole rollout. The
// rollouts in events are shared: do not modify them.
func (e *Engine) Watch(ctx context.Context, id string) (<-chan *ferryv1.WatchRolloutResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, ok := e.runs[id]
	if !ok {
		return nil, notFound(id)
	}
	w := &watcher{ch: make(chan *ferryv1.WatchRolloutResponse, watchBuffer)}
	w.send(&ferryv1.WatchRolloutResponse{
		Rollout: proto.Clone(ru.r).(*ferryv1.Rollout),
		Event:   stateName(ru.r.GetState()) + ": " + ru.r.GetMessage(),
		At:      timestamppb.New(e.cfg.Clock.Now()),
	})
	if ru.ended() {
		w.close()
		return w.ch, nil
	}
	if ru.watchers == nil {
		ru.watchers = map[*watcher]struct{}{}
	}
	ru.watchers[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		delete(ru.watchers, w)
		w.close()
	})
	return w.ch, nil
}

const watchBuffer = 256

// watcher is one Watch subscription. Its methods run with e.mu held.
type watcher struct {
	ch     chan *ferryv1.WatchRolloutResponse
	closed bool
	stop   func() bool
}

func (w *watcher) send(ev *ferryv1.WatchRolloutResponse) {
	if w.closed {
		return
	}
	for {
		select {
		case w.ch <- ev:
			return
		default:
		}
		select { // full: drop the oldest event
		case <-w.ch:
		default:
		}
	}
}

func (w *watcher) close() {
	if w.closed {
		return
	}
	w.closed = true
	close(w.ch)
	if w.stop != nil {
		w.stop()
	}
}

// NodeConnected is called when a node's agent opens its stream, with the
// job outcomes its hello re-reports. They are handled first; then every job
// the engine has in flight on the node that the agent did not mention is
// sent again under the same ID. The agent never runs a job twice (it keeps
// the results of the jobs it ran, and ignores a job it is running), so this
// only reaches jobs it never got or lost before installing anything: a job
// sent just before a controller crash, or one whose download an agent
// restart interrupted (the download then resumes from what is on disk).
func (e *Engine) NodeConnected(nodeID string, reported []*ferryv1.JobUpdate) {
	known := map[string]bool{}
	for _, u := range reported {
		known[u.GetJobId()] = true
		e.HandleJobUpdate(nodeID, u)
	}
	e.mu.Lock()
	for _, ru := range e.runs {
		if ru.frozen || ru.ended() {
			continue
		}
		n := ru.node(nodeID)
		if n == nil || n.GetJobId() == "" || known[n.GetJobId()] {
			continue
		}
		switch n.GetOutcome() {
		case ocDownloading, ocInstalling, ocChecking:
		default:
			continue
		}
		pkg, err := e.loadPackage(ru)
		if err != nil {
			e.log.Error("cannot resend job", "rollout", ru.r.GetId(), "node", nodeID, "err", err)
			continue
		}
		kind := ru.r.GetJobKind()
		if n.GetJobId() == rollbackJobID(ru.r.GetId(), nodeID) {
			kind = kindRollback
		}
		e.log.Info("resending in-flight job to a reconnected node", "rollout", ru.r.GetId(), "node", nodeID, "job", n.GetJobId())
		e.queue.ops = append(e.queue.ops, sendOp(ru, nodeID, n.GetJobId(), kind, pkg, n.GetOutcome()))
	}
	e.mu.Unlock()
	e.drain()
}
