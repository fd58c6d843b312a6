package e2e_test

// Several controllers on one etcd store (issue 16), as processes: three
// ferry-controller binaries share an etcd the test runs in its own process
// (go.etcd.io/etcd/server/v3/embed, so a controller's kill -9 never takes
// etcd with it), and real agents are spread over them.

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
	"github.com/ferrydeploy/ferry/controller/etcdtest"
)

// failoverWithin bounds how long the controllers go without a leader after
// the leader dies (the 10 s; the lease is 5 s).
const failoverWithin = 10 * time.Second

const leadingLine = `"msg":"leading the controllers"`

// startCluster starts three controllers on one etcd store, c1 first (it
// creates the CA and leads), c2 and c3 joining with c1's secrets, and makes
// c1 the one ferryctl talks to.
func startCluster(t *testing.T, h *e2e.Harness) []*e2e.Controller {
	t.Helper()
	eps, _ := etcdtest.Start(t)
	var ctls []*e2e.Controller
	// Registered after etcd's cleanup, so it runs first: the controllers
	// stop while etcd still answers (their leases are revoked, not left
	// to expire).
	t.Cleanup(func() {
		for _, c := range ctls {
			if c.Running() {
				_ = syscall.Kill(-c.PID(), syscall.SIGTERM)
				c.Wait(e2e.StopTimeout)
			}
		}
	})
	for i, id := range []string{"c1", "c2", "c3"} {
		opts := e2e.ControllerOptions{Name: id, HeartbeatInterval: hb,
			Args: []string{"--store", "etcd", "--etcd-endpoints", strings.Join(eps, ","), "--controller-id", id}}
		if i > 0 {
			opts.JoinFrom = ctls[0]
		}
		ctls = append(ctls, h.StartController(opts))
		if i == 0 {
			ctls[0].WaitLog(leadingLine, 15*time.Second)
		}
	}
	h.Use(ctls[0])
	return ctls
}

var connectedRE = regexp.MustCompile(`"msg":"connected to controller[^"]*".*?"controller":"([^"]+)"`)

// connectedTo is the controller address an agent's log says it is on now
// ("" before its first connection).
func connectedTo(a *e2e.Agent) string {
	m := connectedRE.FindAllStringSubmatch(a.Log(), -1)
	if len(m) == 0 {
		return ""
	}
	return m[len(m)-1][1]
}

// waitMoved waits until agent a says it moved off the controller at from,
// and returns where it is now.
func waitMoved(t *testing.T, h *e2e.Harness, a *e2e.Agent, from string, timeout time.Duration) string {
	t.Helper()
	h.WaitFor(fmt.Sprintf("%s to move off %s", a.NodeID, from), timeout, func() (bool, string) {
		return strings.Contains(a.Log(), ", moved from "+from+`"`), "on " + connectedTo(a)
	})
	return connectedTo(a)
}

// waitStaysHealthy waits until a node is healthy, then until its last
// heartbeat has moved on while it stays so: heartbeats go on where it is.
func waitStaysHealthy(h *e2e.Harness, id, via string) {
	n := h.WaitNode(id, healthyWithin, "healthy through "+via, func(n e2e.Node) bool { return n.State == e2e.Healthy })
	since := n.LastHeartbeat
	h.WaitNode(id, healthyWithin, "still healthy through "+via+", with a newer heartbeat", func(n e2e.Node) bool {
		return n.State == e2e.Healthy && n.LastHeartbeat.After(since)
	})
}

// The leader is killed with SIGKILL (and its disk removed) while a node
// runs its job; another controller is elected within failoverWithin and
// finishes the rollout, every node having run its job exactly once (the
// agents' runs.log, one "job sent" per node across the three controllers'
// logs). The package's artifact was pushed to the dead leader only: the
// nodes after the kill download it through the others. The agents that
// were on the leader move to another controller and stay healthy in
// `ferryctl nodes` through the new leader; then the controller another
// agent is on is killed, and that agent moves too.
func TestE2EClusterLeaderSIGKILLMidRollout(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	ctls := startCluster(t, h)
	c1 := ctls[0]
	f := &rolloutFleet{t: t, h: h, c: c1, agents: map[string]*e2e.Agent{}, work: h.Dir() + "/work"}
	if err := os.MkdirAll(f.work, 0o755); err != nil {
		t.Fatal(err)
	}
	tok := h.CreateToken(e2e.TokenOptions{Group: "production", Uses: len(productionNodes), AllowLabels: []string{"node=*"}})
	for i, id := range productionNodes {
		// Each agent takes every controller, another one first.
		var order []string
		for j := range ctls {
			order = append(order, ctls[(i+j)%len(ctls)].Advertise)
		}
		a := h.NewAgent(id, e2e.AgentOptions{Controller: strings.Join(order, ","), Labels: map[string]string{"node": id}, Args: []string{"--reconnect-max", "1s"}})
		a.MustEnroll(tok)
		a.Start()
		f.agents[id] = a
	}
	for _, id := range productionNodes {
		h.WaitNode(id, healthyWithin, "healthy", func(n e2e.Node) bool { return n.State == e2e.Healthy })
	}
	onC1 := map[string]bool{}
	for _, id := range productionNodes {
		if connectedTo(f.agents[id]) == c1.Advertise {
			onC1[id] = true
		}
	}
	if len(onC1) == 0 {
		// Each agent picks among its addresses itself; the move is
		// still seen below, when another agent's controller is killed.
		t.Logf("no agent is on c1 (%s) when it is killed", c1.Advertise)
	}
	f.publish("1.0.0", time.Second)
	id := strings.TrimSpace(h.MustCtl(rolloutArgs("production", "tool@1.0.0", "--canary", "1", "--auto-promote", "--max-parallel", "1", "--detach")...))

	// Mid-rollout: a second node runs its check.
	h.WaitFor("a second node to run its check", rolloutTimeout, func() (bool, string) {
		ran := 0
		for _, n := range productionNodes {
			ran += f.runs(n)["1.0.0"]
		}
		return ran >= 2, fmt.Sprintf("%d checks run", ran)
	})
	c1.Kill()
	killed := time.Now()
	if err := os.RemoveAll(c1.DataDir); err != nil {
		t.Fatal(err)
	}
	var leader *e2e.Controller
	h.WaitFor("c2 or c3 to lead", failoverWithin, func() (bool, string) {
		for _, c := range ctls[1:] {
			if strings.Contains(c.Log(), leadingLine) {
				leader = c
				return true, ""
			}
		}
		return false, "no leader yet"
	})
	failover := time.Since(killed)
	h.Use(leader)
	r := f.waitRollout(id, "ended", func(r rolloutStatus) bool {
		switch r.State {
		case "running", "paused", "waiting_promotion", "rolling_back":
			return false
		}
		return true
	})
	t.Logf("leader c1 killed with SIGKILL mid-rollout: %s led %v later (failover); the rollout ended %v after the kill",
		leader.Name(), failover.Round(10*time.Millisecond), time.Since(killed).Round(10*time.Millisecond))
	if r.State != "succeeded" {
		t.Errorf("rollout after the leader's kill: %s", r.outcomes())
	}
	f.wantOutcomes(r, outcomesOf("succeeded", productionNodes...))
	f.wantVersions("after the rollout", allAt("1.0.0", productionNodes))
	for _, node := range productionNodes {
		if got := f.runs(node); got["1.0.0"] != 1 || len(got) != 1 {
			t.Errorf("%s ran checks %v, want 1.0.0 exactly once", node, got)
		}
		sent := 0
		for _, c := range ctls {
			sent += len(regexp.MustCompile(`"msg":"job sent".*"node":"`+node+`"`).FindAllString(c.FullLog(), -1))
		}
		if sent != 1 {
			t.Errorf("the controllers logged %d \"job sent\" for %s, want 1", sent, node)
		}
	}

	// The agents that were on c1 are on another controller, and healthy
	// in the merged view of the new leader.
	for node := range onC1 {
		now := waitMoved(t, h, f.agents[node], c1.Advertise, healthyWithin)
		waitStaysHealthy(h, node, leader.Name())
		t.Logf("%s moved from c1 to %s", node, now)
	}

	// Kill the controller another agent is on (the other follower if it
	// holds one, else the new leader), and watch through the one left.
	var other *e2e.Controller
	for _, c := range ctls[1:] {
		if c != leader {
			other = c
		}
	}
	victim, left := other, leader
	var moving string
	for _, c := range []*e2e.Controller{other, leader} {
		for _, node := range productionNodes {
			if connectedTo(f.agents[node]) == c.Advertise {
				moving = node
			}
		}
		if moving != "" {
			victim = c
			if c == leader {
				left = other
			}
			break
		}
	}
	if moving == "" {
		t.Fatalf("no agent is on c2 or c3 (%s, %s)", ctls[1].Advertise, ctls[2].Advertise)
	}
	h.Use(left)
	victim.Kill()
	stopped := time.Now()
	now := waitMoved(t, h, f.agents[moving], victim.Advertise, healthyWithin)
	t.Logf("%s killed; %s moved to %s %v later", victim.Name(), moving, now, time.Since(stopped).Round(10*time.Millisecond))
	waitStaysHealthy(h, moving, left.Name())
	for _, node := range productionNodes {
		h.WaitNode(node, healthyWithin, "healthy through the last controller", func(n e2e.Node) bool { return n.State == e2e.Healthy })
	}
}
