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

// A controller on the etcd store runs a rollout to real agents: every node
// installs, the job log arrives, the records are in etcd, and after a
// restart the controller knows the rollout and runs the next one.
func TestRolloutOnTheEtcdStore(t *testing.T) {
	eps, cli := etcdtest.Start(t)
	f := newFleet(t, func(c *controller.Config) {
		c.Store.Backend = controller.StoreEtcd
		c.Store.Etcd.Endpoints = eps
	})
	tok := f.token("staging", 2)
	var agents []*testAgent
	for _, id := range []string{"e1", "e2"} {
		a := f.enroll(id, tok)
		f.start(a)
		agents = append(agents, a)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 5*time.Second)
	}
	check := `echo "$MOTD_VERSION"`
	f.apply(motdPackage("1.0", check))
	f.apply(motdPackage("2.0", check))
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout 1.0 on etcd ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	for _, a := range agents {
		if b, err := os.ReadFile(filepath.Join(f.dir, "roots", a.id, "etc/motd")); err != nil || string(b) != "welcome to 1.0\n" {
			t.Errorf("%s: /etc/motd = %q, %v", a.id, b, err)
		}
	}
	f.waitLine(r.Id, "e1", "1.0")

	// The records are in etcd, under the default prefix.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, domain := range []string{"nodes", "tokens", "packages", "rollouts", "audit"} {
		resp, err := cli.Get(ctx, "/ferry/"+domain+"/!k/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count == 0 {
			t.Errorf("etcd holds %v %s records (%v); want them there", resp, domain, err)
		}
	}

	f.restartController()
	got, err := ferryv1.NewRolloutServiceClient(f.admin).GetRollout(ctx, &ferryv1.GetRolloutRequest{Id: r.Id})
	if err != nil || got.GetRollout().GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout %s after a restart on etcd: %v, %v", r.Id, got, err)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 10*time.Second)
	}
	r = f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "2.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout 2.0 after the restart ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	for _, a := range agents {
		if b, err := os.ReadFile(filepath.Join(f.dir, "roots", a.id, "etc/motd")); err != nil || string(b) != "welcome to 2.0\n" {
			t.Errorf("%s: /etc/motd = %q, %v", a.id, b, err)
		}
	}
}
