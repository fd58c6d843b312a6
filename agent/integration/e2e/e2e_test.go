package e2e_test

import (
	"bytes"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// hb is the heartbeat interval every test's controller hands out.
const hb = e2e.DefaultHeartbeatInterval

// healthyWithin bounds enrollment-to-healthy and reconnects.
const healthyWithin = 15 * time.Second

// startFleet starts a controller and agents in groups (node ID -> group)
// and waits until all are healthy and alive in gossip.
func startFleet(t *testing.T, nodes map[string]string) (*e2e.Harness, *e2e.Controller, map[string]*e2e.Agent) {
	t.Helper()
	h := e2e.New(t)
	c := h.StartController(e2e.ControllerOptions{HeartbeatInterval: hb})
	agents := map[string]*e2e.Agent{}
	for id, group := range nodes {
		agents[id] = h.Agent(id, group)
	}
	for id := range nodes {
		h.WaitNode(id, healthyWithin, "healthy and alive in gossip", healthyAndAlive)
	}
	return h, c, agents
}

func healthyAndAlive(n e2e.Node) bool {
	return n.State == e2e.Healthy && n.GossipState == "alive"
}

func TestE2EFleetEnrollsAndShowsHealthy(t *testing.T) {
	t.Parallel()
	groups := map[string]string{"stage-1": "staging", "prod-1": "production", "prod-2": "production"}
	h, _, _ := startFleet(t, groups)

	agentVersion := strings.Fields(h.Exec(nil, h.Bin(e2e.AgentBinary), "--version").Stdout)[1]
	nodes := h.Nodes()
	if len(nodes) != len(groups) {
		t.Errorf("ferryctl nodes lists %d nodes, want %d: %v", len(nodes), len(groups), nodes)
	}
	for id, group := range groups {
		n := nodes[id]
		if n.Group != group || !n.Connected || n.AgentVersion != agentVersion || n.LastHeartbeat.IsZero() {
			t.Errorf("node %s = group %q, connected %v, version %q, last heartbeat %v; want group %q, connected, version %q, a heartbeat",
				id, n.Group, n.Connected, n.AgentVersion, n.LastHeartbeat, group, agentVersion)
		}
	}

	t.Run("table", func(t *testing.T) {
		out, stderr, code := h.Ctl("nodes")
		if code != 0 {
			t.Fatalf("ferryctl nodes: exit %d: %s", code, stderr)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 1+len(groups) {
			t.Fatalf("ferryctl nodes printed %d lines, want a header and %d nodes:\n%s", len(lines), len(groups), out)
		}
		for _, col := range []string{"NODE", "GROUP", "STATE", "HEARTBEAT", "VERSION", "ADDRESS"} {
			if !strings.Contains(lines[0], col) {
				t.Errorf("header %q has no %s column", lines[0], col)
			}
		}
		for _, line := range lines[1:] {
			f := strings.Fields(line)
			if len(f) < 6 || groups[f[0]] == "" || f[1] != groups[f[0]] || f[2] != "healthy" || !slices.Contains(f, agentVersion) {
				t.Errorf("row %q: want node, its group, healthy and version %s", line, agentVersion)
			}
		}
	})

	t.Run("filters", func(t *testing.T) {
		prod := h.Nodes("--group", "production")
		if len(prod) != 2 || prod["prod-1"].ID == "" || prod["prod-2"].ID == "" {
			t.Errorf("ferryctl nodes --group production = %v, want prod-1 and prod-2", slices.Sorted(maps.Keys(prod)))
		}
		if stale := h.Nodes("--state", "stale"); len(stale) != 0 {
			t.Errorf("ferryctl nodes --state stale = %v, want none", slices.Sorted(maps.Keys(stale)))
		}
	})

	t.Run("controller HTTP", func(t *testing.T) {
		c := h.Controller()
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body := c.HTTPGet(path); code != 200 {
				t.Errorf("GET %s = %d %q, want 200", path, code, body)
			}
		}
		code, body := c.HTTPGet("/metrics")
		if code != 200 || !strings.Contains(body, "ferry_") {
			t.Errorf("GET /metrics = %d with no ferry_ metrics", code)
		}
	})
}

func TestE2EKilledAgentIsNotHealthyThenRecovers(t *testing.T) {
	t.Parallel()
	h, _, agents := startFleet(t, map[string]string{"victim": "production", "bystander": "production"})

	killed := time.Now()
	agents["victim"].Kill()
	// Stale (heartbeat only) or, once gossip decides, unreachable, suspect or
	// down: anything but healthy, and never left, which means goodbye.
	n := h.WaitNode("victim", 3*hb+3*time.Second, "not healthy after SIGKILL", func(n e2e.Node) bool {
		return n.State != e2e.Healthy
	})
	t.Logf("SIGKILLed agent shown %s after %v (%s)", n.State, time.Since(killed).Round(10*time.Millisecond), n.StateReason)
	switch n.State {
	case e2e.Stale, e2e.Unreachable, e2e.Suspect, e2e.Down:
	default:
		t.Errorf("killed agent is %s (%s), want stale, unreachable, suspect or down", n.State, n.StateReason)
	}
	if b := h.Nodes()["bystander"]; b.State != e2e.Healthy {
		t.Errorf("bystander is %s (%s) after another agent died, want healthy", b.State, b.StateReason)
	}

	// Back on the same gossip port, it is healthy and alive in gossip again.
	agents["victim"].Start()
	h.WaitNode("victim", healthyWithin, "healthy and alive in gossip after a restart", healthyAndAlive)
}

func TestE2EFrozenAgentIsNotHealthyThenRecovers(t *testing.T) {
	t.Parallel()
	h, _, agents := startFleet(t, map[string]string{"frozen": "staging"})
	// SIGSTOP keeps the agent's connection open but stops its heartbeats:
	// only the heartbeat deadline can notice.
	agents["frozen"].Pause()
	paused := time.Now()
	n := h.WaitNode("frozen", 3*hb+3*time.Second, "not healthy after its heartbeats stopped", func(n e2e.Node) bool {
		return n.State != e2e.Healthy
	})
	t.Logf("frozen agent shown %s after %v (%s)", n.State, time.Since(paused).Round(10*time.Millisecond), n.StateReason)
	if n.State == e2e.Left || n.State == e2e.Removed {
		t.Errorf("frozen agent is %s (%s), want stale, unreachable, suspect or down", n.State, n.StateReason)
	}
	if since := time.Since(paused); since < 2*hb {
		t.Errorf("frozen agent declared %s after only %v: heartbeats are every %v", n.State, since, hb)
	}
	agents["frozen"].Resume()
	h.WaitNode("frozen", healthyWithin, "healthy and alive in gossip after resuming", healthyAndAlive)
}

func TestE2EStoppedAgentLeaves(t *testing.T) {
	t.Parallel()
	h, _, agents := startFleet(t, map[string]string{"leaver": "staging"})
	if code := agents["leaver"].Stop(); code != 0 {
		t.Errorf("agent exited %d after SIGTERM, want 0", code)
	}
	n := h.WaitNodeState("leaver", e2e.Left, 3*hb+3*time.Second)
	if n.Connected {
		t.Errorf("left node still shown connected")
	}
	// It stays left: past the heartbeat deadline a goodbye must not turn
	// into stale or down.
	time.Sleep(3*hb + time.Second)
	if n := h.Nodes()["leaver"]; n.State != e2e.Left {
		t.Errorf("stopped agent is %s (%s) %v after leaving, want still left", n.State, n.StateReason, 3*hb+time.Second)
	}
}

func TestE2ERemovedNodeIsRefused(t *testing.T) {
	t.Parallel()
	h, _, agents := startFleet(t, map[string]string{"gone": "production", "kept": "production"})
	a := agents["gone"]

	out := h.MustCtl("node", "remove", "gone")
	if !strings.Contains(out, "gone") {
		t.Errorf("ferryctl node remove printed %q, want the node named", out)
	}
	h.WaitNodeState("gone", e2e.Removed, 5*time.Second)
	// The running agent's stream is closed; its reconnects are refused.
	a.WaitLog("was removed", 10*time.Second)

	// A restart does not bring it back either.
	a.Kill()
	a.Start()
	line := a.WaitLog("was removed", 10*time.Second)
	if !strings.Contains(line, "re-enroll") {
		t.Errorf("refusal %q does not say how to come back (re-enroll)", line)
	}
	time.Sleep(2 * hb)
	nodes := h.Nodes()
	if n := nodes["gone"]; n.State != e2e.Removed || n.Connected {
		t.Errorf("removed node after reconnect attempts: %s, connected %v; want removed, not connected", n.State, n.Connected)
	}
	if n := nodes["kept"]; n.State != e2e.Healthy {
		t.Errorf("other node is %s, want healthy", n.State)
	}
}

func TestE2EControllerRestart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		stop func(*testing.T, *e2e.Controller)
	}{
		{"SIGTERM", func(t *testing.T, c *e2e.Controller) {
			if code := c.Stop(); code != 0 {
				t.Errorf("controller exited %d after SIGTERM, want 0", code)
			}
		}},
		{"SIGKILL", func(_ *testing.T, c *e2e.Controller) { c.Kill() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, c, _ := startFleet(t, map[string]string{"a1": "staging", "a2": "production"})
			before := h.Nodes()
			pin, grpcAddr, httpAddr := c.CAPin, c.GRPCAddr, c.HTTPAddr
			admin, err := os.ReadFile(c.AdminConfig)
			if err != nil {
				t.Fatal(err)
			}

			tc.stop(t, c)
			c.Start()

			if c.CAPin != pin {
				t.Errorf("CA pin changed across restart: %s, was %s", c.CAPin, pin)
			}
			if c.GRPCAddr != grpcAddr || c.HTTPAddr != httpAddr {
				t.Errorf("addresses changed across restart: %s %s, were %s %s", c.GRPCAddr, c.HTTPAddr, grpcAddr, httpAddr)
			}
			if after, err := os.ReadFile(c.AdminConfig); err != nil || !bytes.Equal(after, admin) {
				t.Errorf("admin credential %s changed across restart (err %v)", c.AdminConfig, err)
			}
			// The old admin credential still works and the agents are back
			// on new connections (a new client port).
			for _, id := range []string{"a1", "a2"} {
				h.WaitNode(id, healthyWithin, "healthy on a new connection", func(n e2e.Node) bool {
					return healthyAndAlive(n) && n.Address != "" && n.Address != before[id].Address
				})
			}
			// Tokens created before the restart are still known.
			if out := h.MustCtl("token", "list"); strings.Count(out, "used up") != 2 {
				t.Errorf("token list after restart does not show the two used tokens:\n%s", out)
			}
		})
	}
}

func TestE2EEnrollRefused(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	h.StartController(e2e.ControllerOptions{})

	expiresAt := time.Now().Add(time.Second)
	expired := h.CreateToken(e2e.TokenOptions{Group: "staging", TTL: time.Second})
	usedUp := h.Token("staging", 1)
	h.NewAgent("first", e2e.AgentOptions{}).MustEnroll(usedUp)
	revoked := h.Token("staging", 0)
	h.MustCtl("token", "revoke", revoked.ID)
	wrongPin := h.Token("staging", 0)
	wrongPin.CAPin = "sha256:" + strings.Repeat("ab", 32)
	time.Sleep(time.Until(expiresAt.Add(100 * time.Millisecond)))

	for _, tc := range []struct {
		name string
		tok  e2e.Token
		want *regexp.Regexp
	}{
		{"expired token", expired, regexp.MustCompile(`token \S+ expired`)},
		{"used-up token", usedUp, regexp.MustCompile(`token \S+ is used up`)},
		{"revoked token", revoked, regexp.MustCompile(`token \S+ was revoked`)},
		{"wrong CA pin", wrongPin, regexp.MustCompile(`CA pin mismatch.*--ca-pin`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := strings.ToLower(strings.ReplaceAll(tc.name, " ", "-"))
			a := h.NewAgent(id, e2e.AgentOptions{})
			r := a.Enroll(tc.tok)
			if r.Exit != 1 {
				t.Errorf("enroll exit code = %d, want 1\n%s", r.Exit, r)
			}
			if !tc.want.MatchString(r.Stderr) {
				t.Errorf("enroll error %q does not match %q", r.Stderr, tc.want)
			}
			if files := a.StateFiles(); len(files) != 0 {
				t.Errorf("refused enrollment wrote %v to the state dir", files)
			}
			if _, ok := h.Nodes()[id]; ok {
				t.Errorf("refused node %s is listed by ferryctl nodes", id)
			}
		})
	}
}

func TestE2EVersionFlags(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	// ferry-controller 5888cd0-dirty (commit 5888cd0, go1.26.8, linux/amd64)
	re := regexp.MustCompile(`^(ferry-controller|ferry-agent|ferryctl) (\S+) \(commit (\S+), go\S+, \S+/\S+\)\n$`)
	want := os.Getenv("FERRY_VERSION")
	versions := map[string]bool{}
	for _, tc := range []struct {
		bin  string
		args []string
	}{
		{e2e.ControllerBinary, []string{"--version"}},
		{e2e.AgentBinary, []string{"--version"}},
		{e2e.AgentBinary, []string{"version"}},
		{e2e.CtlBinary, []string{"--version"}},
		{e2e.CtlBinary, []string{"version"}},
	} {
		r := h.Exec(nil, h.Bin(tc.bin), tc.args...)
		m := re.FindStringSubmatch(r.Stdout)
		if r.Exit != 0 || m == nil || m[1] != tc.bin {
			t.Errorf("%s %s: %s; want %q", tc.bin, strings.Join(tc.args, " "), r, re)
			continue
		}
		if m[2] == "dev" || m[3] == "unknown" {
			t.Errorf("%s %s prints %q: the version is not stamped (build with make build)", tc.bin, tc.args[0], strings.TrimSpace(r.Stdout))
		}
		if want != "" && m[2] != want {
			t.Errorf("%s %s prints version %s, want FERRY_VERSION=%s", tc.bin, tc.args[0], m[2], want)
		}
		versions[m[2]+" "+m[3]] = true
	}
	if len(versions) != 1 {
		t.Errorf("the binaries print different versions: %v", versions)
	}
}

// TestE2EDemoScript runs `make demo`'s script against the built binaries in
// a scratch folder, so the demo cannot rot unnoticed.
func TestE2EDemoScript(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	script, err := filepath.Abs("../../../deployments/demo/demo.sh")
	if err != nil {
		t.Fatal(err)
	}
	demoDir := filepath.Join(h.Dir(), "demo")
	// DEMO_TIMEOUT bounds each step's wait, it claims no speed: the canary
	// installs the 74 MiB toolchain while the rest of this package runs
	// beside it, and took 22 s on a loaded 2-core CI machine.
	r := h.ExecTimeout(5*time.Minute, []string{"FERRY_BIN=" + filepath.Dir(h.Bin(e2e.CtlBinary)), "DEMO_DIR=" + demoDir, "DEMO_TIMEOUT=90"}, "bash", script)
	if r.Exit != 0 {
		t.Fatalf("demo.sh failed: %s", r)
	}
	// The fleet table while running, then again after the agents left.
	for _, id := range []string{"staging-1", "prod-1", "prod-2"} {
		if !regexp.MustCompile(`(?m)^` + id + `\s+\S+\s+healthy\s`).MatchString(r.Stdout) {
			t.Errorf("demo output shows no healthy %s:\n%s", id, r.Stdout)
		}
		if !regexp.MustCompile(`(?m)^` + id + `\s+\S+\s+left\s`).MatchString(r.Stdout) {
			t.Errorf("demo output does not show %s left after the agents stopped:\n%s", id, r.Stdout)
		}
	}
	// The story: a tampered push refused, staging and production rolled
	// out, the toolchain runs from a node's install root, the undo worked.
	for _, want := range []string{
		"sha256 mismatch",
		"go version go",
		"3/3 done  succeeded 3  | succeeded",
		"undo ro-",
		" → removed: rollback", // the undo plan, per node, after an aborted rollout
		"/usr/local/go is gone again",
		"see why: ferryctl logs ro-",
		// prod-4, enrolled after the production rollout, caught up by itself.
		"catch-up ro-",
		"every node is on the desired versions",
		"systemctl restart -- myapp.service",
		"myapp.service was restarted on it (active)",
	} {
		if !strings.Contains(r.Stdout+r.Stderr, want) {
			t.Errorf("demo output lacks %q:\n%s", want, r)
		}
	}
	// ferryctl logs --failed of the node whose check failed: its stderr
	// line under the check's step.
	if !regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT[\d:.]+Z prod-2 stderr \[check: .*\] motd\.broken is present$`).MatchString(r.Stdout) {
		t.Errorf("demo output lacks prod-2's failing check in ferryctl logs --failed:\n%s", r.Stdout)
	}
	// Nothing it started is still running.
	if out, _ := exec.Command("pgrep", "-f", demoDir).Output(); len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("processes still running after the demo: pids %s", out)
	}
}
