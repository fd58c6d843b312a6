// Test fakes and the harness: a fake clock, store, fleet, dispatcher,
// packages and auditor, and the helpers tests drive an engine with.

package rollout

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
)

const (
	phDownloading = ferryv1.JobPhase_JOB_PHASE_DOWNLOADING
	phInstalling  = ferryv1.JobPhase_JOB_PHASE_INSTALLING
	phChecking    = ferryv1.JobPhase_JOB_PHASE_CHECKING
	phSucceeded   = ferryv1.JobPhase_JOB_PHASE_SUCCEEDED
	phUnchanged   = ferryv1.JobPhase_JOB_PHASE_UNCHANGED
	phFailed      = ferryv1.JobPhase_JOB_PHASE_FAILED

	actPause    = ferryv1.FailureAction_FAILURE_ACTION_PAUSE
	actAbort    = ferryv1.FailureAction_FAILURE_ACTION_ABORT
	actRollback = ferryv1.FailureAction_FAILURE_ACTION_ROLLBACK
)

// fakeStore keeps rollouts marshalled, as bbolt would, so nothing aliases.
type fakeStore struct {
	mu    sync.Mutex
	data  map[string][]byte
	saves int
	fail  error
	// afterSave, when set, runs after every successful save (with the
	// save count); the crash tests use it.
	afterSave func(n int)
	// audit receives the audit entries saved with a rollout, as the
	// controller's store writes both in one transaction.
	audit *fakeAuditor
}

func newFakeStore() *fakeStore { return &fakeStore{data: map[string][]byte{}} }

func (s *fakeStore) SaveRollout(r *ferryv1.Rollout, ev *ferryv1.AuditEvent) error {
	s.mu.Lock()
	if s.fail != nil {
		err := s.fail
		s.mu.Unlock()
		return err
	}
	b, err := proto.Marshal(r)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	if ev != nil {
		if err := s.audit.AppendAudit(ev); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.data[r.GetId()] = b
	s.saves++
	n, hook := s.saves, s.afterSave
	s.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return nil
}

func (s *fakeStore) Rollouts() ([]*ferryv1.Rollout, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*ferryv1.Rollout
	for _, b := range s.data {
		r := &ferryv1.Rollout{}
		if err := proto.Unmarshal(b, r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (s *fakeStore) get(id string) *ferryv1.Rollout {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := &ferryv1.Rollout{}
	if err := proto.Unmarshal(s.data[id], r); err != nil {
		panic(err)
	}
	return r
}

func (s *fakeStore) setFail(err error) {
	s.mu.Lock()
	s.fail = err
	s.mu.Unlock()
}

func (s *fakeStore) saveCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saves
}

// fakeHeartbeatGap is the fake fleet's MaxHeartbeatGap (two 5 s heartbeat
// intervals).
const fakeHeartbeatGap = 10 * time.Second

// fakeFleet: every node heartbeats at "now" while it is healthy and
// connected. A node set otherwise last heartbeated when it was set so; its
// run of heartbeats (HeartbeatsSince) survives a dropped stream for
// fakeHeartbeatGap, and ends at once when its stream is up but it is not
// healthy (its heartbeats stopped).
type fakeFleet struct {
	mu    sync.Mutex
	clock *clocktest.Clock
	nodes map[string]*ferryv1.Node
	runs  map[string]time.Time // when each node's run of heartbeats began
}

func (f *fakeFleet) add(id, group string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes[id] = &ferryv1.Node{Id: id, Group: group, Labels: map[string]string{"group": group}, State: ferryv1.NodeState_NODE_STATE_HEALTHY, Connected: true}
	if f.runs == nil {
		f.runs = map[string]time.Time{}
	}
	f.runs[id] = f.clock.Now()
}

func (f *fakeFleet) setState(id string, s ferryv1.NodeState, connected bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[id]
	switch {
	case s == ferryv1.NodeState_NODE_STATE_HEALTHY && connected:
		if f.heartbeatsSinceLocked(id).IsZero() {
			f.runs[id] = f.clock.Now()
		}
	case connected:
		f.runs[id] = time.Time{}
	}
	n.State, n.Connected = s, connected
	if s != ferryv1.NodeState_NODE_STATE_HEALTHY {
		n.LastHeartbeat = timestamppb.New(f.clock.Now())
		n.StateReason = "heartbeat stale"
	} else {
		n.StateReason = ""
	}
}

func (f *fakeFleet) setInstalled(id, pkg, version, previous string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[id]
	for _, p := range n.Installed {
		if p.Name == pkg {
			p.Version, p.PreviousVersion = version, previous
			return
		}
	}
	n.Installed = append(n.Installed, &ferryv1.InstalledPackage{Name: pkg, Version: version, PreviousVersion: previous})
}

func (f *fakeFleet) uninstall(id, pkg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := f.nodes[id]
	n.Installed = slices.DeleteFunc(n.Installed, func(p *ferryv1.InstalledPackage) bool { return p.Name == pkg })
}

func (f *fakeFleet) installed(id, pkg string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return installedVersion(f.nodes[id], pkg)
}

func (f *fakeFleet) view(n *ferryv1.Node) *ferryv1.Node {
	c := proto.Clone(n).(*ferryv1.Node)
	if reachable(c) {
		c.LastHeartbeat = timestamppb.New(f.clock.Now())
	}
	return c
}

func (f *fakeFleet) Match(t *ferryv1.Target) []*ferryv1.Node {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*ferryv1.Node
	for _, n := range f.nodes {
		if t.GetGroup() != "" && n.Group != t.GetGroup() {
			continue
		}
		ok := true
		for k, v := range t.GetSelector() {
			if n.Labels[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, f.view(n))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

func (f *fakeFleet) HeartbeatsSince(id string) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.heartbeatsSinceLocked(id)
}

func (f *fakeFleet) heartbeatsSinceLocked(id string) time.Time {
	n, ok := f.nodes[id]
	switch {
	case !ok:
		return time.Time{}
	case reachable(n):
		return f.runs[id]
	case n.LastHeartbeat != nil && f.clock.Now().Sub(n.LastHeartbeat.AsTime()) <= fakeHeartbeatGap:
		return f.runs[id]
	}
	return time.Time{}
}

func (f *fakeFleet) Node(id string) (*ferryv1.Node, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.nodes[id]
	if !ok {
		return nil, false
	}
	return f.view(n), true
}

var errNotConnected = errors.New("not connected")

// fakeDispatcher records deliveries; a node that is not connected in the
// fleet refuses jobs.
type fakeDispatcher struct {
	mu      sync.Mutex
	fleet   *fakeFleet
	jobs    []delivery
	cancels []cancelReq
	log     []string // "send <job>" and "cancel <job>", in call order
	fail    map[string]error
	// onJob, when set, is called (without locks) after each delivery.
	onJob func(nodeID string, job *ferryv1.Job)
}

type cancelReq struct{ nodeID, jobID string }

type delivery struct {
	node string
	job  *ferryv1.Job
}

func (d *fakeDispatcher) Dispatch(nodeID string, job *ferryv1.Job) error {
	d.mu.Lock()
	if err := d.fail[nodeID]; err != nil {
		d.mu.Unlock()
		return err
	}
	if n, ok := d.fleet.Node(nodeID); !ok || !n.Connected {
		d.mu.Unlock()
		return fmt.Errorf("node %s: %w", nodeID, errNotConnected)
	}
	d.jobs = append(d.jobs, delivery{nodeID, proto.Clone(job).(*ferryv1.Job)})
	d.log = append(d.log, "send "+job.Id)
	hook := d.onJob
	d.mu.Unlock()
	if hook != nil {
		hook(nodeID, job)
	}
	return nil
}

func (d *fakeDispatcher) Cancel(nodeID, jobID string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cancels = append(d.cancels, cancelReq{nodeID, jobID})
	d.log = append(d.log, "cancel "+jobID)
	return nil
}

func (d *fakeDispatcher) deliveries() []delivery {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]delivery(nil), d.jobs...)
}

func (d *fakeDispatcher) cancelled() []cancelReq {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]cancelReq(nil), d.cancels...)
}

// job returns the last job of a rollout delivered to a node.
func (d *fakeDispatcher) job(rolloutID, nodeID string) *ferryv1.Job {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.jobs) - 1; i >= 0; i-- {
		if d.jobs[i].node == nodeID && d.jobs[i].job.RolloutId == rolloutID {
			return d.jobs[i].job
		}
	}
	return nil
}

type fakePackages struct{ pkgs map[string]*ferryv1.Package }

func (p *fakePackages) Package(name, version string) (*ferryv1.Package, error) {
	pkg, ok := p.pkgs[name+"@"+version]
	if !ok {
		return nil, fmt.Errorf("package %s@%s: %w", name, version, ErrNotFound)
	}
	return pkg, nil
}

func (p *fakePackages) Packages(name string) ([]*ferryv1.Package, error) {
	var out []*ferryv1.Package
	for _, pkg := range p.pkgs {
		if pkg.Name == name {
			out = append(out, pkg)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

type fakeAuditor struct {
	mu     sync.Mutex
	events []string
	fail   error // every write fails with it
}

func (a *fakeAuditor) AppendAudit(ev *ferryv1.AuditEvent) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fail != nil {
		return a.fail
	}
	a.events = append(a.events, ev.Actor+" "+ev.Action+" "+ev.Target+" "+ev.Outcome)
	return nil
}

func (a *fakeAuditor) setFail(err error) {
	a.mu.Lock()
	a.fail = err
	a.mu.Unlock()
}

func (a *fakeAuditor) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.events...)
}

// harness wires an engine to fakes.
type harness struct {
	t     *testing.T
	grace time.Duration // Config.ReconnectGrace (default: none)
	clock *clocktest.Clock
	store *fakeStore
	fleet *fakeFleet
	disp  *fakeDispatcher
	pkgs  *fakePackages
	audit *fakeAuditor
	e     *Engine
	ids   int
	// groups is Config.Groups (default: none, catch-up off; catchup_test.go).
	groups *fakeGroups

	// disconnectGrace is Config.DisconnectGrace (default: none).
	disconnectGrace time.Duration
	// saveWindow and saveBatch are Config.SaveWindow and SaveBatch
	// (default: every report saved on its own).
	saveWindow time.Duration
	saveBatch  int
}

// newHarness enrolls nodes n00..n(count-1) in group "prod", all healthy, and
// stores go@1.20.2 and go@1.20.3.
func newHarness(t *testing.T, count int) *harness {
	t.Helper()
	clock := clocktest.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	fleet := &fakeFleet{clock: clock, nodes: map[string]*ferryv1.Node{}}
	for i := range count {
		fleet.add(fmt.Sprintf("n%02d", i), "prod")
	}
	h := &harness{
		t:     t,
		grace: -1,
		clock: clock,
		store: newFakeStore(),
		fleet: fleet,
		disp:  &fakeDispatcher{fleet: fleet, fail: map[string]error{}},
		pkgs: &fakePackages{pkgs: map[string]*ferryv1.Package{
			"go@1.20.2": {Name: "go", Version: "1.20.2", Artifact: &ferryv1.ArtifactRef{Digest: "sha256:aa", Name: "go1.20.2.linux-amd64.tar.gz"}},
			"go@1.20.3": {Name: "go", Version: "1.20.3", Artifact: &ferryv1.ArtifactRef{Digest: "sha256:bb", Name: "go1.20.3.linux-amd64.tar.gz"}},
			"tool@1.0":  {Name: "tool", Version: "1.0"},
		}},
		audit: &fakeAuditor{},
	}
	h.disconnectGrace = -1
	h.store.audit = h.audit
	h.e = h.newEngine()
	return h
}

func (h *harness) newEngine() *Engine {
	h.t.Helper()
	cfg := Config{
		Store:       h.store,
		Dispatcher:  h.disp,
		Fleet:       h.fleet,
		Packages:    h.pkgs,
		Clock:       h.clock,
		Auditor:     h.audit,
		PlanTimeout: 200 * time.Millisecond,
		// Tests of "unreachable when its turn comes" run right after the
		// engine starts; the grace has its own test.
		ReconnectGrace: h.grace,
		NewID: func() string {
			h.ids++
			return fmt.Sprintf("ro-%d", h.ids)
		},
		// Likewise for nodes whose stream dropped moments ago.
		DisconnectGrace: h.disconnectGrace,
		SaveWindow:      h.saveWindow,
		SaveBatch:       h.saveBatch,
	}
	if h.groups != nil {
		cfg.Groups, cfg.CatchUpEvery = h.groups, time.Nanosecond
	}
	e, err := New(cfg)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	return e
}

// restart replaces the engine with a new one over the same store, as a
// controller restart does.
func (h *harness) restart() { h.e = h.newEngine() }

type strat struct {
	canary       uint32
	noCanary     bool // explicit --canary 0
	auto         bool
	parallel     string
	failures     string
	onFailure    ferryv1.FailureAction
	deadline     time.Duration
	healthy      time.Duration
	healthyZero  bool // explicit --healthy-for 0s
	group        string
	selector     map[string]string
	pkg, version string
}

func (s strat) request() *ferryv1.CreateRolloutRequest {
	req := &ferryv1.CreateRolloutRequest{
		PackageName:    "go",
		PackageVersion: "1.20.3",
		Target:         &ferryv1.Target{Group: "prod", Selector: s.selector},
		Strategy: &ferryv1.Strategy{
			Canary:      canaryOf(s),
			AutoPromote: s.auto,
			MaxParallel: s.parallel,
			MaxFailures: s.failures,
			OnFailure:   s.onFailure,
		},
	}
	if s.group != "" {
		req.Target.Group = s.group
	}
	if s.pkg != "" {
		req.PackageName = s.pkg
	}
	if s.version != "" {
		req.PackageVersion = s.version
	}
	if s.deadline != 0 {
		req.Strategy.ProgressDeadline = durationpb.New(s.deadline)
	}
	if s.healthy != 0 || s.healthyZero {
		req.Strategy.HealthyFor = durationpb.New(s.healthy)
	}
	return req
}

func (h *harness) create(s strat) *ferryv1.Rollout {
	h.t.Helper()
	resp, err := h.e.Create(context.Background(), "admin/alice", s.request())
	if err != nil {
		h.t.Fatalf("Create: %v", err)
	}
	return resp.Rollout
}

func (h *harness) get(id string) *ferryv1.Rollout {
	h.t.Helper()
	r, err := h.e.Get(id)
	if err != nil {
		h.t.Fatalf("Get: %v", err)
	}
	return r
}

func nodeOf(r *ferryv1.Rollout, id string) *ferryv1.NodeJob {
	for _, n := range r.Nodes {
		if n.NodeId == id {
			return n
		}
	}
	return nil
}

func (h *harness) outcome(rolloutID, nodeID string) ferryv1.NodeOutcome {
	h.t.Helper()
	n := nodeOf(h.get(rolloutID), nodeID)
	if n == nil {
		h.t.Fatalf("rollout %s has no node %s", rolloutID, nodeID)
	}
	return n.Outcome
}

func (h *harness) state(id string) ferryv1.RolloutState {
	h.t.Helper()
	return h.get(id).State
}

// report sends an agent's update for the last job of the rollout the node
// received.
func (h *harness) report(rolloutID, nodeID string, phase ferryv1.JobPhase, msg string) {
	h.t.Helper()
	job := h.disp.job(rolloutID, nodeID)
	if job == nil {
		h.t.Fatalf("node %s got no job of rollout %s", nodeID, rolloutID)
	}
	u := &ferryv1.JobUpdate{JobId: job.Id, RolloutId: rolloutID, Phase: phase, Message: msg}
	if phase == ferryv1.JobPhase_JOB_PHASE_FAILED {
		u.FailedStep = "check: go version"
		u.Steps = []*ferryv1.StepResult{{Index: 3, Kind: "check", Name: "go version", Error: msg}}
	}
	h.e.HandleJobUpdate(nodeID, u)
	if phase == ferryv1.JobPhase_JOB_PHASE_SUCCEEDED {
		switch job.Kind {
		case kindInstall:
			h.fleet.setInstalled(nodeID, job.Package.Name, job.Package.Version, h.fleet.installed(nodeID, job.Package.Name))
		case kindRollback:
			h.fleet.setInstalled(nodeID, job.Package.Name, "1.20.2", "")
		case kindRemove:
			h.fleet.uninstall(nodeID, job.Package.Name)
		}
	}
}

func (h *harness) succeed(rolloutID, nodeID string) {
	h.t.Helper()
	h.report(rolloutID, nodeID, ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, "")
}

func (h *harness) fail(rolloutID, nodeID string) {
	h.t.Helper()
	h.report(rolloutID, nodeID, ferryv1.JobPhase_JOB_PHASE_FAILED, "exit status 1")
}

func (h *harness) tick(d time.Duration) {
	h.e.Tick(h.clock.Advance(d))
}

// inFlightNodes returns the nodes of a rollout with a job in flight.
func inFlightNodes(r *ferryv1.Rollout) []string {
	var out []string
	for _, n := range r.Nodes {
		if inFlight(n) {
			out = append(out, n.NodeId)
		}
	}
	return out
}

// sentTo returns the nodes that received jobs of a rollout, in order.
func (h *harness) sentTo(rolloutID string) []string {
	var out []string
	for _, d := range h.disp.deliveries() {
		if d.job.RolloutId == rolloutID {
			out = append(out, d.node)
		}
	}
	return out
}

func outcomes(r *ferryv1.Rollout) map[string]ferryv1.NodeOutcome {
	out := map[string]ferryv1.NodeOutcome{}
	for _, n := range r.Nodes {
		out[n.NodeId] = n.Outcome
	}
	return out
}

// canaryOf keeps the fakes' zero value meaning "unset"; noCanary asks for
// an explicit 0.
func canaryOf(s strat) *uint32 {
	switch {
	case s.noCanary:
		return proto.Uint32(0)
	case s.canary == 0:
		return nil
	}
	return proto.Uint32(s.canary)
}
