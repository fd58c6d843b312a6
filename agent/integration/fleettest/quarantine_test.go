package fleettest

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

func (f *fleet) artifactState(ref string) ferryv1.ArtifactState {
	f.t.Helper()
	return f.artifactRecord(ref).GetState()
}

// artifactRecord is ref's artifact as the admin's list shows it.
func (f *fleet) artifactRecord(ref string) *ferryv1.Artifact {
	f.t.Helper()
	resp, err := ferryv1.NewArtifactServiceClient(f.admin).ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, a := range resp.Artifacts {
		if a.Name+"@"+a.Version == ref {
			return a
		}
	}
	f.t.Fatalf("artifact list lacks %s", ref)
	return nil
}

// metric reads one unlabelled series from the controller's /metrics.
func (f *fleet) metric(name string) float64 {
	f.t.Helper()
	resp, err := http.Get("http://" + f.ctl.HTTPAddr() + "/metrics")
	if err != nil {
		f.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(body)
	if m == nil {
		f.t.Fatalf("/metrics has no %s", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		f.t.Fatal(err)
	}
	return v
}

const quarantinePackage = `name: tool
version: "1.0"
artifact: tool.tar.gz@1.0
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
`

// A byte flipped in a stored blob (the zstd form agents download): the first agent's download fails
// verification once and the agent reports it; the controller hashes its
// own copy and quarantines it; a second agent is refused it with a clear
// FailedPrecondition and no byte sent; the artifact lists as damaged and
// raises ferry_artifacts_damaged; pushing the file again restores it and
// the rollout succeeds.
func TestDamagedBlobIsQuarantined(t *testing.T) {
	f := newFleet(t, nil)
	first, second := f.enroll("dmg-1", f.token("canary", 1)), f.enroll("dmg-2", f.token("production", 1))
	for _, a := range []*testAgent{first, second} {
		f.start(a)
		f.waitState(a.id, healthy, 5*time.Second)
	}
	data := toolTarball(t, "1.0", 3<<20)
	digest := f.push("tool.tar.gz", "1.0", data)
	f.apply(quarantinePackage)

	// The agents take the zstd form the controller made at push: that is
	// the blob they download, so that is the one damaged. The controller
	// hashes both forms of the artifact when a node reports either.
	zstdForm := f.artifactRecord("tool.tar.gz@1.0")
	if zstdForm.GetZstdDigest() == "" {
		t.Fatal("the pushed tar.gz has no zstd form")
	}
	blob := filepath.Join(f.dir, "controller", "artifacts", "sha256", strings.TrimPrefix(zstdForm.GetZstdDigest(), "sha256:"))
	bad, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	bad[len(bad)/2] ^= 0x01
	if err := os.WriteFile(blob, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	abort := fast()
	abort.OnFailure = ferryv1.FailureAction_FAILURE_ACTION_ABORT
	failed := func(group string) {
		t.Helper()
		r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: group}, Strategy: abort})
		if r.State == ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED || len(r.Nodes) != 1 {
			t.Fatalf("rollout to %s of a damaged artifact ended %s: %v", group, r.State, r.Nodes)
		}
		n := r.Nodes[0]
		for _, w := range []string{"artifact tool.tar.gz@1.0 (sha256:", "is damaged on the controller (sha256 mismatch", "re-push it"} {
			if !strings.Contains(n.Message, w) {
				t.Errorf("%s failed with %q, which does not say %q", n.NodeId, n.Message, w)
			}
		}
		if strings.Contains(n.Message, "rpc error") {
			t.Errorf("%s failed with raw gRPC words: %q", n.NodeId, n.Message)
		}
	}

	servedBefore := f.metric("ferry_artifact_bytes_served_total")
	failed("canary")
	servedOnce := f.metric("ferry_artifact_bytes_served_total")
	if servedOnce != servedBefore+float64(zstdForm.GetZstdSize()) {
		t.Errorf("served %.0f bytes to the first agent, want one download of the zstd form (%d): it refuses the bytes once and stops", servedOnce-servedBefore, zstdForm.GetZstdSize())
	}
	if s := f.artifactState("tool.tar.gz@1.0"); s != ferryv1.ArtifactState_ARTIFACT_STATE_DAMAGED {
		t.Fatalf("artifact list shows tool.tar.gz@1.0 as %s after the agent's report, want damaged", s)
	}
	if got := f.metric("ferry_artifacts_damaged"); got != 1 {
		t.Errorf("ferry_artifacts_damaged = %g, want 1", got)
	}

	failed("production")
	// The second node's job lets it fetch the artifact; what it gets is
	// the refusal, before any byte.
	_, err = download(f.agentDownloads(second), digest)
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "is damaged on the controller") {
		t.Errorf("download of the quarantined artifact: %v, want FailedPrecondition saying it is damaged", err)
	}
	if got := f.metric("ferry_artifact_bytes_served_total"); got != servedOnce {
		t.Errorf("served %.0f bytes to the second agent, want none", got-servedOnce)
	}

	f.push("tool.tar.gz", "1.0", data)
	if s := f.artifactState("tool.tar.gz@1.0"); s != ferryv1.ArtifactState_ARTIFACT_STATE_OK {
		t.Errorf("artifact list shows %s after the re-push, want ok", s)
	}
	if got := f.metric("ferry_artifacts_damaged"); got != 0 {
		t.Errorf("ferry_artifacts_damaged = %g after the re-push, want 0", got)
	}
	r := f.rollout(&ferryv1.CreateRolloutRequest{PackageName: "tool", PackageVersion: "1.0", Target: &ferryv1.Target{Group: "production"}, Strategy: fast()})
	if r.State != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		t.Fatalf("rollout after the re-push ended %s: %s %v", r.State, r.Message, r.Nodes)
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, "roots", second.id, "opt/tool/data")); err != nil || len(b) != 3<<20 {
		t.Errorf("dmg-2: /opt/tool/data has %d bytes, %v", len(b), err)
	}
}
