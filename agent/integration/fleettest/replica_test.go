package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ferrydeploy/ferry/controller/controller"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// An artifact pushed to controller A, with B up, survives A and its disk:
// with A killed and its data dir removed, a rollout through B installs it
// on a real agent.
func TestArtifactSurvivesItsController(t *testing.T) {
	eps, cli := etcdtest.Start(t)
	f := newFleet(t, func(c *controller.Config) {
		c.Store.Backend = controller.StoreEtcd
		c.Store.Etcd.Endpoints = eps
	})
	// The node enrolls through A before B starts, so B knows it.
	a := f.enroll("s1", f.token("staging", 1))

	// B joins: the installation's CA in its data dir, the same store.
	dirB := filepath.Join(f.dir, "controller-b")
	if err := os.MkdirAll(dirB, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(f.cfg.DataDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirB, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfgB := f.cfg
	cfgB.DataDir, cfgB.GRPCAddr, cfgB.ControllerID, cfgB.Join = dirB, "127.0.0.1:0", "controller-b", true
	ctlB, err := controller.New(cfgB)
	if err != nil {
		t.Fatalf("start controller B: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	doneB := make(chan error, 1)
	go func() { doneB <- ctlB.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-doneB; err != nil {
			t.Errorf("controller B: %v", err)
		}
	})
	// Membership (package cluster) announces both in etcd; A's watch of
	// it follows at once.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		gctx, gcancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := cli.Get(gctx, "/ferry/members/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		gcancel()
		if err == nil && r.Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A and B are not both members after 10 s: %v, %v", r, err)
		}
	}
	time.Sleep(300 * time.Millisecond)

	resp := f.pushResp("tool-1.0.tar.gz", "1.0", toolTarball(t, "1.0", 256<<10))
	if resp.GetCopies() != 2 || resp.GetWarning() != "" {
		t.Fatalf("push to A with B up: copies=%d warning=%q; want 2", resp.GetCopies(), resp.GetWarning())
	}

	// A dies with its disk.
	f.stopController()
	if err := os.RemoveAll(f.cfg.DataDir); err != nil {
		t.Fatal(err)
	}
	tlsConf, err := ctlB.AdminTLS()
	if err != nil {
		t.Fatal(err)
	}
	f.ctl = ctlB
	f.admin = f.dial(tlsConf)
	a.proxy = newProxy(t, ctlB.GRPCAddr())
	f.start(a)
	f.waitState(a.id, healthy, 10*time.Second)
	f.apply(`name: tool
version: "1.0"
artifact: tool-1.0.tar.gz
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool 1.0"}
`)
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout through B with A and its disk gone ended %s: %s (nodes %v)", r.GetState(), r.GetMessage(), r.GetNodes())
	}
	if _, err := os.Stat(filepath.Join(f.dir, "roots", a.id, "opt/tool/bin/tool")); err != nil {
		t.Errorf("the tool is not installed: %v", err)
	}
}
