package cluster

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

const testTTL = 2 * time.Second

// member is one controller's Cluster on the shared etcd, with its own
// client, as a controller process has.
type member struct {
	*Cluster
	cli   *clientv3.Client
	leads atomic.Int32 // how often lead was called
	stop  func()
}

func newMember(t *testing.T, eps []string, prefix, id string) *member {
	t.Helper()
	cli := etcdtest.Client(t, eps)
	c, err := New(Config{Client: cli, Prefix: prefix, ID: id, Addr: id + ".example:7443", TTL: testTTL})
	if err != nil {
		t.Fatal(err)
	}
	return &member{Cluster: c, cli: cli}
}

// start joins and runs m until the test ends (or m.stop).
func (m *member) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Join(ctx); err != nil {
		t.Fatalf("%s joins: %v", m.ID(), err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- m.Run(rctx, func(lctx context.Context) {
			m.leads.Add(1)
			<-lctx.Done()
		})
	}()
	stopped := false
	m.stop = func() {
		if stopped {
			return
		}
		stopped = true
		rcancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s Run: %v", m.ID(), err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s Run did not return within 10s of its end", m.ID())
		}
	}
	t.Cleanup(m.stop)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
	}
}

// A second controller with the ID of a running one is refused, naming the
// running one's address; once that one is gone the ID can join.
func TestJoinRefusesADuplicateID(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	a := newMember(t, eps, prefix, "dup")
	a.start(t)
	b := newMember(t, eps, prefix, "dup")
	b.cfg.Addr = "other.example:7443"
	b.cfg.TTL = time.Second // it waits two TTLs for the other to go
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := b.Join(ctx)
	if err == nil {
		t.Fatal("a second controller joined with the ID of a running one")
	}
	for _, want := range []string{`controller ID "dup" is in use by the running controller at dup.example:7443`, "give each controller its own --controller-id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("duplicate ID refused with %q; want it to say %q", err, want)
		}
	}
	a.stop() // revokes its lease: the ID is free at once
	if err := b.Join(ctx); err != nil {
		t.Errorf("join after the other controller with the ID stopped: %v", err)
	}
}

// Of two controllers one leads; the other knows which (with its address)
// and refuses leader-only writes naming it. The leader stops; the other
// is elected.
func TestElectionOneLeadsThenTheOtherTakesOver(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	a, b := newMember(t, eps, prefix, "a"), newMember(t, eps, prefix, "b")
	a.start(t)
	waitFor(t, "a to lead", a.Leading)
	b.start(t)
	waitFor(t, "b to see a lead", func() bool { l, ok := b.Leader(); return ok && l.ID == "a" })
	if l, _ := b.Leader(); l.Addr != "a.example:7443" {
		t.Errorf("b says the leader is at %q, want a.example:7443", l.Addr)
	}
	if b.Leading() {
		t.Fatal("both lead")
	}
	waitFor(t, "both members listed", func() bool { return len(b.Members()) == 2 })
	if o := b.Others(); len(o) != 1 || o[0].ID != "a" {
		t.Errorf("b's others: %v, want a", o)
	}
	_, err := b.Fence()
	var nl *NotLeaderError
	if !errors.As(err, &nl) || !strings.Contains(err.Error(), "controller b does not lead the controllers; a at a.example:7443 does: use that one") {
		t.Errorf("b's fence: %v; want a NotLeaderError naming a", err)
	}

	a.stop()
	waitFor(t, "b to lead after a stopped", b.Leading)
	if got := b.leads.Load(); got != 1 {
		t.Errorf("b's lead ran %d times, want 1", got)
	}
	if l, ok := b.Leader(); !ok || l.ID != "b" {
		t.Errorf("b says the leader is %v (%v), want b", l, ok)
	}
}

// The leader's fence holds while its election key is the one it won; a
// write fenced on it fails with store.ErrFenced once the key is another
// (deleted and won again: a new leader), and nothing is written.
func TestFenceFailsOnceTheLeaderKeyChanged(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	a := newMember(t, eps, prefix, "a")
	a.start(t)
	waitFor(t, "a to lead", a.Leading)
	s, err := store.OpenEtcd(a.cli, prefix+"/store")
	if err != nil {
		t.Fatal(err)
	}
	fenced := s.Fenced(a.Fence)
	exp := time.Now().Add(time.Hour)
	if err := fenced.PutToken(store.TokenRecord{ID: "tok001", Group: "web", ExpiresAt: exp}, nil); err != nil {
		t.Fatalf("write while a leads: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.mu.Lock()
	key, lease := a.leaderKey, a.sess.Lease()
	a.mu.Unlock()
	// The same key, created again: another revision, as after an election.
	if _, err := a.cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cli.Put(ctx, key, "a", clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	err = fenced.PutToken(store.TokenRecord{ID: "tok002", Group: "web", ExpiresAt: exp}, nil)
	if !errors.Is(err, store.ErrFenced) {
		t.Fatalf("write after the leader key changed: %v; want store.ErrFenced", err)
	}
	toks, err := s.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	if len(toks) != 1 || toks[0].ID != "tok001" {
		t.Errorf("tokens: %v; want tok001 only", toks)
	}
}

// The error of a write on a cut-off controller says what happened, that
// nothing changed, and where to go instead.
func TestCutOffErrorMessage(t *testing.T) {
	since := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("x", 3600))
	err := &CutOffError{ID: "c1", Since: since, Others: []Member{{ID: "c2", Addr: "10.0.0.2:7443"}, {ID: "c3", Addr: "10.0.0.3:7443"}}}
	if got, want := err.Error(), "controller c1 lost its connection to etcd at 2026-03-04T04:06:07Z; nothing was changed: use another controller: 10.0.0.2:7443, 10.0.0.3:7443"; got != want {
		t.Errorf("CutOffError:\n got %q\nwant %q", got, want)
	}
	alone := &CutOffError{ID: "c1", Since: since}
	if got, want := alone.Error(), "controller c1 lost its connection to etcd at 2026-03-04T04:06:07Z; nothing was changed: use another controller"; got != want {
		t.Errorf("CutOffError with no other controller known:\n got %q\nwant %q", got, want)
	}
	c, err2 := New(Config{Client: &clientv3.Client{}, ID: "c1"})
	if err2 != nil {
		t.Fatal(err2)
	}
	if err := c.CutOff(); err != nil {
		t.Errorf("CutOff before any loss: %v", err)
	}
}

// A controller publishes the streams it holds; every controller sees them
// in its session table. The same state again writes nothing; a node that
// moved to another controller keeps that one's record when the first
// unpublishes it.
func TestSessionTable(t *testing.T) {
	eps, prefix := etcdtest.Shared(t)
	a, b := newMember(t, eps, prefix, "a"), newMember(t, eps, prefix, "b")
	a.start(t)
	b.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to see n1 on a", func() bool {
		ns, ok := b.Session("n1")
		return ok && ns.GetControllerId() == "a" && ns.GetState() == ferryv1.NodeState_NODE_STATE_HEALTHY
	})
	key := prefix + "/sessions/n1"
	rev := func() int64 {
		r, err := a.cli.Get(ctx, key)
		if err != nil || len(r.Kvs) != 1 {
			t.Fatalf("get %s: %v %v", key, r, err)
		}
		return r.Kvs[0].ModRevision
	}
	before := rev()
	if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, ""); err != nil {
		t.Fatal(err)
	}
	if after := rev(); after != before {
		t.Errorf("publishing an unchanged state wrote the record again (revision %d -> %d)", before, after)
	}
	// The reasons the health evaluation gives carry the heartbeat's age,
	// new at every evaluation: only the ages changing is no change.
	if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, "stream up, heartbeat 0.2s old; gossip alive"); err != nil {
		t.Fatal(err)
	}
	before = rev()
	for _, age := range []string{"1.2s", "4.9s", "12s", "1m30s"} {
		if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, "stream up, heartbeat "+age+" old; gossip alive"); err != nil {
			t.Fatal(err)
		}
	}
	if after := rev(); after != before {
		t.Errorf("publishing the same reason with a newer heartbeat age wrote the record again (revision %d -> %d)", before, after)
	}
	if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, "stream up, heartbeat 2s old; gossip suspect: gossip-only problem, the stream is up"); err != nil {
		t.Fatal(err)
	}
	if after := rev(); after == before {
		t.Errorf("publishing a reason that changed beyond its ages wrote nothing (revision %d)", after)
	}
	if err := a.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_STALE, "no heartbeat for 3s"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b to see n1 stale", func() bool {
		ns, ok := b.Session("n1")
		return ok && ns.GetState() == ferryv1.NodeState_NODE_STATE_STALE && ns.GetStateReason() == "no heartbeat for 3s"
	})
	if p := a.Published(); len(p) != 1 || p["n1"] != ferryv1.NodeState_NODE_STATE_STALE {
		t.Errorf("a's published records: %v", p)
	}

	// n1 moves to b; a's stream ends after.
	if err := b.Publish(ctx, "n1", ferryv1.NodeState_NODE_STATE_HEALTHY, ""); err != nil {
		t.Fatal(err)
	}
	if err := a.Unpublish(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see n1 on b", func() bool { ns, ok := a.Session("n1"); return ok && ns.GetControllerId() == "b" })
	if len(a.Published()) != 0 {
		t.Errorf("a still keeps %v", a.Published())
	}
	if err := b.Unpublish(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n1's record gone", func() bool { _, ok := a.Session("n1"); return !ok })

	// A controller that stops takes its records with it (its lease).
	if err := b.Publish(ctx, "n2", ferryv1.NodeState_NODE_STATE_HEALTHY, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a to see n2", func() bool { _, ok := a.Session("n2"); return ok })
	b.stop()
	waitFor(t, "n2's record gone with b", func() bool { _, ok := a.Session("n2"); return !ok })
}
