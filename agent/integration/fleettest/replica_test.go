package fleettest

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	cfgB.DataDir, cfgB.GRPCAddr = dirB, "127.0.0.1:0"
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
	// Membership (package cluster) announces live controllers in etcd;
	// written here as it would.
	for id, addr := range map[string]string{"a": f.ctl.AdvertiseAddress(), "b": ctlB.AdvertiseAddress()} {
		v, _ := json.Marshal(map[string]string{"id": id, "addr": addr})
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := cli.Put(pctx, "/ferry/members/"+id, string(v)); err != nil {
			t.Fatal(err)
		}
		pcancel()
	}

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
