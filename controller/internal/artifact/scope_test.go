package artifact_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
)

// nodeJobs is a rollout engine as the download handler sees it: each node
// may fetch the artifacts of its jobs.
type nodeJobs map[string][]string

func (j nodeJobs) NodeMayFetch(node, digest string) bool {
	for _, d := range j[node] {
		if d == digest {
			return true
		}
	}
	return false
}

// A staging node's certificate cannot download a production artifact by
// its digest: it gets PermissionDenied and no bytes, whether the artifact
// exists or not. The production node with the job gets every byte.
func TestDownloadOnlyWithAJob(t *testing.T) {
	prodData, stagingData := randomBytes(30, 2*artifact.ChunkSize+5), randomBytes(31, 1000)
	prod, staging := sha(prodData), sha(stagingData)
	h := newHarness(t, harnessOpts{jobs: nodeJobs{"prod-1": {prod}, "stage-1": {staging}}})
	for _, d := range [][]byte{prodData, stagingData} {
		if _, err := h.push("tool.tar.gz", fmt.Sprint(len(d)), d, sha(d)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	stage, prodNode := h.dialAgent("stage-1"), h.dialAgent("prod-1")

	for _, tc := range []struct {
		name, digest string
	}{
		{"another group's artifact", prod},
		{"an artifact that does not exist", sha([]byte("nope"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := h.served.n.Load()
			got, err := h.downloadAs(ctx, stage, tc.digest, 0)
			want := "node stage-1 has no job that uses artifact " + tc.digest
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), want) {
				t.Fatalf("download: %v, want PermissionDenied saying %q", err, want)
			}
			if len(got) != 0 || h.served.n.Load() != before {
				t.Errorf("the refused node received %d bytes (%d served)", len(got), h.served.n.Load()-before)
			}
		})
	}
	t.Run("a malformed digest is named as such", func(t *testing.T) {
		if _, err := h.downloadAs(ctx, stage, "sha256:abc", 0); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("download: %v, want InvalidArgument", err)
		}
	})
	t.Run("nodes with the job", func(t *testing.T) {
		if got, err := h.downloadAs(ctx, prodNode, prod, 0); err != nil || !bytes.Equal(got, prodData) {
			t.Fatalf("production node: %d bytes, %v; want the whole artifact", len(got), err)
		}
		if got, err := h.downloadAs(ctx, stage, staging, 7); err != nil || !bytes.Equal(got, stagingData[7:]) {
			t.Fatalf("staging node, its own artifact from offset 7: %d bytes, %v", len(got), err)
		}
	})
}

// pushRandom pushes size random bytes and returns them and their digest.
func pushRandom(h *harness, seed uint64, size int) ([]byte, string) {
	h.t.Helper()
	data := randomBytes(seed, size)
	if _, err := h.push(fmt.Sprintf("random-%d.tar.gz", seed), "1", data, ""); err != nil {
		h.t.Fatal(err)
	}
	return data, sha(data)
}

// stallingClient dials as node with the smallest flow-control windows
// grpc-go allows (which also turns off its window growth), so a stream it
// stops reading holds the controller's sends.
func stallingClient(h *harness, node string) ferryv1.AgentServiceClient {
	return h.dialAgent(node, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
}

// openStalled opens a download, reads its first chunk and stops reading.
func openStalled(ctx context.Context, c ferryv1.AgentServiceClient, digest string) (grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse], error) {
	s, err := c.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest})
	if err != nil {
		return nil, err
	}
	if _, err := s.Recv(); err != nil {
		return nil, err
	}
	return s, nil
}

// drainErr reads a stream to its end and returns how it ended.
func drainErr(s grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse]) error {
	for {
		if _, err := s.Recv(); err != nil {
			return err
		}
	}
}

// One node opening as many downloads as there are slots and reading none
// of them cannot keep another node from downloading: the per-node cap
// refuses its third stream, and when an operator raised that cap, the
// stall timeout ends its streams and frees their slots. Its stalled
// streams end with Unavailable after the stall timeout, and the agent's
// resumable download carries on later.
func TestHostileNodeCannotStarveDownloads(t *testing.T) {
	for _, tc := range []struct {
		name    string
		perNode int // 0: the default
		open    int // streams the hostile node gets
	}{
		{"per-node cap", 0, artifact.DefaultMaxDownloadsPerNode},
		{"cap raised to every slot", artifact.DefaultMaxDownloads, artifact.DefaultMaxDownloads},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const stall = 400 * time.Millisecond
			h := newHarness(t, harnessOpts{perNode: tc.perNode, stall: stall})
			data, digest := pushRandom(h, 32, 8*artifact.ChunkSize)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()

			hostile := stallingClient(h, "mallory")
			var stalled []grpc.ServerStreamingClient[ferryv1.DownloadArtifactResponse]
			for i := range artifact.DefaultMaxDownloads {
				s, err := openStalled(ctx, hostile, digest)
				if i >= tc.open {
					want := fmt.Sprintf("node mallory already has %d downloads", tc.open)
					if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), want) {
						t.Fatalf("stream %d of the hostile node: %v, want ResourceExhausted saying %q", i+1, err, want)
					}
					continue
				}
				if err != nil {
					t.Fatalf("stream %d of the hostile node: %v", i+1, err)
				}
				stalled = append(stalled, s)
			}

			got, err := h.downloadAs(ctx, h.dialAgent("victim"), digest, 0)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("another node's download: %d of %d bytes, %v", len(got), len(data), err)
			}

			waitFor(t, "the stalled downloads to give their slots back", func() bool { return h.dl.Active() == 0 })
			for i, s := range stalled {
				err := drainErr(s)
				want := fmt.Sprintf("download stalled: no progress for %s; resume later", stall)
				if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
					t.Errorf("stalled stream %d ended with %v, want Unavailable saying %q", i+1, err, want)
				}
			}
			// The node may download again, and completes when it reads.
			if got, err := h.downloadAs(ctx, hostile, digest, 0); err != nil || !bytes.Equal(got, data) {
				t.Fatalf("the hostile node's later download: %d bytes, %v", len(got), err)
			}
		})
	}
}

// The per-node cap refuses a node's third stream, counting streams that
// wait for a slot too; once one ends, the node may open another.
func TestPerNodeCapRefusesThirdStream(t *testing.T) {
	h := newHarness(t, harnessOpts{maxDownloads: 1})
	data, digest := pushRandom(h, 33, 8*artifact.ChunkSize)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := stallingClient(h, "n7")

	firstCtx, cancelFirst := context.WithCancel(ctx)
	defer cancelFirst()
	if _, err := openStalled(firstCtx, node, digest); err != nil { // holds the only slot
		t.Fatal(err)
	}
	second := make(chan []byte, 1)
	go func() { // waits for that slot
		got, err := h.downloadAs(ctx, node, digest, 0)
		if err != nil {
			t.Errorf("second stream: %v", err)
		}
		second <- got
	}()
	waitFor(t, "the second stream to wait for a slot", func() bool { return h.dl.NodeDownloads("n7") == 2 })

	_, err := openStalled(ctx, node, digest)
	want := "node n7 already has 2 downloads streaming or waiting, the most one node may have (--max-downloads-per-node)"
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), want) {
		t.Fatalf("third stream: %v, want ResourceExhausted saying %q", err, want)
	}

	cancelFirst()
	if got := <-second; !bytes.Equal(got, data) {
		t.Fatalf("the waiting stream got %d bytes, not the artifact", len(got))
	}
	if got, err := h.downloadAs(ctx, node, digest, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a new stream once the others ended: %d bytes, %v", len(got), err)
	}
}
