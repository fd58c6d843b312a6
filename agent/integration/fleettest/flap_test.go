package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A link that resets the agents' connections every few seconds, with the
// controller fine, does not fail a rollout with the default healthy
// period of 10 s: the agents (with the production reconnect delays)
// redial within a second, their heartbeats keep flowing, so the healthy
// period counts across the reconnects, and a node that is disconnected
// when the rollout is created is waited for and gets its job once back.
func TestRolloutSucceedsOnAFlappingLink(t *testing.T) {
	const heartbeat = 2 * time.Second // the links below reset about as often
	f := newFleet(t, func(c *controller.Config) { c.HeartbeatInterval = heartbeat })
	tok := f.token("edge", 2)
	var agents []*testAgent
	for _, id := range []string{"e1", "e2"} {
		a := f.enroll(id, tok)
		a.configure = func(c *agent.Config) { c.BackoffBase, c.BackoffMax = 500*time.Millisecond, 30*time.Second }
		f.start(a)
		agents = append(agents, a)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 5*time.Second)
	}
	f.apply(motdPackage("1.0", `echo "$MOTD_VERSION"`))

	// e2 is between two connections when the rollout is created.
	e2 := agents[1]
	e2.proxy.cut()
	for deadline := time.Now().Add(5 * time.Second); f.node("e2").GetConnected(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the controller still shows e2 connected 5s after its link was cut")
		}
	}
	time.AfterFunc(time.Second, e2.proxy.restore)

	// Each of the agents' connections is reset 1.5 to 2.5 s after it opened,
	// each agent on its own beat.
	stop := make(chan struct{})
	var resets sync.WaitGroup
	halt := sync.OnceFunc(func() { close(stop); resets.Wait() })
	defer halt()
	counts := make([]int, len(agents))
	for i, a := range agents {
		resets.Add(1)
		go func() {
			defer resets.Done()
			lives := []time.Duration{1500 * time.Millisecond, 2500 * time.Millisecond, 2 * time.Second}
			for k := i; ; k++ {
				for !a.proxy.connected() {
					select {
					case <-stop:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
				select {
				case <-stop:
					return
				case <-time.After(lives[k%len(lives)]):
					a.proxy.reset()
					counts[i]++
				}
			}
		}()
	}
	// About 14 s: e2 back, the install, 10 s healthy, a heartbeat after.
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	resp, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "edge"},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "2", HealthyFor: durationpb.New(10 * time.Second), ProgressDeadline: durationpb.New(30 * time.Second)}})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	if n := nodeJob(resp.Rollout, "e2"); n.GetOutcome() != ferryv1.NodeOutcome_NODE_OUTCOME_PENDING {
		t.Errorf("e2 at creation: %s %q, want pending (waited for while it reconnects)", n.GetOutcome(), n.GetMessage())
	}
	r := f.wait(ctx, resp.Rollout.Id)
	halt()
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	for i, a := range agents {
		t.Logf("%s's link was reset %d times during the rollout", a.id, counts[i])
		if counts[i] < 3 {
			t.Errorf("%s's link was reset %d times during the rollout, want at least 3 for this test to mean anything", a.id, counts[i])
		}
		b, err := os.ReadFile(filepath.Join(f.dir, "roots", a.id, "etc/motd"))
		if err != nil || string(b) != "welcome to 1.0\n" {
			t.Errorf("%s: /etc/motd = %q, %v", a.id, b, err)
		}
	}
}

func nodeJob(r *ferryv1.Rollout, id string) *ferryv1.NodeJob {
	for _, n := range r.GetNodes() {
		if n.GetNodeId() == id {
			return n
		}
	}
	return nil
}

// connected: a connection is open through the proxy.
func (p *proxy) connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns) > 0
}
