package controller

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/etcdtest"
	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/replica"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// replicaSet is controllers sharing one etcd prefix and one CA, as a second
// controller joins the first: its data dir gets the first's ca.crt and
// ca.key.
type replicaSet struct {
	t      *testing.T
	eps    []string
	prefix string
	caDir  string
	mod    func(*Config) // when set, adjusts each controller's config

	mu     sync.Mutex
	n      int             // controllers started
	up     []*Controller   // controllers running, in order
	hidden map[string]bool // IDs the replicators do not see
}

func newCluster(t *testing.T) *replicaSet {
	eps, prefix := etcdtest.Shared(t)
	return &replicaSet{t: t, eps: eps, prefix: prefix, hidden: map[string]bool{}}
}

// start runs one more controller on the cluster's store; unless announce,
// the others' replicators do not see it, so they copy nothing to it.
func (cl *replicaSet) start(announce bool) (c *Controller, dir string, stop func()) {
	t := cl.t
	dir = t.TempDir()
	if cl.caDir != "" {
		for _, f := range []string{"ca.crt", "ca.key"} {
			b, err := os.ReadFile(filepath.Join(cl.caDir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfg := testConfig(dir)
	cfg.Store.Backend = StoreEtcd
	cfg.Store.Etcd.Endpoints = cl.eps
	cfg.Store.Etcd.Prefix = cl.prefix
	// The first controller may not have written a record yet: a joiner
	// with the CA beside an empty prefix would be refused as a lost store.
	cfg.AllowNewStore = cl.caDir != ""
	cl.mu.Lock()
	cl.n++
	cfg.ControllerID = fmt.Sprintf("c%d", cl.n)
	if !announce {
		cl.hidden[cfg.ControllerID] = true
	}
	cl.mu.Unlock()
	cfg.peerFilter = func(p replica.Peer) bool {
		cl.mu.Lock()
		defer cl.mu.Unlock()
		return !cl.hidden[p.ID]
	}
	if cl.mod != nil {
		cl.mod(&cfg)
	}
	c, stop = start(t, cfg)
	if announce {
		// The others copy to it once their membership shows it: wait for
		// that, as a push right after it started would otherwise find it
		// missing (and rightly say it is on one controller only).
		id := cfg.ControllerID
		cl.mu.Lock()
		up := slices.Clone(cl.up)
		cl.mu.Unlock()
		for _, o := range up {
			for deadline := time.Now().Add(10 * time.Second); !slices.ContainsFunc(clusterPeers{o}.Peers(), func(p replica.Peer) bool { return p.ID == id }); time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("controller %s does not see %s in the cluster's membership", o.cfg.ControllerID, id)
				}
			}
		}
	}
	cl.mu.Lock()
	cl.up = append(cl.up, c)
	cl.mu.Unlock()
	stopIt := stop
	stop = func() {
		cl.mu.Lock()
		cl.up = slices.DeleteFunc(cl.up, func(o *Controller) bool { return o == c })
		cl.mu.Unlock()
		stopIt()
	}
	if cl.caDir == "" { // the installation's CA, kept apart from any one controller
		cl.caDir = t.TempDir()
		for _, f := range []string{"ca.crt", "ca.key"} {
			b, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(cl.caDir, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return c, dir, stop
}

// pushTo pushes data as name@version and returns the controller's answer.
func pushTo(t *testing.T, conn *grpc.ClientConn, name, version string, data []byte) *ferryv1.PushArtifactResponse {
	t.Helper()
	s, err := ferryv1.NewArtifactServiceClient(conn).PushArtifact(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Header{Header: &ferryv1.PushArtifactHeader{
		Name: name, Version: version, Size: uint64(len(data)), Sha256: hex.EncodeToString(sum[:]),
	}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&ferryv1.PushArtifactRequest{Msg: &ferryv1.PushArtifactRequest_Chunk{Chunk: data}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		t.Fatalf("push %s@%s: %v", name, version, err)
	}
	return resp
}

// tarball is a small tar.gz, which the controller transcodes to zstd.
func tarball(t *testing.T, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	body := strings.Repeat(content+"\n", 1000)
	if err := tw.WriteHeader(&tar.Header{Name: "app/README", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(body)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// download streams digest from c as an agent's download does.
func download(c *Controller, digest string) ([]byte, error) {
	var got bytes.Buffer
	err := c.downloads.Download(context.Background(), "web-01", digest, 0, 0, func(ch artifact.Chunk) error {
		got.Write(ch.Data)
		return nil
	})
	return got.Bytes(), err
}

// A push to A with B up returns once B holds the bytes (both forms); with
// A killed and its data dir gone, B serves them; removing the artifact
// through B leaves no copy that brings it back.
func TestPushIsOnTwoControllersWhenItReturns(t *testing.T) {
	cl := newCluster(t)
	a, dirA, stopA := cl.start(true)
	b, _, _ := cl.start(true)

	data := tarball(t, "replicated")
	resp := pushTo(t, adminConn(t, a), "app.tar.gz", "1", data)
	art := resp.GetArtifact()
	if resp.GetCopies() != 2 || resp.GetWarning() != "" {
		t.Fatalf("push to A with B up: copies=%d warning=%q; want 2 and none", resp.GetCopies(), resp.GetWarning())
	}
	if art.GetZstdDigest() == "" {
		t.Fatal("the tarball has no zstd form; the test needs one")
	}
	for _, d := range artifact.Forms(art) {
		if !b.artifacts.HasBlob(d) {
			t.Errorf("B does not hold %s when the push to A returned", d)
		}
	}

	// B's copy goes bad on its disk: a check on B replaces it with A's
	// instead of quarantining the artifact for every controller.
	zhex := strings.TrimPrefix(art.GetZstdDigest(), sha256digest.Prefix)
	zpath := filepath.Join(b.cfg.DataDir, "artifacts", "sha256", zhex)
	good, err := os.ReadFile(zpath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(zpath, bytes.Repeat([]byte{'x'}, len(good)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.artifacts.Verify(t.Context(), "app.tar.gz@1", func(c artifact.Check) error {
		if c.Damaged() || c.Err != nil {
			t.Errorf("check on B of its damaged zstd form: damaged=%v err=%v; want it repaired from A", c.Damaged(), c.Err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if now, err := os.ReadFile(zpath); err != nil || !bytes.Equal(now, good) {
		t.Errorf("B's zstd form was not replaced by A's copy (%v)", err)
	}

	stopA()
	if err := os.RemoveAll(dirA); err != nil {
		t.Fatal(err)
	}
	got, err := download(b, art.GetDigest())
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download through B with A gone: %d bytes, %v; want the %d pushed", len(got), err, len(data))
	}
	if _, err := download(b, art.GetZstdDigest()); err != nil {
		t.Errorf("download of the zstd form through B: %v", err)
	}

	// The record is the truth: removed through B, the blobs go from B's
	// disk, and a controller that held a copy (C, which fetched it) drops
	// its copy at its next pass rather than bringing the record back.
	c, _, _ := cl.start(true)
	c.replicas.Pass(t.Context())
	if !c.artifacts.HasBlob(art.GetDigest()) {
		t.Fatal("C did not fetch the blob it lacked in its pass")
	}
	if _, err := ferryv1.NewArtifactServiceClient(adminConn(t, b)).DeleteArtifact(t.Context(), &ferryv1.DeleteArtifactRequest{Ref: "app.tar.gz@1"}); err != nil {
		t.Fatal(err)
	}
	c.replicas.Pass(t.Context())
	for _, x := range []*Controller{b, c} {
		for _, d := range artifact.Forms(art) {
			if x.artifacts.HasBlob(d) {
				t.Errorf("controller %s still holds %s after the artifact was removed", x.AdvertiseAddress(), d)
			}
		}
		if list, err := x.artifacts.List(""); err != nil || len(list) != 0 {
			t.Errorf("controller %s lists %v, %v after the removal; want none", x.AdvertiseAddress(), list, err)
		}
	}
}

// A controller with no other up accepts a push and warns; another that
// lacks the bytes fetches them from it when asked for them, and refuses a
// copy that does not match the digest.
func TestControllerFetchesWhatItLacksAndRefusesBadCopies(t *testing.T) {
	cl := newCluster(t)
	a, dirA, _ := cl.start(true)
	b, _, _ := cl.start(false) // A does not know B: nothing is copied to it

	data := []byte("a plain file, not an archive\n")
	resp := pushTo(t, adminConn(t, a), "tool", "1", data)
	if resp.GetCopies() != 1 || !strings.Contains(resp.GetWarning(), "no other controller is up") {
		t.Fatalf("push with no other controller up: copies=%d warning=%q; want 1 and a warning", resp.GetCopies(), resp.GetWarning())
	}
	digest := resp.GetArtifact().GetDigest()
	if b.artifacts.HasBlob(digest) {
		t.Fatal("B holds a blob nobody copied to it")
	}
	got, err := download(b, digest)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download through B, which lacks the bytes: %q, %v; want them fetched from A", got, err)
	}
	if !b.artifacts.HasBlob(digest) {
		t.Error("B did not keep the blob it fetched")
	}

	// A's copy of another artifact goes bad on its disk (same size): B
	// refuses what A sends, keeps nothing and says why.
	other := pushTo(t, adminConn(t, a), "tool", "2", []byte("version two of the tool\n")).GetArtifact()
	hexsum := strings.TrimPrefix(other.GetDigest(), sha256digest.Prefix)
	if err := os.WriteFile(filepath.Join(dirA, "artifacts", "sha256", hexsum), []byte("VERSION TWO OF THE TOOL\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = download(b, other.GetDigest())
	if err == nil || !strings.Contains(err.Error(), "hashes to") || !errors.Is(err, artifact.ErrNotFound) {
		t.Fatalf("download through B of a blob A holds damaged: %v; want it refused with the digest it hashed to", err)
	}
	if b.artifacts.HasBlob(other.GetDigest()) {
		t.Error("B kept a copy that does not match its digest")
	}

	// Only controllers may call the replica service: an admin is refused.
	fs, err := ferryv1.NewReplicaServiceClient(adminConn(t, a)).FetchArtifact(t.Context(), &ferryv1.FetchArtifactRequest{Digest: digest})
	if err == nil {
		_, err = fs.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("an admin fetching a blob from the replica service: %v; want it refused", err)
	}

	// The background pass copies what B lacks once it can.
	third := pushTo(t, adminConn(t, a), "tool", "3", []byte("three\n")).GetArtifact()
	b.replicas.Pass(t.Context())
	if !b.artifacts.HasBlob(third.GetDigest()) {
		t.Error("B's pass did not fetch the blob it lacked")
	}
}

// An import to A with B up is on B when it returns, as a push is.
func TestImportIsOnTwoControllersWhenItReturns(t *testing.T) {
	src := t.TempDir()
	cl := newCluster(t)
	cl.mod = func(c *Config) { c.ImportDirs = []string{src} }
	a, _, _ := cl.start(true)
	b, _, _ := cl.start(true)
	data := []byte("an imported file\n")
	path := filepath.Join(src, "imported-1.0.bin")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	stream, err := ferryv1.NewArtifactServiceClient(adminConn(t, a)).ImportArtifact(t.Context(), &ferryv1.ImportArtifactRequest{
		Source: path, Sha256: hex.EncodeToString(sum[:]), Name: "imported", Version: "1.0",
	})
	if err != nil {
		t.Fatal(err)
	}
	var res *ferryv1.PushArtifactResponse
	for res == nil {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatalf("import: %v", err)
		}
		res = msg.GetResult()
	}
	if res.GetCopies() != 2 || res.GetWarning() != "" || !b.artifacts.HasBlob(res.GetArtifact().GetDigest()) {
		t.Fatalf("import to A with B up: copies=%d warning=%q, on B: %v; want 2 copies, B holding it", res.GetCopies(), res.GetWarning(), b.artifacts.HasBlob(res.GetArtifact().GetDigest()))
	}
}
