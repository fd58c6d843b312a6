package e2e

import (
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
)

// AgentOptions configure NewAgent.
type AgentOptions struct {
	// Controller overrides the address given to enroll and run
	// (default: the current controller's advertised address for enroll,
	// and what enrollment stored for run).
	Controller string
	// Labels are passed to enroll as --label k=v.
	Labels map[string]string
	// NoGossip runs the agent without memberlist (--gossip-listen "");
	// by default it gossips on a free loopback port, kept across restarts.
	NoGossip bool
	// Args are extra flags for `ferry-agent run`.
	Args []string
	// ConfigFile is passed to run and enroll as --config. Without one the
	// agent reads no config file (--config=), so a host's
	// /etc/ferry/agent.yaml never leaks into a test.
	ConfigFile string
	// Prefix runs the agent (enroll and run) under another command,
	// e.g. []string{"ip", "netns", "exec", "ns2"}.
	Prefix []string
	// UnitConfig runs the agent as its unit does, `run --config
	// UnitConfig` followed by Args, without the harness's flags: the file
	// names the state dir and install root (StateDir and Root say where,
	// for the test). NoGossip and Controller are not used.
	UnitConfig     string
	StateDir, Root string
	// Binary is the ferry-agent to run (default: FERRY_BIN's), e.g. one
	// install.sh installed.
	Binary string
	// Env are extra KEY=value variables for `ferry-agent run`, e.g. a PATH
	// with a stub systemctl first.
	Env []string
}

// Agent is one ferry-agent with its own state dir and install root.
type Agent struct {
	*Process
	opts     AgentOptions
	NodeID   string
	StateDir string // --state-dir
	Root     string // --root, the install root packages land under
	// GossipAddr is the memberlist bind address ("" without gossip).
	GossipAddr string
}

// NewAgent prepares an agent (folders, command line) without enrolling or
// starting it.
func (h *Harness) NewAgent(nodeID string, opts AgentOptions) *Agent {
	h.t.Helper()
	bin := opts.Binary
	if bin == "" {
		bin = h.Bin(AgentBinary)
	}
	if opts.UnitConfig != "" {
		a := &Agent{opts: opts, NodeID: nodeID, StateDir: opts.StateDir, Root: opts.Root}
		a.Process = h.newProcess(nodeID, bin, append([]string{"run", "--config", opts.UnitConfig}, opts.Args...), opts.Prefix)
		a.env = opts.Env
		return a
	}
	a := &Agent{opts: opts, NodeID: nodeID, StateDir: h.path("agents", nodeID, "state"), Root: h.path("agents", nodeID, "root")}
	if err := os.MkdirAll(a.Root, 0o755); err != nil {
		h.t.Fatal(err)
	}
	if !opts.NoGossip {
		a.GossipAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(h.FreePort("127.0.0.1")))
	}
	args := []string{"run", "--config=" + opts.ConfigFile, "--state-dir", a.StateDir, "--root", a.Root, "--gossip-listen", a.GossipAddr}
	if opts.Controller != "" {
		args = append(args, "--controller", opts.Controller)
	}
	a.Process = h.newProcess(nodeID, bin, append(args, opts.Args...), opts.Prefix)
	a.env = opts.Env
	return a
}

// Agent enrolls a new agent in group with a single-use token and starts it.
// It does not wait for the node to be healthy: see WaitNodeState.
func (h *Harness) Agent(nodeID, group string) *Agent {
	h.t.Helper()
	a := h.NewAgent(nodeID, AgentOptions{})
	a.MustEnroll(h.Token(group, 1))
	a.Start()
	return a
}

// Enroll runs `ferry-agent enroll` with tok and returns what it printed
// and its exit code.
func (a *Agent) Enroll(tok Token) Result {
	a.h.t.Helper()
	addr := a.opts.Controller
	if addr == "" {
		addr = a.h.Controller().Advertise
	}
	args := []string{"enroll", "--config=" + a.opts.ConfigFile, "--controller", addr, "--token", tok.Secret, "--ca-pin", tok.CAPin, "--node-id", a.NodeID, "--state-dir", a.StateDir}
	for _, k := range slices.Sorted(maps.Keys(a.opts.Labels)) {
		args = append(args, "--label", k+"="+a.opts.Labels[k])
	}
	argv := append(append(append([]string{}, a.opts.Prefix...), a.h.Bin(AgentBinary)), args...)
	return a.h.Exec(nil, argv[0], argv[1:]...)
}

// MustEnroll enrolls and fails the test unless enrollment succeeds.
func (a *Agent) MustEnroll(tok Token) {
	a.h.t.Helper()
	if r := a.Enroll(tok); r.Exit != 0 {
		a.h.t.Fatalf("enroll %s: %s", a.NodeID, r)
	}
}

// Start runs `ferry-agent run`. It returns once the process is started,
// not when it is connected.
func (a *Agent) Start() {
	a.h.t.Helper()
	a.start()
}

// StateFiles lists the files under the agent's state dir (relative
// paths); empty if the folder does not exist.
func (a *Agent) StateFiles() []string {
	var files []string
	entries, err := os.ReadDir(a.StateDir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		files = append(files, e.Name())
	}
	return files
}

func (a *Agent) String() string { return fmt.Sprintf("agent %s", a.NodeID) }
