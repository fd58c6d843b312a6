package fleettest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// toolTarball is a tar.gz with a script printing "tool <version>" and
// size bytes of incompressible data.
func toolTarball(t *testing.T, version string, size int) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	tw := tar.NewWriter(gz)
	script := "#!/bin/sh\necho tool " + version + "\n"
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{'t', 'o', 'o', 'l'}).Read(data)
	for _, f := range []struct {
		name string
		mode int64
		body []byte
	}{{"tool/bin/tool", 0o755, []byte(script)}, {"tool/data", 0o644, data}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	gz.Close()
	return buf.Bytes()
}

// push stores an artifact and returns its digest.
func (f *fleet) push(name, version string, data []byte) string {
	f.t.Helper()
	return f.pushResp(name, version, data).GetArtifact().GetDigest()
}

// pushResp stores an artifact and returns the controller's answer.
func (f *fleet) pushResp(name, version string, data []byte) *ferryv1.PushArtifactResponse {
	f.t.Helper()
	sum := sha256.Sum256(data)
	digest := sha256digest.Format(sum[:])
	stream, err := ferryv1.NewArtifactServiceClient(f.admin).PushArtifact(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	msgs := []*ferryv1.PushArtifactRequest{{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{Name: name, Version: version, Size: uint64(len(data)), Sha256: digest}}}}
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 1<<20)
		msgs = append(msgs, &ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: rest[:n]}})
		rest = rest[n:]
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			f.t.Fatalf("push %s: %v", name, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		f.t.Fatalf("push %s: %v", name, err)
	}
	return resp
}

// agentDownloads returns a client presenting the agent's own certificate.
func (f *fleet) agentDownloads(a *testAgent) ferryv1.AgentServiceClient {
	f.t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(a.stateDir, "node.crt"), filepath.Join(a.stateDir, "node.key"))
	if err != nil {
		f.t.Fatal(err)
	}
	return ferryv1.NewAgentServiceClient(f.dial(rpc.ClientTLS(func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }, f.caPool())))
}

// download reads a whole artifact; it returns the bytes that arrived.
func download(c ferryv1.AgentServiceClient, digest string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := c.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, m.Data...)
	}
}

// waitNode polls a rollout until cond holds for one node's record.
func (f *fleet) waitNode(rolloutID, nodeID, what string, cond func(*ferryv1.NodeJob) bool) {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last *ferryv1.NodeJob
	for time.Now().Before(deadline) {
		resp, err := ferryv1.NewRolloutServiceClient(f.admin).GetRollout(context.Background(), &ferryv1.GetRolloutRequest{Id: rolloutID})
		if err == nil {
			for _, n := range resp.Rollout.GetNodes() {
				if n.NodeId == nodeID {
					last = n
				}
			}
			if last != nil && cond(last) {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatalf("rollout %s: node %s not %s within 20s (last: %v)", rolloutID, nodeID, what, last)
}

// Artifacts follow jobs: a staging node's certificate cannot download the
// artifact of a production rollout by its digest, while the production
// node that has the job can, also after a controller restart (the
// permission is read from the stored rollout).
func TestArtifactsFollowJobs(t *testing.T) {
	f := newFleet(t, nil)
	stage := f.enroll("stage-1", f.token("staging", 1))
	prod := f.enroll("prod-1", f.token("production", 1))
	for _, a := range []*testAgent{stage, prod} {
		f.start(a)
		f.waitState(a.id, healthy, 5*time.Second)
	}
	tarball := toolTarball(t, "1.0", 3<<20)
	digest := f.push("tool-1.0.tar.gz", "1.0", tarball)
	f.apply(`name: tool
version: "1.0"
artifact: tool-1.0.tar.gz
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool 1.0"}
`)
	stageDL, prodDL := f.agentDownloads(stage), f.agentDownloads(prod)
	refused := func(when string) {
		t.Helper()
		got, err := download(stageDL, digest)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "node stage-1 has no job that uses artifact "+digest) {
			t.Errorf("%s: the staging node's download of the production artifact: %v, want PermissionDenied naming the node and the artifact", when, err)
		}
		if len(got) != 0 {
			t.Errorf("%s: the staging node received %d bytes", when, len(got))
		}
	}
	refused("before any rollout")

	// A long healthy period keeps the production job in flight after the
	// agent installed, across the restart below.
	ctx := context.Background()
	resp, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
		PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "production"},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "1", HealthyFor: durationpb.New(time.Hour), ProgressDeadline: durationpb.New(2 * time.Hour)},
	})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	id := resp.Rollout.Id
	f.waitNode(id, "prod-1", "installed", func(n *ferryv1.NodeJob) bool {
		return n.Outcome == ferryv1.NodeOutcome_NODE_OUTCOME_CHECKING && n.FinishedAt != nil
	})
	refused("while the production rollout runs")
	if got, err := download(prodDL, digest); err != nil || !bytes.Equal(got, tarball) {
		t.Fatalf("the production node's download: %d of %d bytes, %v", len(got), len(tarball), err)
	}

	f.restartController()
	f.waitState("prod-1", healthy, 10*time.Second)
	if got, err := download(prodDL, digest); err != nil || !bytes.Equal(got, tarball) {
		t.Fatalf("the production node's download after a controller restart: %d of %d bytes, %v", len(got), len(tarball), err)
	}
	refused("after a controller restart")
}
