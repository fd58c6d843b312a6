package fleet

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"maps"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/clocktest"
	"github.com/ferrydeploy/ferry/shared/pki"
)

const (
	hb    = 5 * time.Second // the registry's heartbeat interval
	stale = health.StaleAfter * hb
)

var (
	t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

	healthy     = ferryv1.NodeState_NODE_STATE_HEALTHY
	staleState  = ferryv1.NodeState_NODE_STATE_STALE
	unreachable = ferryv1.NodeState_NODE_STATE_UNREACHABLE
	suspect     = ferryv1.NodeState_NODE_STATE_SUSPECT
	down        = ferryv1.NodeState_NODE_STATE_DOWN
	left        = ferryv1.NodeState_NODE_STATE_LEFT
	removed     = ferryv1.NodeState_NODE_STATE_REMOVED
	pending     = ferryv1.NodeState_NODE_STATE_PENDING
)

// fakeGossip is gossip's view of the members, as the test sets it.
type fakeGossip struct {
	mu     sync.Mutex
	states map[string]string
	forgot []string
}

func (g *fakeGossip) State(name string) (string, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s, ok := g.states[name]
	return s, ok
}

func (g *fakeGossip) Forget(name string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.states, name)
	g.forgot = append(g.forgot, name)
}

func (g *fakeGossip) set(name, state string) { //nolint:unparam // keyed by node like the gossip it fakes, so a test reads attach("n1"), set("n1", ...)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.states[name] = state
}

// testFleet is a registry on a fresh store, a fake clock and fake gossip.
type testFleet struct {
	*Registry
	t      *testing.T
	clock  *clocktest.Clock
	gossip *fakeGossip
	store  *store.Store
}

// enrolled is the record enrollment writes for a node.
func enrolled(id, group string) store.NodeRecord {
	return store.NodeRecord{ID: id, Group: group, EnrolledAt: t0.Add(-time.Hour), CertSerials: []string{"100"}, CertExpiresAt: t0.Add(24 * time.Hour)}
}

func newFleet(t *testing.T, nodes ...store.NodeRecord) *testFleet {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, n := range nodes {
		if err := st.PutNode(n, nil); err != nil {
			t.Fatal(err)
		}
	}
	f := &testFleet{t: t, clock: clocktest.New(t0), gossip: &fakeGossip{states: map[string]string{}}, store: st}
	f.Registry = f.open()
	return f
}

// open builds a registry on f's store, as a controller (re)start does.
func (f *testFleet) open() *Registry {
	f.t.Helper()
	r, err := New(Config{Store: f.store, Logger: slog.New(slog.DiscardHandler), Now: f.clock.Now,
		HeartbeatInterval: hb, Evaluate: health.Evaluate, Gossip: f.gossip})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

func (f *testFleet) attach(id string) *Session {
	f.t.Helper()
	s, err := f.Attach(context.Background(), id, "10.0.0.7:40000", &ferryv1.AgentHello{AgentVersion: "1.4.0",
		Facts: &ferryv1.Facts{Os: "linux", Arch: "amd64", Hostname: id + ".example"}})
	if err != nil {
		f.t.Fatalf("Attach(%s): %v", id, err)
	}
	return s
}

func (f *testFleet) node(id string) *ferryv1.Node {
	f.t.Helper()
	n, ok := f.Node(id)
	if !ok {
		f.t.Fatalf("node %s is not in the registry", id)
	}
	return n
}

func ids(nodes []*ferryv1.Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Id)
	}
	return out
}

// The state ferryctl nodes shows follows the stream, the heartbeat age by
// the controller's clock, and gossip.
func TestNodeState(t *testing.T) {
	tests := []struct {
		name       string
		steps      func(f *testFleet)
		want       ferryv1.NodeState
		wantReason string
	}{
		{"enrolled, never connected", func(f *testFleet) {}, pending, "never connected"},
		{"stream up, heartbeat at the stale limit", func(f *testFleet) {
			f.attach("n1")
			f.clock.Advance(stale)
		}, healthy, "stream up, heartbeat 15s old"},
		{"heartbeats keep a node healthy", func(f *testFleet) {
			f.attach("n1")
			for range 10 {
				f.clock.Advance(hb)
				f.Heartbeat("n1", &ferryv1.Heartbeat{})
			}
		}, healthy, "heartbeat 0s old"},
		{"stream up, heartbeat stale, gossip alive", func(f *testFleet) {
			f.attach("n1")
			f.gossip.set("n1", health.GossipAlive)
			f.clock.Advance(stale + time.Second)
		}, unreachable, "heartbeat 16s old (stale after 15s); gossip alive: partition"},
		{"stream up, heartbeat stale, gossip suspect", func(f *testFleet) {
			f.attach("n1")
			f.gossip.set("n1", health.GossipSuspect)
			f.clock.Advance(stale + time.Second)
		}, suspect, "gossip suspects it"},
		{"stream up, heartbeat stale, no gossip", func(f *testFleet) {
			f.attach("n1")
			f.clock.Advance(stale + time.Second)
		}, staleState, "not seen by gossip"},
		{"stream closed, gossip dead", func(f *testFleet) {
			f.Detach(f.attach("n1"), false)
			f.gossip.set("n1", health.GossipDead)
		}, down, "stream closed, last heartbeat 0s old; gossip says dead"},
		{"stream closed, gossip alive", func(f *testFleet) {
			f.Detach(f.attach("n1"), false)
			f.gossip.set("n1", health.GossipAlive)
		}, unreachable, "stream closed"},
		{"stream closed, gossip suspect", func(f *testFleet) {
			f.Detach(f.attach("n1"), false)
			f.gossip.set("n1", health.GossipSuspect)
		}, suspect, "stream closed"},
		{"stream up and fresh, gossip dead", func(f *testFleet) {
			f.attach("n1")
			f.gossip.set("n1", health.GossipDead)
		}, healthy, "gossip-only problem, the stream is up"},
		{"goodbye on the stream", func(f *testFleet) {
			f.Detach(f.attach("n1"), true)
			f.gossip.set("n1", health.GossipDead)
			f.clock.Advance(10 * stale)
		}, left, "agent said goodbye"},
		{"back after a goodbye", func(f *testFleet) {
			f.Detach(f.attach("n1"), true)
			f.attach("n1")
		}, healthy, "stream up"},
		{"down node reconnects", func(f *testFleet) {
			f.Detach(f.attach("n1"), false)
			f.gossip.set("n1", health.GossipDead)
			f.clock.Advance(time.Minute)
			f.attach("n1")
		}, healthy, "stream up, heartbeat 0s old"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, enrolled("n1", "prod"))
			tt.steps(f)
			n := f.node("n1")
			if n.State != tt.want || !strings.Contains(n.StateReason, tt.wantReason) {
				t.Errorf("n1 is %s (%q), want %s with a reason containing %q", n.State, n.StateReason, tt.want, tt.wantReason)
			}
		})
	}
}

// What a stream and its heartbeats tell about a node shows in its record.
func TestNodeShowsStreamAndHeartbeat(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	f.attach("n1")
	f.clock.Advance(7 * time.Second)
	age := f.Heartbeat("n1", &ferryv1.Heartbeat{AgentVersion: "1.5.0", Load1: 0.5, DiskFreeBytes: 1 << 30,
		Installed: []*ferryv1.InstalledPackage{{Name: "go", Version: "1.20.3"}},
		Disks:     []*ferryv1.DiskSpace{{Path: "/var/lib/ferry-agent", Uses: []string{"state dir"}, FreeBytes: 12 << 20}}})
	if age != 7*time.Second {
		t.Errorf("Heartbeat returned age %v, want the 7s since the stream opened", age)
	}
	n := f.node("n1")
	if !n.Connected || n.Address != "10.0.0.7:40000" {
		t.Errorf("connected %v at %q, want connected at 10.0.0.7:40000", n.Connected, n.Address)
	}
	if got := n.LastHeartbeat.AsTime(); !got.Equal(t0.Add(7 * time.Second)) {
		t.Errorf("last heartbeat at %v, want %v", got, t0.Add(7*time.Second))
	}
	if n.AgentVersion != "1.5.0" || n.Load1 != 0.5 || n.DiskFreeBytes != 1<<30 {
		t.Errorf("version %q, load %v, disk free %d; want the heartbeat's 1.5.0, 0.5, 1 GiB", n.AgentVersion, n.Load1, n.DiskFreeBytes)
	}
	if len(n.Installed) != 1 || n.Installed[0].Name != "go" || n.Installed[0].Version != "1.20.3" {
		t.Errorf("installed %v, want go 1.20.3", n.Installed)
	}
	if len(n.Disks) != 1 || n.Disks[0].Path != "/var/lib/ferry-agent" || n.Disks[0].FreeBytes != 12<<20 {
		t.Errorf("disks %v, want the heartbeat's state dir with 12 MiB free", n.Disks)
	}
	if f := n.Facts; f.GetOs() != "linux" || f.GetArch() != "amd64" || f.GetHostname() != "n1.example" {
		t.Errorf("facts %v, want the hello's linux, amd64, n1.example", f)
	}
	// Facts are what the node says: shown, never labels a selector matches.
	if want := map[string]string{"group": "prod"}; !maps.Equal(n.Labels, want) {
		t.Errorf("labels %v, want only %v (facts are not labels)", n.Labels, want)
	}
}

// A second stream from the same node (the agent reconnected before the
// controller noticed the first one died) replaces the first: jobs go to
// the new one, and the old one's late cleanup does not disconnect the node.
func TestSecondSessionReplacesFirst(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	first := f.attach("n1")
	second := f.attach("n1")

	select {
	case <-first.Done():
	default:
		t.Fatal("the first session is still open after a second stream attached")
	}
	if err := first.Err(); err == nil || !strings.Contains(err.Error(), "replaced by a newer stream") {
		t.Errorf("first session ended with %v, want it to say it was replaced", err)
	}
	select {
	case <-second.Done():
		t.Fatalf("the second session ended: %v", second.Err())
	default:
	}

	f.Detach(first, false) // the old stream's handler returns late
	if n := f.node("n1"); !n.Connected || n.State != healthy {
		t.Fatalf("after the replaced stream closed: connected %v, %s; want connected, healthy", n.Connected, n.State)
	}
	job := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: &ferryv1.Job{Id: "j1"}}}
	if err := f.Dispatch("n1", job); err != nil {
		t.Fatalf("Dispatch: %v", err)
	}
	select {
	case got := <-second.Outbox():
		if got.GetJob().GetId() != "j1" {
			t.Errorf("second stream got %v, want job j1", got)
		}
	default:
		t.Error("the job did not go to the second stream")
	}
	if len(first.Outbox()) != 0 {
		t.Error("the job went to the replaced stream")
	}
}

func TestDispatch(t *testing.T) {
	job := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: &ferryv1.Job{Id: "j1"}}}
	tests := []struct {
		name    string
		setup   func(f *testFleet)
		node    string
		wantErr string // "" for delivered
		wantIs  error
	}{
		{"connected node", func(f *testFleet) { f.attach("n1") }, "n1", "", nil},
		{"unknown node", func(f *testFleet) {}, "ghost", "node ghost is not enrolled", nil},
		{"never connected", func(f *testFleet) {}, "n1", "node n1: node is not connected", ErrNotConnected},
		{"stream closed", func(f *testFleet) { f.Detach(f.attach("n1"), false) }, "n1", "node n1: node is not connected", ErrNotConnected},
		{"session ended, not yet detached", func(f *testFleet) {
			f.attach("n1")
			f.CloseAll()
		}, "n1", "node n1: node is not connected", ErrNotConnected},
		{"send queue full", func(f *testFleet) {
			f.attach("n1")
			for {
				if err := f.Dispatch("n1", job); err != nil {
					return
				}
			}
		}, "n1", "node n1: stream send queue is full", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, enrolled("n1", "prod"))
			tt.setup(f)
			// Several sends: a send to an ended session must be refused
			// every time, not by the luck of a select.
			for range 20 {
				err := f.Dispatch(tt.node, job)
				if tt.wantErr == "" {
					if err != nil {
						t.Fatalf("Dispatch: %v, want delivered", err)
					}
					return
				}
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Dispatch: %v, want %q", err, tt.wantErr)
				}
				if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
					t.Fatalf("Dispatch: %v is not %v", err, tt.wantIs)
				}
			}
		})
	}
}

func TestList(t *testing.T) {
	web := enrolled("web1", "prod")
	web.Labels = map[string]string{"dc": "sh1"}
	f := newFleet(t, enrolled("db2", "prod"), web, enrolled("ci3", "staging"), enrolled("old4", "prod"))
	f.attach("web1")
	f.attach("ci3")
	if _, err := f.Remove("old4", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		filter Filter
		want   []string
	}{
		{"all, sorted by ID", Filter{}, []string{"ci3", "db2", "old4", "web1"}},
		{"group", Filter{Group: "prod"}, []string{"db2", "old4", "web1"}},
		{"state", Filter{States: []ferryv1.NodeState{healthy}}, []string{"ci3", "web1"}},
		{"several states", Filter{States: []ferryv1.NodeState{pending, removed}}, []string{"db2", "old4"}},
		{"group and state", Filter{Group: "prod", States: []ferryv1.NodeState{healthy}}, []string{"web1"}},
		{"no match", Filter{Group: "nowhere"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(f.List(tt.filter)); !slices.Equal(got, tt.want) {
				t.Errorf("List(%+v) = %v, want %v", tt.filter, got, tt.want)
			}
		})
	}
}

// A rollout targets nodes by group and the labels admins granted, never
// by the facts a node reports, and never removed nodes.
func TestMatch(t *testing.T) {
	web := enrolled("web1", "prod")
	web.Labels = map[string]string{"dc": "sh1", "tier": "web"}
	gone := enrolled("web2", "prod")
	gone.Labels = map[string]string{"dc": "sh1"}
	f := newFleet(t, web, gone, enrolled("db1", "prod"), enrolled("ci1", "staging"))
	f.attach("web1")
	f.attach("ci1")
	if _, err := f.Remove("web2", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		target *ferryv1.Target
		want   []string
	}{
		{"group", &ferryv1.Target{Group: "prod"}, []string{"db1", "web1"}},
		{"enrolled label", &ferryv1.Target{Group: "prod", Selector: map[string]string{"dc": "sh1"}}, []string{"web1"}},
		{"a fact is not a label", &ferryv1.Target{Selector: map[string]string{"os": "linux"}}, nil},
		{"every label must match", &ferryv1.Target{Selector: map[string]string{"tier": "web", "dc": "sh1"}}, []string{"web1"}},
		{"one label differs", &ferryv1.Target{Selector: map[string]string{"tier": "db", "dc": "sh1"}}, nil},
		{"no match", &ferryv1.Target{Selector: map[string]string{"dc": "fra"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(f.Match(tt.target)); !slices.Equal(got, tt.want) {
				t.Errorf("Match(%v) = %v, want %v", tt.target, got, tt.want)
			}
		})
	}
}

// Watchers (ferryctl nodes --watch, the rollout engine) wake on Changes for
// every change of what they show, and not for each fresh heartbeat.
func TestChanges(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(f *testFleet) *Session
		action func(f *testFleet, s *Session)
		want   bool
	}{
		{"stream opens", nil, func(f *testFleet, _ *Session) { f.attach("n1") }, true},
		{"stream closes", (*testFleet).attachN1, func(f *testFleet, s *Session) { f.Detach(s, false) }, true},
		{"agent says goodbye", (*testFleet).attachN1, func(f *testFleet, s *Session) { f.Detach(s, true) }, true},
		{"replaced stream closes late", func(f *testFleet) *Session {
			s := f.attach("n1")
			f.attach("n1")
			return s
		}, func(f *testFleet, s *Session) { f.Detach(s, false) }, false},
		{"fresh heartbeat", (*testFleet).attachN1, func(f *testFleet, _ *Session) {
			f.clock.Advance(hb)
			f.Heartbeat("n1", &ferryv1.Heartbeat{})
		}, false},
		{"heartbeat after a stale one", (*testFleet).attachN1, func(f *testFleet, _ *Session) {
			f.clock.Advance(stale + time.Second)
			f.Heartbeat("n1", &ferryv1.Heartbeat{})
		}, true},
		{"node enrolled", nil, func(f *testFleet, _ *Session) { f.Added(enrolled("n2", "prod")) }, true},
		{"node removed", nil, func(f *testFleet, _ *Session) {
			if _, err := f.Remove("n1", "admin/alice", nil); err != nil {
				f.t.Fatal(err)
			}
		}, true},
		{"certificate renewed", nil, func(f *testFleet, _ *Session) {
			if err := f.Renewed("n1", &x509.Certificate{SerialNumber: big.NewInt(101), NotAfter: t0.Add(48 * time.Hour)}, "100"); err != nil {
				f.t.Fatal(err)
			}
		}, true},
		{"job dispatched", (*testFleet).attachN1, func(f *testFleet, _ *Session) {
			if err := f.Dispatch("n1", &ferryv1.ConnectResponse{}); err != nil {
				f.t.Fatal(err)
			}
		}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFleet(t, enrolled("n1", "prod"))
			var s *Session
			if tt.setup != nil {
				s = tt.setup(f)
			}
			ch := f.Changes()
			tt.action(f, s)
			got := false
			select {
			case <-ch:
				got = true
			default:
			}
			if got != tt.want {
				t.Errorf("change signalled: %v, want %v", got, tt.want)
			}
			if got {
				select {
				case <-f.Changes():
					t.Error("the channel after a change is already closed; watchers would spin")
				default:
				}
			}
		})
	}
}

func (f *testFleet) attachN1() *Session { return f.attach("n1") }

// Removing a node closes its stream, persists the removal, makes gossip
// forget it, and refuses it from then on, with a message saying how to
// bring it back.
func TestRemove(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"))
	s := f.attach("n1")
	f.gossip.set("n1", health.GossipAlive)
	f.clock.Advance(time.Minute)

	n, err := f.Remove("n1", "admin/alice", nil)
	if err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if n.State != removed || n.Connected {
		t.Errorf("Remove returned a node %s, connected %v; want removed, not connected", n.State, n.Connected)
	}
	select {
	case <-s.Done():
		if !errors.Is(s.Err(), ErrRemoved) {
			t.Errorf("stream ended with %v, want %v", s.Err(), ErrRemoved)
		}
	default:
		t.Error("the removed node's stream is still open")
	}
	if !slices.Equal(f.gossip.forgot, []string{"n1"}) {
		t.Errorf("gossip forgot %v, want [n1]", f.gossip.forgot)
	}
	if _, err := f.Attach(context.Background(), "n1", "10.0.0.7:40001", &ferryv1.AgentHello{}); !errors.Is(err, ErrRemoved) {
		t.Errorf("Attach after removal: %v, want %v", err, ErrRemoved)
	}
	if err := f.Dispatch("n1", &ferryv1.ConnectResponse{}); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Dispatch after removal: %v, want %v", err, ErrNotConnected)
	}
	if n := f.node("n2"); n.State != pending {
		t.Errorf("the other node is %s, want still pending", n.State)
	}

	// A restarted controller still knows.
	again := f.open()
	n, _ = again.Node("n1")
	if n.State != removed {
		t.Errorf("after a restart n1 is %s, want removed", n.State)
	}
	recs, err := f.store.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	if r := recs[0]; !r.Removed || r.RemovedBy != "admin/alice" || !r.RemovedAt.Equal(t0.Add(time.Minute)) {
		t.Errorf("stored record: removed %v by %q at %v; want removed by admin/alice at %v", r.Removed, r.RemovedBy, r.RemovedAt, t0.Add(time.Minute))
	}

	tests := []struct {
		name, node, want string
		wantIs           error
	}{
		{"twice", "n1", "node n1 was already removed", nil},
		{"unknown node", "ghost", "node \"ghost\": not found; list nodes with `ferryctl nodes`", store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.Remove(tt.node, "admin/alice", nil)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Remove(%s): %v, want %q", tt.node, err, tt.want)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Remove(%s): %v is not %v", tt.node, err, tt.wantIs)
			}
		})
	}
}

// Enrolling a node again under the same ID ends the old identity's stream
// and starts the node over as pending.
func TestAddedReplacesOldEnrollment(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	s := f.attach("n1")
	f.Added(enrolled("n1", "staging"))
	if !errors.Is(s.Err(), ErrRemoved) {
		t.Errorf("old stream: %v, want ended with %v", s.Err(), ErrRemoved)
	}
	if n := f.node("n1"); n.State != pending || n.Group != "staging" {
		t.Errorf("re-enrolled n1 is %s in %q, want pending in staging", n.State, n.Group)
	}
}

// Nodes that connected before a controller restart show as stale, not as
// never connected, until they are back.
func TestRestartRemembersConnectedNodes(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"))
	f.attach("n1")
	restarted := f.open()
	tests := []struct {
		node string
		want ferryv1.NodeState
	}{
		{"n1", staleState},
		{"n2", pending},
	}
	for _, tt := range tests {
		t.Run(tt.node, func(t *testing.T) {
			if n, _ := restarted.Node(tt.node); n.State != tt.want {
				t.Errorf("%s after a restart is %s (%s), want %s", tt.node, n.State, n.StateReason, tt.want)
			}
		})
	}
}

// A controller shutting down ends every stream and accepts no new one, so
// reconnecting agents do not hold up the graceful stop.
func TestCloseAll(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"))
	s1, s2 := f.attach("n1"), f.attach("n2")
	f.CloseAll()
	for _, s := range []*Session{s1, s2} {
		if !errors.Is(s.Err(), ErrShutdown) {
			t.Errorf("stream of %s: %v, want ended with %v", s.NodeID, s.Err(), ErrShutdown)
		}
	}
	if _, err := f.Attach(context.Background(), "n1", "10.0.0.7:40001", &ferryv1.AgentHello{}); !errors.Is(err, ErrShutdown) {
		t.Errorf("Attach during shutdown: %v, want %v", err, ErrShutdown)
	}
}

func TestCheckIdentity(t *testing.T) {
	gone := enrolled("gone", "prod")
	gone.Removed, gone.RemovedBy = true, "admin/alice"
	f := newFleet(t, enrolled("n1", "prod"), gone, enrolled("renewed", "prod"))
	if err := f.Renewed("renewed", &x509.Certificate{SerialNumber: big.NewInt(101), NotAfter: t0.Add(48 * time.Hour)}, "100"); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Hour)
	cert := func(serial int64, notAfter time.Time) *x509.Certificate {
		return &x509.Certificate{SerialNumber: big.NewInt(serial), NotAfter: notAfter}
	}
	agent := func(name string) pki.Identity { return pki.Identity{Role: pki.RoleAgent, Name: name} }
	valid := t0.Add(24 * time.Hour)
	tests := []struct {
		name string
		id   pki.Identity
		cert *x509.Certificate
		want string // "" for accepted
	}{
		{"current certificate", agent("n1"), cert(100, valid), ""},
		{"renewed certificate", agent("renewed"), cert(101, valid), ""},
		{"certificate the renewal was made with", agent("renewed"), cert(100, valid), ""},
		{"admin", pki.Identity{Role: pki.RoleAdmin, Name: "alice"}, cert(5, valid), ""},
		{"expired during a long connection", agent("n1"), cert(100, t0.Add(30*time.Minute)),
			"the certificate of node n1 expired at 2025-03-01T12:30:00Z; reconnect with the renewed one, or re-enroll the node"},
		{"not enrolled", agent("ghost"), cert(100, valid), "node ghost is not enrolled; enroll it with `ferry-agent enroll`"},
		{"removed", agent("gone"), cert(100, valid), "node gone was removed by admin/alice; to bring it back, create a token and re-enroll it"},
		{"replaced certificate", agent("n1"), cert(99, valid), "certificate 99 is no longer valid for node n1 (replaced by a renewal or re-enrollment)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.CheckIdentity(tt.id, tt.cert)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckIdentity: %v, want accepted", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Errorf("CheckIdentity: %v, want %q", err, tt.want)
			}
		})
	}
}

// A renewal is stored: a restarted controller accepts the new certificate
// and shows its expiry.
func TestRenewedIsStored(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("gone", "prod"))
	expires := t0.Add(48 * time.Hour)
	if err := f.Renewed("n1", &x509.Certificate{SerialNumber: big.NewInt(101), NotAfter: expires}, "100"); err != nil {
		t.Fatal(err)
	}
	restarted := f.open()
	if err := restarted.CheckIdentity(pki.Identity{Role: pki.RoleAgent, Name: "n1"}, &x509.Certificate{SerialNumber: big.NewInt(101), NotAfter: expires}); err != nil {
		t.Errorf("renewed certificate after a restart: %v", err)
	}
	if n, _ := restarted.Node("n1"); !n.CertificateExpiresAt.AsTime().Equal(expires) {
		t.Errorf("certificate expires at %v, want %v", n.CertificateExpiresAt.AsTime(), expires)
	}
	if _, err := f.Remove("gone", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := f.Renewed("gone", &x509.Certificate{SerialNumber: big.NewInt(102), NotAfter: expires}, "100"); !errors.Is(err, ErrRemoved) {
		t.Errorf("renewal of a removed node: %v, want %v", err, ErrRemoved)
	}
}

// HeartbeatsSince follows the node's heartbeats, not its stream: a stream
// that drops and is redialled within MaxHeartbeatGap intervals keeps the
// run going; a longer silence ends it at once and the next heartbeat
// starts a new one.
func TestHeartbeatsSince(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"))
	beat := func() { f.Heartbeat("n1", &ferryv1.Heartbeat{}) }
	step := func(d time.Duration) { f.clock.Advance(d) }
	want := func(what string, at time.Time) {
		t.Helper()
		if got := f.HeartbeatsSince("n1"); !got.Equal(at) {
			t.Errorf("%s: HeartbeatsSince = %v, want %v", what, got, at)
		}
	}
	want("never connected", time.Time{})
	if got := f.HeartbeatsSince("nobody"); !got.IsZero() {
		t.Errorf("unknown node: HeartbeatsSince = %v, want zero", got)
	}

	s := f.attach("n1") // t0: opening the stream counts
	want("stream opened", t0)
	for range 4 {
		step(hb)
		beat()
	}
	want("heartbeats every interval", t0)

	// The link resets at t0+22s; the agent is back at t0+24s, 4s after
	// its last heartbeat.
	step(2 * time.Second)
	f.Detach(s, false)
	step(time.Second)
	want("stream down, last heartbeat 3s old", t0)
	s = f.attach("n1")
	want("reconnected within the gap", t0)
	step(hb)
	beat()
	want("after the reconnect", t0)

	// Then silence past the gap, stream up or not.
	step(MaxHeartbeatGap*hb + time.Second)
	want("silent for more than the gap", time.Time{})
	beat()
	want("heartbeats again", f.clock.Now())
	run := f.clock.Now()

	// A reconnect that takes longer than the gap also starts a new run.
	f.Detach(s, false)
	step(MaxHeartbeatGap*hb + time.Second)
	f.attach("n1")
	if got := f.HeartbeatsSince("n1"); !got.Equal(f.clock.Now()) || got.Equal(run) {
		t.Errorf("after a slow reconnect: HeartbeatsSince = %v, want the reconnect at %v", got, f.clock.Now())
	}
}
