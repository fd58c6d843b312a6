package e2e_test

import (
	"maps"
	"strings"
	"testing"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// Labels are the admin's: the token grants some and allows others, a
// node asking for any other is refused (by the agent itself when the
// syntax is wrong), an admin relabels with `ferryctl node label`, and a
// removed node shows only with `ferryctl nodes --all`.
func TestE2ETokenAllowsLabels(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	h.StartController(e2e.ControllerOptions{HeartbeatInterval: hb})
	tok := h.CreateToken(e2e.TokenOptions{Group: "staging", Labels: []string{"tier=web"}, AllowLabels: []string{"rack=*", "dc=sh1"}})

	refused := h.NewAgent("asks-role", e2e.AgentOptions{Labels: map[string]string{"rack": "r1", "role": "db"}})
	r := refused.Enroll(tok)
	if r.Exit != 1 || !strings.Contains(r.Stderr, "label role=db is not allowed by the join token (it allows rack=*, dc=sh1)") {
		t.Errorf("enroll asking for role=db: want exit 1 naming the label and the allowed ones\n%s", r)
	}
	if files := refused.StateFiles(); len(files) != 0 {
		t.Errorf("refused enrollment wrote %v to the state dir", files)
	}
	bad := h.NewAgent("bad-syntax", e2e.AgentOptions{Labels: map[string]string{"rack": strings.Repeat("r", 64)}})
	if r := bad.Enroll(tok); r.Exit == 0 || !strings.Contains(r.Stderr, "at most 63 characters") {
		t.Errorf("enroll with a 64-character value: want refused by the agent naming the limit\n%s", r)
	}

	a := h.NewAgent("web-1", e2e.AgentOptions{Labels: map[string]string{"rack": "r7", "dc": "sh1"}})
	a.MustEnroll(tok)
	a.Start()
	n := h.WaitNodeState("web-1", e2e.Healthy, healthyWithin)
	if want := map[string]string{"group": "staging", "tier": "web", "rack": "r7", "dc": "sh1"}; !maps.Equal(n.Labels, want) {
		t.Errorf("labels %v, want %v (facts such as os are not labels)", n.Labels, want)
	}
	if _, ok := h.Nodes()["asks-role"]; ok {
		t.Error("the refused node is listed")
	}

	out := h.MustCtl("node", "label", "web-1", "role=db", "rack-")
	if !strings.Contains(out, "node web-1 labeled: dc=sh1,role=db,tier=web") {
		t.Errorf("ferryctl node label printed %q", out)
	}
	if n := h.Nodes()["web-1"]; n.Labels["role"] != "db" || n.Labels["rack"] != "" {
		t.Errorf("labels after ferryctl node label: %v, want role=db and no rack", n.Labels)
	}

	h.MustCtl("node", "remove", "web-1")
	if out := h.MustCtl("nodes"); strings.Contains(out, "web-1") {
		t.Errorf("ferryctl nodes lists the removed node:\n%s", out)
	}
	if out := h.MustCtl("nodes", "--all"); !strings.Contains(out, "web-1") || !strings.Contains(out, "removed") {
		t.Errorf("ferryctl nodes --all does not list the removed node:\n%s", out)
	}
}
