package e2e_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferrydeploy/ferry/agent/integration/e2e"
)

// TestE2EAgentStateDirLock: a second agent on a running agent's state dir
// refuses to start and names the first; once the first is killed (no
// clean exit, so no chance to tidy up) the dir is free again.
func TestE2EAgentStateDirLock(t *testing.T) {
	t.Parallel()
	h, _, agents := startFleet(t, map[string]string{"lock-1": "staging"})
	a := agents["lock-1"]

	r := h.ExecTimeout(20*time.Second, nil, h.Bin(e2e.AgentBinary), "run", "--config=", "--state-dir", a.StateDir, "--root", a.Root, "--gossip-listen", "")
	want := fmt.Sprintf("state dir %s is in use by process %d (%s run", a.StateDir, a.PID(), h.Bin(e2e.AgentBinary))
	if r.Exit == 0 || !strings.Contains(r.Stderr, want) || !strings.Contains(r.Stderr, "another ferry-agent runs on it") {
		t.Fatalf("second agent on the same state dir: %s; want a non-zero exit and %q", r, want)
	}
	if got := h.Nodes()["lock-1"]; !got.Connected {
		t.Errorf("the first agent lost its stream to the refused second one: %+v", got)
	}

	a.Kill()
	a.Start()
	h.WaitNode("lock-1", healthyWithin, "healthy again after a kill -9 and restart", healthyAndAlive)
}

// TestE2EConfigReload: both daemons read their settings from a config
// file; SIGHUP applies the live ones (logged, and in effect: debug lines
// appear, agents heartbeat at the new interval) and names those that need
// a restart.
func TestE2EConfigReload(t *testing.T) {
	t.Parallel()
	h := e2e.New(t)
	dir := t.TempDir()
	ctlConfig := filepath.Join(dir, "controller.yaml")
	agentConfig := filepath.Join(dir, "agent.yaml")
	write := func(p, text string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(ctlConfig, "log-level: info\nheartbeat-interval: 1s\ngossip-profile: local\n")
	write(agentConfig, "log-level: info\nreconnect-max: 2s\ngossip-profile: local\n")
	c := h.StartController(e2e.ControllerOptions{ConfigFile: ctlConfig})
	a := h.NewAgent("reload-1", e2e.AgentOptions{ConfigFile: agentConfig})
	a.MustEnroll(h.Token("staging", 1))
	a.Start()
	h.WaitNode("reload-1", healthyWithin, "healthy", healthyAndAlive)
	a.WaitLog(`"heartbeat_interval":1000000000`, 5*time.Second)

	// A client that fails the TLS handshake is logged at debug level only.
	handshakeFails := func() {
		t.Helper()
		conn, err := net.Dial("tcp", c.GRPCAddr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte("not TLS\r\n\r\n"))
		// The controller logs the failure, then closes: waiting for the
		// close orders its log line before the reload below.
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.Copy(io.Discard, conn)
		_ = conn.Close()
	}
	handshakeFails()

	write(ctlConfig, "log-level: debug\nheartbeat-interval: 2s\ngossip-profile: local\nmax-downloads: 3\nagent-cert-ttl: 1h\n")
	c.Signal(syscall.SIGHUP)
	for _, want := range []string{
		`"msg":"config reloaded: setting changed","key":"heartbeat-interval","old":"1s","new":"2s"`,
		`"msg":"config reloaded: setting changed","key":"max-downloads","old":"8","new":"3"`,
		`"msg":"config reloaded: setting changed","key":"log-level","old":"info","new":"debug"`,
		`"msg":"config changed but this setting needs a restart; the running value stays until then","key":"agent-cert-ttl","running":"720h0m0s","file":"1h0m0s"`,
	} {
		c.WaitLog(want, 10*time.Second)
	}
	if strings.Contains(c.Log(), "TLS handshake failed") {
		t.Fatalf("a debug line was logged at level info:\n%s", c.Tail(20))
	}
	handshakeFails()
	c.WaitLog(`"level":"DEBUG","msg":"TLS handshake failed"`, 10*time.Second)

	// The connected agent is told the new interval at once.
	a.WaitLog(`"msg":"controller changed the heartbeat interval","node":"reload-1","old":1000000000,"new":2000000000`, 10*time.Second)

	// The agent: a bad file changes nothing and says where; a good one
	// is applied.
	write(agentConfig, "log-level: loud\n")
	a.Signal(syscall.SIGHUP)
	a.WaitLog(`"msg":"config not reloaded; the running settings stay","node":"reload-1","err":"`+agentConfig+`:1: log-level: \"loud\" is not a log level`, 10*time.Second)
	write(agentConfig, "log-level: debug\nreconnect-max: 5s\ngossip-profile: local\nmetrics-listen: 127.0.0.1:0\n")
	a.Signal(syscall.SIGHUP)
	for _, want := range []string{
		`"key":"reconnect-max","old":"2s","new":"5s"`,
		`"key":"log-level","old":"info","new":"debug"`,
		`"msg":"config changed but this setting needs a restart; the running value stays until then","node":"reload-1","key":"metrics-listen","running":"","file":"127.0.0.1:0"`,
	} {
		a.WaitLog(want, 10*time.Second)
	}
	h.WaitNode("reload-1", 3*2*time.Second+healthyWithin, "healthy at the new interval", healthyAndAlive)
	// Debug is in effect: a clean stop logs how the stream ended.
	if code := a.Stop(); code != 0 {
		t.Errorf("agent exit %d", code)
	}
	if !strings.Contains(a.Log(), `"level":"DEBUG","msg":"stream ended after leaving"`) {
		t.Errorf("no debug line after the reload to debug:\n%s", a.Tail(10))
	}
}
