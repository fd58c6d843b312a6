package rollout

import (
	"fmt"
	"slices"
	"strings"
	"time"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Shorter names for the enums the state machine uses everywhere.
const (
	stRunning   = ferryv1.RolloutState_ROLLOUT_STATE_RUNNING
	stWaiting   = ferryv1.RolloutState_ROLLOUT_STATE_WAITING_PROMOTION
	stPaused    = ferryv1.RolloutState_ROLLOUT_STATE_PAUSED
	stSucceeded = ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED
	stFailed    = ferryv1.RolloutState_ROLLOUT_STATE_FAILED
	stAborted   = ferryv1.RolloutState_ROLLOUT_STATE_ABORTED
	stRolling   = ferryv1.RolloutState_ROLLOUT_STATE_ROLLING_BACK
	stRolled    = ferryv1.RolloutState_ROLLOUT_STATE_ROLLED_BACK

	ocPending     = ferryv1.NodeOutcome_NODE_OUTCOME_PENDING
	ocDownloading = ferryv1.NodeOutcome_NODE_OUTCOME_DOWNLOADING
	ocInstalling  = ferryv1.NodeOutcome_NODE_OUTCOME_INSTALLING
	ocChecking    = ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING
	ocSucceeded   = ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED
	ocUnchanged   = ferryv1.NodeOutcome_NODE_OUTCOME_UNCHANGED
	ocFailed      = ferryv1.NodeOutcome_NODE_OUTCOME_FAILED
	ocUnreachable = ferryv1.NodeOutcome_NODE_OUTCOME_UNREACHABLE
	ocSkipped     = ferryv1.NodeOutcome_NODE_OUTCOME_SKIPPED
	ocRolledBack  = ferryv1.NodeOutcome_NODE_OUTCOME_ROLLED_BACK

	kindInstall  = ferryv1.JobKind_JOB_KIND_INSTALL
	kindRollback = ferryv1.JobKind_JOB_KIND_ROLLBACK
	kindPlan     = ferryv1.JobKind_JOB_KIND_PLAN
)

// run is the engine's working state for one rollout. Only r is persisted;
// everything else is rebuilt after a restart.
type run struct {
	r      *ferryv1.Rollout
	st     strategy
	frozen bool // unreadable record: kept for history, never advanced

	pkg *ferryv1.Package // loaded when the first job is sent
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
	return &run{r: r, st: st, healthySince: map[string]time.Time{}}, nil
}

// Job IDs are derived from the rollout and node so they are stable across
// restarts; rollout IDs contain no "/", so the two forms cannot collide.
func mainJobID(rolloutID, nodeID string) string     { return rolloutID + "/job/" + nodeID }
func rollbackJobID(rolloutID, nodeID string) string { return rolloutID + "/rollback/" + nodeID }

func terminalState(s ferryv1.RolloutState) bool {
	switch s {
	case stSucceeded, stFailed, stAborted, stRolled:
		return true
	}
	return false
}

func terminalOutcome(o ferryv1.NodeOutcome) bool {
	switch o {
	case ocSucceeded, ocUnchanged, ocFailed, ocUnreachable, ocSkipped, ocRolledBack:
		return true
	}
	return false
}

// inFlight: a job was sent (its ID persisted) and has no final outcome yet.
func inFlight(n *ferryv1.NodeJob) bool {
	return n.GetJobId() != "" && !terminalOutcome(n.GetOutcome())
}

// waitingHealthy: the agent reported success; the node is serving out
// healthy_for.
func waitingHealthy(n *ferryv1.NodeJob) bool {
	return n.GetOutcome() == ocChecking && n.GetFinishedAt() != nil
}

// isFailure: counted against max_failures.
func isFailure(n *ferryv1.NodeJob) bool {
	switch n.GetOutcome() {
	case ocFailed:
		return true
	case ocUnreachable:
		return n.GetJobId() != ""
	}
	return false
}

func (ru *run) failures() int {
	c := 0
	for _, n := range ru.r.GetNodes() {
		if isFailure(n) {
			c++
		}
	}
	return c
}

func (ru *run) inFlightCount() int {
	c := 0
	for _, n := range ru.r.GetNodes() {
		if inFlight(n) {
			c++
		}
	}
	return c
}

// ended: the rollout reached a final state and no job of it is in flight.
// An aborted rollout keeps tracking the jobs it cancelled until they report
// or time out.
func (ru *run) ended() bool {
	return terminalState(ru.r.GetState()) && ru.inFlightCount() == 0
}

func (ru *run) node(id string) *ferryv1.NodeJob {
	for _, n := range ru.r.GetNodes() {
		if n.GetNodeId() == id {
			return n
		}
	}
	return nil
}

func (ru *run) pkgRef() string { return ru.r.GetPackageName() + "@" + ru.r.GetPackageVersion() }

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
	ru.event(now, "", "%s: %s", stateName(s), msg)
}

func stateName(s ferryv1.RolloutState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "ROLLOUT_STATE_"))
}

func outcomeName(o ferryv1.NodeOutcome) string {
	return strings.ToLower(strings.TrimPrefix(o.String(), "NODE_OUTCOME_"))
}

// effects are the calls to the dispatcher that transitions produce, in the
// order they were committed. They are queued under e.mu and performed
// without it, by one goroutine at a time (see drain), so a job is always
// sent before a later transition's cancel of it.
type effects struct {
	ops []op
}

// op is one call: a send when job is set, else a cancel of jobID.
type op struct {
	rolloutID string
	nodeID    string
	job       *ferryv1.Job
	outcome   ferryv1.NodeOutcome // for a send: the outcome set when it was sent
	jobID     string
}

func (fx *effects) cancel(nodeID, jobID string) {
	fx.ops = append(fx.ops, op{nodeID: nodeID, jobID: jobID})
}

// sentNode remembers a node record as it was before it was given a job, to
// take the job back if the rollout cannot be saved.
type sentNode struct {
	n      *ferryv1.NodeJob
	before *ferryv1.NodeJob
}

// settle advances one rollout to now. Called with e.mu held.
func (e *Engine) settle(ru *run, now time.Time, fx *effects) {
	if ru.frozen {
		return
	}
	if ru.recancel {
		ru.recancel = false
		for _, n := range ru.r.GetNodes() {
			if inFlight(n) && n.GetFinishedAt() == nil && (ru.r.GetState() == stAborted || n.GetJobId() == mainJobID(ru.r.GetId(), n.GetNodeId())) {
				fx.cancel(n.GetNodeId(), n.GetJobId())
			}
		}
	}
	for _, n := range ru.r.GetNodes() {
		if inFlight(n) {
			e.checkInFlight(ru, n, now, fx)
		}
	}
	switch ru.r.GetState() {
	case stRunning:
		e.fillWindow(ru, now, fx)
	case stRolling:
		e.fillRollbacks(ru, now, fx)
	}
	e.maybeFinish(ru, now)
}

// checkInFlight applies the healthy period and the progress deadline. The
// deadline runs from the job's start; once the agent reported success it
// runs again from that report, so a late success still gets its healthy
// period, but a node that never settles is not waited on forever.
func (e *Engine) checkInFlight(ru *run, n *ferryv1.NodeJob, now time.Time, fx *effects) {
	healthy := waitingHealthy(n)
	start := n.GetStartedAt().AsTime()
	if healthy {
		start = n.GetFinishedAt().AsTime()
		if e.healthyDone(ru, n, now) {
			e.finish(ru, n, ocSucceeded, now, fx, fmt.Sprintf("healthy for %s after the checks passed", ru.st.healthyFor))
			return
		}
	}
	if now.Sub(start) < ru.st.progressDeadline {
		return
	}
	fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
	switch {
	case !ok || !reachable(fn):
		e.finish(ru, n, ocUnreachable, now, fx, fmt.Sprintf("node went away mid-job (%s); gave up at the progress deadline %s", nodeStatus(fn, ok), ru.st.progressDeadline))
	case healthy:
		e.finish(ru, n, ocFailed, now, fx, fmt.Sprintf("installed, but not healthy for %s within the progress deadline %s", ru.st.healthyFor, ru.st.progressDeadline))
	default:
		what := "job"
		if n.GetJobId() == rollbackJobID(ru.r.GetId(), n.GetNodeId()) {
			what = "rollback job"
		}
		e.finish(ru, n, ocFailed, now, fx, fmt.Sprintf("no result within the progress deadline %s; %s cancelled", ru.st.progressDeadline, what))
	}
	if !healthy {
		fx.cancel(n.GetNodeId(), n.GetJobId())
	}
}

// healthyDone: the node has been connected and HEALTHY at every look since
// its healthy stretch began, for healthy_for, and a heartbeat arrived after
// that (when the fleet reports heartbeat times).
func (e *Engine) healthyDone(ru *run, n *ferryv1.NodeJob, now time.Time) bool {
	id := n.GetNodeId()
	fn, ok := e.cfg.Fleet.Node(id)
	if !ok || !reachable(fn) {
		ru.healthySince[id] = time.Time{}
		return false
	}
	since, seen := ru.healthySince[id]
	switch {
	case !seen:
		// First look since the report, or since a restart: the engine did
		// not watch the node before, so count from now at the earliest.
		since = n.GetFinishedAt().AsTime()
		if e.started.After(since) {
			since = e.started
		}
		ru.healthySince[id] = since
	case since.IsZero():
		since = now
		ru.healthySince[id] = since
	}
	end := since.Add(ru.st.healthyFor)
	if now.Before(end) {
		return false
	}
	if hb := fn.GetLastHeartbeat(); hb != nil && hb.AsTime().Before(end) {
		return false
	}
	return true
}

func reachable(n *ferryv1.Node) bool {
	return n.GetConnected() && n.GetState() == ferryv1.NodeState_NODE_STATE_HEALTHY
}

func nodeStatus(n *ferryv1.Node, ok bool) string {
	if !ok {
		return "no longer enrolled"
	}
	s := strings.ToLower(strings.TrimPrefix(n.GetState().String(), "NODE_STATE_"))
	if !n.GetConnected() {
		s += ", not connected"
	}
	if n.GetStateReason() != "" {
		s += ": " + n.GetStateReason()
	}
	return s
}

// finish gives a node its final outcome and applies the failure threshold.
func (e *Engine) finish(ru *run, n *ferryv1.NodeJob, o ferryv1.NodeOutcome, now time.Time, fx *effects, msg string) {
	n.Outcome = o
	n.FinishedAt = timestamppb.New(now)
	n.Message = msg
	delete(ru.healthySince, n.GetNodeId())
	if o == ocFailed && n.GetFailedStep() != "" {
		ru.event(now, n.GetNodeId(), "failed at %s: %s", n.GetFailedStep(), msg)
	} else {
		ru.event(now, n.GetNodeId(), "%s: %s", outcomeName(o), msg)
	}
	if isFailure(n) && n.GetJobId() == mainJobID(ru.r.GetId(), n.GetNodeId()) {
		e.onFailure(ru, now, fx)
	}
}

// setOutcome moves an in-flight node to a new non-final outcome.
func setOutcome(ru *run, n *ferryv1.NodeJob, o ferryv1.NodeOutcome, now time.Time, msg string) {
	n.Outcome = o
	if msg == "" {
		ru.event(now, n.GetNodeId(), "%s", outcomeName(o))
		return
	}
	n.Message = msg
	ru.event(now, n.GetNodeId(), "%s: %s", outcomeName(o), msg)
}

// onFailure acts once failures exceed max_failures. It runs at each new
// failure (never at a tick), so a rollout an admin resumed past the limit
// goes on until the next failure, and a restart does not trip it again.
func (e *Engine) onFailure(ru *run, now time.Time, fx *effects) {
	switch ru.r.GetState() {
	case stRunning, stWaiting, stPaused:
	default:
		return
	}
	total := len(ru.r.GetNodes())
	f := ru.failures()
	if !ru.st.maxFailures.exceeded(f, total) {
		return
	}
	why := fmt.Sprintf("%d of %d nodes failed, more than max-failures %s", f, total, ru.st.maxFailures)
	action := ru.st.onFailure
	if action == ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK && ru.r.GetJobKind() == kindRollback {
		// An undo cannot be rolled back; stop and let an admin decide.
		action = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
		why += " (an undo is not rolled back)"
	}
	e.log.Warn("rollout failure threshold exceeded", "rollout", ru.r.GetId(), "failures", f, "max_failures", ru.st.maxFailures.String(), "action", action.String())
	switch action {
	case ferryv1.FailureAction_FAILURE_ACTION_ABORT:
		e.abort(ru, now, fx, why+"; aborted")
	case ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK:
		ru.setState(now, stRolling, why+"; rolling back the nodes that changed")
		skipPending(ru, now, "skipped: the rollout is rolling back")
		cancelRunning(ru, fx)
	default:
		ru.setState(now, stPaused, fmt.Sprintf("%s; paused: fix the cause, then `ferryctl rollout resume %s` or `ferryctl rollout abort %s`", why, ru.r.GetId(), ru.r.GetId()))
	}
}

// abort stops the rollout: pending nodes are skipped and jobs the agents are
// still running are cancelled (the agents undo the steps they applied).
func (e *Engine) abort(ru *run, now time.Time, fx *effects, msg string) {
	ru.setState(now, stAborted, msg)
	skipPending(ru, now, "skipped: the rollout was aborted")
	cancelRunning(ru, fx)
}

// cancelRunning cancels the jobs the agents are still running (not those
// that reported success and are serving out healthy_for).
func cancelRunning(ru *run, fx *effects) {
	for _, n := range ru.r.GetNodes() {
		if inFlight(n) && n.GetFinishedAt() == nil {
			fx.cancel(n.GetNodeId(), n.GetJobId())
		}
	}
}

func skipPending(ru *run, now time.Time, msg string) {
	for _, n := range ru.r.GetNodes() {
		if n.GetOutcome() == ocPending {
			n.Outcome = ocSkipped
			n.FinishedAt = timestamppb.New(now)
			n.Message = msg
			ru.event(now, n.GetNodeId(), "skipped")
		}
	}
}

// fillWindow starts pending nodes while fewer than max_parallel jobs are in
// flight: canaries (wave 0) first; wave 1 once every canary has a final
// outcome and the rollout is promoted (or auto_promote).
func (e *Engine) fillWindow(ru *run, now time.Time, fx *effects) {
	r := ru.r
	slots := ru.st.maxParallel.parallel(len(r.GetNodes())) - ru.inFlightCount()
	canariesDone, wave1Started, hasCanaries := true, false, false
	for _, n := range r.GetNodes() {
		if n.GetWave() == 0 {
			hasCanaries = true
		}
		if n.GetWave() == 0 && !terminalOutcome(n.GetOutcome()) {
			canariesDone = false
		}
		if n.GetWave() > 0 && n.GetStartedAt() != nil {
			wave1Started = true
		}
	}
	for _, n := range r.GetNodes() {
		if slots <= 0 {
			return
		}
		if n.GetOutcome() != ocPending {
			continue
		}
		if n.GetWave() > 0 {
			if !canariesDone {
				return
			}
			// Without canaries (--canary 0) there is nothing to promote.
			if hasCanaries && !wave1Started && !ru.st.autoPromote && !ru.promoted {
				ru.setState(now, stWaiting, fmt.Sprintf("canaries done (%s); waiting for `ferryctl rollout promote %s`", canarySummary(r), r.GetId()))
				return
			}
			if !wave1Started {
				wave1Started = true
				ru.event(now, "", "wave 1 started")
			}
		}
		if e.start(ru, n, now, fx, r.GetJobKind(), mainJobID(r.GetId(), n.GetNodeId())) {
			slots--
		}
	}
}

func canarySummary(r *ferryv1.Rollout) string {
	c := map[ferryv1.NodeOutcome]int{}
	for _, n := range r.GetNodes() {
		if n.GetWave() == 0 {
			c[n.GetOutcome()]++
		}
	}
	return countsText(c)
}

// countsText renders outcome counts in a fixed order, e.g. "2 succeeded, 1 failed".
func countsText(c map[ferryv1.NodeOutcome]int) string {
	var parts []string
	for o := ocPending; o <= ocRolledBack; o++ {
		if c[o] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c[o], outcomeName(o)))
		}
	}
	if len(parts) == 0 {
		return "no nodes"
	}
	return strings.Join(parts, ", ")
}

// start sends a node its job, or marks it unreachable when it is not
// connected and healthy now. The job ID is set here and persisted by commit
// before the job is sent (apply runs after commit). It reports whether a
// job was sent.
func (e *Engine) start(ru *run, n *ferryv1.NodeJob, now time.Time, fx *effects, kind ferryv1.JobKind, jobID string) bool {
	before := proto.Clone(n).(*ferryv1.NodeJob)
	n.StartedAt = timestamppb.New(now)
	fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
	if ok && !reachable(fn) && fn.GetState() != ferryv1.NodeState_NODE_STATE_REMOVED && now.Sub(e.started) < e.cfg.ReconnectGrace {
		// The controller has just (re)started and agents are still in
		// their reconnect backoff: wait for them rather than mark a
		// healthy fleet unreachable. The node stays pending and takes no
		// window slot.
		n.StartedAt = before.GetStartedAt()
		return false
	}
	if !ok || !reachable(fn) {
		e.finish(ru, n, ocUnreachable, now, fx, "not connected when its turn came ("+nodeStatus(fn, ok)+"); no job sent")
		return false
	}
	pkg, err := e.loadPackage(ru)
	if err != nil {
		n.StartedAt = before.GetStartedAt()
		e.log.Error("cannot send rollout job", "rollout", ru.r.GetId(), "node", n.GetNodeId(), "err", err)
		return false
	}
	o := ocDownloading
	if kind != kindInstall || pkg.GetArtifact().GetDigest() == "" {
		o = ocInstalling
	}
	n.JobId = jobID
	n.FinishedAt = nil
	n.FailedStep = ""
	n.BytesDone = 0
	n.Steps = nil
	msg := ""
	if kind == kindRollback {
		to := n.GetPreviousVersion()
		if ru.r.GetJobKind() == kindRollback {
			to = e.undoTarget(ru, n.GetNodeId())
		}
		msg = "rolling back to " + versionOrNone(to)
	}
	setOutcome(ru, n, o, now, msg)
	ru.sent = append(ru.sent, sentNode{n: n, before: before})
	fx.ops = append(fx.ops, sendOp(ru, n.GetNodeId(), jobID, kind, pkg, o))
	return true
}

// sendOp is the effect that sends a node a job of the rollout; outcome is
// the node's outcome when the job is handed over.
func sendOp(ru *run, nodeID, jobID string, kind ferryv1.JobKind, pkg *ferryv1.Package, outcome ferryv1.NodeOutcome) op {
	return op{
		rolloutID: ru.r.GetId(),
		nodeID:    nodeID,
		outcome:   outcome,
		job: &ferryv1.Job{
			Id:        jobID,
			RolloutId: ru.r.GetId(),
			Kind:      kind,
			Package:   pkg,
			Deadline:  durationpb.New(ru.st.progressDeadline),
		},
	}
}

func versionOrNone(v string) string {
	if v == "" {
		return "no previous version"
	}
	return v
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

// changedNode: the rollout's own job changed the node and it has not been
// undone: the agent reported success, or (for nodes the rollout counted as
// failed) the fleet shows the rollout's version installed.
func (e *Engine) changedNode(ru *run, n *ferryv1.NodeJob) bool {
	if n.GetJobId() != mainJobID(ru.r.GetId(), n.GetNodeId()) {
		return false
	}
	switch n.GetOutcome() {
	case ocSucceeded:
		return true
	case ocChecking:
		return n.GetFinishedAt() != nil
	case ocFailed, ocUnreachable:
		fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
		return ok && installedVersion(fn, ru.r.GetPackageName()) == ru.r.GetPackageVersion() && n.GetPreviousVersion() != ru.r.GetPackageVersion()
	}
	return false
}

func installedVersion(n *ferryv1.Node, pkg string) string {
	for _, p := range n.GetInstalled() {
		if p.GetName() == pkg {
			return p.GetVersion()
		}
	}
	return ""
}

// fillRollbacks sends rollback jobs, within max_parallel, to every node the
// rollout changed. A node waiting out its healthy period is already in
// flight and switches to its rollback without taking a new slot.
func (e *Engine) fillRollbacks(ru *run, now time.Time, fx *effects) {
	r := ru.r
	slots := ru.st.maxParallel.parallel(len(r.GetNodes())) - ru.inFlightCount()
	for _, n := range r.GetNodes() {
		if !e.changedNode(ru, n) {
			continue
		}
		wasInFlight := inFlight(n)
		if !wasInFlight && slots <= 0 {
			continue
		}
		rbID := rollbackJobID(r.GetId(), n.GetNodeId())
		fn, ok := e.cfg.Fleet.Node(n.GetNodeId())
		if !ok || !reachable(fn) {
			n.JobId = rbID
			notRolledBack(ru, n, now, "node not connected ("+nodeStatus(fn, ok)+")")
			continue
		}
		if e.start(ru, n, now, fx, kindRollback, rbID) && !wasInFlight {
			slots--
		}
	}
}

// notRolledBack ends a changed node whose rollback job could not be sent,
// as SUCCEEDED, with a message saying why and that the version may remain.
func notRolledBack(ru *run, n *ferryv1.NodeJob, now time.Time, why string) {
	n.Outcome = ocSucceeded
	n.FinishedAt = timestamppb.New(now)
	n.Message = "not rolled back: " + why + "; it may still have " + ru.r.GetPackageVersion()
	ru.event(now, n.GetNodeId(), "%s", n.GetMessage())
}

// maybeFinish gives the rollout its final state once no job is in flight
// and nothing is left to start.
func (e *Engine) maybeFinish(ru *run, now time.Time) {
	r := ru.r
	if ru.inFlightCount() > 0 {
		return
	}
	counts := map[ferryv1.NodeOutcome]int{}
	for _, n := range r.GetNodes() {
		counts[n.GetOutcome()]++
	}
	summary := fmt.Sprintf("%d nodes: %s", len(r.GetNodes()), countsText(counts))
	switch r.GetState() {
	case stRunning, stPaused, stWaiting:
		if counts[ocPending] > 0 {
			return
		}
		if counts[ocSucceeded]+counts[ocUnchanged] == len(r.GetNodes()) {
			ru.setState(now, stSucceeded, summary)
		} else {
			ru.setState(now, stFailed, summary)
		}
	case stRolling:
		ru.setState(now, stRolled, summary)
	case stAborted:
		if !strings.Contains(r.GetMessage(), "; ended with ") {
			r.Message += "; ended with " + summary
			ru.dirty = true
		}
	}
}

// commit persists the rollout if it changed and sends the queued events to
// watchers. If the store fails, jobs that were about to be sent are taken
// back (they are retried later), because a job is only ever sent once its ID
// is on disk. Called with e.mu held.
func (e *Engine) commit(ru *run, now time.Time, fx *effects) error {
	if !ru.dirty {
		return nil
	}
	ru.r.UpdatedAt = timestamppb.New(now)
	snap := proto.Clone(ru.r).(*ferryv1.Rollout)
	err := e.cfg.Store.SaveRollout(snap)
	if err != nil {
		err = fmt.Errorf("rollout %s: save: %w; it is retried at the next tick", ru.r.GetId(), err)
		e.log.Error("save rollout", "rollout", ru.r.GetId(), "err", err)
		taken := map[string]bool{}
		for _, s := range ru.sent {
			taken[s.n.GetJobId()] = true
			proto.Reset(s.n)
			proto.Merge(s.n, s.before)
			ru.event(now, s.n.GetNodeId(), "job not sent: could not save the rollout: %v", err)
		}
		kept := fx.ops[:0]
		for _, o := range fx.ops {
			if o.job == nil || o.rolloutID != ru.r.GetId() || !taken[o.job.GetId()] {
				kept = append(kept, o)
			}
		}
		fx.ops = kept
		snap = proto.Clone(ru.r).(*ferryv1.Rollout)
	} else {
		ru.dirty = false
	}
	ru.sent = nil
	for _, ev := range ru.events {
		ev.Rollout = snap
		for w := range ru.watchers {
			w.send(ev)
		}
	}
	ru.events = nil
	if ru.ended() {
		for w := range ru.watchers {
			w.close()
		}
		ru.watchers = nil
	}
	return err
}

// drain performs the queued effects. Only one goroutine drains at a time, so
// calls reach the dispatcher in commit order; a caller that finds another
// draining leaves its effects to it (which also makes a dispatcher that
// calls back into the engine safe). Called without e.mu.
func (e *Engine) drain() {
	for {
		if !e.draining.TryLock() {
			return
		}
		for {
			e.mu.Lock()
			ops := e.queue.ops
			e.queue.ops = nil
			e.mu.Unlock()
			if len(ops) == 0 {
				break
			}
			e.perform(ops)
		}
		e.draining.Unlock()
		// Effects queued by a caller that found us draining just before we
		// stopped would otherwise wait for the next drain.
		e.mu.Lock()
		more := len(e.queue.ops) > 0
		e.mu.Unlock()
		if !more {
			return
		}
	}
}

// perform makes the calls. A job the dispatcher could not deliver marks its
// node unreachable (it was never sent, so it is not a failure) and lets the
// window move on, which queues more effects.
func (e *Engine) perform(ops []op) {
	type undelivered struct {
		op
		err error
	}
	var failed []undelivered
	for _, o := range ops {
		if o.job == nil {
			if err := e.cfg.Dispatcher.Cancel(o.nodeID, o.jobID); err != nil {
				e.log.Warn("cancel job", "node", o.nodeID, "job", o.jobID, "err", err)
			}
			continue
		}
		if err := e.cfg.Dispatcher.Dispatch(o.nodeID, o.job); err != nil {
			failed = append(failed, undelivered{o, err})
			continue
		}
		e.log.Info("job sent", "rollout", o.rolloutID, "node", o.nodeID, "job", o.job.GetId(), "kind", o.job.GetKind().String())
	}
	if len(failed) == 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.cfg.Clock.Now()
	fx := &e.queue
	var touched []*run
	for _, f := range failed {
		ru := e.runs[f.rolloutID]
		if ru == nil {
			continue
		}
		n := ru.node(f.nodeID)
		if n == nil || n.GetJobId() != f.job.GetId() || n.GetOutcome() != f.outcome || n.GetFinishedAt() != nil {
			continue // the agent answered after all
		}
		if !slices.Contains(touched, ru) {
			touched = append(touched, ru)
		}
		e.log.Warn("job not delivered", "rollout", f.rolloutID, "node", f.nodeID, "err", f.err)
		if f.job.GetKind() == kindRollback && ru.r.GetJobKind() == kindInstall {
			notRolledBack(ru, n, now, f.err.Error())
			continue
		}
		n.JobId = "" // never delivered: not a failure
		e.finish(ru, n, ocUnreachable, now, fx, fmt.Sprintf("not connected when its turn came: %v; no job sent", f.err))
	}
	for _, ru := range touched {
		e.settle(ru, now, fx)
		_ = e.commit(ru, now, fx) // logged; retried at the next tick
	}
}
