package scale

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// runController runs an in-process controller on addr and dir; stop ends
// it and waits.
func runController(t *testing.T, dir, addr string) (c *controller.Controller, stop func()) {
	t.Helper()
	c, err := controller.New(controller.Config{
		DataDir: dir, GRPCAddr: addr, HTTPAddr: "127.0.0.1:0",
		HeartbeatInterval: 200 * time.Millisecond,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatalf("start controller: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once bool
	stop = func() {
		if once {
			return
		}
		once = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	}
	t.Cleanup(stop)
	return c, stop
}

// TestSimulatedFleet checks the simulator against a real controller in
// every reconnect mode: the agents enroll, connect with their own
// certificates, heartbeat (the controller sees their facts, and the
// latency the benchmark derives is sane) and all come back after the
// controller restarts on the same data dir and port.
func TestSimulatedFleet(t *testing.T) {
	for _, mode := range []Reconnect{ReconnectAgent, ReconnectStacked, ReconnectWaitForReady} {
		t.Run(string(mode), func(t *testing.T) {
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
			defer cancel()
			ctl, stop := runController(t, filepath.Join(dir, "controller"), "127.0.0.1:0")
			addr := ctl.GRPCAddr()
			admin, err := DialAdmin(ctl.AdminCredentialPath(), addr)
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			tok, err := ferryv1.NewTokenServiceClient(admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "sim", MaxUses: 4})
			if err != nil {
				t.Fatalf("create token: %v", err)
			}
			ids := []string{"sim-0", "sim-1", "sim-2", "sim-3"}
			enrolled, err := Enroll(ctx, Enrollment{Controller: addr, Token: tok.GetSecret(), CAPin: tok.GetCaPin(), Dir: filepath.Join(dir, "nodes"), Parallel: 2}, ids)
			if err != nil {
				t.Fatal(err)
			}
			fleet, err := NewFleet(AgentConfig{Controller: addr, CA: enrolled.CA, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, Reconnect: mode}, ids, enrolled.Certs)
			if err != nil {
				t.Fatal(err)
			}
			fleet.Start(ctx, 100*time.Millisecond)
			defer fleet.Stop()
			if _, err := fleet.WaitConnected(ctx, time.Time{}, 15*time.Second); err != nil {
				t.Fatal(err)
			}

			nodes := ferryv1.NewNodeServiceClient(admin)
			waitNodes(t, ctx, nodes, "every node healthy with a heartbeat", func(n *ferryv1.Node) error {
				if n.GetState() != ferryv1.NodeState_NODE_STATE_HEALTHY || !n.GetConnected() || n.GetUptime() == nil {
					return fmt.Errorf("state %v, connected %v, uptime %v", n.GetState(), n.GetConnected(), n.GetUptime())
				}
				if n.GetFacts().GetHostname() != n.GetId() || n.GetAgentVersion() != AgentVersion {
					return fmt.Errorf("facts %v, version %q: not the simulated agent's", n.GetFacts(), n.GetAgentVersion())
				}
				a, _ := fleet.Agent(n.GetId())
				lat := n.GetLastHeartbeat().AsTime().Sub(a.SentAt(n.GetUptime().AsDuration()))
				if lat < 0 || lat > 2*time.Second {
					return fmt.Errorf("heartbeat processed %v after it was sent, want a small positive delay", lat)
				}
				return nil
			})

			stopAt := time.Now()
			stop()
			runController(t, filepath.Join(dir, "controller"), addr)
			if _, err := fleet.WaitConnected(ctx, stopAt, 20*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, a := range fleet.Agents {
				if a.Sessions() < 2 || a.Failures() < 1 {
					t.Errorf("%s: %d sessions, %d failures; want a second session after the failure the restart caused", a.ID, a.Sessions(), a.Failures())
				}
			}
			waitNodes(t, ctx, nodes, "every node back with a heartbeat", func(n *ferryv1.Node) error {
				if !n.GetConnected() || n.GetUptime() == nil {
					return fmt.Errorf("connected %v, uptime %v", n.GetConnected(), n.GetUptime())
				}
				return nil
			})
		})
	}
}

// waitNodes polls ListNodes until check passes for every node.
func waitNodes(t *testing.T, ctx context.Context, nodes ferryv1.NodeServiceClient, what string, check func(*ferryv1.Node) error) {
	t.Helper()
	var last error
	for ctx.Err() == nil {
		resp, err := nodes.ListNodes(ctx, &ferryv1.ListNodesRequest{})
		last = err
		if err == nil {
			if len(resp.GetNodes()) == 0 {
				last = fmt.Errorf("no nodes")
			}
			for _, n := range resp.GetNodes() {
				if err := check(n); err != nil {
					last = fmt.Errorf("node %s: %w", n.GetId(), err)
					break
				}
			}
			if last == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("waiting for %s: %v", what, last)
}

// Simulated agents answer a rollout's jobs (every node succeeds with the
// step results they report) and follow a new heartbeat interval the
// controller sends, over a list of controller addresses.
func TestSimulatedFleetRunsJobs(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	ctl, _ := runController(t, filepath.Join(dir, "controller"), "127.0.0.1:0")
	addr := ctl.GRPCAddr()
	admin, err := DialAdmin(ctl.AdminCredentialPath(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	tok, err := ferryv1.NewTokenServiceClient(admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "sim", MaxUses: 3})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	ids := []string{"sim-0", "sim-1", "sim-2"}
	enrolled, err := Enroll(ctx, Enrollment{Controller: addr, Token: tok.GetSecret(), CAPin: tok.GetCaPin(), Dir: filepath.Join(dir, "nodes"), Parallel: 2}, ids)
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := NewFleet(AgentConfig{Controllers: []string{addr, addr}, CA: enrolled.CA, BackoffBase: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, JobSteps: 3}, ids, enrolled.Certs)
	if err != nil {
		t.Fatal(err)
	}
	fleet.Start(ctx, 50*time.Millisecond)
	defer fleet.Stop()
	if _, err := fleet.WaitConnected(ctx, time.Time{}, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewPackageServiceClient(admin).ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{Filename: "sim.yaml", Yaml: `name: sim
version: 1.0.0
steps:
  - file: {path: /etc/sim.conf, content: "sim\n"}
`}); err != nil {
		t.Fatalf("apply package: %v", err)
	}
	canary, parallel, healthy := uint32(0), "100%", durationpb.New(0)
	created, err := ferryv1.NewRolloutServiceClient(admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "sim", PackageVersion: "1.0.0",
		Target: &ferryv1.Target{Group: "sim"}, Strategy: &ferryv1.Strategy{Canary: &canary, MaxParallel: parallel, HealthyFor: healthy}})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	var r *ferryv1.Rollout
	for ctx.Err() == nil {
		resp, err := ferryv1.NewRolloutServiceClient(admin).GetRollout(ctx, &ferryv1.GetRolloutRequest{Id: created.GetRollout().GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if r = resp.GetRollout(); r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_RUNNING {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %v: %s", r.GetState(), r.GetMessage())
	}
	for _, nj := range r.GetNodes() {
		if len(nj.GetSteps()) != 3 || nj.GetOutcome() != ferryv1.NodeOutcome_NODE_OUTCOME_SUCCEEDED {
			t.Errorf("node %s: outcome %v with %d steps, want succeeded with the 3 the simulator reports", nj.GetNodeId(), nj.GetOutcome(), len(nj.GetSteps()))
		}
	}
	if jobs, updates := fleet.JobTotals(); jobs != 3 || updates != 9 {
		t.Errorf("the agents got %d jobs and sent %d updates, want 3 and 9", jobs, updates)
	}

	// A new interval reaches the connected agents.
	if told := ctl.SetHeartbeatInterval(time.Second); told != 3 {
		t.Errorf("the new interval was sent to %d agents, want 3", told)
	}
	for _, a := range fleet.Agents {
		for a.Interval() != time.Second && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		if a.Interval() != time.Second {
			t.Errorf("%s heartbeats every %v, want the 1s the controller sent", a.ID, a.Interval())
		}
	}
}
