package controller

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/rpc"
)

// startForRawAgents runs a controller for tests whose agents are bare
// streams (connect), which send no heartbeats, and returns it with an
// admin connection.
func startForRawAgents(t *testing.T) (*Controller, *grpc.ClientConn) {
	t.Helper()
	cfg := testConfig(t.TempDir())
	cfg.HeartbeatInterval = time.Minute
	c, _ := start(t, cfg)
	return c, adminConn(t, c)
}

// enroll enrolls node id with a join token over the API, as ferry-agent
// enroll does, and returns the TLS config of its credential.
func enroll(c *Controller, secret, id string) (*tls.Config, error) {
	key, err := pki.NewKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAgent, Name: id})
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(c.GRPCAddr(), rpc.DialOptions(rpc.PinnedTLS(c.CAPin(), nil))...)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := ferryv1.NewEnrollmentServiceClient(conn).Enroll(context.Background(), &ferryv1.EnrollRequest{Token: secret, NodeId: id, CsrDer: csr})
	if err != nil {
		return nil, err
	}
	return clientTLS(c, resp.CertificateDer, key), nil
}

// clientTLS is the TLS config of a client presenting the certificate der
// for key.
func clientTLS(c *Controller, der []byte, key crypto.Signer) *tls.Config {
	cert := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }, c.ca.Pool())
}

// dial connects to the controller with tlsConf until the test ends.
func dial(t *testing.T, c *Controller, tlsConf *tls.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(c.GRPCAddr(), rpc.DialOptions(tlsConf)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// connect opens a node's agent stream and reads the welcome; the stream
// stays open until ctx ends.
func connect(t *testing.T, ctx context.Context, c *Controller, agentTLS *tls.Config) grpc.BidiStreamingClient[ferryv1.ConnectRequest, ferryv1.ConnectResponse] {
	t.Helper()
	s, err := ferryv1.NewAgentServiceClient(dial(t, c, agentTLS)).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "test"}}}); err != nil {
		t.Fatal(err)
	}
	if m, err := s.Recv(); err != nil || m.GetWelcome() == nil {
		t.Fatalf("connect: %v, %v; want the welcome", m, err)
	}
	return s
}

// push pushes data as name@version, as ferryctl artifact push does.
func push(conn *grpc.ClientConn, name, version string, data []byte) error {
	s, err := ferryv1.NewArtifactServiceClient(conn).PushArtifact(context.Background())
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{
		Name: name, Version: version, Size: uint64(len(data)), Sha256: hex.EncodeToString(sum[:]),
	}}}); err != nil {
		return err
	}
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: data[:n]}}); err != nil {
			return err
		}
		data = data[n:]
	}
	_, err = s.CloseAndRecv()
	return err
}

// state is everything the controller keeps that an admin action may
// change: every record in the store, the artifact blobs, and the rollouts
// and removals the engine and the fleet hold in memory.
func state(t *testing.T, c *Controller) string {
	t.Helper()
	var b strings.Builder
	msg := func(what string, m proto.Message) {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %x\n", what, data)
	}
	nodes, err := c.store.Nodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		fmt.Fprintf(&b, "node %+v\n", n)
	}
	tokens, err := c.store.Tokens()
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tokens {
		fmt.Fprintf(&b, "token %+v\n", tk)
	}
	revoked, err := c.store.RevokedAdmins()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "revoked %v\n", revoked)
	pkgs, err := c.store.Packages("")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pkgs {
		msg("package", p)
	}
	arts, err := c.store.Artifacts()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range arts {
		msg("artifact", a)
	}
	ros, err := c.store.Rollouts()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ros {
		msg("stored rollout", r)
	}
	evs, err := c.store.AuditEvents(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		msg("audit", ev)
	}
	blobs, err := os.ReadDir(filepath.Join(c.cfg.DataDir, "artifacts", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range blobs {
		fmt.Fprintf(&b, "blob %s\n", e.Name())
	}
	for _, r := range c.engine.List("", 0) {
		msg("rollout", r)
	}
	for _, n := range c.fleet.List(fleet.Filter{}) {
		fmt.Fprintf(&b, "fleet %s removed=%v\n", n.Id, n.State == ferryv1.NodeState_NODE_STATE_REMOVED)
	}
	return b.String()
}

// Every audited admin action writes exactly one audit entry, with its
// actor and outcome, in the transaction that makes its change. With the
// audit log failing (as on a full disk) each one fails with a clear error
// and changes nothing.
func TestEveryAdminActionIsAuditedOrNotDone(t *testing.T) {
	c, conn := startForRawAgents(t)
	ctx := context.Background()
	tokens := ferryv1.NewTokenServiceClient(conn)
	certs := ferryv1.NewCertificateServiceClient(conn)
	pkgs := ferryv1.NewPackageServiceClient(conn)
	arts := ferryv1.NewArtifactServiceClient(conn)
	rollouts := ferryv1.NewRolloutServiceClient(conn)
	var tok *ferryv1.CreateTokenResponse
	var agentTLS *tls.Config
	var rolloutID string
	bobKey, _ := pki.NewKey()
	bobCSR, _ := pki.CreateCSR(bobKey, pki.Identity{Role: pki.RoleAdmin, Name: "bob"})
	motd := []byte("Authorised use only.\n")
	const motdYAML = "name: motd\nversion: \"1\"\nsteps:\n  - check: {run: \"true\"}\n"

	steps := []struct {
		name, action string
		detail       string // the entry's detail contains it
		do           func() error
		then         func() // after it succeeded
	}{
		{name: "token create", action: "token.create", detail: "group=staging labels=tier=web allow=rack=*", do: func() (err error) {
			tok, err = tokens.CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "staging", MaxUses: 1,
				Labels: map[string]string{"tier": "web"}, AllowLabels: []string{"rack=*"}})
			return err
		}},
		{name: "enroll", action: "node.enroll", detail: "group=staging addr=127.0.0.1:", do: func() (err error) {
			agentTLS, err = enroll(c, tok.Secret, "web-01")
			return err
		}, then: func() { connect(t, t.Context(), c, agentTLS) }},
		{name: "token revoke", action: "token.revoke", do: func() error {
			_, err := tokens.RevokeToken(ctx, &ferryv1.RevokeTokenRequest{Id: tok.Token.Id})
			return err
		}},
		{name: "cert issue", action: "cert.issue", do: func() error {
			_, err := certs.IssueAdminCertificate(ctx, &ferryv1.IssueAdminCertificateRequest{Name: "bob", CsrDer: bobCSR})
			return err
		}},
		{name: "cert revoke", action: "cert.revoke", do: func() error {
			_, err := certs.RevokeAdmin(ctx, &ferryv1.RevokeAdminRequest{Name: "bob"})
			return err
		}},
		{name: "artifact push", action: "artifact.push", detail: "created=true", do: func() error { return push(conn, "motd.txt", "1", motd) }},
		{name: "artifact push again", action: "artifact.push", detail: "created=false", do: func() error { return push(conn, "motd.txt", "1", motd) }},
		{name: "artifact rm", action: "artifact.rm", do: func() error {
			_, err := arts.DeleteArtifact(ctx, &ferryv1.DeleteArtifactRequest{Ref: "motd.txt@1"})
			return err
		}},
		{name: "package apply", action: "package.apply", detail: "created=true", do: func() error {
			_, err := pkgs.ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{Filename: "motd.yaml", Yaml: motdYAML})
			return err
		}},
		{name: "package apply again", action: "package.apply", detail: "created=false", do: func() error {
			_, err := pkgs.ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{Filename: "motd.yaml", Yaml: motdYAML})
			return err
		}},
		{name: "rollout create", action: "rollout.create", do: func() error {
			resp, err := rollouts.CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "motd", PackageVersion: "1", Target: &ferryv1.Target{Group: "staging"}})
			rolloutID = resp.GetRollout().GetId()
			return err
		}},
		{name: "rollout pause", action: "rollout.pause", do: func() error {
			_, err := rollouts.PauseRollout(ctx, &ferryv1.PauseRolloutRequest{Id: rolloutID})
			return err
		}},
		{name: "rollout resume", action: "rollout.resume", do: func() error {
			_, err := rollouts.ResumeRollout(ctx, &ferryv1.ResumeRolloutRequest{Id: rolloutID})
			return err
		}},
		{name: "rollout abort", action: "rollout.abort", do: func() error {
			_, err := rollouts.AbortRollout(ctx, &ferryv1.AbortRolloutRequest{Id: rolloutID})
			return err
		}},
		{name: "package apply 2", action: "package.apply", detail: "created=true", do: func() error {
			_, err := pkgs.ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{Filename: "motd.yaml", Yaml: strings.Replace(motdYAML, `"1"`, `"2"`, 1)})
			return err
		}},
		{name: "package rm", action: "package.rm", do: func() error {
			_, err := pkgs.DeletePackage(ctx, &ferryv1.DeletePackageRequest{Name: "motd", Version: "2"})
			return err
		}},
		{name: "artifact push unused", action: "artifact.push", detail: "created=true", do: func() error { return push(conn, "junk.txt", "0.1", []byte("junk")) }},
		{name: "artifact gc", action: "artifact.gc", detail: "digest=sha256:", do: func() error {
			_, err := arts.CollectArtifacts(ctx, &ferryv1.CollectArtifactsRequest{})
			return err
		}},
		{name: "node label", action: "node.label", detail: "set role=db", do: func() error {
			_, err := ferryv1.NewNodeServiceClient(conn).LabelNode(ctx, &ferryv1.LabelNodeRequest{Id: "web-01", Set: map[string]string{"role": "db"}})
			return err
		}},
		{name: "node move", action: "node.move", detail: "group=production", do: func() error {
			_, err := ferryv1.NewNodeServiceClient(conn).MoveNode(ctx, &ferryv1.MoveNodeRequest{Id: "web-01", Group: "production"})
			return err
		}},
		{name: "node remove", action: "node.remove", do: func() error {
			_, err := ferryv1.NewNodeServiceClient(conn).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "web-01"})
			return err
		}},
		{name: "node purge", action: "node.purge", do: func() error {
			_, err := ferryv1.NewNodeServiceClient(conn).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "web-01", Purge: true})
			return err
		}},
	}
	diskFull := errors.New("write ferry.db: no space left on device")
	for _, st := range steps {
		before := state(t, c)
		c.store.FailAuditWrites(diskFull)
		err := st.do()
		c.store.FailAuditWrites(nil)
		want := "could not record the audit entry: " + diskFull.Error() + "; nothing was changed"
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s with the audit log failing: %v, want Unavailable saying %q", st.name, err, want)
		}
		if after := state(t, c); after != before {
			t.Fatalf("%s with the audit log failing changed state:\nbefore\n%s\nafter\n%s", st.name, before, after)
		}

		had := len(auditEvents(t, c))
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		evs := auditEvents(t, c) // newest first
		if n := len(evs) - had; n != 1 {
			t.Fatalf("%s wrote %d audit entries, want 1: %v", st.name, n, evs[:max(n, 0)])
		}
		actor := "admin/admin"
		if st.action == "node.enroll" {
			actor = "token/" + tok.Token.Id
		}
		if ev := evs[0]; ev.Action != st.action || ev.Actor != actor || ev.Outcome != "ok" || !strings.Contains(ev.Detail, st.detail) {
			t.Errorf("%s: audit entry %v, want %s by %s, ok, detail with %q", st.name, ev, st.action, actor, st.detail)
		}
		if strings.Contains(evs[0].String(), tok.GetSecret()[len(tok.GetToken().GetId())+1:]) {
			t.Errorf("%s: audit entry %v holds the join token's secret", st.name, evs[0])
		}
		if st.then != nil {
			st.then()
		}
	}
}

func auditEvents(t *testing.T, c *Controller) []*ferryv1.AuditEvent {
	t.Helper()
	evs, err := c.store.AuditEvents(0)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}
