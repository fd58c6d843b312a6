// Creating a rollout: validating the request, matching the target,
// refusing conflicting rollouts, splitting the nodes into waves, saving it.

package rollout

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/rolloutstate"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Create starts a rollout, or with req.Plan only plans it (see Plan). It
// refuses a request naming no target, a package version that is not stored,
// a malformed strategy, a target that matches no node, and a rollout of a
// package that another active rollout of the same package covers on any of
// the same nodes (the error names that rollout). Unset strategy fields take
// the Default* values. Reachable nodes are split into wave 0 (the first
// `canary` by node ID) and wave 1; nodes not connected and healthy now are
// UNREACHABLE at once and never waited on, except nodes whose stream
// dropped within DisconnectGrace (they are waited for that long, see
// reconnecting). The canaries' jobs are sent before Create returns.
func (e *Engine) Create(ctx context.Context, actor string, req *ferryv1.CreateRolloutRequest) (*ferryv1.CreateRolloutResponse, error) {
	if err := e.adminLeading(); err != nil {
		return nil, err
	}
	if req.GetRemove() {
		return e.createOrPlanRemove(actor, req)
	}
	if req.GetPlan() {
		plan, err := e.Plan(ctx, req)
		if err != nil {
			return nil, err
		}
		return &ferryv1.CreateRolloutResponse{Plan: plan}, nil
	}
	r, err := e.create(actor, req)
	if err != nil {
		e.refused(e.auditEntry(actor, "rollout.create", req.GetPackageName()+"@"+req.GetPackageVersion(), describe(req.GetTarget(), nil)), err)
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
			enumword.Of(s.GetOnFailure()),
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
	r.Nodes = buildNodes(nodes, int(p.strat.GetCanary()), now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string {
		return installedVersion(n, r.GetPackageName())
	})
	r.Message = "started by " + actor + ": " + startSummary(r)
	ev := e.auditEntry(actor, "rollout.create", r.GetId(), r.GetPackageName()+"@"+r.GetPackageVersion()+" "+describe(r.GetTarget(), r.GetStrategy()))
	ru, err := e.insertLocked(r, p.pkg, now, ev)
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
			if want[n.GetNodeId()] && (!rolloutstate.Terminal(o.GetState()) || inFlight(n)) {
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
			pkg, ErrConflict, o.GetId(), o.GetPackageName(), o.GetPackageVersion(), enumword.Of(o.GetState()), on, o.GetId())
	}
	return nil
}

// buildNodes orders a rollout's node records: canaries (the first `canary`
// reachable nodes by ID, then nodes reconnecting within grace if there are
// too few) in wave 0, the other reachable and reconnecting nodes in wave 1,
// then the unreachable ones, already UNREACHABLE.
func buildNodes(nodes []*ferryv1.Node, canary int, now time.Time, grace time.Duration, previous func(*ferryv1.Node) string) []*ferryv1.NodeJob {
	sorted := append([]*ferryv1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GetId() < sorted[j].GetId() })
	var up, back, down []*ferryv1.NodeJob
	for _, n := range sorted {
		nj := &ferryv1.NodeJob{NodeId: n.GetId(), Outcome: ocPending, Wave: 1, PreviousVersion: previous(n)}
		switch {
		case reachable(n):
			up = append(up, nj)
		case reconnecting(n, now, grace):
			back = append(back, nj)
		default:
			nj.Outcome = ocUnreachable
			nj.FinishedAt = timestamppb.New(now)
			nj.Message = "not connected at the start (" + nodeStatus(n, true) + "); no job sent"
			down = append(down, nj)
		}
	}
	waves := append(up, back...)
	for _, nj := range waves[:min(canary, len(waves))] {
		nj.Wave = 0
	}
	return append(waves, down...)
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

// insertLocked saves a new rollout with the audit entry of the action that
// created it, and adds it to the engine. Called with e.mu held; on error
// nothing was added.
func (e *Engine) insertLocked(r *ferryv1.Rollout, pkg *ferryv1.Package, now time.Time, audit *ferryv1.AuditEvent) (*run, error) {
	ru, err := newRun(r)
	if err != nil {
		return nil, err
	}
	ru.pkg = pkg
	if err := e.cfg.Store.SaveRollout(proto.Clone(r).(*ferryv1.Rollout), audit); err != nil {
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
