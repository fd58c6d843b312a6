package fleettest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// Peer exchange over real TLS: agents with a piece server on loopback
// roll one artifact out at once; every node installs it, and the
// controller serves at most two copies of the download: the rest moves
// between the agents.
func TestPeerExchangeRollout(t *testing.T) {
	const n = 5
	f := newFleet(t, nil)
	tok := f.token("staging", n)
	var ids []string
	for i := range n {
		a := f.enroll(fmt.Sprintf("peer-%d", i+1), tok)
		a.configure = func(c *agent.Config) { c.PeerListen = "127.0.0.1:0" }
		f.start(a)
		ids = append(ids, a.id)
	}
	for _, id := range ids {
		f.waitState(id, healthy, 10*time.Second)
	}
	// Incompressible: the zstd form is as large as the original, about
	// five pieces of the controller's 4 MiB.
	tarball := toolTarball(t, "2.0", 18<<20)
	f.push("tool-2.0.tar.gz", "2.0", tarball)
	art, err := ferryv1.NewArtifactServiceClient(f.admin).ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{})
	if err != nil || len(art.GetArtifacts()) != 1 {
		t.Fatalf("list artifacts: %v %v", art, err)
	}
	download := art.GetArtifacts()[0].GetZstdSize()
	if download == 0 {
		download = art.GetArtifacts()[0].GetSize()
	}
	f.apply(`name: tool
version: "2.0"
artifact: tool-2.0.tar.gz
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool 2.0"}
`)
	served := f.metric("ferry_artifact_bytes_served_total")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
		PackageName: "tool", PackageVersion: "2.0", Target: &ferryv1.Target{Group: "staging"},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "100%", HealthyFor: durationpb.New(0), ProgressDeadline: durationpb.New(90 * time.Second)},
	})
	if err != nil {
		t.Fatalf("create rollout: %v", err)
	}
	r := f.wait(ctx, resp.GetRollout().GetId())
	if r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout ended %s: %s (nodes %v)", r.GetState(), r.GetMessage(), r.GetNodes())
	}
	for _, id := range ids {
		got, err := os.ReadFile(filepath.Join(f.dir, "roots", id, "opt", "tool", "bin", "tool"))
		if err != nil || string(got) != "#!/bin/sh\necho tool 2.0\n" {
			t.Errorf("node %s: tool/bin/tool holds %q (%v)", id, got, err)
		}
		fi, err := os.Stat(filepath.Join(f.dir, "roots", id, "opt", "tool", "data"))
		if err != nil || fi.Size() != 18<<20 {
			t.Errorf("node %s: tool/data: %v (%v)", id, fi, err)
		}
	}
	copies := (f.metric("ferry_artifact_bytes_served_total") - served) / float64(download)
	t.Logf("the controller served %.2f copies of the %d-byte download to %d nodes", copies, download, n)
	if copies > 2 {
		t.Errorf("the controller served %.2f copies of the download to %d nodes with peer exchange; want at most 2", copies, n)
	}
}
