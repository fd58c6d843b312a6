package fleettest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	"github.com/ferrydeploy/ferry/controller/controller"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// clusterTTL is the controllers' lease in these tests: failover within
// about this long.
const clusterTTL = 2 * time.Second

// addController starts another controller on the fleet's etcd store, with
// the installation's CA copied into its own data dir (the documented join
// step). mods change its configuration (a copy of the first controller's).
func (f *fleet) addController(id string, mods ...func(*controller.Config)) *peer {
	f.t.Helper()
	dir := filepath.Join(f.dir, "controller-"+id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		f.t.Fatal(err)
	}
	for _, name := range []string{"ca.crt", "ca.key", "gossip.key"} {
		data, err := os.ReadFile(filepath.Join(f.cfg.DataDir, name))
		if err != nil {
			f.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			f.t.Fatal(err)
		}
	}
	cfg := f.cfg
	cfg.DataDir, cfg.GRPCAddr, cfg.HTTPAddr, cfg.ControllerID = dir, "127.0.0.1:0", "127.0.0.1:0", id
	cfg.Join = true
	for _, mod := range mods {
		mod(&cfg)
	}
	ctl, err := controller.New(cfg)
	if err != nil {
		f.t.Fatalf("start controller %s: %v", id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &peer{t: f.t, ctl: ctl, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- ctl.Run(ctx) }()
	f.t.Cleanup(p.stop)
	tlsConf, err := ctl.AdminTLS()
	if err != nil {
		f.t.Fatal(err)
	}
	if p.admin, err = grpc.NewClient(ctl.GRPCAddr(), rpc.DialOptions(tlsConf)...); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { p.admin.Close() })
	return p
}

func getRollout(admin *grpc.ClientConn, id string) (*ferryv1.Rollout, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := ferryv1.NewRolloutServiceClient(admin).GetRollout(ctx, &ferryv1.GetRolloutRequest{Id: id})
	return resp.GetRollout(), err
}

func doneNodes(r *ferryv1.Rollout) int {
	n := 0
	for _, nj := range r.GetNodes() {
		if nj.GetOutcome() == ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED {
			n++
		}
	}
	return n
}

// Three controllers share one etcd; agents are spread over them. The
// leader stops mid-rollout; another controller is elected, takes the
// rollout over and finishes it, and every node installed exactly once
// (the package's check appends a line per run to one file).
func TestClusterLeaderStopsMidRollout(t *testing.T) {
	eps, _ := etcdtest.Start(t)
	f := newFleet(t, func(c *controller.Config) {
		c.Store.Backend = controller.StoreEtcd
		c.Store.Etcd.Endpoints = eps
		c.ControllerID = "c1"
		c.ClusterTTL = clusterTTL
	})
	c2, c3 := f.addController("c2"), f.addController("c3")
	addrs := []string{f.ctl.GRPCAddr(), c2.ctl.GRPCAddr(), c3.ctl.GRPCAddr()}

	tok := f.token("prod", 4)
	ids := []string{"k1", "k2", "k3", "k4"}
	for i, id := range ids {
		a := f.enroll(id, tok)
		// Each agent prefers another controller first.
		order := []string{addrs[i%3], addrs[(i+1)%3], addrs[(i+2)%3]}
		f.startWith(a, func(c *agent.Config) { c.Controllers = order })
	}
	for _, id := range ids {
		waitNode(t, f.admin, id, func(n *ferryv1.Node) bool { return n.GetState() == healthy })
	}
	runs := filepath.Join(f.dir, "installs")
	check := `echo "$MOTD_VERSION" >> ` + runs + `; sleep 0.5; echo "$MOTD_VERSION"`
	f.apply(motdPackage("1.0", check))

	strategy := &ferryv1.Strategy{Canary: proto.Uint32(1), AutoPromote: true, MaxParallel: "1", HealthyFor: durationpb.New(200 * time.Millisecond), ProgressDeadline: durationpb.New(60 * time.Second)}
	var resp *ferryv1.CreateRolloutResponse
	var err error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		// c1 started first and leads once its election settles.
		resp, err = ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(context.Background(), &ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "prod"}, Strategy: strategy})
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("create rollout on c1: %v", err)
	}
	id := resp.GetRollout().GetId()
	// The rollout is under way (one node done, others not) when c1 stops.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, err := getRollout(f.admin, id)
		if err == nil && doneNodes(r) >= 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s: no node done within 20s: %v %v", id, r, err)
		}
	}
	before, _ := getRollout(c2.admin, id)
	f.stopController()
	stopped := time.Now()

	// Another controller leads and the rollout goes on there.
	var progressed time.Duration
	var last *ferryv1.Rollout
	for deadline := time.Now().Add(40 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r, err := getRollout(c2.admin, id)
		if err != nil {
			continue
		}
		last = r
		if progressed == 0 && doneNodes(r) > doneNodes(before) {
			progressed = time.Since(stopped)
		}
		if r.GetState() == ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
			break
		}
	}
	if last.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout %s after the leader stopped: %s: %s; nodes %v", id, last.GetState(), last.GetMessage(), last.GetNodes())
	}
	t.Logf("leader stopped; the rollout progressed on the new leader %v later and ended %v later", progressed.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))
	data, err := os.ReadFile(runs)
	if err != nil {
		t.Fatal(err)
	}
	if got := bytes.Count(data, []byte("\n")); got != len(ids) {
		t.Errorf("the package's check ran %d times over %d nodes, want once per node:\n%s", got, len(ids), data)
	}
	for _, nid := range ids {
		if b, err := os.ReadFile(filepath.Join(f.dir, "roots", nid, "etc/motd")); err != nil || string(b) != "welcome to 1.0\n" {
			t.Errorf("%s: /etc/motd = %q, %v", nid, b, err)
		}
	}
}

func clusterFleet(t *testing.T, endpoints []string) *fleet {
	return newFleet(t, func(c *controller.Config) {
		c.Store.Backend = controller.StoreEtcd
		c.Store.Etcd.Endpoints = endpoints
		c.ControllerID = "c1"
		c.ClusterTTL = clusterTTL
	})
}

// Every controller shows each node's state as the controller holding its
// stream sees it (the session table; a follower names that controller).
// The controller an agent is on stops; the agent moves to another and
// every controller left sees it healthy.
func TestClusterMergedHealthView(t *testing.T) {
	eps, _ := etcdtest.Start(t)
	f := clusterFleet(t, eps)
	c2, c3 := f.addController("c2"), f.addController("c3")
	tok := f.token("prod", 2)
	a := f.enroll("m1", tok)
	f.startWith(a, func(c *agent.Config) { c.Controllers = []string{c2.ctl.GRPCAddr(), c3.ctl.GRPCAddr()} })
	b := f.enroll("m2", tok)
	f.startWith(b, func(c *agent.Config) { c.Controllers = []string{f.ctl.GRPCAddr()} })
	for _, admin := range []*grpc.ClientConn{f.admin, c2.admin, c3.admin} {
		for _, id := range []string{"m1", "m2"} {
			waitNode(t, admin, id, func(n *ferryv1.Node) bool { return n.GetConnected() && n.GetState() == healthy })
		}
	}
	// The follower that does not hold m1's stream has m1 from the session
	// table, and says which controller holds it. (m1 picks c2 or c3
	// itself; c1, the leader, holds every relayed stream as its own.)
	st := waitStatus(t, a, func(st *agentstatus.Status) bool { return st.Connected }, "connected")
	holder, holderPeer, other := "c2", c2, c3
	if st.Controller == c3.ctl.GRPCAddr() {
		holder, holderPeer, other = "c3", c3, c2
	}
	n := waitNode(t, other.admin, "m1", func(n *ferryv1.Node) bool { return n.GetState() == healthy })
	if want := "its stream is on controller " + holder; !strings.Contains(n.GetStateReason(), want) {
		t.Errorf("m1 on a follower without its stream: %q; want it to say %q", n.GetStateReason(), want)
	}
	// The record is not rewritten as the heartbeat ages: the reason says
	// when the holder wrote it.
	if want := regexp.MustCompile(`heartbeat [0-9.]+m?s old; .*, as of \d\d:\d\d:\d\d UTC \(its stream`); !want.MatchString(n.GetStateReason()) {
		t.Errorf("m1 on a follower without its stream: %q; want the holder's reason with when it wrote it, matching %s", n.GetStateReason(), want)
	}
	// The controller holding m1's stream stops: m1 moves to the other.
	holderPeer.stop()
	for _, admin := range []*grpc.ClientConn{f.admin, other.admin} {
		waitNode(t, admin, "m1", func(n *ferryv1.Node) bool { return n.GetConnected() && n.GetState() == healthy })
	}
	// And it stays healthy: heartbeats go on where it is now.
	n = waitNode(t, other.admin, "m1", func(n *ferryv1.Node) bool { return n.GetState() == healthy })
	since := n.GetLastHeartbeat().AsTime()
	waitNode(t, other.admin, "m1", func(n *ferryv1.Node) bool {
		return n.GetLastHeartbeat().AsTime().After(since) && n.GetState() == healthy
	})
	waitNode(t, f.admin, "m1", func(n *ferryv1.Node) bool { return n.GetState() == healthy })
}

// A controller cut off from etcd stops leading and refuses writes with a
// message naming the other controllers; another is elected and a rollout
// created there runs to its end; reads go on on the cut-off one; once etcd
// answers again it serves writes again, as a follower of the new leader.
func TestClusterControllerCutOffFromEtcd(t *testing.T) {
	eps, _ := etcdtest.Start(t)
	// Only c1 reaches etcd through the proxy the test cuts; c2 dials etcd
	// itself (a copy of c1's configuration would send c2 through the
	// proxy too, and the cut would take both off etcd: no leader at all).
	toEtcd := newProxy(t, strings.TrimPrefix(eps[0], "http://"))
	f := clusterFleet(t, []string{"http://" + toEtcd.addr()})
	c2 := f.addController("c2", func(c *controller.Config) { c.Store.Etcd.Endpoints = eps })
	tok := f.token("prod", 1) // c1 writes
	// The node's stream is on c2, which keeps etcd.
	a := f.enroll("x1", tok)
	f.startWith(a, func(c *agent.Config) { c.Controllers = []string{c2.ctl.GRPCAddr()} })
	waitNode(t, c2.admin, "x1", func(n *ferryv1.Node) bool { return n.GetConnected() && n.GetState() == healthy })
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))
	create := func(admin *grpc.ClientConn) (*ferryv1.Rollout, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		resp, err := ferryv1.NewRolloutServiceClient(admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "prod"}, Strategy: fast()})
		return resp.GetRollout(), err
	}
	// c1 leads (c2 would forward a rollout to it: see the end).
	waitLeader := func(what string, lead, follow *controller.Controller) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !lead.Leading() || follow.Leading(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: leading %v and %v, want exactly the first", what, lead.Leading(), follow.Leading())
			}
		}
	}
	waitLeader("c1 before the cut", f.ctl, c2.ctl)
	var err error

	toEtcd.cut()
	cut := time.Now()
	var r *ferryv1.Rollout
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if r, err = create(c2.admin); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("c2 did not take over after c1 was cut off from etcd: %v", err)
	}
	t.Logf("c1 cut off from etcd; c2 led and accepted a rollout %v later", time.Since(cut).Round(time.Millisecond))
	// The new leader's engine runs it to its end.
	for deadline := time.Now().Add(30 * time.Second); r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s on c2: %s: %s; nodes %v", r.GetId(), r.GetState(), r.GetMessage(), r.GetNodes())
		}
		if got, err := getRollout(c2.admin, r.GetId()); err == nil {
			r = got
		}
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "roots", "x1", "etc/motd")); err != nil || string(b) != "welcome to 1.0\n" {
		t.Errorf("x1: /etc/motd = %q, %v", b, err)
	}

	// c1 refuses writes, naming the other controller.
	var refused error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, refused = ferryv1.NewTokenServiceClient(f.admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "prod", MaxUses: 1})
		cancel()
		if refused != nil && strings.Contains(refused.Error(), "lost its connection to etcd") {
			break
		}
	}
	if refused == nil || !strings.Contains(refused.Error(), "lost its connection to etcd") || !strings.Contains(refused.Error(), c2.ctl.AdvertiseAddress()) {
		t.Fatalf("create a token on the cut-off c1: %v; want a refusal that names %s", refused, c2.ctl.AdvertiseAddress())
	}
	t.Logf("the cut-off c1 refuses a token: %v", refused)
	if r, err := create(f.admin); err == nil {
		t.Fatalf("the cut-off c1 created rollout %s", r.GetId())
	} else if !strings.Contains(err.Error(), "lost its connection to etcd") {
		t.Errorf("create a rollout on the cut-off c1: %v; want a refusal saying it lost etcd", err)
	}
	// Reads keep going from what it has.
	if _, err := ferryv1.NewNodeServiceClient(f.admin).ListNodes(context.Background(), &ferryv1.ListNodesRequest{}); err != nil {
		t.Errorf("list nodes on the cut-off c1: %v", err)
	}

	toEtcd.restore()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = ferryv1.NewTokenServiceClient(f.admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "prod", MaxUses: 1})
		cancel()
		if err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("c1 after etcd answers again: %v", err)
	}
	// Back, c1 follows c2: one leader, and a rollout asked of c1 is
	// forwarded to c2, whose engine runs it.
	waitLeader("c1 back on etcd", c2.ctl, f.ctl)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if r, err = create(f.admin); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("create a rollout on c1 back on etcd (forwarded to the leader c2): %v", err)
	}
	if !c2.ctl.Leading() || f.ctl.Leading() {
		t.Errorf("after the forwarded rollout %s: c1 leading %v, c2 leading %v; want c2 alone", r.GetId(), f.ctl.Leading(), c2.ctl.Leading())
	}
}
