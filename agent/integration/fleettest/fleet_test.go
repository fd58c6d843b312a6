// Package fleettest runs a real controller and real agents in one process,
// over real TLS on loopback.
package fleettest

import (
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/enroll"
	"github.com/ferrydeploy/ferry/controller/controller"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

const (
	healthy     = ferryv1.NodeState_NODE_STATE_HEALTHY
	stale       = ferryv1.NodeState_NODE_STATE_STALE
	left        = ferryv1.NodeState_NODE_STATE_LEFT
	removed     = ferryv1.NodeState_NODE_STATE_REMOVED
	unreachable = ferryv1.NodeState_NODE_STATE_UNREACHABLE
)

func TestFleetConnectsAndHeartbeats(t *testing.T) {
	f := newFleet(t, nil)
	staging, prod := f.token("staging", 1), f.token("production", 2)
	a1 := f.enroll("n1", staging)
	a2 := f.enroll("n2", prod)
	a3 := f.enroll("n3", prod)
	for _, a := range []*testAgent{a1, a2, a3} {
		f.start(a)
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		n := f.waitState(id, healthy, 5*time.Second)
		if n.AgentVersion == "" || n.Facts.GetOs() == "" || n.Facts.GetHostname() == "" || n.Address == "" {
			t.Errorf("node %s lacks heartbeat details: %v", id, n)
		}
	}
	if g := f.node("n1").Group; g != "staging" {
		t.Errorf("n1 group = %q, want staging (from its token)", g)
	}
	resp, err := ferryv1.NewNodeServiceClient(f.admin).ListNodes(context.Background(), &ferryv1.ListNodesRequest{Group: "production"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Nodes) != 2 {
		t.Errorf("production has %d nodes, want 2", len(resp.Nodes))
	}

	// A node whose heartbeats stop shows as stale within three intervals
	// (plus the evaluation slack of this test's polling).
	a2.kill()
	f.waitState("n2", stale, 3*f.hbEvery+2*time.Second)
	// A graceful stop is "left", not stale.
	a3.stop()
	f.waitState("n3", left, 5*time.Second)
	if n := f.node("n1"); n.State != healthy {
		t.Errorf("n1 is %s (%s), want healthy while others fail", n.State, n.StateReason)
	}
}

func TestTokensRefusedWithoutStateChange(t *testing.T) {
	f := newFleet(t, nil)
	tokens := ferryv1.NewTokenServiceClient(f.admin)
	ctx := context.Background()

	used := f.token("staging", 1)
	f.enroll("ok1", used)

	revoked := f.token("staging", 0)
	if _, err := tokens.RevokeToken(ctx, &ferryv1.RevokeTokenRequest{Id: revoked.Token.Id}); err != nil {
		t.Fatal(err)
	}
	expiring, err := tokens.CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "staging", Ttl: durationpb.New(300 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	bogus := &ferryv1.CreateTokenResponse{Secret: used.Token.Id + ".0000000000000000", CaPin: used.CaPin}

	cases := []struct {
		name string
		tok  *ferryv1.CreateTokenResponse
		want string
	}{
		{"used up", used, "used up"},
		{"revoked", revoked, "revoked"},
		{"expired", expiring, "expired"},
		{"wrong secret", bogus, "not valid"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.snapshot()
			dir := filepath.Join(t.TempDir(), "state")
			_, err := enroll.Enroll(ctx, enroll.Options{Controllers: []string{f.ctl.GRPCAddr()}, Token: tc.tok.Secret, CAPin: tc.tok.CaPin, NodeID: "new-" + strings.ReplaceAll(tc.name, " ", "-"), StateDir: dir})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("enroll error = %v, want one mentioning %q", err, tc.want)
			}
			if _, err := os.Stat(filepath.Join(dir, "identity.json")); err == nil {
				t.Error("a refused enrollment wrote an identity")
			}
			if after := f.snapshot(); after != before {
				t.Errorf("refused enrollment changed state:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshot summarises nodes and token uses, to detect state changes.
func (f *fleet) snapshot() string {
	ctx := context.Background()
	nodes, err := ferryv1.NewNodeServiceClient(f.admin).ListNodes(ctx, &ferryv1.ListNodesRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	toks, err := ferryv1.NewTokenServiceClient(f.admin).ListTokens(ctx, &ferryv1.ListTokensRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	var b strings.Builder
	for _, n := range nodes.Nodes {
		b.WriteString(n.Id + " ")
	}
	for _, tk := range toks.Tokens {
		b.WriteString(tk.Id + ":" + string(rune('0'+tk.Uses)) + " ")
	}
	return b.String()
}

func TestCAPinMismatchRefusedByAgent(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 1)
	dir := filepath.Join(t.TempDir(), "state")
	wrongPin := "sha256:" + strings.Repeat("ab", 32)
	_, err := enroll.Enroll(context.Background(), enroll.Options{Controllers: []string{f.ctl.GRPCAddr()}, Token: tok.Secret, CAPin: wrongPin, NodeID: "n1", StateDir: dir})
	if err == nil || !strings.Contains(err.Error(), "CA pin mismatch") {
		t.Fatalf("enroll with a wrong pin: err = %v, want a CA pin mismatch", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 0 {
		t.Errorf("state dir has %d entries after a refused enrollment", len(entries))
	}
	if n := f.node("n1"); n != nil {
		t.Errorf("controller recorded node n1 although the agent refused the CA")
	}
	if got := f.snapshot(); !strings.Contains(got, tok.Token.Id+":0") {
		t.Errorf("token use was consumed: %s", got)
	}
}

func TestRPCsRefused(t *testing.T) {
	f := newFleet(t, nil)
	tok := f.token("staging", 2)
	a1 := f.enroll("n1", tok)
	f.enroll("n2", tok)
	ctx := context.Background()
	caPool := f.caPool()
	agentCert, err := tls.LoadX509KeyPair(filepath.Join(a1.stateDir, "node.crt"), filepath.Join(a1.stateDir, "node.key"))
	if err != nil {
		t.Fatal(err)
	}
	withCert := func(c *tls.Certificate) *tls.Config {
		return rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c == nil {
				return &tls.Certificate{}, nil
			}
			return c, nil
		}, caPool)
	}
	// A certificate from another CA, naming an admin.
	otherCA, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.NewKey()
	foreign, err := otherCA.Sign(pki.SignRequest{Identity: pki.Identity{Role: pki.RoleAdmin, Name: "mallory"}, PublicKey: key.Public(), TTL: time.Hour, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	foreignCert := &tls.Certificate{Certificate: [][]byte{foreign.Raw}, PrivateKey: key}

	cases := []struct {
		name string
		tls  *tls.Config
		want codes.Code
	}{
		{"no client certificate", withCert(nil), codes.Unauthenticated},
		{"certificate from another CA", withCert(foreignCert), codes.Unavailable},
		{"agent calling an admin RPC", withCert(&agentCert), codes.PermissionDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.snapshot()
			conn := f.dial(tc.tls)
			_, err := ferryv1.NewTokenServiceClient(conn).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "evil"})
			if status.Code(err) != tc.want {
				t.Fatalf("CreateToken: %v, want code %s", err, tc.want)
			}
			if after := f.snapshot(); after != before {
				t.Errorf("refused RPC changed state")
			}
		})
	}

	t.Run("admin calling the agent stream", func(t *testing.T) {
		stream, err := ferryv1.NewAgentServiceClient(f.admin).Connect(ctx)
		if err == nil {
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("admin Connect: %v, want PermissionDenied", err)
		}
	})

	t.Run("agent speaks only for itself", func(t *testing.T) {
		// The node ID comes from the certificate: n1's heartbeats can only
		// ever update n1, whatever the messages say.
		conn := f.dial(withCert(&agentCert))
		stream, err := ferryv1.NewAgentServiceClient(conn).Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		hello := &ferryv1.AgentHello{AgentVersion: "spoof", Facts: &ferryv1.Facts{Hostname: "n2"}}
		if err := stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: hello}}); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
		f.waitState("n1", healthy, 2*time.Second)
		if n := f.node("n2"); n.State == healthy || n.AgentVersion != "" {
			t.Errorf("n2 = %s version %q, want untouched by n1's stream", n.State, n.AgentVersion)
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("removed node reconnecting", func(t *testing.T) {
		if _, err := ferryv1.NewNodeServiceClient(f.admin).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "n1"}); err != nil {
			t.Fatal(err)
		}
		conn := f.dial(withCert(&agentCert))
		stream, err := ferryv1.NewAgentServiceClient(conn).Connect(ctx)
		if err == nil {
			_ = stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{}}})
			_, err = stream.Recv()
		}
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "removed") {
			t.Fatalf("removed node Connect: %v, want PermissionDenied naming the removal", err)
		}
		if n := f.node("n1"); n.State != removed {
			t.Errorf("n1 is %s, want removed", n.State)
		}
	})
}

func TestRemoveClosesLiveStream(t *testing.T) {
	f := newFleet(t, nil)
	a := f.enroll("n1", f.token("staging", 1))
	f.start(a)
	f.waitState("n1", healthy, 5*time.Second)
	if _, err := ferryv1.NewNodeServiceClient(f.admin).RemoveNode(context.Background(), &ferryv1.RemoveNodeRequest{Id: "n1"}); err != nil {
		t.Fatal(err)
	}
	f.waitState("n1", removed, 2*time.Second)
	time.Sleep(4 * f.hbEvery)
	if n := f.node("n1"); n.Connected {
		t.Errorf("removed node n1 still has a stream")
	}
}

func TestAgentRenewsCertificate(t *testing.T) {
	// Heartbeats every 500 ms (stale after 1.5 s): the node must stay
	// healthy through each renewal, and 200 ms left too little room for a
	// loaded 2-core CI machine under -race (a 700 ms gap once).
	f := newFleet(t, func(c *controller.Config) {
		c.AgentCertTTL, c.HeartbeatInterval = 6*time.Second, 500*time.Millisecond
	})
	a := f.enroll("n1", f.token("staging", 1))
	certPath := filepath.Join(a.stateDir, "node.crt")
	f.start(a)
	f.waitState("n1", healthy, 5*time.Second)
	// The agent renews at two thirds of the lifetime it was given (4s),
	// again and again: each renewal must work although the previous one
	// was asked for on an older connection, and the node stays healthy on
	// its one stream, never needing re-enrollment.
	seen := map[string]bool{}
	deadline := time.Now().Add(20 * time.Second)
	for len(seen) < 4 {
		pem, _ := os.ReadFile(certPath)
		if len(pem) > 0 && !seen[string(pem)] {
			cert, err := pki.DecodeCert(pem)
			if err != nil {
				t.Fatal(err)
			}
			if id, _ := pki.ParseIdentity(cert); id.Name != "n1" {
				t.Fatalf("renewed certificate names %v", id)
			}
			seen[string(pem)] = true
		}
		if time.Now().After(deadline) {
			t.Fatalf("saw %d certificates in 20s, want the enrolled one and 3 renewals", len(seen))
		}
		if n := f.node("n1"); n.State != healthy {
			t.Fatalf("n1 went %s during renewals: %s", n.State, n.StateReason)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With gossip, a node whose controller link is cut while its peers still
// see it is unreachable, not down; it is healthy again when the link
// returns. A graceful stop is left.
func TestGossipTellsUnreachableFromLeft(t *testing.T) {
	f := newFleet(t, func(c *controller.Config) {
		c.GossipAddr, c.GossipProfile = "127.0.0.1:0", "local"
	})
	tok := f.token("production", 3)
	agents := []*testAgent{f.enroll("g1", tok), f.enroll("g2", tok), f.enroll("g3", tok)}
	for _, a := range agents {
		f.start(a)
	}
	for _, a := range agents {
		f.waitState(a.id, healthy, 5*time.Second)
	}
	// Gossip converges: the controller sees every agent alive.
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range agents {
		for f.node(a.id).GossipState != "alive" {
			if time.Now().After(deadline) {
				t.Fatalf("gossip never saw %s alive: %s", a.id, f.node(a.id).StateReason)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	agents[0].proxy.cut()
	n := f.waitState("g1", unreachable, 5*time.Second)
	if !strings.Contains(n.StateReason, "gossip alive") {
		t.Errorf("unreachable reason %q does not name the gossip signal", n.StateReason)
	}
	agents[0].proxy.restore()
	f.waitState("g1", healthy, 5*time.Second)

	agents[1].stop()
	f.waitState("g2", left, 5*time.Second)
	if n := f.node("g3"); n.State != healthy {
		t.Errorf("g3 is %s (%s), want healthy", n.State, n.StateReason)
	}
}
