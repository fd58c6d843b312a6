// Catch-up: each group's desired state (the version of each package that
// the last successful rollout or undo of it to the whole group left the
// group on), which nodes are behind it and why, and the catch-up rollouts
// the engine starts by itself to bring them there.
//
// The engine works from levels, not events: every CatchUpEvery it looks at
// the stored rollouts and the fleet. So a node that becomes healthy, enrolls,
// is moved into a group with `node move`, or missed a rollout that just
// succeeded is found the same way, and a restarted controller finds what it
// missed without a replayed event. A catch-up is an ordinary rollout (kind
// CATCH_UP, created by "controller") with the steps, checks and failure
// policy of the rollout that set the desired state, so watch, logs, pause,
// resume, abort and the failure threshold all work for it, and it is
// persisted before any job is sent like any other rollout.
//
// Rules, per group G and desired package P@V:
//   - At most one catch-up rollout is active in G at a time, with at most
//     catch_up_parallel (default 1) jobs in flight. A paused catch-up (its
//     failure policy tripped) holds G's further catch-ups until an admin
//     resumes or aborts it.
//   - No catch-up of P while another rollout of P is active in G.
//   - A node is caught up at most once per desired state: once any rollout
//     of P targeting G (or no group) gave it a job, or a catch-up skipped
//     it, after the desired state was set (or after the node enrolled, or an
//     admin's `group set --retry`), catch-up leaves it and says why. So a
//     failed node is not retried in a loop, an admin's later rollout of
//     another version is not undone, and a restart or a late heartbeat never
//     sends the same node a second job.

package rollout

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// GroupStore persists groups' desired state and catch-up settings. The
// engine is the records' only writer.
type GroupStore interface {
	// SaveGroup writes g with the audit entry of the change, both or
	// neither (audit nil: none).
	SaveGroup(g *ferryv1.GroupRecord, audit *ferryv1.AuditEvent) error
	// Groups returns every stored group record.
	Groups() ([]*ferryv1.GroupRecord, error)
}

const (
	rkCatchUp = ferryv1.RolloutKind_ROLLOUT_KIND_CATCH_UP

	// CatchUpActor is who the audit log and the rollout list name for
	// what the engine does by itself.
	CatchUpActor = "controller"

	defaultCatchUpEvery = 2 * time.Second
	// maxCatchUpParallel bounds catch_up_parallel.
	maxCatchUpParallel = 1000
)

// catchUp is the engine's catch-up state: the group records as stored,
// and when it last looked.
type catchUp struct {
	groups map[string]*ferryv1.GroupRecord
	last   time.Time
	// done: ended rollouts whose desired state is recorded, superseded,
	// or that set none (an ended rollout no longer changes).
	done map[string]bool
}

// loadGroups reads the group records at New.
func (e *Engine) loadGroups() error {
	e.cu.groups = map[string]*ferryv1.GroupRecord{}
	e.cu.done = map[string]bool{}
	if e.cfg.CatchUpEvery <= 0 {
		e.cfg.CatchUpEvery = defaultCatchUpEvery
	}
	if e.cfg.Groups == nil {
		return nil
	}
	gs, err := e.cfg.Groups.Groups()
	if err != nil {
		return fmt.Errorf("rollout engine: load groups: %w", err)
	}
	for _, g := range gs {
		e.cu.groups[g.GetName()] = g
	}
	return nil
}

// catchUpLocked records desired states that rollouts set and starts the
// catch-ups that are due. Called from Tick with e.mu held.
func (e *Engine) catchUpLocked(now time.Time, fx *effects) {
	if e.cfg.Groups == nil || (!e.cu.last.IsZero() && now.Sub(e.cu.last) < e.cfg.CatchUpEvery) {
		return
	}
	e.cu.last = now
	e.recordDesiredLocked(now)
	names := make([]string, 0, len(e.cu.groups))
	for name := range e.cu.groups {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		e.catchUpGroupLocked(e.cu.groups[name], now, fx)
	}
}

// desiredOf is the desired state a rollout that has ended sets for its
// group, if it sets one: an admin's rollout or undo to a whole group (a
// group and no selector) that changed or confirmed at least one node and
// failed on none. Nodes it could not reach (no job sent) do not stop it:
// they are what catch-up is for.
func (e *Engine) desiredOf(ru *run) (string, *ferryv1.DesiredPackage, bool) {
	r := ru.r
	if ru.frozen || !ru.ended() || r.GetKind() == rkCatchUp || r.GetTarget().GetGroup() == "" || len(r.GetTarget().GetSelector()) > 0 {
		return "", nil, false
	}
	if s := r.GetState(); s != stSucceeded && s != stFailed {
		return "", nil, false
	}
	proven := 0
	for _, n := range r.GetNodes() {
		switch {
		case n.GetOutcome() == ocSucceeded || n.GetOutcome() == ocUnchanged:
			proven++
		case n.GetOutcome() == ocUnreachable && n.GetJobId() == "":
		default:
			return "", nil, false
		}
	}
	if proven == 0 {
		return "", nil, false
	}
	d := &ferryv1.DesiredPackage{Name: r.GetPackageName(), RolloutId: r.GetId(), Since: r.GetCreatedAt(), SetBy: r.GetCreatedBy()}
	switch r.GetJobKind() {
	case kindInstall:
		d.Version = r.GetPackageVersion()
	case kindRollback:
		v, ok := e.undoneTo(ru)
		if !ok {
			return "", nil, false
		}
		d.Version, d.Removed = v, v == ""
	case kindRemove:
		d.Removed = true
	default:
		return "", nil, false
	}
	return r.GetTarget().GetGroup(), d, true
}

// undoneTo is the version an undo returned its nodes to, when they all
// went back to the same one ("" is "removed"); nodes that went back to
// different versions leave no single desired version. Nor does an undo of
// a rollout that found some nodes already at its version: the undo leaves
// those nodes where they were, so the group ends on two versions, and
// catch-up must not take them back (the undo said they keep theirs).
func (e *Engine) undoneTo(ru *run) (string, bool) {
	to, seen := "", false
	mine := map[string]bool{}
	for _, n := range ru.r.GetNodes() {
		mine[n.GetNodeId()] = true
		if n.GetOutcome() != ocSucceeded && n.GetOutcome() != ocUnchanged {
			continue
		}
		v := n.GetTargetVersion() // the version the undo job took the node to ("" is removed)
		if seen && v != to {
			return "", false
		}
		to, seen = v, true
	}
	if undone := e.runs[ru.r.GetUndoOf()]; seen && undone != nil && undone.r.GetJobKind() == kindInstall && undone.r.GetPackageVersion() != to {
		for _, n := range undone.r.GetNodes() {
			if n.GetOutcome() == ocUnchanged && !mine[n.GetNodeId()] {
				return "", false
			}
		}
	}
	return to, seen
}

// newerDesired: d was set by a rollout created after the one that set cur.
func newerDesired(d, cur *ferryv1.DesiredPackage) bool {
	if cur == nil {
		return true
	}
	if c := d.GetSince().AsTime().Compare(cur.GetSince().AsTime()); c != 0 {
		return c > 0
	}
	return d.GetRolloutId() > cur.GetRolloutId()
}

func desiredFor(g *ferryv1.GroupRecord, pkg string) *ferryv1.DesiredPackage {
	for _, d := range g.GetDesired() {
		if d.GetName() == pkg {
			return d
		}
	}
	return nil
}

// recordDesiredLocked saves the desired states that ended rollouts set
// and the group records do not have yet: it runs at every look, so a
// controller that stopped between a rollout's end and this save records it
// after the restart.
func (e *Engine) recordDesiredLocked(now time.Time) {
	best := map[[2]string]*ferryv1.DesiredPackage{}
	candidates := map[[2]string][]string{}
	for id, ru := range e.runs {
		if e.cu.done[id] || !ru.ended() {
			continue
		}
		group, d, ok := e.desiredOf(ru)
		if !ok {
			e.cu.done[id] = true
			continue
		}
		key := [2]string{group, d.GetName()}
		candidates[key] = append(candidates[key], id)
		if newerDesired(d, best[key]) {
			best[key] = d
		}
	}
	keys := make([][2]string, 0, len(best))
	for k := range best {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	for _, k := range keys {
		d := best[k]
		g := e.cu.groups[k[0]]
		cur := desiredFor(g, d.GetName())
		if cur.GetRolloutId() == d.GetRolloutId() || !newerDesired(d, cur) {
			e.markDone(candidates[k])
			continue
		}
		d.RecordedAt = timestamppb.New(now)
		next := &ferryv1.GroupRecord{Name: k[0]}
		if g != nil {
			next = proto.Clone(g).(*ferryv1.GroupRecord)
		}
		next.Desired = slices.DeleteFunc(next.Desired, func(x *ferryv1.DesiredPackage) bool { return x.GetName() == d.GetName() })
		next.Desired = append(next.Desired, d)
		slices.SortFunc(next.Desired, func(a, b *ferryv1.DesiredPackage) int { return cmp.Compare(a.GetName(), b.GetName()) })
		ev := e.auditEntry(CatchUpActor, "group.desired", k[0], desiredText(d)+" from rollout "+d.GetRolloutId()+" by "+d.GetSetBy())
		if err := e.cfg.Groups.SaveGroup(next, ev); err != nil {
			e.log.Error("save group desired state; retried shortly", "group", k[0], "package", d.GetName(), "rollout", d.GetRolloutId(), "err", err)
			continue
		}
		e.cu.groups[k[0]] = next
		e.markDone(candidates[k])
		e.log.Info("group desired state recorded", "group", k[0], "package", desiredText(d), "rollout", d.GetRolloutId())
	}
}

func (e *Engine) markDone(ids []string) {
	for _, id := range ids {
		e.cu.done[id] = true
	}
}

func desiredText(d *ferryv1.DesiredPackage) string {
	if d.GetRemoved() {
		return d.GetName() + " removed"
	}
	return d.GetName() + "@" + d.GetVersion()
}

func catchUpParallel(g *ferryv1.GroupRecord) int {
	return max(int(g.GetCatchUpParallel()), 1)
}

// groupMembersLocked returns the nodes of a group (removed ones left out),
// by ID.
func (e *Engine) groupMembersLocked(group string) []*ferryv1.Node {
	var out []*ferryv1.Node
	for _, n := range e.cfg.Fleet.Match(&ferryv1.Target{Group: group}) {
		if n.GetGroup() == group && n.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b *ferryv1.Node) int { return cmp.Compare(a.GetId(), b.GetId()) })
	return out
}

// activeCatchUpLocked is the group's catch-up rollout that has not ended.
func (e *Engine) activeCatchUpLocked(group string) *run {
	for _, ru := range e.runs {
		if ru.r.GetKind() == rkCatchUp && ru.r.GetTarget().GetGroup() == group && !ru.ended() {
			return ru
		}
	}
	return nil
}

// jobRef is a node's record in a rollout.
type jobRef struct {
	ru *run
	nj *ferryv1.NodeJob
}

// pkgIndex is what one look needs to know, per node of a group, about the
// rollouts of the desired package, gathered in one pass over them.
type pkgIndex struct {
	// active: per node, a rollout of the package that has not ended and
	// has the node.
	active map[string]jobRef
	// groupActive is a rollout of the package that has not ended and
	// targets the group.
	groupActive *run
	// last: per node, the newest rollout created since the desired state
	// was set (or the group's retry), targeting the group or no group,
	// that gave the node a job or, for a catch-up, skipped it: what counts
	// against catching it up (see the package rules above).
	last map[string]jobRef
}

func newerRun(a, b *run) bool {
	if c := a.r.GetCreatedAt().AsTime().Compare(b.r.GetCreatedAt().AsTime()); c != 0 {
		return c > 0
	}
	return a.r.GetId() > b.r.GetId()
}

func (e *Engine) pkgIndexLocked(g *ferryv1.GroupRecord, d *ferryv1.DesiredPackage) pkgIndex {
	from := d.GetSince().AsTime()
	if ts := g.GetRetryAfter(); ts != nil && ts.AsTime().After(from) {
		from = ts.AsTime()
	}
	ix := pkgIndex{active: map[string]jobRef{}, last: map[string]jobRef{}}
	for _, ru := range e.runs {
		r := ru.r
		if r.GetPackageName() != d.GetName() {
			continue
		}
		tg := r.GetTarget().GetGroup()
		ended := ru.ended()
		if !ended && tg == g.GetName() {
			ix.groupActive = ru
		}
		counts := !r.GetCreatedAt().AsTime().Before(from) && (tg == "" || tg == g.GetName())
		for _, nj := range r.GetNodes() {
			id := nj.GetNodeId()
			if !ended {
				ix.active[id] = jobRef{ru, nj}
			}
			if !counts || (nj.GetJobId() == "" && (r.GetKind() != rkCatchUp || nj.GetOutcome() != ocSkipped)) {
				continue
			}
			if cur, ok := ix.last[id]; !ok || newerRun(ru, cur.ru) {
				ix.last[id] = jobRef{ru, nj}
			}
		}
	}
	return ix
}

// lastFor is the node's entry in last, unless it is from before the node
// enrolled (a re-enrolled node starts afresh): the newest entry is the one
// to compare, since every older one is older still.
func (ix pkgIndex) lastFor(n *ferryv1.Node) (jobRef, bool) {
	j, ok := ix.last[n.GetId()]
	if ok && n.GetEnrolledAt() != nil && j.ru.r.GetCreatedAt().AsTime().Before(n.GetEnrolledAt().AsTime()) {
		return jobRef{}, false
	}
	return j, ok
}

// behind is one node of a group that is not on a desired version.
type behind struct {
	node *ferryv1.Node
	view *ferryv1.BehindNode
}

// behindLocked lists the group's nodes that are not on the desired
// version d (or are being caught up to it), each with where its catch-up
// stands. pkgErr is why P@V cannot be installed now (nil: it can).
func (e *Engine) behindLocked(g *ferryv1.GroupRecord, d *ferryv1.DesiredPackage, members []*ferryv1.Node, pkgErr error) []behind {
	name := g.GetName()
	groupCatchUp := e.activeCatchUpLocked(name)
	ix := e.pkgIndexLocked(g, d)
	var out []behind
	for _, n := range members {
		have := installedVersion(n, d.GetName())
		atDesired := have == d.GetVersion() && !d.GetRemoved() || d.GetRemoved() && have == ""
		a, onNode := ix.active[n.GetId()]
		active, nj := a.ru, a.nj
		if !onNode {
			active = ix.groupActive
		}
		catchingUp := onNode && active.r.GetKind() == rkCatchUp
		if atDesired && (!catchingUp || terminalOutcome(nj.GetOutcome())) {
			continue
		}
		v := &ferryv1.BehindNode{NodeId: n.GetId(), PackageName: d.GetName(), InstalledVersion: have, DesiredVersion: d.GetVersion(), DesiredRemoved: d.GetRemoved()}
		setStatus := func(s ferryv1.CatchUpStatus, rolloutID, format string, args ...any) {
			v.Status, v.RolloutId, v.Reason = s, rolloutID, fmt.Sprintf(format, args...)
		}
		lj, hasLast := ix.lastFor(n)
		switch {
		case catchingUp:
			st := ferryv1.CatchUpStatus_CATCH_UP_STATUS_RUNNING
			if isFailure(nj) {
				st = ferryv1.CatchUpStatus_CATCH_UP_STATUS_FAILED
			}
			setStatus(st, active.r.GetId(), "catch-up %s is %s; this node: %s", active.r.GetId(), enumword.Of(active.r.GetState()), jobText(nj))
		case active != nil && (onNode || !hasLast):
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_BLOCKED, active.r.GetId(), "rollout %s (%s) is %s; catch-up waits for it to end", active.r.GetId(), active.pkgRef(), enumword.Of(active.r.GetState()))
		case hasLast:
			held(v, g, d, lj.ru, lj.nj)
		case !reachable(n):
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_WAITING, "", "%s; caught up once it is connected and healthy", nodeStatus(n, true))
		case g.GetCatchUpDisabled():
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_OFF, "", "catch-up is off for group %s; turn it on with `ferryctl group set %s --catch-up=true`", name, name)
		case d.GetRemoved():
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_HELD, d.GetRolloutId(), "the group should not have %s, and catch-up cannot remove packages yet; remove it with a rollout", d.GetName())
		case pkgErr != nil:
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_HELD, d.GetRolloutId(), "%v", pkgErr)
		case groupCatchUp != nil:
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_BLOCKED, groupCatchUp.r.GetId(), "catch-up %s (%s) is %s in the group; this node's comes after it", groupCatchUp.r.GetId(), groupCatchUp.pkgRef(), enumword.Of(groupCatchUp.r.GetState()))
		default:
			setStatus(ferryv1.CatchUpStatus_CATCH_UP_STATUS_PENDING, "", "gets a catch-up job shortly")
		}
		out = append(out, behind{node: n, view: v})
	}
	return out
}

// held says why a node that a rollout of the package already touched
// after the desired state was set is not caught up again.
func held(v *ferryv1.BehindNode, g *ferryv1.GroupRecord, d *ferryv1.DesiredPackage, last *run, nj *ferryv1.NodeJob) {
	id := last.r.GetId()
	retry := fmt.Sprintf("`ferryctl group set %s --retry` gives it another catch-up", g.GetName())
	v.RolloutId = id
	v.Status = ferryv1.CatchUpStatus_CATCH_UP_STATUS_HELD
	what := jobText(nj)
	switch {
	case last.r.GetKind() == rkCatchUp && isFailure(nj):
		v.Status = ferryv1.CatchUpStatus_CATCH_UP_STATUS_FAILED
		v.Reason = fmt.Sprintf("catch-up %s %s; %s once the cause is fixed", id, what, retry)
	case last.r.GetKind() == rkCatchUp && nj.GetOutcome() == ocSkipped:
		v.Reason = fmt.Sprintf("catch-up %s was %s before this node's turn (%s); %s", id, enumword.Of(last.r.GetState()), last.r.GetMessage(), retry)
	case last.r.GetKind() == rkCatchUp:
		v.Reason = fmt.Sprintf("catch-up %s ended %s, but the node reports %s; %s", id, what, versionOrAbsent(v.GetInstalledVersion()), retry)
	case id == d.GetRolloutId():
		v.Reason = fmt.Sprintf("rollout %s ended %s here, but the node now reports %s; %s", id, what, versionOrAbsent(v.GetInstalledVersion()), retry)
	default:
		v.Reason = fmt.Sprintf("rollout %s (%s, %s) changed it after the desired state was set, so catch-up leaves it: node %s; %s", id, last.pkgRef(), enumword.Of(last.r.GetState()), what, retry)
	}
}

// jobText is a node's outcome in a rollout in words, e.g. "failed at
// check: go version: exit status 1".
func jobText(nj *ferryv1.NodeJob) string {
	what := enumword.Of(nj.GetOutcome())
	if nj.GetFailedStep() != "" {
		what += " at " + nj.GetFailedStep()
	}
	if nj.GetMessage() != "" {
		what += ": " + nj.GetMessage()
	}
	return what
}

func versionOrAbsent(v string) string {
	if v == "" {
		return "no version installed"
	}
	return "version " + v
}

// catchUpGroupLocked starts the group's next catch-up rollout, if one is
// due: for the first desired package (by name) with nodes pending.
func (e *Engine) catchUpGroupLocked(g *ferryv1.GroupRecord, now time.Time, fx *effects) {
	if g.GetCatchUpDisabled() || len(g.GetDesired()) == 0 || e.activeCatchUpLocked(g.GetName()) != nil {
		return
	}
	var members []*ferryv1.Node
	for _, d := range g.GetDesired() {
		if d.GetRemoved() {
			continue
		}
		if members == nil {
			members = e.groupMembersLocked(g.GetName())
		}
		// A version no longer stored leaves its nodes held (group show
		// says why) rather than retried and logged at every look.
		pkg, pkgErr := e.catchUpPackage(d)
		var todo []*ferryv1.Node
		for _, b := range e.behindLocked(g, d, members, pkgErr) {
			if b.view.GetStatus() == ferryv1.CatchUpStatus_CATCH_UP_STATUS_PENDING {
				todo = append(todo, b.node)
			}
		}
		if len(todo) > 0 && e.startCatchUpLocked(g, d, pkg, todo, now, fx) {
			return
		}
	}
}

// catchUpPackage loads the desired package version, or says why it cannot.
func (e *Engine) catchUpPackage(d *ferryv1.DesiredPackage) (*ferryv1.Package, error) {
	pkg, err := e.cfg.Packages.Package(d.GetName(), d.GetVersion())
	if err == nil && pkg == nil {
		err = fmt.Errorf("package %s@%s: %w", d.GetName(), d.GetVersion(), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot be caught up: %w; apply %s@%s again with `ferryctl package apply`, or roll out another version", err, d.GetName(), d.GetVersion())
	}
	return pkg, nil
}

// startCatchUpLocked creates and starts a catch-up rollout of d (stored
// as pkg, loaded by the caller) to nodes. It reports whether one started.
func (e *Engine) startCatchUpLocked(g *ferryv1.GroupRecord, d *ferryv1.DesiredPackage, pkg *ferryv1.Package, nodes []*ferryv1.Node, now time.Time, fx *effects) bool {
	name := g.GetName()
	// The strategy of the rollout that set the desired state (its
	// failure policy, deadline and healthy period), without canaries and
	// within the group's catch-up parallelism.
	base := &ferryv1.Strategy{}
	if src := e.runs[d.GetRolloutId()]; src != nil && src.r.GetStrategy() != nil {
		base = proto.Clone(src.r.GetStrategy()).(*ferryv1.Strategy)
	}
	base.Canary = proto.Uint32(0)
	base.AutoPromote = true
	base.MaxParallel = strconv.Itoa(catchUpParallel(g))
	strat, err := withDefaults(base)
	if err != nil {
		e.log.Error("catch-up not started: strategy", "group", name, "err", err)
		return false
	}
	if err := e.conflictLocked(d.GetName(), nodes); err != nil {
		return false
	}
	r := &ferryv1.Rollout{
		Id:             e.newIDLocked(),
		PackageName:    d.GetName(),
		PackageVersion: d.GetVersion(),
		Target:         &ferryv1.Target{Group: name},
		Strategy:       strat,
		State:          stRunning,
		CreatedAt:      timestamppb.New(now),
		CreatedBy:      CatchUpActor,
		UpdatedAt:      timestamppb.New(now),
		JobKind:        kindInstall,
		Kind:           rkCatchUp,
		CatchUpOf:      d.GetRolloutId(),
	}
	r.Nodes = buildNodes(nodes, 0, now, e.cfg.DisconnectGrace, func(n *ferryv1.Node) string {
		return installedVersion(n, d.GetName())
	})
	ids := make([]string, len(nodes))
	for i, n := range nodes {
		ids[i] = n.GetId()
	}
	r.Message = fmt.Sprintf("catch-up of group %s to its desired %s (set by rollout %s): %s", name, desiredText(d), d.GetRolloutId(), startSummary(r))
	ev := e.auditEntry(CatchUpActor, "rollout.catch-up", r.GetId(), fmt.Sprintf("%s group=%s nodes=%s desired-by=%s", desiredText(d), name, strings.Join(ids, ","), d.GetRolloutId()))
	ru, err := e.insertLocked(r, pkg, now, ev)
	if err != nil {
		e.log.Error("catch-up not started; retried shortly", "group", name, "err", err)
		return false
	}
	e.settle(ru, now, fx)
	_ = e.commit(ru, now, fx) // logged; retried at the next tick
	return true
}

// Undo takes a node back from its own latest change, which may be a
// catch-up's job (undo.go, lastChangeLocked): catch-ups need no special case.

// Group returns a group's desired versions, catch-up settings and the
// nodes behind, with why.
func (e *Engine) Group(name string) (*ferryv1.Group, error) {
	if name == "" {
		return nil, invalidGroup("no group: name one, e.g. `ferryctl group show production`")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	members := e.groupMembersLocked(name)
	g := e.cu.groups[name]
	if g == nil && len(members) == 0 {
		return nil, unknownGroup(name)
	}
	return e.groupViewLocked(name, g, members), nil
}

// groupError is a refused group request: it matches ErrInvalid (so the
// API answers InvalidArgument) without ErrInvalid's "invalid rollout".
type groupError struct{ msg string }

func (e groupError) Error() string        { return e.msg }
func (e groupError) Is(target error) bool { return target == ErrInvalid }

func invalidGroup(format string, args ...any) error {
	return groupError{fmt.Sprintf(format, args...)}
}

func unknownGroup(name string) error {
	return fmt.Errorf("group %q: %w: no enrolled node is in it and no rollout set its desired state; list nodes and their groups with `ferryctl nodes`", name, ErrNotFound)
}

func (e *Engine) groupViewLocked(name string, g *ferryv1.GroupRecord, members []*ferryv1.Node) *ferryv1.Group {
	if g == nil {
		g = &ferryv1.GroupRecord{Name: name}
	}
	out := &ferryv1.Group{
		Name:            name,
		CatchUp:         !g.GetCatchUpDisabled(),
		CatchUpParallel: max(g.GetCatchUpParallel(), 1),
		NodeCount:       uint32(len(members)), //nolint:gosec // a fleet is far below 2^32 nodes
		UpdatedAt:       g.GetUpdatedAt(),
		UpdatedBy:       g.GetUpdatedBy(),
	}
	for _, d := range g.GetDesired() {
		out.Desired = append(out.Desired, proto.Clone(d).(*ferryv1.DesiredPackage))
		var pkgErr error
		if !d.GetRemoved() {
			_, pkgErr = e.catchUpPackage(d)
		}
		for _, b := range e.behindLocked(g, d, members, pkgErr) {
			out.Behind = append(out.Behind, b.view)
		}
	}
	slices.SortStableFunc(out.Behind, func(a, b *ferryv1.BehindNode) int {
		return cmp.Or(cmp.Compare(a.GetNodeId(), b.GetNodeId()), cmp.Compare(a.GetPackageName(), b.GetPackageName()))
	})
	return out
}

// UpdateGroup changes a group's catch-up settings (audited as
// group.update): catch-up on or off, its parallelism, or a retry that
// gives nodes whose catch-up failed, was aborted or left them behind
// another one (jobs before now no longer count against them). A refused
// request changes nothing.
func (e *Engine) UpdateGroup(actor string, req *ferryv1.UpdateGroupRequest) (*ferryv1.Group, error) {
	if err := e.adminLeading(); err != nil {
		return nil, err
	}
	g, err := e.updateGroup(actor, req)
	if err != nil {
		e.refused(e.auditEntry(actor, "group.update", req.GetName(), updateDetail(req)), err)
	}
	return g, err
}

func updateDetail(req *ferryv1.UpdateGroupRequest) string {
	var parts []string
	if req.CatchUp != nil {
		parts = append(parts, "catch-up="+strconv.FormatBool(req.GetCatchUp()))
	}
	if req.CatchUpParallel != nil {
		parts = append(parts, "catch-up-parallel="+strconv.Itoa(int(req.GetCatchUpParallel())))
	}
	if req.GetRetry() {
		parts = append(parts, "retry")
	}
	return strings.Join(parts, " ")
}

func (e *Engine) updateGroup(actor string, req *ferryv1.UpdateGroupRequest) (*ferryv1.Group, error) {
	name := req.GetName()
	switch {
	case name == "":
		return nil, invalidGroup("no group: name one, e.g. `ferryctl group set production --catch-up=false`")
	case req.CatchUp == nil && req.CatchUpParallel == nil && !req.GetRetry():
		return nil, invalidGroup("group %s: nothing to change: set --catch-up, --catch-up-parallel or --retry", name)
	case req.CatchUpParallel != nil && (req.GetCatchUpParallel() < 1 || req.GetCatchUpParallel() > maxCatchUpParallel):
		return nil, invalidGroup("group %s: --catch-up-parallel %d: want 1 to %d catch-up jobs at once", name, req.GetCatchUpParallel(), maxCatchUpParallel)
	case e.cfg.Groups == nil:
		return nil, fmt.Errorf("%w: this controller keeps no group records", ErrState)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Clock.Now()
	members := e.groupMembersLocked(name)
	g := e.cu.groups[name]
	if g == nil && len(members) == 0 {
		return nil, unknownGroup(name)
	}
	next := &ferryv1.GroupRecord{Name: name}
	if g != nil {
		next = proto.Clone(g).(*ferryv1.GroupRecord)
	}
	if req.CatchUp != nil {
		next.CatchUpDisabled = !req.GetCatchUp()
	}
	if req.CatchUpParallel != nil {
		next.CatchUpParallel = req.GetCatchUpParallel()
	}
	if req.GetRetry() {
		next.RetryAfter = timestamppb.New(now)
	}
	next.UpdatedAt, next.UpdatedBy = timestamppb.New(now), actor
	if err := e.cfg.Groups.SaveGroup(next, e.auditEntry(actor, "group.update", name, updateDetail(req))); err != nil {
		return nil, fmt.Errorf("group %s: save: %w; nothing was changed", name, err)
	}
	e.cu.groups[name] = next
	e.cu.last = time.Time{} // look again at the next tick
	return e.groupViewLocked(name, next, members), nil
}
