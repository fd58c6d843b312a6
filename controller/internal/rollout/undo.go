// Undo: which version each node of a group goes back to, from what, and
// with which job (a rollback, an install of a stored version, a removal).

package rollout

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Undo starts a rollout that takes every node of req.Group (and
// req.Selector) back, or with req.Plan only says per node from what to
// what. By default a node goes back to the version it had before its
// latest change of the package, whatever rollouts came since (aborted or
// no-op rollouts change nothing, so they are not in the way): as its agent
// reports it (the version its last install replaced, which a rollback job
// restores) or, for a node that has not reported, as the controller's
// rollout records say. With req.ToVersion every node goes to that stored
// version; with req.ToRollout each node that rollout changed goes back to
// the version it had before it. A node's job is a rollback when the agent
// can restore the target itself, else an install of the target version or
// a removal of the package. Nodes already at their target are left alone.
// The undo rollout's job_kind is ROLLBACK; each node records its from
// (previous_version) and to (target_version) and, when it is not a
// rollback, its job_kind.
func (e *Engine) Undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.UndoRolloutResponse, error) {
	if err := e.adminLeading(); err != nil {
		return nil, err
	}
	resp, err := e.undo(actor, req)
	if err != nil && !req.GetPlan() {
		e.refused(e.auditEntry(actor, "rollout.undo", req.GetPackageName()+" group="+req.GetGroup(), undoDetail(req)), err)
	}
	return resp, err
}

func undoDetail(req *ferryv1.UndoRolloutRequest) string {
	s := "package " + req.GetPackageName() + " group " + req.GetGroup()
	if len(req.GetSelector()) > 0 {
		s += " selector " + selectorText(req.GetSelector())
	}
	if req.GetToVersion() != "" {
		s += " to-version " + req.GetToVersion()
	}
	if req.GetToRollout() != "" {
		s += " to-rollout " + req.GetToRollout()
	}
	return s
}

// undoNode is what an undo does on one node.
type undoNode struct {
	node     *ferryv1.Node
	from, to string // to "" with remove
	kind     ferryv1.JobKind
	note     string // set when the node is left alone, saying why
	stuck    bool   // it should change but cannot: the undo is refused
	// undoes is the node's latest recorded change, when the undo goes
	// back from the version it left.
	undoes change
}

func (u undoNode) changes() bool { return u.note == "" }

// transition renders "1.26.8 → 1.20.3" or "1.26.8 → removed".
func transition(from, to string) string {
	if to == "" {
		to = "removed"
	}
	if from == "" {
		from = "none"
	}
	return from + " → " + to
}

func (e *Engine) undo(actor string, req *ferryv1.UndoRolloutRequest) (*ferryv1.UndoRolloutResponse, error) {
	name, group := req.GetPackageName(), req.GetGroup()
	if name == "" || group == "" {
		return nil, fmt.Errorf("%w: undo needs a package and a group, e.g. --package go --group production", ErrInvalid)
	}
	if req.GetToVersion() != "" && req.GetToRollout() != "" {
		return nil, fmt.Errorf("%w: undo takes --to-version or --to-rollout, not both", ErrInvalid)
	}
	strat, err := withDefaults(req.GetStrategy())
	if err != nil {
		return nil, err
	}
	if v := req.GetToVersion(); v != "" {
		if p, err := e.cfg.Packages.Package(name, v); err != nil || p == nil {
			if err == nil {
				err = ErrNotFound
			}
			return nil, fmt.Errorf("undo %s in %s: package %s@%s: %w; apply it first with `ferryctl package apply`%s", name, group, name, v, err, e.versionsHint(name))
		}
	}
	e.mu.Lock()
	plan, err := e.undoPlanLocked(req)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	// The versions nodes go to by install must be stored.
	pkgs := map[string]*ferryv1.Package{}
	for i, u := range plan {
		if !u.changes() || u.kind != kindInstall {
			continue
		}
		if _, ok := pkgs[u.to]; !ok {
			p, err := e.storedPackage(name, u.to)
			if err != nil {
				return nil, fmt.Errorf("undo %s in %s: package %s@%s: %w", name, group, name, u.to, err)
			}
			pkgs[u.to] = p
		}
		if pkgs[u.to] == nil {
			plan[i].stuck = true
			plan[i].note = fmt.Sprintf("cannot go back to %s: the node keeps no copy of it and package %s@%s is not stored; apply it again with `ferryctl package apply`, or name another version with --to-version", u.to, name, u.to)
		}
	}
	var nodes []*ferryv1.Node
	var stuck []undoNode
	for _, u := range plan {
		if u.changes() {
			nodes = append(nodes, u.node)
		}
		if u.stuck {
			stuck = append(stuck, u)
		}
	}
	if len(stuck) > 0 {
		return nil, fmt.Errorf("%w: undo %s in %s: %s; leave such nodes out with --selector", ErrState, name, group, leftAlone(stuck))
	}
	if len(nodes) == 0 {
		return nil, fmt.Errorf("%w: nothing to undo: %s", ErrState, leftAlone(plan))
	}
	if req.GetPlan() {
		// A plan fails as the undo would: an active rollout in the way.
		e.mu.Lock()
		err := e.conflictLocked(name, nodes)
		e.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return &ferryv1.UndoRolloutResponse{Plan: undoPlans(plan, int(strat.GetCanary()), e.cfg.Clock.Now(), e.cfg.DisconnectGrace)}, nil
	}
	e.mu.Lock()
	// Look again under the lock: something may have started meanwhile.
	again, err := e.undoPlanLocked(req)
	if err == nil {
		err = samePlan(plan, again)
	}
	if err == nil {
		err = e.conflictLocked(name, nodes)
	}
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	now := e.cfg.Clock.Now()
	by := map[string]undoNode{}
	for _, u := range plan {
		by[u.node.GetId()] = u
	}
	r := &ferryv1.Rollout{
		Id:             e.newIDLocked(),
		PackageName:    name,
		PackageVersion: commonFrom(plan),
		Target:         &ferryv1.Target{Group: group, Selector: req.GetSelector()},
		Strategy:       strat,
		State:          stRunning,
		CreatedAt:      timestamppb.New(now),
		CreatedBy:      actor,
		UpdatedAt:      timestamppb.New(now),
		JobKind:        kindRollback,
		UndoOf:         req.GetToRollout(),
	}
	if r.UndoOf == "" {
		r.UndoOf = newestUndone(plan)
	}
	r.Nodes = buildNodes(nodes, int(strat.GetCanary()), now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string { return by[n.GetId()].from })
	for _, nj := range r.GetNodes() {
		u := by[nj.GetNodeId()]
		nj.TargetVersion = u.to
		if u.kind != kindRollback {
			nj.JobKind = u.kind
		}
	}
	r.Message = fmt.Sprintf("undo by %s: %s: %s", actor, name, transitionsText(r.GetNodes()))
	if req.GetToRollout() != "" {
		r.Message = fmt.Sprintf("undo of %s by %s: %s: %s", r.GetUndoOf(), actor, name, transitionsText(r.GetNodes()))
	}
	ru, err := e.insertLocked(r, nil, now, e.auditEntry(actor, "rollout.undo", r.GetId(), undoDetail(req)+": "+transitionsText(r.GetNodes())))
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	for v, p := range pkgs {
		if p != nil {
			ru.pkgs[v] = p
		}
	}
	return &ferryv1.UndoRolloutResponse{Rollout: e.advanceAndRelease(ru, now)}, nil
}

// newestUndone is the newest rollout whose change on some node the undo
// takes back (for listings: "undo ro-…"); "" when none is recorded.
func newestUndone(plan []undoNode) string {
	var best change
	for _, u := range plan {
		if u.changes() && u.undoes.rollout != "" && (best.rollout == "" || u.undoes.at.After(best.at)) {
			best = u.undoes
		}
	}
	return best.rollout
}

// samePlan refuses an undo whose nodes changed between the two looks.
func samePlan(a, b []undoNode) error {
	key := func(p []undoNode) string {
		var s strings.Builder
		for _, u := range p {
			fmt.Fprintf(&s, "%s:%s>%s:%t;", u.node.GetId(), u.from, u.to, u.changes())
		}
		return s.String()
	}
	if key(a) != key(b) {
		return fmt.Errorf("%w: the nodes changed while the undo was planned; run it again", ErrConflict)
	}
	return nil
}

// undoPlanLocked computes what the undo does on each node of the group
// and selector, in node ID order. Called with e.mu held.
func (e *Engine) undoPlanLocked(req *ferryv1.UndoRolloutRequest) ([]undoNode, error) {
	name, group := req.GetPackageName(), req.GetGroup()
	var from *run
	if id := req.GetToRollout(); id != "" {
		from = e.runs[id]
		if from == nil {
			return nil, notFound(id)
		}
		if from.r.GetPackageName() != name {
			return nil, fmt.Errorf("%w: rollout %s is of package %s, not %s", ErrInvalid, id, from.r.GetPackageName(), name)
		}
		if !from.ended() {
			return nil, fmt.Errorf("package %s: %w: rollout %s is still %s; wait for it to end or abort it with `ferryctl rollout abort %s`", name, ErrConflict, id, enumword.Of(from.r.GetState()), id)
		}
	}
	var fleet []*ferryv1.Node
	for _, n := range e.cfg.Fleet.Match(&ferryv1.Target{Group: group, Selector: req.GetSelector()}) {
		if n.GetGroup() == group && n.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED {
			fleet = append(fleet, n)
		}
	}
	if len(fleet) == 0 {
		return nil, fmt.Errorf("%w: no enrolled node matches %s; list nodes with `ferryctl nodes`", ErrInvalid, describe(&ferryv1.Target{Group: group, Selector: req.GetSelector()}, nil))
	}
	sort.Slice(fleet, func(i, j int) bool { return fleet[i].GetId() < fleet[j].GetId() })
	out := make([]undoNode, 0, len(fleet))
	for _, n := range fleet {
		out = append(out, e.undoNodeLocked(n, name, req.GetToVersion(), from))
	}
	return out, nil
}

// undoNodeLocked decides one node's undo.
func (e *Engine) undoNodeLocked(n *ferryv1.Node, name, toVersion string, from *run) undoNode {
	u := undoNode{node: n}
	inst := installedPackage(n, name)
	reported := inst != nil || n.GetLastHeartbeat() != nil
	last, haveLast := e.lastChangeLocked(name, n.GetId())
	switch {
	case inst != nil:
		u.from = inst.GetVersion()
	case !reported && haveLast:
		u.from = last.to // not heard from since the controller started
	}
	if haveLast && last.to == u.from {
		u.undoes = last
	}
	switch {
	case toVersion != "":
		u.to = toVersion
	case from != nil:
		nj := from.node(n.GetId())
		if nj == nil {
			u.note = "not part of rollout " + from.r.GetId()
			return u
		}
		if !changedBy(from, nj) {
			u.note = fmt.Sprintf("rollout %s did not change it (%s)", from.r.GetId(), enumword.Of(nj.GetOutcome()))
			return u
		}
		u.to = nj.GetPreviousVersion()
	case inst != nil && !inst.GetPruned():
		u.to = inst.GetPreviousVersion()
	case haveLast && last.to == u.from:
		u.to = last.from
	case inst != nil:
		u.note = fmt.Sprintf("it keeps no version before %s (keep_previous) and no rollout recorded one; name one with --to-version", u.from)
		return u
	default:
		u.note = "it does not have " + name
		return u
	}
	switch {
	case u.from == u.to && u.to == "":
		u.note = "it does not have " + name
	case u.from == u.to:
		u.note = "it already has " + u.to
	case inst != nil && !inst.GetPruned() && inst.GetPreviousVersion() == u.to:
		u.kind = kindRollback // the agent restores its kept copy (or removes a first install)
	case u.to == "":
		u.kind = kindRemove
	default:
		u.kind = kindInstall
	}
	return u
}

// change is one recorded change of a package on a node.
type change struct {
	from, to string
	at       time.Time
	rollout  string
}

// lastChangeLocked is the newest change of the package on the node that
// the rollout records show: a successful install, undo or removal job.
// Rolled-back installs changed nothing in the end.
func (e *Engine) lastChangeLocked(name, nodeID string) (change, bool) {
	var best change
	found := false
	for _, ru := range e.runs {
		if ru.r.GetPackageName() != name {
			continue
		}
		nj := ru.node(nodeID)
		if nj == nil || !changedBy(ru, nj) {
			continue
		}
		c := change{from: nj.GetPreviousVersion(), to: versionAfter(ru, nj), at: nj.GetFinishedAt().AsTime(), rollout: ru.r.GetId()}
		if !found || c.at.After(best.at) {
			best, found = c, true
		}
	}
	return best, found
}

// changedBy: the rollout's own job changed the node and it stayed changed.
func changedBy(ru *run, nj *ferryv1.NodeJob) bool {
	return nj.GetJobId() == mainJobID(ru.r.GetId(), nj.GetNodeId()) && nj.GetOutcome() == ocSucceeded &&
		nj.GetPreviousVersion() != versionAfter(ru, nj)
}

// versionAfter is the version a rollout's job leaves on a node ("" once
// removed).
func versionAfter(ru *run, nj *ferryv1.NodeJob) string {
	switch ru.r.GetJobKind() {
	case kindRollback, kindRemove:
		return nj.GetTargetVersion()
	}
	return ru.r.GetPackageVersion()
}

func installedPackage(n *ferryv1.Node, name string) *ferryv1.InstalledPackage {
	for _, p := range n.GetInstalled() {
		if p.GetName() == name {
			return p
		}
	}
	return nil
}

// commonFrom is the version most nodes of the undo leave (the undo
// rollout's package_version, for listings).
func commonFrom(plan []undoNode) string {
	c := map[string]int{}
	best := ""
	for _, u := range plan {
		if u.changes() {
			c[u.from]++
			if c[u.from] > c[best] || (c[u.from] == c[best] && u.from > best) {
				best = u.from
			}
		}
	}
	return best
}

// transitionsText says what a rollout does per node, grouping nodes with
// the same change: "1.26.8 → 1.20.3 on n1, n2; 1.26.8 → removed on n3".
func transitionsText(nodes []*ferryv1.NodeJob) string {
	var order []string
	on := map[string][]string{}
	for _, n := range nodes {
		t := transition(n.GetPreviousVersion(), n.GetTargetVersion())
		if on[t] == nil {
			order = append(order, t)
		}
		on[t] = append(on[t], n.GetNodeId())
	}
	parts := make([]string, len(order))
	for i, t := range order {
		parts[i] = t + " on " + nodeList(on[t])
	}
	return strings.Join(parts, "; ")
}

func nodeList(ids []string) string {
	if len(ids) > 5 {
		return fmt.Sprintf("%s and %d more", strings.Join(ids[:5], ", "), len(ids)-5)
	}
	return strings.Join(ids, ", ")
}

// leftAlone says why no node would change.
func leftAlone(plan []undoNode) string {
	var order []string
	on := map[string][]string{}
	for _, u := range plan {
		if on[u.note] == nil {
			order = append(order, u.note)
		}
		on[u.note] = append(on[u.note], u.node.GetId())
	}
	parts := make([]string, len(order))
	for i, note := range order {
		parts[i] = nodeList(on[note]) + ": " + note
	}
	return strings.Join(parts, "; ")
}

// undoPlans is the plan's per-node answer, in the order a rollout would
// take the nodes (canaries first), nodes left alone last.
func undoPlans(plan []undoNode, canary int, now time.Time, grace time.Duration) []*ferryv1.NodePlan {
	var nodes []*ferryv1.Node
	by := map[string]undoNode{}
	for _, u := range plan {
		by[u.node.GetId()] = u
		if u.changes() {
			nodes = append(nodes, u.node)
		}
	}
	var out []*ferryv1.NodePlan
	for _, nj := range buildNodes(nodes, canary, now, grace, func(*ferryv1.Node) string { return "" }) {
		u := by[nj.GetNodeId()]
		p := &ferryv1.NodePlan{NodeId: nj.GetNodeId(), Wave: nj.GetWave(), FromVersion: u.from, ToVersion: u.to, Removed: u.to == ""}
		switch {
		case nj.GetOutcome() == ocUnreachable:
			p.Note = "unreachable: " + nodeStatus(u.node, true) + "; it would not be waited on"
		case u.kind == kindInstall:
			p.Note = "installs " + u.to
		case u.kind == kindRemove:
			p.Note = "removes the package"
		default:
			p.Note = "rollback: the node restores " + versionOrRemoved(u.to)
		}
		out = append(out, p)
	}
	for _, u := range plan {
		if !u.changes() {
			out = append(out, &ferryv1.NodePlan{NodeId: u.node.GetId(), Wave: 1, FromVersion: u.from, Note: "left alone: " + u.note})
		}
	}
	return out
}

func versionOrRemoved(v string) string {
	if v == "" {
		return "the state before the package (removes it)"
	}
	return "its kept copy of " + v
}
