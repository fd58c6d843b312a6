package e2e_test

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// The failure-detection tests run at the product's default timings, as an
// operator would see them: the controller's default heartbeat interval
// (health.DefaultHeartbeatInterval, 5 s; stale after three missed ones) and
// memberlist's LAN profile, which both daemons use unless told otherwise.
const (
	defaultHeartbeat = 5 * time.Second
	staleAfter       = 3 * defaultHeartbeat
	// downWithin is the bound for a SIGKILLed agent to be down.
	downWithin = 15 * time.Second
	// gossipPort is the memberlist port every namespace uses: each has
	// its own address, so they cannot collide.
	gossipPort = 7946
)

// TestE2ENetnsPartition cuts agents' gRPC link to the controller with an
// nftables rule in the controller's network namespace while their gossip
// keeps flowing: the controller must show them unreachable (its stream is
// silent but peers still see them alive), never suspect or down, and
// healthy again once the rule is gone.
//
// Two cuts run side by side: one drops the agent's packets (a partition:
// nobody is told), the other answers them with a TCP reset (a firewall
// with a reject policy: the agent learns at once and its reconnects are
// refused). A third agent is left alone and must stay healthy.
func TestE2ENetnsPartition(t *testing.T) {
	t.Parallel()
	nw := e2e.NewNetwork(t) // before the harness: its cleanup must run last
	h := e2e.New(t)

	ctlHost := nw.AddHost("ctl")
	cuts := map[string]e2e.CutMode{"cut-drop": e2e.CutDrop, "cut-reset": e2e.CutReset}
	ids := []string{"cut-drop", "cut-reset", "bystander"}
	hosts := map[string]*e2e.Host{}
	for _, id := range ids {
		hosts[id] = nw.AddHost(id)
	}

	c := h.StartController(e2e.ControllerOptions{
		Host:              ctlHost.IP.String(),
		HeartbeatInterval: defaultHeartbeat,
		Prefix:            ctlHost.Prefix(),
		// The harness picks gossip ports in the test's namespace; in the
		// controller's own namespace the fixed port is free.
		NoGossip: true,
		Args:     []string{"--gossip-listen", ctlHost.Addr(gossipPort)},
	})
	tok := h.Token("production", 0)
	for _, id := range ids {
		a := h.NewAgent(id, e2e.AgentOptions{
			Prefix: hosts[id].Prefix(),
			Args:   []string{"--gossip-listen", hosts[id].Addr(gossipPort)},
		})
		a.MustEnroll(tok)
		a.Start()
	}
	for _, id := range ids {
		h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	}
	port := c.GRPCPort()

	// Cut: both cut agents become unreachable once their last heartbeat
	// is stale.
	before := h.Nodes()
	log := newStateLog(h)
	for id, mode := range cuts {
		ctlHost.Cut(hosts[id].IP, port, mode)
	}
	log.until(t, staleAfter+defaultHeartbeat+5*time.Second, "both cut agents unreachable", func(nodes map[string]e2e.Node) bool {
		return nodes["cut-drop"].State == e2e.Unreachable && nodes["cut-reset"].State == e2e.Unreachable
	})
	// Hold the cut a few gossip probe rounds (1 s each at the LAN profile)
	// longer: they stay unreachable, gossip keeps probing them and they
	// answer, so they never decay to suspect or down.
	log.watch(t, 3*time.Second)
	nodes := log.latest()
	for id := range cuts {
		if bad := log.afterFirst(id, e2e.Unreachable); bad != "" {
			t.Errorf("%s was %s during the cut after being unreachable; states seen: %s", id, bad, log.history(id))
		}
		if n := nodes[id]; n.State != e2e.Unreachable || n.GossipState != "alive" {
			t.Errorf("%s while cut: %s, gossip %q (%s); want unreachable with gossip alive", id, n.State, n.GossipState, n.StateReason)
		}
	}
	cutFor := log.elapsed()
	for id := range cuts {
		// The controller cannot tell before the heartbeat is stale, so the
		// detection time is staleAfter minus the last heartbeat's age at
		// the cut (between about 10 and 15 s at 5 s heartbeats).
		unreachable, c := log.first(id, e2e.Unreachable)
		age := log.start.Sub(before[id].LastHeartbeat)
		t.Logf("%s (%s): unreachable %v after the cut, %v after its last heartbeat: %s",
			id, cuts[id], unreachable.Round(10*time.Millisecond), (unreachable + age).Round(10*time.Millisecond), c.reason)
	}

	// Restore: both return to healthy, each on a new stream. The dropped
	// agent gave up its connection about 10 s after its first heartbeat
	// went unanswered (gRPC sets TCP_USER_TIMEOUT to its 10 s keepalive
	// timeout) and is dialing: it is back as soon as a SYN gets through.
	// The reset agent's dials were refused at once, so its backoff grew:
	// it is back after its current delay (at most --reconnect-max, 30 s).
	restored := newStateLog(h)
	for id, mode := range cuts {
		ctlHost.Restore(hosts[id].IP, port, mode)
	}
	restored.until(t, 45*time.Second, "both cut agents healthy and alive again", func(nodes map[string]e2e.Node) bool {
		return healthyAndAlive(nodes["cut-drop"]) && healthyAndAlive(nodes["cut-reset"])
	})
	// And stay healthy past the next heartbeat: the resumed or new stream
	// carries on.
	restored.watch(t, defaultHeartbeat+time.Second)
	for id := range cuts {
		if bad := restored.afterFirst(id, e2e.Healthy); bad != "" {
			t.Errorf("%s was %s after being healthy again; states seen: %s", id, bad, restored.history(id))
		}
		back, _ := restored.first(id, e2e.Healthy)
		t.Logf("%s (%s): healthy %v after the restore (cut for %v)", id, cuts[id], back.Round(10*time.Millisecond), cutFor.Round(100*time.Millisecond))
	}

	// Through the whole episode: the cut agents were only ever healthy or
	// unreachable, and the bystander stayed healthy.
	for _, l := range []*stateLog{log, restored} {
		for _, id := range ids {
			allowed := []e2e.State{e2e.Healthy, e2e.Unreachable}
			if id == "bystander" {
				allowed = allowed[:1]
			}
			if bad := l.outside(id, allowed...); bad != "" {
				t.Errorf("%s was %s; states seen: %s", id, bad, l.history(id))
			}
		}
	}
	for _, id := range ids {
		t.Logf("%s: after the cut: %s; after the restore: %s", id, log.history(id), restored.history(id))
	}
	if t.Failed() {
		t.Logf("controller namespace ruleset:\n%s", ctlHost.Ruleset())
	}
}

// TestE2EKilledAgentIsDown kills one agent with SIGKILL and stops another
// with SIGTERM at the same moment, at default timings on loopback, with
// two more agents so gossip has peers to confirm the death: the killed
// one is down within 15 s (unreachable first: its stream closes at once
// while gossip still thinks it alive), and the stopped one is left, at
// once and for good, never stale, unreachable or down.
func TestE2EKilledAgentIsDown(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	h.StartController(e2e.ControllerOptions{HeartbeatInterval: defaultHeartbeat})
	ids := []string{"victim", "leaver", "peer-1", "peer-2"}
	agents := map[string]*e2e.Agent{}
	tok := h.Token("production", 0)
	for _, id := range ids {
		a := h.NewAgent(id, e2e.AgentOptions{})
		a.MustEnroll(tok)
		a.Start()
		agents[id] = a
	}
	for _, id := range ids {
		h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	}

	log := newStateLog(h)
	agents["leaver"].Signal(syscall.SIGTERM)
	agents["victim"].Kill()
	log.until(t, downWithin+10*time.Second, "the killed agent down and the stopped one left", func(nodes map[string]e2e.Node) bool {
		return nodes["victim"].State == e2e.Down && nodes["leaver"].State == e2e.Left
	})
	// Past the heartbeat deadline (counted from the stop): the goodbye must
	// not turn into stale or down, and down must not flap back.
	log.watch(t, staleAfter+time.Second-log.elapsed())
	if code, ok := agents["leaver"].Wait(e2e.StopTimeout); !ok || code != 0 {
		t.Errorf("stopped agent: exit code %d (exited: %v), want 0", code, ok)
	}

	down, _ := log.first("victim", e2e.Down)
	notHealthy, firstState := log.firstOutside("victim", e2e.Healthy)
	left, _ := log.first("leaver", e2e.Left)
	t.Logf("SIGKILLed agent: %s after %v, down after %v; states: %s", firstState, notHealthy.Round(10*time.Millisecond), down.Round(10*time.Millisecond), log.history("victim"))
	t.Logf("SIGTERMed agent: left after %v; states: %s", left.Round(10*time.Millisecond), log.history("leaver"))
	if down > downWithin {
		t.Errorf("killed agent down after %v, want within %v at default timings", down, downWithin)
	}
	nodes := log.latest()
	if n := nodes["victim"]; n.State != e2e.Down || n.GossipState != "dead" || n.Connected {
		t.Errorf("killed agent at the end: %s, gossip %q, connected %v (%s); want down, gossip dead, not connected", n.State, n.GossipState, n.Connected, n.StateReason)
	}
	if n := nodes["leaver"]; n.State != e2e.Left || n.Connected {
		t.Errorf("stopped agent at the end: %s, connected %v (%s); want left, not connected", n.State, n.Connected, n.StateReason)
	}
	checks := map[string][]e2e.State{
		// Never left (that means a goodbye) and never back to healthy.
		"victim": {e2e.Unreachable, e2e.Suspect, e2e.Stale, e2e.Down},
		"leaver": {e2e.Left},
		"peer-1": {e2e.Healthy},
		"peer-2": {e2e.Healthy},
	}
	for id, allowed := range checks {
		if id == "victim" || id == "leaver" {
			// Seen healthy only until the first poll after the signal.
			allowed = append(allowed, e2e.Healthy)
		}
		if bad := log.outside(id, allowed...); bad != "" {
			t.Errorf("%s was %s; states seen: %s", id, bad, log.history(id))
		}
	}
	if bad := log.afterFirst("victim", e2e.Down); bad != "" {
		t.Errorf("killed agent was %s after being down; states seen: %s", bad, log.history("victim"))
	}
	if log.returned("victim", e2e.Healthy) {
		t.Errorf("killed agent was healthy again after being %s; states seen: %s", firstState, log.history("victim"))
	}
	if log.returned("leaver", e2e.Healthy) {
		t.Errorf("stopped agent was healthy again after leaving; states seen: %s", log.history("leaver"))
	}
}

// stateLog polls `ferryctl nodes` and records every state each node is
// seen in and when, counted from the log's start (an event such as a
// kill or a cut). A time is when the poll that saw the state returned:
// at most one poll (about 0.2 s) after the change.
type stateLog struct {
	h     *e2e.Harness
	start time.Time
	last  map[string]e2e.Node
	seen  map[string][]stateChange
}

type stateChange struct {
	after  time.Duration
	state  e2e.State
	reason string
}

func newStateLog(h *e2e.Harness) *stateLog {
	return &stateLog{h: h, start: time.Now(), seen: map[string][]stateChange{}}
}

func (l *stateLog) elapsed() time.Duration { return time.Since(l.start) }

func (l *stateLog) poll() map[string]e2e.Node {
	nodes := l.h.Nodes()
	at := l.elapsed()
	for id, n := range nodes {
		ch := l.seen[id]
		if len(ch) == 0 || ch[len(ch)-1].state != n.State {
			l.seen[id] = append(ch, stateChange{after: at, state: n.State, reason: n.StateReason})
		}
	}
	l.last = nodes
	return nodes
}

func (l *stateLog) latest() map[string]e2e.Node { return l.last }

// until polls until cond holds and fails the test at timeout.
func (l *stateLog) until(t *testing.T, timeout time.Duration, what string, cond func(map[string]e2e.Node) bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond(l.poll()) {
			return
		}
		if time.Now().After(deadline) {
			var b strings.Builder
			for _, id := range slices.Sorted(maps.Keys(l.seen)) {
				fmt.Fprintf(&b, "\n  %s: %s", id, l.history(id))
			}
			t.Fatalf("timed out after %v waiting for %s; states seen:%s", timeout, what, b.String())
		}
		time.Sleep(e2e.PollInterval)
	}
}

// watch keeps polling for d.
func (l *stateLog) watch(t *testing.T, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		l.poll()
		if !time.Now().Before(end) {
			return
		}
		time.Sleep(e2e.PollInterval)
	}
}

// first is when id was first seen in state, and that sighting.
func (l *stateLog) first(id string, state e2e.State) (time.Duration, stateChange) {
	for _, c := range l.seen[id] {
		if c.state == state {
			return c.after, c
		}
	}
	return 0, stateChange{}
}

// firstOutside is when id was first seen in a state other than state,
// and which.
func (l *stateLog) firstOutside(id string, state e2e.State) (time.Duration, e2e.State) {
	for _, c := range l.seen[id] {
		if c.state != state {
			return c.after, c.state
		}
	}
	return 0, ""
}

// outside names the first state id was seen in that is not allowed, or "".
func (l *stateLog) outside(id string, allowed ...e2e.State) e2e.State {
	for _, c := range l.seen[id] {
		if !slices.Contains(allowed, c.state) {
			return c.state
		}
	}
	return ""
}

// afterFirst names a state id was seen in after it was first in state, or "".
func (l *stateLog) afterFirst(id string, state e2e.State) e2e.State {
	ch := l.seen[id]
	for i, c := range ch {
		if c.state == state {
			if i+1 < len(ch) {
				return ch[i+1].state
			}
			return ""
		}
	}
	return ""
}

// returned reports whether id was seen in state again after it had left
// it.
func (l *stateLog) returned(id string, state e2e.State) bool {
	ch := l.seen[id]
	left := false
	for _, c := range ch {
		if c.state != state {
			left = true
		} else if left {
			return true
		}
	}
	return false
}

// history is id's states with the time each was first seen, e.g.
// "healthy@0s unreachable@11.2s (stream up, ...)".
func (l *stateLog) history(id string) string {
	var parts []string
	for _, c := range l.seen[id] {
		parts = append(parts, fmt.Sprintf("%s@%v (%s)", c.state, c.after.Round(100*time.Millisecond), c.reason))
	}
	if len(parts) == 0 {
		return "not listed"
	}
	return strings.Join(parts, " -> ")
}
