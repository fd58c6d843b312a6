package agent

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// A controller whose config was reloaded sends the new heartbeat
// interval on the open stream: the agent heartbeats at it from then on.
func TestSettingsChangeTheHeartbeatInterval(t *testing.T) {
	ta := newTestAgent(t, agentOptions{})
	ta.run()
	s := ta.stream() // the welcome said one hour: no second heartbeat comes by itself
	s.send(t, &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Settings{Settings: &ferryv1.AgentSettings{HeartbeatInterval: durationpb.New(10 * time.Millisecond)}}})
	ta.logs.wait(t, "INFO", "controller changed the heartbeat interval")
	for range 3 {
		s.heartbeat(t) // within waitFor only at the new interval
	}
}

// SetBackoffMax (a reload of --reconnect-max) sets the delay after a
// refusal, which waits the longest delay.
func TestSetBackoffMax(t *testing.T) {
	ta := newTestAgent(t, agentOptions{script: func(*agentStream) error {
		return status.Error(codes.PermissionDenied, "node n1 was removed")
	}})
	ta.run()
	if got := ta.nextWait(); got != 10*time.Second {
		t.Fatalf("first wait %v, want the configured 10s", got)
	}
	ta.SetBackoffMax(3 * time.Second)
	ta.redial()
	if got := ta.nextWait(); got != 3*time.Second {
		t.Errorf("wait after SetBackoffMax(3s): %v", got)
	}
}

// A second agent on the same state dir refuses to run and names the
// process that holds it (here: this one).
func TestSecondAgentOnOneStateDir(t *testing.T) {
	ta := newTestAgent(t, agentOptions{})
	ta.run()
	ta.stream()
	cfg := ta.cfg
	cfg.Rand = nil // its own jitter source: a *rand.Rand is not safe to share with the running agent
	second, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = second.Run(context.Background())
	want := fmt.Sprintf("state dir %s is in use by process %d (", ta.cfg.StateDir, os.Getpid())
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.Contains(err.Error(), "another ferry-agent runs on it") {
		t.Fatalf("second Run: %v, want %q...", err, want)
	}
}
