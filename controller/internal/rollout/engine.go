// The engine: its configuration, how it is built and driven (New, Run, Tick,
// settle), and what can be read from it (Get, NodeJob, List, Counts,
// Progress; NodeMayFetch in artifacts.go).

// Package rollout is the controller's rollout engine: it applies a package
// to the nodes a target selects, canaries first, then through a sliding
// window of jobs in flight, counts failures over the whole rollout and acts
// when they exceed the limit (pause, abort or roll back), and persists every
// transition so a restarted controller carries on without sending any node a
// job twice.
//
// The engine is a state machine over *ferryv1.Rollout records. It talks to
// the rest of the controller only through the small interfaces in deps.go
// (Store, Dispatcher, Fleet, Packages, Clock, Auditor) and is driven by
// Tick (Run calls it on a ticker, for deadlines and grace periods), by
// agents' job updates (HandleJobUpdate) and heartbeats (NodeHeartbeat), and
// by admin calls (Create, Promote, Pause, Resume, Abort, Undo): a job is sent
// and a freed slot refilled in the call that made it possible, never on the
// next tick.
//
// Node outcomes:
//
//   - PENDING: not started. DOWNLOADING / INSTALLING / CHECKING: the job is in
//     flight (the job ID was persisted before it was sent). After the agent
//     reports success the node stays CHECKING, with finished_at set to the
//     time of the report, until it has been healthy for healthy_for (its
//     heartbeats continuous and its state HEALTHY whenever its stream was
//     up; brief reconnects do not count against it, see healthyDone) and a
//     heartbeat arrived after that period; then SUCCEEDED. With healthy_for
//     0 the report itself is enough: SUCCEEDED at once.
//   - UNCHANGED from the agent is a success. FAILED: a step failed, or the
//     progress deadline passed while the node was connected (the job is then
//     cancelled). UNREACHABLE: the node was not connected and healthy when
//     the rollout started or when its turn came, nor reconnecting within
//     DisconnectGrace (no job was sent, job_id is empty), or it went away
//     mid-job and the deadline passed (job_id set).
//   - Failures counted against max_failures are FAILED nodes plus nodes that
//     went unreachable mid-job (their state is unknown); nodes that were
//     never sent a job are not counted, as SSM does for undeliverable
//     targets, but they keep the rollout from ending SUCCEEDED.
package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/enumword"
)

// Errors the API returns, wrapped with the details; the gRPC layer maps them
// to codes with errors.Is.
var (
	// ErrInvalid: the request is malformed (InvalidArgument).
	ErrInvalid = errors.New("invalid rollout")
	// ErrNotFound: no such rollout or package (NotFound).
	ErrNotFound = errors.New("not found")
	// ErrConflict: another rollout of the package is active on the same
	// nodes (FailedPrecondition or AlreadyExists).
	ErrConflict = errors.New("conflicting rollout")
	// ErrState: the rollout is not in a state that allows the action
	// (FailedPrecondition).
	ErrState = errors.New("wrong rollout state")
	// ErrNotLeading: with several controllers, this one does not run
	// the engine now (Unavailable); the error names the one that does.
	ErrNotLeading = errors.New("not leading")
	// ErrTakingOver is what Config.Leading returns while this controller
	// has won the election and is loading what the previous leader
	// stored: an admin's call waits for that (takeOverWait) instead of
	// being refused.
	ErrTakingOver = errors.New("this controller is taking over as leader")
)

// takeOverWait bounds how long an admin's call waits for a take-over.
const takeOverWait = 15 * time.Second

// Config configures an Engine.
type Config struct {
	Store      Store
	Dispatcher Dispatcher
	Fleet      Fleet
	Packages   Packages
	// Clock defaults to the real clock.
	Clock Clock
	// Auditor, when set, turns on the audit log: every admin action
	// (create, promote, pause, resume, abort, undo) is recorded with its
	// outcome, in the transaction that saves its change, so an action
	// whose entry cannot be written fails and changes nothing.
	Auditor Auditor
	// Logger defaults to a logger that discards.
	Logger *slog.Logger
	// TickInterval is how often Run advances rollouts (default 500ms).
	TickInterval time.Duration
	// ReconnectGrace is how long after the engine starts a node whose turn
	// comes but is not connected yet is waited for rather than marked
	// unreachable (default 35s: the agents' longest reconnect delay plus
	// slack; negative: none).
	ReconnectGrace time.Duration
	// DisconnectGrace is how long after its last heartbeat a node whose
	// stream is down (and that gossip does not report down or left) is
	// still waited for, at the rollout's start and when its turn comes,
	// rather than marked unreachable: its agent is most likely redialling
	// a dropped connection (default 15s: three heartbeat intervals;
	// negative: none).
	DisconnectGrace time.Duration
	// PlanTimeout bounds how long a plan waits for agents (default 2m:
	// agents download the artifact to plan an archive step).
	PlanTimeout time.Duration
	// FetchGrace is how long after its job ended a node may still
	// download the job's artifact (NodeMayFetch), for an agent that
	// resumes a download the engine already gave up on (default 10m).
	FetchGrace time.Duration
	// NewID returns a fresh rollout ID (default "ro-" and 8 random hex
	// digits). IDs must not contain "/".
	NewID func() string
	// Groups, when set, turns on desired state and catch-up (catchup.go):
	// successful rollouts record their group's desired versions there,
	// and nodes behind them get catch-up rollouts.
	Groups GroupStore
	// CatchUpEvery is how often the engine looks for desired states to
	// record and nodes to catch up (default 2s).
	CatchUpEvery time.Duration
	// Leading, when set, says whether this controller runs the engine
	// now (several controllers on etcd, package cluster): its error
	// refuses admin actions, and Tick, job reports and heartbeats do
	// nothing while it fails. Nil: always.
	Leading func() error
	// SaveWindow, when set, coalesces job reports: a report that sends or
	// cancels nothing and ends nothing leaves its rollout to be saved
	// with the others that arrive within this window (or with the
	// SaveBatch-th one), in one store transaction per rollout
	// (savebatch.go). Zero: every report is saved on its own, before
	// HandleJobUpdate returns.
	SaveWindow time.Duration
	// SaveBatch caps the reports one coalesced save takes (default 256).
	SaveBatch int
}

// Engine runs rollouts. All methods are safe for concurrent use.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	mu    sync.Mutex
	runs  map[string]*run
	plans map[string]*planWait // plan ID -> waiter
	queue effects              // dispatcher calls not made yet, in commit order
	// healthyWaits: per node, the runs in which it waits out its healthy
	// period (see waitHealthy), so a heartbeat looks only at those.
	healthyWaits map[string]map[*run]struct{}
	// cu: groups' desired state (catchup.go).
	cu catchUp

	draining sync.Mutex // held by the goroutine performing the queue

	// saves: runs whose job reports wait for a coalesced save
	// (savebatch.go); under mu.
	saves saveBatch
}

// leading returns nil when this engine may act, else why not (wrapping
// ErrNotLeading).
func (e *Engine) leading() error {
	if e.cfg.Leading == nil {
		return nil
	}
	if err := e.cfg.Leading(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotLeading, err)
	}
	return nil
}

// Leading returns nil while this engine runs the rollouts (waiting out a
// take-over, as an admin's call does), else why not: what only the
// engine that runs them knows completely (what is in use) is asked of it
// only then.
func (e *Engine) Leading() error { return e.adminLeading() }

// adminLeading is leading for an admin's call (not under e.mu): while
// this controller is taking over as leader it waits until it leads,
// rather than refusing a call it is about to be able to serve.
func (e *Engine) adminLeading() error {
	deadline := time.Now().Add(takeOverWait)
	for {
		err := e.leading()
		if !errors.Is(err, ErrTakingOver) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Reload rereads the stored rollouts and groups, as New does: a
// controller that did not lead follows the leader's writes with it, and
// one that starts leading reloads before its first Tick. In-flight jobs
// are not sent again; reconnect grace runs from now.
func (e *Engine) Reload() error {
	stored, err := e.cfg.Store.Rollouts()
	if err != nil {
		return fmt.Errorf("rollout engine: load rollouts: %w", err)
	}
	var gs []*ferryv1.GroupRecord
	if e.cfg.Groups != nil {
		if gs, err = e.cfg.Groups.Groups(); err != nil {
			return fmt.Errorf("rollout engine: load groups: %w", err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = e.cfg.Clock.Now()
	e.queue = effects{}
	e.healthyWaits = map[string]map[*run]struct{}{}
	e.cu.groups = map[string]*ferryv1.GroupRecord{}
	e.cu.done = map[string]bool{}
	e.cu.last = time.Time{}
	for _, g := range gs {
		e.cu.groups[g.GetName()] = g
	}
	old := e.runs
	e.runs = map[string]*run{}
	for _, r := range stored {
		ru, err := newRun(r)
		if err != nil {
			ru = &run{r: r, frozen: true}
		}
		switch r.GetState() {
		case stAborted, stRolling:
			ru.recancel = true
		}
		if o := old[r.GetId()]; o != nil && len(o.watchers) > 0 {
			ru.watchers = o.watchers
			snap := &ferryv1.WatchRolloutResponse{Rollout: proto.Clone(r).(*ferryv1.Rollout), Event: enumword.Of(r.GetState()) + ": " + r.GetMessage(), At: timestamppb.New(e.cfg.Clock.Now())}
			for w := range ru.watchers {
				w.send(snap)
				if ru.ended() {
					w.close()
				}
			}
			if ru.ended() {
				ru.watchers = nil
			}
		}
		e.runs[r.GetId()] = ru
	}
	return nil
}

// New checks cfg and loads the stored rollouts; non-terminal ones carry on
// at the first Tick. Jobs that were in flight are not sent again: the engine
// waits for the agents to re-report them or for their progress deadline.
func New(cfg Config) (*Engine, error) {
	var missing []string
	if cfg.Store == nil {
		missing = append(missing, "Store")
	}
	if cfg.Dispatcher == nil {
		missing = append(missing, "Dispatcher")
	}
	if cfg.Fleet == nil {
		missing = append(missing, "Fleet")
	}
	if cfg.Packages == nil {
		missing = append(missing, "Packages")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("rollout engine: config is missing %v", missing)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TickInterval <= 0 {
		cfg.TickInterval = 500 * time.Millisecond
	}
	if cfg.ReconnectGrace == 0 {
		cfg.ReconnectGrace = 35 * time.Second
	}
	if cfg.DisconnectGrace == 0 {
		cfg.DisconnectGrace = 15 * time.Second
	}
	if cfg.PlanTimeout <= 0 {
		cfg.PlanTimeout = 2 * time.Minute
	}
	if cfg.FetchGrace <= 0 {
		cfg.FetchGrace = defaultFetchGrace
	}
	if cfg.NewID == nil {
		cfg.NewID = randomID
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger,
		started: cfg.Clock.Now(),
		runs:    map[string]*run{},
		plans:   map[string]*planWait{},

		healthyWaits: map[string]map[*run]struct{}{},
	}
	if err := e.loadGroups(); err != nil {
		return nil, err
	}
	stored, err := cfg.Store.Rollouts()
	if err != nil {
		return nil, fmt.Errorf("rollout engine: load rollouts: %w", err)
	}
	for _, r := range stored {
		ru, err := newRun(r)
		if err != nil {
			// A record this engine cannot read is kept for history but
			// not advanced.
			e.log.Error("stored rollout has an invalid strategy; it will not advance", "rollout", r.GetId(), "err", err)
			ru = &run{r: r, frozen: true}
		}
		switch r.GetState() {
		case stAborted, stRolling:
			ru.recancel = true
		}
		e.runs[r.GetId()] = ru
		if !ru.ended() {
			e.log.Info("resuming rollout", "rollout", r.GetId(), "package", r.GetPackageName()+"@"+r.GetPackageVersion(), "state", r.GetState().String())
		}
	}
	return e, nil
}

func randomID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "ro-" + hex.EncodeToString(b[:])
}

// Run advances rollouts every TickInterval until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.TickInterval)
	defer t.Stop()
	e.Tick(e.cfg.Clock.Now())
	for {
		select {
		case <-ctx.Done():
			e.mu.Lock()
			e.flushSaves(e.cfg.Clock.Now()) // the reports waiting for a save
			e.mu.Unlock()
			return nil
		case <-t.C:
			e.Tick(e.cfg.Clock.Now())
		}
	}
}

// Tick advances every rollout that has not ended to time now: deadlines,
// healthy periods, the sliding window, the canary gate, the end state.
func (e *Engine) Tick(now time.Time) {
	if e.leading() != nil {
		return
	}
	e.mu.Lock()
	fx := &e.queue
	ids := make([]string, 0, len(e.runs))
	for id, ru := range e.runs {
		if !ru.ended() && !ru.frozen {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	for _, id := range ids {
		ru := e.runs[id]
		e.settle(ru, now, fx)
		_ = e.commit(ru, now, fx) // logged; retried at the next tick
	}
	e.catchUpLocked(now, fx)
	e.mu.Unlock()
	e.drain()
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

// Get returns a copy of a rollout.
func (e *Engine) Get(id string) (*ferryv1.Rollout, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, ok := e.runs[id]
	if !ok {
		return nil, notFound(id)
	}
	return proto.Clone(ru.r).(*ferryv1.Rollout), nil
}

// NodeJob returns a copy of one node's record in a rollout, without
// copying the whole rollout: it is read for every job report and log chunk
// on the agents' streams.
func (e *Engine) NodeJob(rolloutID, nodeID string) (*ferryv1.NodeJob, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ru, ok := e.runs[rolloutID]
	if !ok {
		return nil, false
	}
	n := ru.node(nodeID)
	if n == nil {
		return nil, false
	}
	return proto.Clone(n).(*ferryv1.NodeJob), true
}

func notFound(id string) error {
	return fmt.Errorf("rollout %q: %w; list rollouts with `ferryctl rollout list`", id, ErrNotFound)
}

// List returns rollouts newest first, without their per-node records, only
// those of pkg when it is not empty, at most limit (default 50).
func (e *Engine) List(pkg string, limit int) []*ferryv1.Rollout {
	if limit <= 0 {
		limit = 50
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	var rs []*ferryv1.Rollout
	for _, ru := range e.runs {
		if pkg == "" || ru.r.GetPackageName() == pkg {
			rs = append(rs, ru.r)
		}
	}
	sortNewestFirst(rs)
	if len(rs) > limit {
		rs = rs[:limit]
	}
	out := make([]*ferryv1.Rollout, len(rs))
	for i, r := range rs {
		nodes := r.Nodes
		r.Nodes = nil
		out[i] = proto.Clone(r).(*ferryv1.Rollout)
		r.Nodes = nodes
	}
	return out
}

func sortNewestFirst(rs []*ferryv1.Rollout) {
	sort.Slice(rs, func(i, j int) bool {
		ti, tj := rs[i].GetCreatedAt().AsTime(), rs[j].GetCreatedAt().AsTime()
		if !ti.Equal(tj) {
			return ti.After(tj)
		}
		return rs[i].GetId() > rs[j].GetId()
	})
}

// Counts returns how many rollouts are in each state, for metrics.
func (e *Engine) Counts() map[ferryv1.RolloutState]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[ferryv1.RolloutState]int{}
	for _, ru := range e.runs {
		out[ru.r.GetState()]++
	}
	return out
}

// Progress is one rollout's node counts, for metrics.
type Progress struct {
	ID       string
	Package  string // name@version
	State    ferryv1.RolloutState
	Outcomes map[ferryv1.NodeOutcome]int
}

// Progress returns the node counts of every rollout that has not ended.
func (e *Engine) Progress() []Progress {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Progress
	for _, ru := range e.runs {
		if ru.ended() {
			continue
		}
		p := Progress{
			ID:       ru.r.GetId(),
			Package:  ru.r.GetPackageName() + "@" + ru.r.GetPackageVersion(),
			State:    ru.r.GetState(),
			Outcomes: map[ferryv1.NodeOutcome]int{},
		}
		for _, n := range ru.r.GetNodes() {
			p.Outcomes[n.GetOutcome()]++
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// auditEntry is the audit entry of an admin action, outcome "ok"; nil
// without an Auditor.
func (e *Engine) auditEntry(actor, action, target, detail string) *ferryv1.AuditEvent {
	if e.cfg.Auditor == nil {
		return nil
	}
	return &ferryv1.AuditEvent{At: timestamppb.New(e.cfg.Clock.Now()), Actor: actor, Action: action, Target: target, Outcome: "ok", Detail: detail}
}

// refused records an admin action that failed with err and changed
// nothing. An entry that cannot be written is logged: the action fails
// either way.
func (e *Engine) refused(ev *ferryv1.AuditEvent, err error) {
	if ev == nil {
		return
	}
	ev.Outcome = err.Error()
	if aerr := e.cfg.Auditor.AppendAudit(ev); aerr != nil {
		e.log.Error("write audit entry", "action", ev.GetAction(), "target", ev.GetTarget(), "err", aerr)
	}
}
