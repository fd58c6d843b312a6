package controller

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"math/rand"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// On a real controller, the rollout engine decides who gets pieces: the
// node the rollout sent a job gets the piece digests of its artifact, a
// node of another group is refused; with --peer-exchange=false GetPieces
// says peer exchange is off.
func TestGetPiecesFollowsRolloutJobs(t *testing.T) {
	c, admin := startForRawAgents(t)
	ctx := context.Background()
	tokens := map[string]string{}
	for _, g := range []string{"staging", "prod"} {
		tok, err := ferryv1.NewTokenServiceClient(admin).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: g})
		if err != nil {
			t.Fatal(err)
		}
		tokens[g] = tok.Secret
	}
	webTLS, err := enroll(c, tokens["staging"], "web-01")
	if err != nil {
		t.Fatal(err)
	}
	dbTLS, err := enroll(c, tokens["prod"], "db-01")
	if err != nil {
		t.Fatal(err)
	}
	webStream := connect(t, t.Context(), c, webTLS)
	connect(t, t.Context(), c, dbTLS)

	data := make([]byte, 5<<20)
	rand.New(rand.NewSource(2)).Read(data)
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
	for {
		m, err := webStream.Recv()
		if err != nil {
			t.Fatalf("web-01's stream ended before its job: %v", err)
		}
		if m.GetJob() != nil {
			break
		}
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])

	resp, err := ferryv1.NewAgentServiceClient(dial(t, c, webTLS)).GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: digest})
	if err != nil {
		t.Fatalf("GetPieces by the node with the job: %v", err)
	}
	if resp.GetSize() != uint64(len(data)) || len(resp.GetPieces()) != 2 {
		t.Fatalf("%d bytes in %d pieces, want %d bytes in 2", resp.GetSize(), len(resp.GetPieces()), len(data))
	}
	for i, p := range resp.GetPieces() {
		s := sha256.Sum256(data[p.GetOffset() : p.GetOffset()+uint64(p.GetLength())])
		if p.GetDigest() != "sha256:"+hex.EncodeToString(s[:]) || !p.GetSeed() {
			t.Errorf("piece %d: %v, want its digest and seed (no peer holds it)", i, p)
		}
	}
	_, err = ferryv1.NewAgentServiceClient(dial(t, c, dbTLS)).GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: digest})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "node db-01 has no job that uses artifact") {
		t.Fatalf("GetPieces by a node of another group: %v, want PermissionDenied", err)
	}

	cfg := testConfig(t.TempDir())
	cfg.HeartbeatInterval = time.Minute
	cfg.PeerExchangeOff = true
	off, _ := start(t, cfg)
	tok, err := ferryv1.NewTokenServiceClient(adminConn(t, off)).CreateToken(ctx, &ferryv1.CreateTokenRequest{Group: "staging"})
	if err != nil {
		t.Fatal(err)
	}
	offTLS, err := enroll(off, tok.Secret, "web-02")
	if err != nil {
		t.Fatal(err)
	}
	_, err = ferryv1.NewAgentServiceClient(dial(t, off, offTLS)).GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: digest})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "peer exchange is off on this controller; agents download from the controller") {
		t.Fatalf("GetPieces with --peer-exchange=false: %v, want FailedPrecondition saying it is off", err)
	}
}
