package e2e

import (
	"encoding/json"
	"fmt"
	"time"
)

// Node is one node as `ferryctl nodes -o json` shows it.
type Node struct {
	ID            string            `json:"id"`
	Group         string            `json:"group"`
	Labels        map[string]string `json:"labels"`
	State         State             `json:"state"`
	StateReason   string            `json:"state_reason"`
	LastHeartbeat time.Time         `json:"last_heartbeat"`
	AgentVersion  string            `json:"agent_version"`
	Address       string            `json:"address"`
	Connected     bool              `json:"connected"`
	// GossipState is memberlist's view: alive, suspect, dead, left, or ""
	// when gossip does not know the node.
	GossipState string `json:"gossip_state"`
	// Drift is the agent's last check of its installed files, nil before
	// the first.
	Drift *Drift `json:"drift"`
}

// Drift is a node's drift report as `ferryctl nodes -o json` prints it.
type Drift struct {
	Checked  int `json:"checked"`
	Packages []struct {
		Name     string   `json:"name"`
		Version  string   `json:"version"`
		Changed  int      `json:"changed"`
		Examples []string `json:"examples"`
	} `json:"packages"`
}

// State is a node state in the short form the table prints: healthy,
// stale, unreachable, suspect, down, left, removed, pending.
type State string

// The node states.
const (
	Pending     State = "pending"
	Healthy     State = "healthy"
	Stale       State = "stale"
	Unreachable State = "unreachable"
	Suspect     State = "suspect"
	Down        State = "down"
	Left        State = "left"
	Removed     State = "removed"
)

// UnmarshalJSON takes the word ferryctl prints (healthy), the one
// --state takes; anything else is an error, so a change of vocabulary fails
// the tests.
func (s *State) UnmarshalJSON(b []byte) error {
	var v string
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("node state %s: want a string: %w", b, err)
	}
	switch st := State(v); st {
	case Pending, Healthy, Stale, Unreachable, Suspect, Down, Left, Removed:
		*s = st
		return nil
	}
	return fmt.Errorf("node state %q is not one of the words --state takes", v)
}

// Nodes runs `ferryctl nodes -o json --all` (with extra flags such as --group)
// and returns the nodes by ID.
func (h *Harness) Nodes(args ...string) map[string]Node {
	h.t.Helper()
	nodes, err := h.nodes(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return nodes
}

func (h *Harness) nodes(args ...string) (map[string]Node, error) {
	h.t.Helper()
	// --all: tests wait for nodes to be removed, too.
	r := h.ctlResult(append([]string{"nodes", "-o", "json", "--all"}, args...)...)
	if r.Exit != 0 {
		return nil, fmt.Errorf("ferryctl nodes -o json: %s", r)
	}
	var resp struct {
		Nodes []Node `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &resp); err != nil {
		return nil, fmt.Errorf("ferryctl nodes -o json: %w\n%s", err, r.Stdout)
	}
	m := make(map[string]Node, len(resp.Nodes))
	for _, n := range resp.Nodes {
		m[n.ID] = n
	}
	return m, nil
}

// WaitNode polls `ferryctl nodes -o json` until node id satisfies cond and
// returns it; it fails the test at timeout, naming what and the node's
// last state. A failing ferryctl (e.g. the controller restarting) is
// retried until the deadline.
func (h *Harness) WaitNode(id string, timeout time.Duration, what string, cond func(Node) bool) Node {
	h.t.Helper()
	var got Node
	h.WaitFor(fmt.Sprintf("node %s to be %s", id, what), timeout, func() (bool, string) {
		nodes, err := h.nodes()
		if err != nil {
			return false, err.Error()
		}
		n, ok := nodes[id]
		if !ok {
			return false, "not listed"
		}
		got = n
		return cond(n), fmt.Sprintf("%s (%s)", n.State, n.StateReason)
	})
	return got
}

// WaitNodeState waits until node id is in state want.
func (h *Harness) WaitNodeState(id string, want State, timeout time.Duration) Node {
	h.t.Helper()
	return h.WaitNode(id, timeout, string(want), func(n Node) bool { return n.State == want })
}
