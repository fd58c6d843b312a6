package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/agentstatus"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// firstStream returns the agent's next stream on whichever of ctls it
// opened it, and that controller's index.
func (ta *testAgent) firstStream(ctls ...*fakeController) (*agentStream, int) {
	ta.t.Helper()
	cases := make(chan struct {
		s *agentStream
		i int
	}, len(ctls))
	stop := make(chan struct{})
	defer close(stop)
	for i, c := range ctls {
		go func() {
			select {
			case s := <-c.streams:
				cases <- struct {
					s *agentStream
					i int
				}{s, i}
			case <-stop:
			}
		}()
	}
	select {
	case got := <-cases:
		got.s.heartbeat(ta.t)
		return got.s, got.i
	case <-time.After(waitFor):
		ta.t.Fatalf("the agent opened no stream within %v", waitFor)
		return nil, 0
	}
}

// A dropped stream moves the agent to its other controller after only
// the shortest, jittered pause; the log says where and why, the status
// (ferry-agent doctor) says where it is, and downloads go there too.
func TestDroppedStreamMovesToTheOtherController(t *testing.T) {
	ta := newTestAgent(t, agentOptions{peers: 1, rand: highDraw})
	ta.run()
	ctls := []*fakeController{ta.ctl, ta.peers[0]}
	addrs := []string{"127.0.0.1:7443", "127.0.0.2:7443"}
	s, i := ta.firstStream(ctls...)
	other := 1 - i

	s.end <- status.Error(codes.Unavailable, "controller is shutting down; reconnect later")
	if d := ta.nextWait(); d >= ta.cfg.BackoffBase+ta.cfg.BackoffBase/2 {
		t.Errorf("the agent waits %v before it moves to the other controller, want the shortest delay (below %v)", d, ta.cfg.BackoffBase*3/2)
	}
	line := ta.logs.wait(t, "WARN", "moving to controller "+addrs[other])
	if !strings.Contains(line, "controller is shutting down") {
		t.Errorf("the log line does not say why the agent left: %s", line)
	}
	ta.redial()
	select {
	case s2 := <-ctls[other].streams:
		s2.heartbeat(t)
	case <-time.After(waitFor):
		t.Fatalf("the agent did not open a stream to %s", addrs[other])
	}
	ta.logs.wait(t, "INFO", "connected to controller "+addrs[other]+", moved from "+addrs[i])

	// The status is written just after the heartbeat.
	var st *agentstatus.Status
	var err error
	for deadline := time.Now().Add(waitFor); ; time.Sleep(10 * time.Millisecond) {
		st, err = agentstatus.Read(ta.cfg.StateDir)
		if err == nil && st.Connected && st.Controller == addrs[other] && len(st.Controllers) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %+v (%v), want connected to %s of both", st, err, addrs[other])
		}
	}

	// A download now asks the controller the agent moved to.
	dl, err := ta.client.DownloadArtifact(context.Background(), &ferryv1.DownloadArtifactRequest{Digest: toolDigest})
	if err == nil {
		_, err = dl.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("download: %v, want the fake controller's NotFound", err)
	}
	if got, left := ctls[other].downloads.Load(), ctls[i].downloads.Load(); got != 1 || left != 0 {
		t.Errorf("downloads asked of %s: %d, of %s (left): %d; want 1 and 0", addrs[other], got, addrs[i], left)
	}
}

// A controller that is down (nothing listens) fails the attempt at once,
// not after the connect timeout, and the agent moves on.
func TestDeadControllerIsPassedQuickly(t *testing.T) {
	// lowDraw starts the turn at the second address, the dead one.
	ta := newTestAgent(t, agentOptions{rand: lowDraw, config: func(c *Config) {
		c.Controllers = []string{"127.0.0.1:7443", "127.0.0.9:7443"}
	}})
	ta.run()
	line := ta.logs.wait(t, "WARN", "moving to controller 127.0.0.1:7443")
	if !strings.Contains(line, "nothing listens at that address (connection refused)") || !strings.Contains(line, "controller=127.0.0.9:7443") {
		t.Errorf("the log line does not name the dead controller and why: %s", line)
	}
	ta.nextWait()
	ta.redial()
	ta.stream()
}
