package cli

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ferrydeploy/ferry/controller/controller"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// clusterController runs a controller with ID id on the etcd at eps, in
// dir; a joiner has the installation's CA copied from the data dir from
// (the documented join step). stop ends it (also at the test's end).
func clusterController(t *testing.T, eps []string, id, dir, from string) (ctl *controller.Controller, stop func()) {
	t.Helper()
	if from != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"ca.crt", "ca.key"} {
			data, err := os.ReadFile(filepath.Join(from, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := controller.Config{
		DataDir: dir, GRPCAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		ControllerID: id, ClusterTTL: 2 * time.Second,
		Logger: slog.New(slog.DiscardHandler),
	}
	cfg.Store.Backend = controller.StoreEtcd
	cfg.Store.Etcd.Endpoints = eps
	cfg.Join = from != ""
	ctl, err := controller.New(cfg)
	if err != nil {
		t.Fatalf("start controller %s: %v", id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller %s: %v", id, err)
		}
	}
	t.Cleanup(stop)
	return ctl, stop
}

// runJobs is an agent that reports every job it is sent as succeeded
// and heartbeats, on its stream to the controller at addr.
func runJobs(t *testing.T, ctx context.Context, e *enroller, addr string, resp *ferryv1.EnrollResponse) {
	t.Helper()
	agent := ferryv1.NewAgentServiceClient(e.dialAgent(t, addr, resp))
	// As an agent does, it tries again while the controller does not know
	// the node yet (it was enrolled on the other one a moment ago).
	var stream grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse]
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if stream, err = agent.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		if err = stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "test", Facts: &ferryv1.Facts{Os: "linux"}}}}); err == nil {
			var m *ferryv1.ConnectResponse
			if m, err = stream.Recv(); err == nil && m.GetWelcome() != nil {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent stream to %s: %v", addr, err)
		}
	}
	var installed []*ferryv1.InstalledPackage // what the jobs installed, as heartbeats report it
	jobs := make(chan *ferryv1.Job, 16)
	go func() {
		defer close(jobs)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if j := m.GetJob(); j != nil {
				jobs <- j
			}
		}
	}()
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			var msg *ferryv1.ConnectRequest
			select {
			case <-ctx.Done():
				return
			case j, ok := <-jobs:
				if !ok {
					return
				}
				installed = []*ferryv1.InstalledPackage{{Name: j.GetPackage().GetName(), Version: j.GetPackage().GetVersion()}}
				// The heartbeat that reports it comes first, as the job's
				// end is reported after the install.
				if err := stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{Installed: installed}}}); err != nil {
					return
				}
				msg = &ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_JobUpdate{JobUpdate: &ferryv1.JobUpdate{
					JobId: j.GetId(), RolloutId: j.GetRolloutId(), Phase: ferryv1.JobPhase_JOB_PHASE_SUCCEEDED, Message: "done", At: timestamppb.Now(),
				}}}
			case <-tick.C:
				msg = &ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Heartbeat{Heartbeat: &ferryv1.Heartbeat{Installed: installed}}}
			}
			if err := stream.Send(msg); err != nil {
				return
			}
		}
	}()
}

// Two controllers on one etcd, one agent on each. An admin whose
// credential names the controller that does not lead runs `ferryctl
// rollout` there: the call goes to the leader, the rollout runs to its
// end with the live progress, and the audit names the admin (not the
// controller that forwarded it). When the leader stops, the same
// command against the same controller works again once it leads.
func TestRolloutOnTheControllerThatDoesNotLead(t *testing.T) {
	eps, _ := etcdtest.Start(t)
	base := t.TempDir()
	dir1, dir2 := filepath.Join(base, "c1"), filepath.Join(base, "c2")
	c1, stop1 := clusterController(t, eps, "c1", dir1, "")
	for deadline := time.Now().Add(20 * time.Second); !c1.Leading(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("c1 does not lead 20s after it started alone")
		}
	}
	c2, _ := clusterController(t, eps, "c2", dir2, dir1)
	if c2.Leading() {
		t.Fatal("c2 leads beside c1")
	}

	// alice's credential names c2.
	alice := filepath.Join(base, "alice.yaml")
	mustRun(t, c2.AdminCredentialPath(), []string{"cert", "issue", "--admin", "alice", "--out", alice}, "admin credential for alice")
	pkg := filepath.Join(base, "motd.yaml")
	if err := os.WriteFile(pkg, []byte("name: motd\nversion: \"1\"\nsteps:\n  - check: {run: \"true\"}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, alice, []string{"package", "apply", "-f", pkg})

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := newEnroller(t, dialAdmin(t, alice))
	tok := createToken(t, alice, "--group", "staging", "--uses", "2")
	for id, addr := range map[string]string{"n1": c1.GRPCAddr(), "n2": c2.GRPCAddr()} {
		resp, err := e.enroll(tok, id, nil)
		if err != nil {
			t.Fatal(err)
		}
		runJobs(t, ctx, e, addr, resp)
	}
	// The leader sees both nodes healthy (n2 through c2's relay).
	leader := dialAdmin(t, c1.AdminCredentialPath())
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := ferryv1.NewNodeServiceClient(leader).ListNodes(ctx, &ferryv1.ListNodesRequest{Group: "staging"})
		healthy := 0
		for _, n := range resp.GetNodes() {
			if n.GetState() == ferryv1.NodeState_NODE_STATE_HEALTHY {
				healthy++
			}
		}
		if err == nil && healthy == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader does not see n1 and n2 healthy: %v, %v", resp.GetNodes(), err)
		}
	}

	rollout := []string{"rollout", "--group", "staging", "--package", "motd@1", "--canary", "1", "--auto-promote", "--healthy-for", "0s"}
	out := mustRun(t, alice, rollout, "2/2 done  succeeded 2  | succeeded")
	id := regexp.MustCompile(`rollout (ro-\w+) started`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("ferryctl rollout printed no rollout ID:\n%s", out)
	}
	mustRun(t, alice, []string{"rollout", "status", id[1]}, "succeeded")

	code, out, errOut := run(t, alice, "-o", "json", "audit", "--limit", "20")
	if code != 0 {
		t.Fatalf("audit: exit %d: %s", code, errOut)
	}
	var audit struct {
		Events []struct{ Actor, Action, Target, Outcome string } `json:"events"`
	}
	if err := json.Unmarshal([]byte(out), &audit); err != nil {
		t.Fatalf("audit -o json: %v\n%s", err, out)
	}
	created := false
	for _, ev := range audit.Events {
		if ev.Action == "rollout.create" && ev.Target == id[1] {
			created = true
			if ev.Actor != "admin/alice" || ev.Outcome != "ok" {
				t.Errorf("audit entry of the rollout: %+v; want actor admin/alice, outcome ok", ev)
			}
		}
		// (The engine's own entries, such as the group's desired state
		// it records, name the controller; admins' calls never do.)
		if strings.HasPrefix(ev.Action, "rollout.") && ev.Actor != "admin/alice" {
			t.Errorf("audit entry of a rollout call by %s, not admin/alice: %+v", ev.Actor, ev)
		}
	}
	if !created {
		t.Errorf("no rollout.create in the audit:\n%s", out)
	}

	// The removals that must know every rollout are the leader's too:
	// through c2 they are judged there, not refused.
	mustRun(t, alice, []string{"artifact", "gc"})
	if code, _, errOut := run(t, alice, "package", "rm", "motd@1"); code != 1 || !regexp.MustCompile(`package motd@1 is installed on node n[12]`).MatchString(errOut) {
		t.Errorf("package rm of a version the nodes have, through c2: exit %d: %s; want a refusal naming the nodes", code, errOut)
	}

	// The leader goes; c2 takes over and the same command works there.
	stop1()
	var again string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		code, out, errOut := run(t, alice, "rollout", "--group", "staging", "--package", "motd@1", "--healthy-for", "0s", "--detach")
		if code == 0 {
			again = out
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout on c2 after c1 stopped: exit %d: %s", code, errOut)
		}
	}
	if !c2.Leading() || !regexp.MustCompile(`^ro-\w+\n$`).MatchString(again) {
		t.Errorf("after c1 stopped: c2 leading %v, ferryctl rollout --detach printed %q", c2.Leading(), again)
	}
}
