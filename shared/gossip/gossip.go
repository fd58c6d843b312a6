// Package gossip runs Ferry's SWIM membership (hashicorp/memberlist, with
// Lifeguard) for agents and the controller: one encrypted, labelled cluster
// whose view of each member (alive, suspect, dead, left) is the second health
// signal beside the agent's stream to the controller.
//
// memberlist reports joins, leaves and metadata updates through callbacks but
// says nothing of suspicion, and the *Node values it hands out never carry a
// member's real state (hashicorp/memberlist#266). Member therefore re-reads
// memberlist's own member table on every callback and a few times per probe
// interval, and keeps the last known state of every member in a table of its
// own, which outlives memberlist forgetting dead members. State answers from
// that table in O(1), so the controller can ask about each of thousands of
// nodes on every sweep.
package gossip

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// DefaultPort is the conventional gossip port (TCP and UDP).
const DefaultPort = 7946

// KeySize is the AES-256 key length NewKey returns.
const KeySize = 32

// Profiles select memberlist's timing presets.
const (
	ProfileLAN   = "lan"   // default: 1 s probes, 500 ms probe timeout
	ProfileLocal = "local" // loopback and tests: 200 ms probe timeout, faster gossip
	ProfileWAN   = "wan"   // 5 s probes, 3 s probe timeout
)

// Member states as State and MemberState report them.
const (
	StateAlive   = "alive"
	StateSuspect = "suspect"
	StateDead    = "dead"
	StateLeft    = "left"
)

// defaultEventBuffer bounds Events; see Member.Events.
const defaultEventBuffer = 1024

// Config describes one member. NodeName, Key and Label are required.
type Config struct {
	// NodeName is unique in the cluster: the node ID for agents,
	// "controller" (or "controller-<host>") for the controller.
	NodeName string
	// BindAddr defaults to 0.0.0.0. BindPort 0 picks a free port; use
	// DefaultPort for the conventional one.
	BindAddr string
	BindPort int
	// AdvertiseAddr and AdvertisePort are what peers dial; by default the
	// bound address (or a private IP when bound to 0.0.0.0) and port.
	AdvertiseAddr string
	AdvertisePort int
	// Key encrypts and authenticates every gossip packet (AES, 16, 24 or 32
	// bytes; NewKey makes 32). Agents receive it at enrollment and each new
	// one over their stream; RotateKey replaces it.
	Key []byte
	// Admit, when set, is asked about every alive message for another
	// member, with the member's name and "host:port": an error drops the
	// message, so this member never records that name alive at that
	// address. The controller admits only enrolled nodes at the address
	// their authenticated stream reported. memberlist calls it with its
	// member table locked: it must be quick and must not block.
	Admit func(name, addr string) error
	// Label is written into every packet and checked on receipt, so two
	// Ferry installations never merge even if they can reach each other.
	// Derive it from something per installation, e.g. the CA's fingerprint.
	Label string
	// Meta is announced to the cluster; its encoding must fit MetaMaxSize.
	Meta Meta
	// Profile is ProfileLAN (default), ProfileLocal or ProfileWAN.
	Profile string
	// Timing overrides; zero keeps the profile's value.
	ProbeInterval       time.Duration
	ProbeTimeout        time.Duration
	SuspicionMult       int
	GossipInterval      time.Duration
	PushPullInterval    time.Duration
	TCPTimeout          time.Duration
	GossipToTheDeadTime time.Duration
	// EventBuffer bounds the Events channel; zero means 1024.
	EventBuffer int
	// Logger receives memberlist's log output; nil discards it.
	Logger *slog.Logger
}

// MemberState is one member as this node last saw it.
type MemberState struct {
	Name  string
	Addr  string // host:port
	Meta  Meta
	State string // StateAlive, StateSuspect, StateDead or StateLeft
	// Since is when this node observed the state (local clock).
	Since time.Time
}

// EventKind says what changed.
type EventKind int

// Event kinds. EventJoin also covers a dead or left member coming back.
const (
	EventJoin    EventKind = iota + 1 // a member appeared or came back
	EventUpdate                       // a member's Meta changed
	EventSuspect                      // an alive member became suspect
	EventAlive                        // a suspect member refuted the suspicion
	EventDead                         // a member was declared dead
	EventLeft                         // a member left gracefully
)

func (k EventKind) String() string {
	switch k {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventSuspect:
		return "suspect"
	case EventAlive:
		return "alive"
	case EventDead:
		return "dead"
	case EventLeft:
		return "left"
	}
	return "EventKind(" + strconv.Itoa(int(k)) + ")"
}

// Event is one change of a member; Member is its state after the change.
type Event struct {
	Kind   EventKind
	Member MemberState
}

// Member is this process's membership in the cluster.
type Member struct {
	ml     *memberlist.Memberlist
	table  *nodeTable
	logger *slog.Logger
	meta   *metaDelegate
	wake   chan struct{}
	keys   *keySchedule

	mu      sync.Mutex
	members map[string]entry
	// forgotten holds members dropped by Forget, with the state change
	// they were forgotten at, until memberlist reports a newer one.
	forgotten map[string]time.Time
	events    chan Event
	dropped   uint64
	closed    bool // events is closed

	// life serialises Leave and Shutdown: memberlist panics on a Leave
	// after Shutdown.
	life     sync.Mutex
	shutdown bool
	stop     chan struct{}
	pollDone chan struct{}
}

// entry is one member in Member's table; rawMeta avoids decoding unchanged
// metadata on every sync.
type entry struct {
	MemberState
	rawMeta []byte
	change  time.Time // memberlist's StateChange
}

// NewKey returns a random gossip key of KeySize bytes.
func NewKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate gossip key: %w", err)
	}
	return key, nil
}

func (cfg Config) memberlistConfig() (*memberlist.Config, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("gossip: node name is empty; set it to the node ID (agents) or \"controller\"")
	}
	if err := checkKey(cfg.Key); err != nil {
		return nil, err
	}
	if cfg.Label == "" {
		return nil, errors.New("gossip: label is empty; set one per installation (e.g. from the CA fingerprint) so two installations never merge")
	}
	var mc *memberlist.Config
	switch cfg.Profile {
	case "", ProfileLAN:
		mc = memberlist.DefaultLANConfig()
	case ProfileLocal:
		mc = memberlist.DefaultLocalConfig()
	case ProfileWAN:
		mc = memberlist.DefaultWANConfig()
	default:
		return nil, fmt.Errorf("gossip: profile %q not known; use %q, %q or %q", cfg.Profile, ProfileLAN, ProfileLocal, ProfileWAN)
	}
	mc.Name = cfg.NodeName
	mc.BindAddr = "0.0.0.0"
	if cfg.BindAddr != "" {
		mc.BindAddr = cfg.BindAddr
	}
	mc.BindPort = cfg.BindPort
	mc.AdvertiseAddr = cfg.AdvertiseAddr
	mc.AdvertisePort = cfg.BindPort
	if cfg.AdvertisePort != 0 {
		mc.AdvertisePort = cfg.AdvertisePort
	}
	mc.SecretKey = cfg.Key
	mc.GossipVerifyIncoming = true
	mc.GossipVerifyOutgoing = true
	mc.Label = cfg.Label
	if len(mc.Label) > memberlist.LabelMaxSize {
		return nil, fmt.Errorf("gossip: label is %d bytes; memberlist allows %d", len(mc.Label), memberlist.LabelMaxSize)
	}
	setDuration(&mc.ProbeInterval, cfg.ProbeInterval)
	setDuration(&mc.ProbeTimeout, cfg.ProbeTimeout)
	setDuration(&mc.GossipInterval, cfg.GossipInterval)
	setDuration(&mc.PushPullInterval, cfg.PushPullInterval)
	setDuration(&mc.TCPTimeout, cfg.TCPTimeout)
	setDuration(&mc.GossipToTheDeadTime, cfg.GossipToTheDeadTime)
	if cfg.SuspicionMult > 0 {
		mc.SuspicionMult = cfg.SuspicionMult
	}
	if mc.GossipToTheDeadTime < 4*pollInterval(mc.ProbeInterval) {
		// Member must see a death before memberlist forgets the member.
		return nil, fmt.Errorf("gossip: gossip-to-the-dead time %s is too short for probe interval %s; make it at least %s",
			mc.GossipToTheDeadTime, mc.ProbeInterval, 4*pollInterval(mc.ProbeInterval))
	}
	if mc.ProbeTimeout >= mc.ProbeInterval {
		return nil, fmt.Errorf("gossip: probe timeout %s must be shorter than the probe interval %s", mc.ProbeTimeout, mc.ProbeInterval)
	}
	return mc, nil
}

func setDuration(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

// Start creates the member and starts listening. It joins no one: call Join
// with seed addresses.
func Start(cfg Config) (*Member, error) {
	mc, err := cfg.memberlistConfig()
	if err != nil {
		return nil, err
	}
	meta, err := cfg.Meta.Encode()
	if err != nil {
		return nil, fmt.Errorf("gossip: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	buf := cfg.EventBuffer
	if buf <= 0 {
		buf = defaultEventBuffer
	}
	keys, err := newKeySchedule(cfg.Key)
	if err != nil {
		return nil, err
	}
	wake := make(chan struct{}, 1)
	m := &Member{
		keys:      keys,
		logger:    logger,
		meta:      &metaDelegate{meta: meta},
		wake:      wake,
		members:   make(map[string]entry),
		forgotten: make(map[string]time.Time),
		events:    make(chan Event, buf),
		stop:      make(chan struct{}),
		pollDone:  make(chan struct{}),
	}
	mc.Logger = newStdLogger(logger)
	mc.Delegate = m.meta
	mc.Events = wakeDelegate{wake: wake}
	mc.Keyring = keys.ring // memberlist adds SecretKey to it as the primary
	if cfg.Admit != nil {
		mc.Alive = admitDelegate{self: cfg.NodeName, admit: cfg.Admit}
	}

	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("gossip: start member %q on %s: %w", cfg.NodeName, net.JoinHostPort(mc.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	table, err := newNodeTable(ml)
	if err != nil {
		_ = ml.Shutdown()
		return nil, err
	}
	m.ml, m.table = ml, table
	m.sync(nil)
	go m.poll(pollInterval(mc.ProbeInterval))
	return m, nil
}

// pollInterval is how often suspicion is looked for: twice per probe
// interval, since a suspicion lasts at least SuspicionMult probe intervals.
func pollInterval(probe time.Duration) time.Duration {
	return min(max(probe/2, 20*time.Millisecond), time.Second)
}

// Join contacts the seeds ("host:port") and merges with their cluster. It
// returns how many seeds answered; it makes one attempt and the caller retries.
func (m *Member) Join(seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, errors.New("gossip: join: no seed addresses")
	}
	n, err := m.ml.Join(seeds)
	if err != nil {
		return n, fmt.Errorf("gossip: join %v: %w (check the seeds are reachable and share this key and label)", seeds, err)
	}
	return n, nil
}

// Members returns every member this node knows of, dead and left ones
// included, in no particular order.
func (m *Member) Members() []MemberState {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]MemberState, 0, len(m.members))
	for _, e := range m.members {
		out = append(out, e.MemberState)
	}
	return out
}

// Member returns what this node knows of one member.
func (m *Member) Member(name string) (MemberState, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.members[name]
	return e.MemberState, ok
}

// State returns a member's last known state: StateAlive, StateSuspect,
// StateDead or StateLeft. ok is false for a name never seen.
func (m *Member) State(name string) (string, bool) {
	s, ok := m.Member(name)
	return s.State, ok
}

// Forget drops a member from the table (for a node an admin removed). It
// comes back only if gossip reports a newer state for it.
func (m *Member) Forget(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.members[name]; ok {
		m.forgotten[name] = e.change
		delete(m.members, name)
	}
}

// HealthScore is memberlist's awareness score: 0 is healthy, higher means
// this member is failing to meet the protocol's soft real-time needs (slow
// or lossy network, starved CPU) and has slowed its own probing.
func (m *Member) HealthScore() int {
	return m.ml.GetHealthScore()
}

// Events delivers membership changes. The channel is bounded and never
// blocks gossip: when the reader falls behind, events are dropped (counted
// by DroppedEvents), so a reader treats an event as a hint and reads State
// or Members for the truth. It is closed by Shutdown.
func (m *Member) Events() <-chan Event {
	return m.events
}

// DroppedEvents counts events dropped because the Events channel was full.
func (m *Member) DroppedEvents() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}

// Addr returns the advertised host:port peers use to reach this member.
func (m *Member) Addr() string {
	return m.ml.LocalNode().Address()
}

// Name returns this member's node name.
func (m *Member) Name() string {
	return m.ml.LocalNode().Name
}

// UpdateMeta announces new metadata (e.g. after the agent upgraded itself),
// waiting up to timeout for the broadcast.
func (m *Member) UpdateMeta(meta Meta, timeout time.Duration) error {
	buf, err := meta.Encode()
	if err != nil {
		return fmt.Errorf("gossip: %w", err)
	}
	m.meta.set(buf)
	if err := m.ml.UpdateNode(timeout); err != nil {
		return fmt.Errorf("gossip: update meta: %w", err)
	}
	return nil
}

// Leave tells the cluster this member is going away on purpose, so peers
// record it as left rather than dead. It waits up to timeout for the
// broadcast. Call Shutdown afterwards.
func (m *Member) Leave(timeout time.Duration) error {
	m.life.Lock()
	defer m.life.Unlock()
	if m.shutdown {
		return errors.New("gossip: leave after shutdown; call Leave before Shutdown")
	}
	if err := m.ml.Leave(timeout); err != nil {
		return fmt.Errorf("gossip: leave: %w", err)
	}
	return nil
}

// Shutdown stops gossiping without a goodbye; peers will find this member
// dead. It closes the Events channel. Calling it again does nothing.
func (m *Member) Shutdown() error {
	m.life.Lock()
	defer m.life.Unlock()
	if m.shutdown {
		return nil
	}
	m.shutdown = true
	m.keys.stop()
	close(m.stop)
	<-m.pollDone
	err := m.ml.Shutdown()
	m.mu.Lock()
	m.closed = true
	close(m.events)
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("gossip: shutdown: %w", err)
	}
	return nil
}

// poll re-reads memberlist's table when a callback fires and on a ticker,
// since suspicion and its refutation fire no callback.
func (m *Member) poll(every time.Duration) {
	defer close(m.pollDone)
	t := time.NewTicker(every)
	defer t.Stop()
	var buf []rawNode
	for {
		select {
		case <-m.stop:
			return
		case <-m.wake:
		case <-t.C:
		}
		buf = m.sync(buf)
	}
}

// sync reads memberlist's table and records every change, emitting events.
// Only the poll goroutine (and Start, before it) calls it.
func (m *Member) sync(buf []rawNode) []rawNode {
	buf = m.table.read(buf)
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range buf {
		m.observeLocked(&buf[i], now)
	}
	if len(m.forgotten) > 0 {
		seen := make(map[string]bool, len(buf))
		for i := range buf {
			seen[buf[i].name] = true
		}
		for name := range m.forgotten {
			if !seen[name] {
				delete(m.forgotten, name)
			}
		}
	}
	return buf
}

func stateName(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return StateAlive
	case memberlist.StateSuspect:
		return StateSuspect
	case memberlist.StateDead:
		return StateDead
	case memberlist.StateLeft:
		return StateLeft
	}
	return ""
}

func (m *Member) observeLocked(n *rawNode, now time.Time) {
	state := stateName(n.state)
	if state == "" {
		return
	}
	if at, ok := m.forgotten[n.name]; ok {
		if n.change.Equal(at) {
			return
		}
		delete(m.forgotten, n.name)
	}
	prev, known := m.members[n.name]
	if known && prev.State == state && prev.change.Equal(n.change) && bytes.Equal(prev.rawMeta, n.meta) {
		return
	}
	e := entry{
		MemberState: MemberState{
			Name:  n.name,
			Addr:  net.JoinHostPort(n.addr.String(), strconv.Itoa(int(n.port))),
			Meta:  prev.Meta,
			State: state,
			Since: n.change,
		},
		rawMeta: n.meta,
		change:  n.change,
	}
	if e.Since.IsZero() {
		e.Since = now
	}
	if !known || !bytes.Equal(prev.rawMeta, n.meta) {
		meta, err := DecodeMeta(n.meta)
		if err != nil {
			m.logger.Warn("gossip: member metadata not understood", "member", n.name, "err", err)
		}
		e.Meta = meta
	}
	m.members[n.name] = e
	if kind, ok := eventKind(prev.State, known, state, prev.rawMeta, n.meta); ok {
		m.emitLocked(Event{Kind: kind, Member: e.MemberState})
	}
}

// eventKind names the change from prev to state; ok is false when nothing
// a reader cares about changed (e.g. a refreshed incarnation).
func eventKind(prev string, known bool, state string, prevMeta, meta []byte) (EventKind, bool) {
	if !known {
		switch state {
		case StateDead:
			return EventDead, true
		case StateLeft:
			return EventLeft, true
		}
		return EventJoin, true
	}
	if prev == state {
		if !bytes.Equal(prevMeta, meta) {
			return EventUpdate, true
		}
		return 0, false
	}
	switch state {
	case StateSuspect:
		if prev == StateAlive {
			return EventSuspect, true
		}
		return EventJoin, true
	case StateAlive:
		if prev == StateSuspect {
			return EventAlive, true
		}
		return EventJoin, true
	case StateDead:
		return EventDead, true
	case StateLeft:
		return EventLeft, true
	}
	return 0, false
}

func (m *Member) emitLocked(e Event) {
	if m.closed {
		return
	}
	select {
	case m.events <- e:
	default:
		m.dropped++
	}
}
