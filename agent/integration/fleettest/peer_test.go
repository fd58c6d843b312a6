package fleettest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ferrydeploy/ferry/agent/internal/agent"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
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
	var agents []*testAgent
	for i := range n {
		a := f.enroll(fmt.Sprintf("peer-%d", i+1), tok)
		a.configure = func(c *agent.Config) { c.PeerListen = "127.0.0.1:0" }
		a.metricsAddr = freeAddr(t)
		f.start(a)
		ids = append(ids, a.id)
		agents = append(agents, a)
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
	f.rolloutGroup("staging", "2.0")
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
	// What the agents' metrics say they passed to each other: the rest of
	// the n copies.
	var fromPeers, servedPeers float64
	for _, a := range agents {
		fromPeers += agentMetric(t, a, `ferry_agent_piece_bytes_total{source="peer"}`)
		servedPeers += agentMetric(t, a, "ferry_agent_piece_bytes_served_total")
	}
	if fromPeers < float64((n-2)*int(download)) || servedPeers < fromPeers {
		t.Errorf("the agents fetched %.0f bytes from peers and served %.0f; want at least %d copies of %d bytes each way", fromPeers, servedPeers, n-2, download)
	}
	copies := (f.metric("ferry_artifact_bytes_served_total") - served) / float64(download)
	t.Logf("the controller served %.2f copies of the %d-byte download to %d nodes", copies, download, n)
	if copies > 2 {
		t.Errorf("the controller served %.2f copies of the download to %d nodes with peer exchange; want at most 2", copies, n)
	}
}

// peerAgent enrolls and starts an agent with a piece server on loopback.
func (f *fleet) peerAgent(id, group string) *testAgent {
	a := f.enroll(id, f.token(group, 1))
	a.configure = func(c *agent.Config) { c.PeerListen = "127.0.0.1:0" }
	f.start(a)
	f.waitState(id, healthy, 10*time.Second)
	return a
}

// rolloutGroup rolls tool@version out to group at once and waits for it
// to succeed.
func (f *fleet) rolloutGroup(group, version string) *ferryv1.Rollout {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := ferryv1.NewRolloutServiceClient(f.admin).CreateRollout(ctx, &ferryv1.CreateRolloutRequest{
		PackageName: "tool", PackageVersion: version, Target: &ferryv1.Target{Group: group},
		Strategy: &ferryv1.Strategy{Canary: proto.Uint32(0), MaxParallel: "100%", HealthyFor: durationpb.New(0), ProgressDeadline: durationpb.New(90 * time.Second)},
	})
	if err != nil {
		f.t.Fatalf("create rollout: %v", err)
	}
	r := f.wait(ctx, resp.GetRollout().GetId())
	if r.GetState() != ferryv1.RolloutState_ROLLOUT_STATE_SUCCEEDED {
		f.t.Fatalf("rollout to %s ended %s: %s (nodes %v)", group, r.GetState(), r.GetMessage(), r.GetNodes())
	}
	return r
}

// A holder whose copy went bad on disk serves a corrupt piece: the
// fetching agent drops it, reports it, says so in its job's log, fetches
// the piece from the controller and installs the right bytes; the
// controller names the bad peer in its node's state reason.
func TestPeerExchangeCorruptHolder(t *testing.T) {
	f := newFleet(t, nil)
	holder := f.peerAgent("holder", "first")
	fetcher := f.peerAgent("fetcher", "second")
	tarball := toolTarball(t, "3.0", 10<<20)
	f.push("tool-3.0.tar.gz", "3.0", tarball)
	art, err := ferryv1.NewArtifactServiceClient(f.admin).ListArtifacts(context.Background(), &ferryv1.ListArtifactsRequest{})
	if err != nil || len(art.GetArtifacts()) != 1 {
		t.Fatalf("list artifacts: %v %v", art, err)
	}
	download, size := art.GetArtifacts()[0].GetZstdDigest(), art.GetArtifacts()[0].GetZstdSize()
	if download == "" {
		download, size = art.GetArtifacts()[0].GetDigest(), art.GetArtifacts()[0].GetSize()
	}
	f.apply(`name: tool
version: "3.0"
artifact: tool-3.0.tar.gz
steps:
  - archive: {dest: /opt/tool, strip_components: 1}
  - check: {run: "$FERRY_ROOT/opt/tool/bin/tool", expect: "tool 3.0"}
`)
	f.rolloutGroup("first", "3.0")

	// The holder's disk flips a byte of its cached download.
	h, _ := sha256digest.Parse(download)
	cached := filepath.Join(holder.stateDir, "cache", h)
	if err := os.Chmod(cached, 0o600); err != nil {
		t.Fatalf("the holder has not kept its download in its cache: %v", err)
	}
	file, err := os.OpenFile(cached, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	at := int64(size / 2)
	if _, err := file.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := file.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
	file.Close()

	r := f.rolloutGroup("second", "3.0")
	got, err := os.ReadFile(filepath.Join(f.dir, "roots", fetcher.id, "opt", "tool", "bin", "tool"))
	if err != nil || string(got) != "#!/bin/sh\necho tool 3.0\n" {
		t.Errorf("the fetcher's tool/bin/tool holds %q (%v)", got, err)
	}
	if fi, err := os.Stat(filepath.Join(f.dir, "roots", fetcher.id, "opt", "tool", "data")); err != nil || fi.Size() != 10<<20 {
		t.Errorf("the fetcher's tool/data: %v (%v)", fi, err)
	}
	named := false
	for _, rec := range f.jobLogs(r.GetId(), fetcher.id) {
		if strings.Contains(rec.GetText(), "peer holder") && strings.Contains(rec.GetText(), "wrong bytes") {
			named = true
		}
	}
	if !named {
		t.Errorf("the fetcher's job log does not name the peer that served a corrupt piece: %v", f.jobLogs(r.GetId(), fetcher.id))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		reason := f.node(holder.id).GetStateReason()
		if strings.Contains(reason, "served a corrupt piece") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the holder's state reason does not say it served a corrupt piece: %q", reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// freeAddr is a loopback address nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// agentMetric reads one sample from an agent's /metrics (0 when absent).
func agentMetric(t *testing.T, a *testAgent, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + a.metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("agent %s: %s: %v", a.id, line, err)
			}
			return f
		}
	}
	return 0
}
