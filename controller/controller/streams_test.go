package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"math/rand"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
)

// Removing a node ends its open streams at once: the agent stream and a
// download in the middle of an artifact, each with PermissionDenied
// naming the removal.
func TestRemovingANodeEndsItsStreams(t *testing.T) {
	c, admin := startForRawAgents(t)
	ctx := context.Background()
	tok, err := ferryv1.NewTokenServiceClient(admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	agentTLS, err := enroll(c, tok.Secret, "web-01")
	if err != nil {
		t.Fatal(err)
	}
	agentConn := dial(t, c, agentTLS)
	agentStream := connect(t, t.Context(), c, agentTLS)

	// A job for the node, so it may download the artifact.
	data := make([]byte, 16<<20)
	rand.New(rand.NewSource(1)).Read(data)
	if err := push(admin, "blob.bin", "1", data); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewPackageServiceClient(admin).ApplyPackage(ctx, &ferryv1.ApplyPackageRequest{
		Filename: "blob.yaml", Yaml: "name: blob\nversion: \"1\"\nartifact: blob.bin@1\nsteps:\n  - archive: {dest: /opt/blob}\n",
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewRolloutServiceClient(admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{PackageName: "blob", PackageVersion: "1", Target: &ferryv1.Target{Group: "staging"}}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	download, err := ferryv1.NewAgentServiceClient(agentConn).DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: "sha256:" + hex.EncodeToString(sum[:])})
	if err != nil {
		t.Fatal(err)
	}
	first, err := download.Recv()
	if err != nil {
		t.Fatalf("first chunk: %v", err)
	}

	removed := time.Now()
	if _, err := ferryv1.NewNodeServiceClient(admin).RemoveNode(ctx, &ferryv1.RemoveNodeRequest{Id: "web-01"}); err != nil {
		t.Fatal(err)
	}
	var msg *ferryv1.ConnectResponse
	for err == nil {
		msg, err = agentStream.Recv()
		_ = msg // the job the rollout sent
	}
	t.Logf("agent stream ended %v after the removal: %v", time.Since(removed), err)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "web-01 was removed") {
		t.Errorf("agent stream ended with %v, want PermissionDenied naming the removal", err)
	}
	if d := time.Since(removed); d > 5*time.Second {
		t.Errorf("agent stream ended %v after the removal, want within 5s", d)
	}

	got := len(first.Data)
	for {
		m, err := download.Recv()
		if err != nil {
			t.Logf("download ended %v after the removal, %d of %d bytes received: %v", time.Since(removed), got, len(data), err)
			if errors.Is(err, io.EOF) || status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "web-01 was removed") {
				t.Errorf("download ended with %v, want PermissionDenied naming the removal", err)
			}
			break
		}
		got += len(m.Data)
	}
	if got == len(data) {
		t.Errorf("the removed node received the whole artifact")
	}
}

// Revoking an admin ends a push it has under way: nothing of it is kept,
// and the pusher is told why.
func TestRevokingAnAdminEndsItsPush(t *testing.T) {
	c, _ := start(t, testConfig(t.TempDir()))
	admin := adminConn(t, c)
	ctx := context.Background()
	key, _ := pki.NewKey()
	csr, err := pki.CreateCSR(key, pki.Identity{Role: pki.RoleAdmin, Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ferryv1.NewCertificateServiceClient(admin).IssueAdminCertificate(ctx, &ferryv1.IssueAdminCertificateRequest{Name: "alice", CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	alice := dial(t, c, clientTLS(c, resp.CertificateDer, key))

	chunk := make([]byte, 1<<20)
	s, err := ferryv1.NewArtifactServiceClient(alice).PushArtifact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{Name: "big.bin", Version: "1", Size: 4 << 20}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: chunk}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ferryv1.NewCertificateServiceClient(admin).RevokeAdmin(ctx, &ferryv1.RevokeAdminRequest{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: chunk}}) != nil {
			break // the server ended the stream
		}
	}
	_, err = s.CloseAndRecv()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "admin alice was revoked at") {
		t.Errorf("push after the revocation: %v, want PermissionDenied naming the revocation", err)
	}
	if arts, err := c.store.Artifacts(); err != nil || len(arts) != 0 {
		t.Errorf("artifacts %v, %v; want none", arts, err)
	}
}
