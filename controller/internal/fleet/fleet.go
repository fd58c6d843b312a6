// Package fleet is the controller's live view of its nodes: the enrolled
// records from the store joined with each agent's stream, heartbeats and
// gossip state. It owns the one stream per node over which jobs are sent.
package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// ErrNotConnected is returned when a job is sent to a node without a stream.
var ErrNotConnected = errors.New("node is not connected")

// ErrRemoved is returned for a node an admin removed.
var ErrRemoved = errors.New("node was removed")

// ErrNotEnrolled: no node of that ID is known here (with several
// controllers, it may have enrolled on another a moment ago: Reload).
var ErrNotEnrolled = errors.New("not enrolled")

// GossipView answers what gossip thinks of a member: "alive", "suspect",
// "dead", "left"; ok is false when gossip has never seen it.
type GossipView interface {
	State(name string) (state string, ok bool)
}

// Evaluator combines the signals into a node state and its reason.
type Evaluator func(now time.Time, s Signals) (ferryv1.NodeState, string)

// Signals are the inputs of a node's health verdict (the health package
// decides; the registry only gathers them).
type Signals = health.Signals

// Config configures a Registry.
type Config struct {
	Store             *store.Store
	Logger            *slog.Logger
	Now               func() time.Time
	HeartbeatInterval time.Duration
	Evaluate          Evaluator
	Gossip            GossipView // optional
}

// Registry is the fleet view.
type Registry struct {
	cfg Config

	mu sync.RWMutex
	// interval is what agents are told now (cfg.HeartbeatInterval until
	// SetHeartbeatInterval); until prevUntil, heartbeats are judged by the
	// longer of it and prev, the interval connected agents used before.
	interval, prev time.Duration
	prevUntil      time.Time

	nodes  map[string]*entry
	remote RemoteView // nil: one controller
	closed bool       // CloseAll was called: no new sessions
	cond   chan struct{}
}

type entry struct {
	rec           store.NodeRecord
	session       *Session
	everConnected bool
	left          bool
	lastHeartbeat time.Time
	hb            *ferryv1.Heartbeat
	facts         *ferryv1.Facts
	version       string
	addr          string
	installed     []*ferryv1.InstalledPackage

	// heartbeatsSince starts the node's current run of heartbeats, none
	// more than MaxHeartbeatGap intervals after the one before, across
	// stream reconnects (see HeartbeatsSince).
	heartbeatsSince time.Time

	// badPiece is what the last report of a corrupt piece the node served
	// to a peer said (NoteBadPiece), at badPieceAt.
	badPiece   string
	badPieceAt time.Time
}

// Session is one agent stream.
type Session struct {
	NodeID string
	Addr   string
	send   chan *ferryv1.ConnectResponse
	ctx    context.Context
	cancel context.CancelCauseFunc

	// GossipAddr is the gossip address this stream vouches for (see
	// GossipAddr), "" when the agent does not gossip.
	GossipAddr string
	// PeerAddr is the address of the agent's piece server this stream
	// vouches for, as GossipAddr ("" when it serves no pieces).
	PeerAddr string
	// codecs are the artifact encodings the agent advertised in its hello.
	codecs []string
	// Via is the controller that holds the agent's stream and relays it
	// to this one (package cluster); "" for a stream held here.
	Via string
}

// Outbox is the channel the stream's writer drains.
func (s *Session) Outbox() <-chan *ferryv1.ConnectResponse { return s.send }

// Done is closed when the session is replaced or the node removed.
func (s *Session) Done() <-chan struct{} { return s.ctx.Done() }

// Err says why the session ended.
func (s *Session) Err() error { return context.Cause(s.ctx) }

// New loads node records from the store.
func New(cfg Config) (*Registry, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.Evaluate == nil {
		return nil, errors.New("fleet: Config.Evaluate is required")
	}
	r := &Registry{cfg: cfg, interval: cfg.HeartbeatInterval, nodes: map[string]*entry{}, cond: make(chan struct{})}
	recs, err := cfg.Store.Nodes()
	if err != nil {
		return nil, fmt.Errorf("load nodes: %w", err)
	}
	for _, rec := range recs {
		r.nodes[rec.ID] = &entry{rec: rec, everConnected: !rec.LastConnectedAt.IsZero()}
	}
	return r, nil
}

// SetGossip attaches the gossip view once it is running.
func (r *Registry) SetGossip(g GossipView) {
	r.mu.Lock()
	r.cfg.Gossip = g
	r.mu.Unlock()
}

func (r *Registry) changed() {
	close(r.cond)
	r.cond = make(chan struct{})
}

// Changes returns a channel closed at the next change.
func (r *Registry) Changes() <-chan struct{} {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cond
}

// Added records a newly enrolled node.
func (r *Registry) Added(rec store.NodeRecord) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.nodes[rec.ID]; ok && old.session != nil {
		old.session.cancel(ErrRemoved)
	}
	r.nodes[rec.ID] = &entry{rec: rec}
	r.changed()
}

// CheckIdentity refuses agent certificates of removed or unknown nodes and
// certificates that are not the node's current one.
func (r *Registry) CheckIdentity(id pki.Identity, cert *x509.Certificate) error {
	if id.Role != pki.RoleAgent {
		return nil
	}
	// TLS checks expiry at the handshake only; a long-lived connection can
	// outlive its certificate.
	if now := r.cfg.Now(); now.After(cert.NotAfter) {
		return fmt.Errorf("the certificate of node %s expired at %s; reconnect with the renewed one, or re-enroll the node", id.Name, cert.NotAfter.UTC().Format(time.RFC3339))
	}
	r.mu.RLock()
	e, ok := r.nodes[id.Name]
	var removed bool
	var removedBy string
	var serials []string
	if ok {
		removed, removedBy, serials = e.rec.Removed, e.rec.RemovedBy, e.rec.CertSerials
	}
	r.mu.RUnlock()
	if !ok {
		return fmt.Errorf("node %s is not enrolled; enroll it with `ferry-agent enroll`", id.Name)
	}
	if removed {
		return fmt.Errorf("node %s was removed by %s; to bring it back, create a token and re-enroll it", id.Name, removedBy)
	}
	serial := cert.SerialNumber.String()
	if slices.Contains(serials, serial) {
		return nil
	}
	return fmt.Errorf("certificate %s is no longer valid for node %s (replaced by a renewal or re-enrollment)", serial, id.Name)
}

// Renewed records a node's new certificate. The certificate the renewal
// was made with stays accepted too, so the connection that asked (which
// still presents it) is not cut before the agent redials.
func (r *Registry) Renewed(nodeID string, cert *x509.Certificate, callerSerial string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.nodes[nodeID]
	if !ok || e.rec.Removed {
		return ErrRemoved
	}
	rec := e.rec
	rec.CertSerials = []string{cert.SerialNumber.String(), callerSerial}
	rec.CertExpiresAt = cert.NotAfter
	if err := r.cfg.Store.PutNode(rec, nil); err != nil {
		return err
	}
	e.rec = rec
	r.changed()
	return nil
}

// Attach opens a session for a node's new stream, closing any previous one.
func (r *Registry) Attach(ctx context.Context, nodeID, addr string, hello *ferryv1.AgentHello) (*Session, error) {
	s, err := r.attach(ctx, nodeID, addr, hello)
	if err != nil {
		return nil, err
	}
	// Recorded outside the registry lock and batched with other connects:
	// a reconnect storm of thousands of agents costs a few transactions.
	if err := r.cfg.Store.TouchNode(nodeID, r.cfg.Now(), s.GossipAddr); err != nil {
		r.cfg.Logger.Warn("record node connection", "node", nodeID, "err", err)
	}
	return s, nil
}

// AttachRelayed opens a session for a node whose stream another
// controller (via) holds and relays to this one; its outbox goes back
// through the relay.
func (r *Registry) AttachRelayed(ctx context.Context, via, nodeID, addr string, hello *ferryv1.AgentHello) (*Session, error) {
	s, err := r.attach(ctx, nodeID, addr, hello)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	s.Via = via
	r.mu.Unlock()
	return s, nil
}

// PeerAddr is where the node's piece server listens, as its open stream
// vouches for it; "" when the stream is not open here or the agent serves
// no pieces.
func (r *Registry) PeerAddr(nodeID string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.nodes[nodeID]; ok && e.session != nil {
		return e.session.PeerAddr
	}
	return ""
}

// BadPieceShownFor is how long the node's state reason names the last
// corrupt piece it served to a peer.
const BadPieceShownFor = 24 * time.Hour

// NoteBadPiece records that the node served a corrupt piece to a peer;
// what says so, for its state reason (health.Signals.BadPiece).
func (r *Registry) NoteBadPiece(nodeID, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.nodes[nodeID]; ok {
		e.badPiece, e.badPieceAt = what, r.cfg.Now()
		r.changed()
	}
}

// Via says whether the node's stream is up here and, for a relayed one,
// which controller holds it.
func (r *Registry) Via(nodeID string) (via string, connected bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.nodes[nodeID]
	if !ok || e.session == nil {
		return "", false
	}
	return e.session.Via, true
}

// RemoteView answers for a node whose stream is on another controller:
// its state there and that controller's ID (the session table, package
// cluster); ok is false when no other controller holds it.
type RemoteView func(nodeID string) (state ferryv1.NodeState, reason, controller string, ok bool)

// SetRemote attaches the other controllers' view.
func (r *Registry) SetRemote(v RemoteView) {
	r.mu.Lock()
	r.remote = v
	r.mu.Unlock()
}

// Reload rereads the node records (enrollments, removals, labels and
// certificates another controller wrote) and keeps each node's live state.
func (r *Registry) Reload() error {
	recs, err := r.cfg.Store.Nodes()
	if err != nil {
		return fmt.Errorf("load nodes: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := make(map[string]bool, len(recs))
	for _, rec := range recs {
		seen[rec.ID] = true
		e, ok := r.nodes[rec.ID]
		if !ok {
			r.nodes[rec.ID] = &entry{rec: rec, everConnected: !rec.LastConnectedAt.IsZero()}
			continue
		}
		if rec.LastConnectedAt.Before(e.rec.LastConnectedAt) {
			rec.LastConnectedAt = e.rec.LastConnectedAt
		}
		if e.session != nil {
			rec.GossipAddress = e.rec.GossipAddress
		}
		e.rec = rec
		if rec.Removed {
			r.disconnectLocked(e)
		}
	}
	for id, e := range r.nodes {
		if !seen[id] && e.session == nil {
			delete(r.nodes, id) // purged
		}
	}
	r.changed()
	return nil
}

func (r *Registry) attach(ctx context.Context, nodeID, addr string, hello *ferryv1.AgentHello) (*Session, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrShutdown
	}
	e, ok := r.nodes[nodeID]
	if !ok {
		return nil, fmt.Errorf("node %s is %w", nodeID, ErrNotEnrolled)
	}
	if e.rec.Removed {
		return nil, ErrRemoved
	}
	if e.session != nil {
		e.session.cancel(errors.New("replaced by a newer stream from the same node"))
	}
	e.rec.LastConnectedAt = r.cfg.Now()
	sctx, cancel := context.WithCancelCause(ctx)
	s := &Session{NodeID: nodeID, Addr: addr, GossipAddr: GossipAddr(addr, hello.GetGossipAddress()), PeerAddr: GossipAddr(addr, hello.GetPeerAddress()),
		send: make(chan *ferryv1.ConnectResponse, 64), ctx: sctx, cancel: cancel, codecs: hello.GetCodecs()}
	e.rec.GossipAddress = s.GossipAddr
	e.session = s
	e.everConnected = true
	e.left = false
	e.addr = addr
	r.heard(e, r.cfg.Now()) // opening the stream counts as a heartbeat
	e.version = hello.GetAgentVersion()
	if hello.GetFacts() != nil {
		e.facts = hello.GetFacts()
	}
	e.installed = hello.GetInstalled()
	r.changed()
	return s, nil
}

// ErrShutdown ends sessions when the controller stops.
var ErrShutdown = errors.New("controller is shutting down")

// CloseAll ends every session and refuses new ones (controller shutdown):
// agents reconnecting during the graceful stop would otherwise hold it.
func (r *Registry) CloseAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for _, e := range r.nodes {
		if e.session != nil {
			e.session.cancel(ErrShutdown)
		}
	}
}

// Detach closes a session; left marks a graceful shutdown.
func (r *Registry) Detach(s *Session, left bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.cancel(errors.New("stream closed"))
	e, ok := r.nodes[s.NodeID]
	if !ok || e.session != s {
		return
	}
	e.session = nil
	e.left = left
	r.changed()
}

// Heartbeat records a heartbeat and returns the age of the previous one.
func (r *Registry) Heartbeat(nodeID string, hb *ferryv1.Heartbeat) time.Duration {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.nodes[nodeID]
	if !ok {
		return 0
	}
	age := now.Sub(e.lastHeartbeat)
	wasFresh := age <= 3*r.judgedLocked(now)
	r.heard(e, now)
	e.hb = hb
	if hb.GetFacts() != nil {
		e.facts = hb.GetFacts()
	}
	if hb.GetAgentVersion() != "" {
		e.version = hb.GetAgentVersion()
	}
	e.installed = hb.GetInstalled()
	if !wasFresh {
		r.changed()
	}
	return age
}

// MaxHeartbeatGap is how many heartbeat intervals may separate two
// heartbeats that still count as continuous: enough for a stream that
// drops and is redialled at once (the agent reconnects within a second
// after an established session), not for one missed heartbeat more.
const MaxHeartbeatGap = 2

// heard records a heartbeat at now, starting a new run of heartbeats
// after a gap. Called with r.mu held.
func (r *Registry) heard(e *entry, now time.Time) {
	if !r.continuous(e, now) {
		e.heartbeatsSince = now
	}
	e.lastHeartbeat = now
}

// continuous: a heartbeat at now would continue the node's run.
func (r *Registry) continuous(e *entry, now time.Time) bool {
	return !e.lastHeartbeat.IsZero() && now.Sub(e.lastHeartbeat) <= MaxHeartbeatGap*r.judgedLocked(now)
}

// HeartbeatsSince is when the node's heartbeats became continuous: the
// first heartbeat (or stream opening) after a gap of more than
// MaxHeartbeatGap intervals. Stream reconnects in between do not matter.
// It is zero when the last heartbeat is already older than that gap, or
// there is none.
func (r *Registry) HeartbeatsSince(id string) time.Time {
	now := r.cfg.Now()
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.nodes[id]
	if !ok || !r.continuous(e, now) {
		return time.Time{}
	}
	return e.heartbeatsSince
}

// Dispatch queues a message on a node's stream.
func (r *Registry) Dispatch(nodeID string, msg *ferryv1.ConnectResponse) error {
	r.mu.RLock()
	e, ok := r.nodes[nodeID]
	var s *Session
	if ok {
		s = e.session
	}
	r.mu.RUnlock()
	if !ok {
		return fmt.Errorf("node %s is not enrolled", nodeID)
	}
	if s == nil {
		return fmt.Errorf("node %s: %w", nodeID, ErrNotConnected)
	}
	if s.ctx.Err() != nil { // select picks at random among ready cases
		return fmt.Errorf("node %s: %w", nodeID, ErrNotConnected)
	}
	select {
	case s.send <- msg:
		return nil
	case <-s.ctx.Done():
		return fmt.Errorf("node %s: %w", nodeID, ErrNotConnected)
	default:
		return fmt.Errorf("node %s: stream send queue is full", nodeID)
	}
}

// Remove revokes a node: its record is marked removed, its certificate is
// refused from now on and its stream is closed. audit is the removal's
// audit entry, written with the record: when it cannot be written, the
// node stays as it was.
func (r *Registry) Remove(nodeID, actor string, audit *ferryv1.AuditEvent) (*ferryv1.Node, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.entryLocked(nodeID)
	if err != nil {
		return nil, err
	}
	if e.rec.Removed {
		return nil, fmt.Errorf("node %s was already removed", nodeID)
	}
	rec := e.rec
	rec.Removed, rec.RemovedAt, rec.RemovedBy = true, r.cfg.Now(), actor
	if err := r.cfg.Store.PutNode(rec, audit); err != nil {
		return nil, err
	}
	e.rec = rec
	r.disconnectLocked(e)
	r.changed()
	return r.nodeLocked(e, r.cfg.Now()), nil
}

// Filter selects nodes.
type Filter struct {
	Group  string
	States []ferryv1.NodeState
	// HideRemoved leaves out removed nodes unless States names them.
	HideRemoved bool
}

func (f Filter) match(n *ferryv1.Node) bool { return f.Match(n.Group, n.State) }

// Match says whether a node of group in state passes the filter.
func (f Filter) Match(group string, state ferryv1.NodeState) bool {
	if f.Group != "" && group != f.Group {
		return false
	}
	if len(f.States) > 0 {
		return slices.Contains(f.States, state)
	}
	return !f.HideRemoved || state != ferryv1.NodeState_NODE_STATE_REMOVED
}

// List returns nodes matching f, sorted by ID.
//
// The entries are copied under the read lock and the messages built
// outside it, so listing 5,000 nodes (ferryctl nodes, /metrics, watchers)
// does not hold up heartbeats. Writers replace an entry's fields, never
// mutate what they point to, so the shallow copies stay consistent.
func (r *Registry) List(f Filter) []*ferryv1.Node {
	now := r.cfg.Now()
	r.mu.RLock()
	snap := make([]entry, 0, len(r.nodes))
	for _, e := range r.nodes {
		snap = append(snap, *e)
	}
	r.mu.RUnlock()
	out := make([]*ferryv1.Node, 0, len(snap))
	for i := range snap {
		n := r.nodeLocked(&snap[i], now)
		if f.match(n) {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// SupportsCodec reports whether the node's current stream advertised the
// artifact encoding codec (an agent too old to know any advertises none).
func (r *Registry) SupportsCodec(nodeID, codec string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.nodes[nodeID]
	if !ok || e.session == nil {
		return false
	}
	return slices.Contains(e.session.codecs, codec)
}

// Node returns one node.
func (r *Registry) Node(id string) (*ferryv1.Node, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.nodes[id]
	if !ok {
		return nil, false
	}
	return r.nodeLocked(e, r.cfg.Now()), true
}

// Match returns nodes of a rollout target: the group and every selector
// label must match. Labels are the ones admins granted (the join token's,
// those it allowed the node to ask for, `ferryctl node label`), never the
// facts a node reports.
func (r *Registry) Match(t *ferryv1.Target) []*ferryv1.Node {
	var out []*ferryv1.Node
	for _, n := range r.List(Filter{Group: t.GetGroup()}) {
		if n.State == ferryv1.NodeState_NODE_STATE_REMOVED {
			continue
		}
		ok := true
		for k, v := range t.GetSelector() {
			if n.Labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, n)
		}
	}
	return out
}

// HeartbeatInterval is the interval agents are told to use.
func (r *Registry) HeartbeatInterval() time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.interval
}

// SetHeartbeatInterval changes the interval agents are told (a config
// reload) and reports whether it changed; the caller tells the connected
// agents. They switch at their next heartbeat, so for three of the old
// intervals a node is judged by the longer of the two and a longer
// interval never makes a node look silent.
func (r *Registry) SetHeartbeatInterval(d time.Duration) bool {
	if d <= 0 {
		d = 5 * time.Second
	}
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if d == r.interval {
		return false
	}
	old := r.judgedLocked(now)
	r.prev, r.prevUntil = old, now.Add(3*old)
	r.interval = d
	r.changed() // verdicts may change with the interval
	return true
}

// judgedLocked is the interval heartbeats are judged by at now. Called
// with r.mu held.
func (r *Registry) judgedLocked(now time.Time) time.Duration {
	if now.Before(r.prevUntil) && r.prev > r.interval {
		return r.prev
	}
	return r.interval
}

func (r *Registry) signalsLocked(e *entry, now time.Time) Signals {
	sig := Signals{
		Removed:           e.rec.Removed,
		Left:              e.left,
		Connected:         e.session != nil,
		EverConnected:     e.everConnected,
		LastHeartbeat:     e.lastHeartbeat,
		HeartbeatInterval: r.judgedLocked(now),
		ClockSkew:         e.facts.GetClockSkew().AsDuration(),
	}
	if e.badPiece != "" && now.Sub(e.badPieceAt) < BadPieceShownFor {
		sig.BadPiece = e.badPiece
	}
	if r.cfg.Gossip != nil {
		sig.GossipState, _ = r.cfg.Gossip.State(e.rec.ID)
	}
	return sig
}

func (r *Registry) nodeLocked(e *entry, now time.Time) *ferryv1.Node {
	sig := r.signalsLocked(e, now)
	state, reason := r.cfg.Evaluate(now, sig)
	connected := e.session != nil
	if !connected && r.remote != nil && !e.rec.Removed {
		if st, why, ctl, ok := r.remote(e.rec.ID); ok {
			state, reason, connected = st, fmt.Sprintf("%s (its stream is on controller %s)", why, ctl), true
		}
	}
	// Labels are the admin's only (the record's and the group): facts are
	// what the node says and stay in Facts, out of reach of selectors.
	labels := map[string]string{"group": e.rec.Group}
	for k, v := range e.rec.Labels {
		labels[k] = v
	}
	n := &ferryv1.Node{
		Id:                   e.rec.ID,
		Group:                e.rec.Group,
		Labels:               labels,
		State:                state,
		StateReason:          reason,
		AgentVersion:         e.version,
		Address:              e.addr,
		Connected:            connected,
		Facts:                e.facts,
		EnrolledAt:           timestamppb.New(e.rec.EnrolledAt),
		Installed:            e.installed,
		GossipState:          sig.GossipState,
		CertificateExpiresAt: timestamppb.New(e.rec.CertExpiresAt),
	}
	if !e.lastHeartbeat.IsZero() {
		n.LastHeartbeat = timestamppb.New(e.lastHeartbeat)
	}
	if e.hb != nil {
		n.Uptime = durationpb.New(e.hb.GetUptime().AsDuration())
		n.Load1 = e.hb.GetLoad1()
		n.DiskFreeBytes = e.hb.GetDiskFreeBytes()
		n.Disks = e.hb.GetDisks()
		n.Drift = e.hb.GetDrift()
	}
	return n
}
