package agent

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/identity"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/gossip"
)

// The agent takes the gossip key from its welcome (a rotation it missed)
// and from the stream (a rotation now), stores it for its next start and
// moves its gossip member to it on the controller's schedule.
func TestGossipKeyFollowsTheController(t *testing.T) {
	enrolledKey, missed, rotated := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)
	welcomed := make(chan *agentStream, 1)
	ta := newTestAgent(t, agentOptions{
		config: func(c *Config) {
			c.Gossip = GossipConfig{Addr: "127.0.0.1:0", Profile: "local"}
			giveGossipKey(t, c.StateDir, enrolledKey)
		},
		script: func(s *agentStream) error {
			if err := s.stream.Send(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Welcome{Welcome: &ferryv1.Welcome{
				HeartbeatInterval: durationpb.New(time.Hour),
				GossipKey:         &ferryv1.GossipKey{Key: missed, Generation: 2, SwitchIn: durationpb.New(0), RetirePreviousIn: durationpb.New(0)},
			}}}); err != nil {
				return err
			}
			welcomed <- s
			return <-s.end
		},
	})
	ta.run()
	var s *agentStream
	select {
	case s = <-welcomed:
	case <-time.After(waitFor):
		t.Fatal("the agent opened no stream")
	}
	t.Cleanup(func() { s.end <- nil })
	ta.waitGossipKeys(t, "the welcome's key, the enrolled one dropped at once", missed)
	ta.wantStoredKey(t, missed, 2)

	const switchIn, retireIn = time.Second, time.Second
	if err := s.stream.Send(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_GossipKey{GossipKey: &ferryv1.GossipKey{
		Key: rotated, Generation: 3, SwitchIn: durationpb.New(switchIn), RetirePreviousIn: durationpb.New(retireIn)}}}); err != nil {
		t.Fatal(err)
	}
	ta.waitGossipKeys(t, "the rotated key installed, the old one still primary", missed, rotated)
	ta.waitGossipKeys(t, "the rotated key primary, the old one kept", rotated, missed)
	ta.waitGossipKeys(t, "only the rotated key", rotated)
	ta.wantStoredKey(t, rotated, 3)
	ta.logs.wait(t, "INFO", "gossip key rotated")
}

// giveGossipKey writes a gossip key and label into the identity in
// stateDir, as enrollment with a gossiping controller leaves them.
func giveGossipKey(t *testing.T, stateDir string, key []byte) {
	t.Helper()
	path := filepath.Join(stateDir, "identity.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var info identity.Info
	if err := json.Unmarshal(data, &info); err != nil {
		t.Fatal(err)
	}
	info.GossipKey, info.GossipLabel = key, "ferry-test"
	if data, err = json.Marshal(info); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// waitGossipKeys waits until the agent's member holds exactly want,
// primary first.
func (ta *testAgent) waitGossipKeys(t *testing.T, what string, want ...[]byte) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	var got [][]byte
	for time.Now().Before(deadline) {
		ta.mu.Lock()
		m := ta.member
		ta.mu.Unlock()
		if m != nil {
			if got = m.Keys(); slices.EqualFunc(got, want, bytes.Equal) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the agent's gossip member never held %s: has %d keys", what, len(got))
}

// wantStoredKey checks the key a restarted agent would start gossip with.
func (ta *testAgent) wantStoredKey(t *testing.T, key []byte, generation uint64) {
	t.Helper()
	id, err := identity.Load(ta.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if k, gen := id.GossipKey(); !bytes.Equal(k, key) || gen != generation {
		t.Errorf("stored gossip key of generation %d (right key %v), want generation %d", gen, bytes.Equal(k, key), generation)
	}
}

// With several controllers a welcome's seeds may name one that is gone:
// the agent joins through those that answer, and sees them alive.
func TestGossipJoinsPastADeadSeed(t *testing.T) {
	key := bytes.Repeat([]byte{4}, 32)
	live, err := gossip.Start(gossip.Config{NodeName: "controller-b", BindAddr: "127.0.0.1", Key: key, Label: "ferry-test", Profile: gossip.ProfileLocal,
		Meta: gossip.Meta{NodeID: "controller-b", Role: gossip.RoleController}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.Shutdown() })
	dead, err := net.Listen("tcp", "127.0.0.1:0") // a port nothing answers on once closed
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	ta := newTestAgent(t, agentOptions{
		config: func(c *Config) {
			c.Gossip = GossipConfig{Addr: "127.0.0.1:0", Profile: "local"}
			giveGossipKey(t, c.StateDir, key)
		},
		script: func(s *agentStream) error {
			if err := s.stream.Send(&ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Welcome{Welcome: &ferryv1.Welcome{
				HeartbeatInterval: durationpb.New(time.Hour), GossipSeeds: []string{deadAddr, live.Addr()},
			}}}); err != nil {
				return err
			}
			return <-s.end
		},
	})
	ta.run()
	ta.logs.wait(t, "INFO", "joined gossip cluster")
	for deadline := time.Now().Add(waitFor); ; time.Sleep(10 * time.Millisecond) {
		if st, ok := live.State("n1"); ok && st == gossip.StateAlive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the live controller's member never saw the agent alive")
		}
	}
}
