package fleettest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// The zstd form, end to end over TLS: the controller transcodes the pushed
// tar.gz; an agent that advertises zstd is given it in its job, downloads
// it (and only it) and installs the same tree; an older agent, whose hello
// names no codec, is given the original only.
func TestZstdFormEndToEnd(t *testing.T) {
	f := newFleet(t, nil)
	modern := f.enroll("z1", f.token("staging", 1))
	old := f.enroll("z-old", f.token("legacy", 1))
	f.start(modern)
	f.waitState(modern.id, healthy, 5*time.Second)
	// Compressible, so the zstd form is much smaller than the original
	// (gzip without compression): what was served tells which one went.
	tarball := toolTarball(t, "1.0", 0)
	digest := f.push("tool-1.0.tar.gz", "1.0", tarball)
	art, err := ferryv1.NewArtifactServiceClient(f.admin).ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{})
	if err != nil || len(art.GetArtifacts()) != 1 {
		t.Fatalf("list artifacts: %v %v", art, err)
	}
	a := art.GetArtifacts()[0]
	if a.GetDigest() != digest || a.GetZstdDigest() == "" || a.GetZstdSize() == 0 {
		t.Fatalf("the pushed tar.gz has digest %s and zstd form %q (%d bytes), want %s and a zstd form", a.GetDigest(), a.GetZstdDigest(), a.GetZstdSize(), digest)
	}
	f.apply(`name: tool
version: "1.0"
artifact: tool-1.0.tar.gz
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool 1.0"}
`)
	served := f.metric("ferry_artifact_bytes_served_total")
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "staging"}, Strategy: fast()})
	if r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s (nodes %v)", r.GetState(), r.GetMessage(), r.GetNodes())
	}
	got, err := os.ReadFile(filepath.Join(f.dir, "roots", modern.id, "opt", "tool", "bin", "tool"))
	if err != nil || string(got) != "#!/bin/sh\necho tool 1.0\n" {
		t.Fatalf("the tree installed from the zstd form: tool/bin/tool holds %q (%v)", got, err)
	}
	if d := f.metric("ferry_artifact_bytes_served_total") - served; d != float64(a.GetZstdSize()) {
		t.Errorf("the controller served %.0f bytes for the rollout, want the zstd form's %d (the original has %d)", d, a.GetZstdSize(), len(tarball))
	}

	// An agent from before zstd: its hello advertises no codec.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dl := f.agentDownloads(old)
	s, err := dl.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "0.9"}}}); err != nil {
		t.Fatal(err)
	}
	f.waitState(old.id, healthy, 5*time.Second)
	if _, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
		PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "legacy"},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "100%", HealthyFor: durationpb.New(0), ProgressDeadline: durationpb.New(time.Minute)},
	}); err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	var job *ferryv1.Job
	for job == nil {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("the old agent waited for its job: %v", err)
		}
		job = m.GetJob()
	}
	if job.GetArtifactEncoding() != nil || job.GetPackage().GetArtifact().GetDigest() != digest {
		t.Fatalf("the old agent's job offers %v for artifact %s; want no encoding and the original %s", job.GetArtifactEncoding(), job.GetPackage().GetArtifact().GetDigest(), digest)
	}
	if b, err := download(dl, digest); err != nil || len(b) != len(tarball) {
		t.Fatalf("the old agent's download of the original: %d of %d bytes, %v", len(b), len(tarball), err)
	}
}
