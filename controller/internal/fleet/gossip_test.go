package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func TestGossipAddr(t *testing.T) {
	tests := []struct {
		name, peer, asserted, want string
	}{
		{"the stream's IP, the hello's port", "10.0.0.7:40000", "10.0.0.7:7946", "10.0.0.7:7946"},
		{"an asserted host is ignored", "10.0.0.7:40000", "10.9.9.9:7946", "10.0.0.7:7946"},
		{"a bound-everywhere hello", "10.0.0.7:40000", "0.0.0.0:7946", "10.0.0.7:7946"},
		{"IPv6", "[fd00::7]:40000", "[fd00::7]:7946", "[fd00::7]:7946"},
		{"IPv4 in IPv6", "[::ffff:10.0.0.7]:40000", "x:7946", "10.0.0.7:7946"},
		{"no gossip", "10.0.0.7:40000", "", ""},
		{"no port", "10.0.0.7:40000", "10.0.0.7", ""},
		{"port zero", "10.0.0.7:40000", "10.0.0.7:0", ""},
		{"port out of range", "10.0.0.7:40000", "10.0.0.7:70000", ""},
		{"port not a number", "10.0.0.7:40000", "10.0.0.7:http", ""},
		{"peer not host:port", "pipe", "10.0.0.7:7946", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := GossipAddr(tt.peer, tt.asserted); got != tt.want {
				t.Errorf("GossipAddr(%q, %q) = %q, want %q", tt.peer, tt.asserted, got, tt.want)
			}
		})
	}
}

// Gossip shows a node alive only at the address its own stream vouched
// for, so no other key holder can speak for it; the address outlives a
// controller restart.
func TestAdmitGossip(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"), enrolled("gone", "prod"))
	for _, id := range []string{"n1", "gone"} {
		if _, err := f.Attach(context.Background(), id, "10.0.0.7:40000", &ferryv1.AgentHello{GossipAddress: "0.0.0.0:7946"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.Remove("gone", "admin/alice", nil); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, member, addr string
		want               string // "" admitted, else a piece of the reason
	}{
		{"at its stream's address", "n1", "10.0.0.7:7946", ""},
		{"the same address written as IPv4 in IPv6", "n1", "[::ffff:10.0.0.7]:7946", ""},
		{"another port", "n1", "10.0.0.7:7947", "node n1 gossips at 10.0.0.7:7946 by its stream, not at 10.0.0.7:7947"},
		{"another host", "n1", "10.0.0.8:7946", "not at 10.0.0.8:7946"},
		{"never named a port", "n2", "10.0.0.9:7946", "node n2 has not named its gossip port"},
		{"removed", "gone", "10.0.0.7:7946", "node gone was removed"},
		{"not enrolled", "intruder", "10.0.0.7:7946", `"intruder" is not an enrolled node`},
	}
	for _, r := range []struct {
		name string
		reg  *Registry
	}{{"running", f.Registry}, {"after a restart", f.open()}} {
		for _, tt := range tests {
			t.Run(r.name+"/"+tt.name, func(t *testing.T) {
				err := r.reg.AdmitGossip(tt.member, tt.addr)
				switch {
				case tt.want == "" && err != nil:
					t.Errorf("AdmitGossip(%s, %s): %v, want admitted", tt.member, tt.addr, err)
				case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
					t.Errorf("AdmitGossip(%s, %s): %v, want refused with %q", tt.member, tt.addr, err, tt.want)
				}
			})
		}
	}

	// A stream from elsewhere moves the address; enrolling the ID again
	// forgets it until the new identity connects.
	if _, err := f.Attach(context.Background(), "n1", "10.0.0.8:40000", &ferryv1.AgentHello{GossipAddress: ":7946"}); err != nil {
		t.Fatal(err)
	}
	if err := f.AdmitGossip("n1", "10.0.0.7:7946"); err == nil {
		t.Error("n1 admitted at the address of its previous stream")
	}
	if err := f.AdmitGossip("n1", "10.0.0.8:7946"); err != nil {
		t.Errorf("n1 at its new stream's address: %v", err)
	}
	f.Added(enrolled("n1", "prod"))
	if err := f.AdmitGossip("n1", "10.0.0.8:7946"); err == nil {
		t.Error("a re-enrolled n1 admitted at the old identity's address")
	}
}

// A broadcast reaches every open stream; one whose queue is full is ended
// rather than left without the message.
func TestBroadcast(t *testing.T) {
	f := newFleet(t, enrolled("n1", "prod"), enrolled("n2", "prod"), enrolled("n3", "prod"))
	s1, s2 := f.attach("n1"), f.attach("n2")
	job := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_Job{Job: &ferryv1.Job{Id: "j1"}}}
	for {
		if err := f.Dispatch("n2", job); err != nil { // n2's queue is full
			break
		}
	}
	key := &ferryv1.ConnectResponse{Msg: &ferryv1.ConnectResponse_GossipKey{GossipKey: &ferryv1.GossipKey{Generation: 2}}}
	if sent := f.Broadcast(key); sent != 1 {
		t.Errorf("Broadcast reached %d streams, want 1 (n1; n2's queue is full, n3 has none)", sent)
	}
	if got := <-s1.Outbox(); got != key {
		t.Errorf("n1 got %v, want the broadcast", got)
	}
	select {
	case <-s2.Done():
		if !errors.Is(s2.Err(), errBroadcastMissed) {
			t.Errorf("n2's stream ended with %v, want %v", s2.Err(), errBroadcastMissed)
		}
	default:
		t.Error("n2's stream, which missed the broadcast, is still open")
	}
}
