package fleettest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
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
// step).
func (f *fleet) addController(id string) *peer {
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
	_ = c3
	_ = fmt.Sprint
}
