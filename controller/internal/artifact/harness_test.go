package artifact_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/pushclient"
	"github.com/ferrydeploy/ferry/controller/internal/server"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// harness is a controller with the artifact services over real mTLS on
// loopback, and an admin and an agent client.
type harness struct {
	t      testing.TB
	dir    string
	db     *store.Store
	st     *artifact.Store
	dl     *artifact.Downloader
	audit  auditLog
	served *counter
	addr   string
	admin  *grpc.ClientConn
	agent  *grpc.ClientConn
	pki    *pkitest.PKI
}

type harnessOpts struct {
	maxDownloads int
	perNode      int                 // DownloaderConfig.MaxPerNode
	stall        time.Duration       // DownloaderConfig.StallTimeout
	jobs         server.JobArtifacts // default: every node has a job for every artifact
	wrapTemp     func(io.Writer) io.Writer
	dialOpts     []grpc.DialOption
	dataDir      string // default: a new temp dir
}

type counter struct{ n atomic.Int64 }

func (c *counter) Add(f float64) { c.n.Add(int64(f)) }

// auditLog reads the audit events the services wrote to the store.
type auditLog struct{ h *harness }

// list returns the events oldest first, each as "actor action target
// ok|refused".
func (a auditLog) list() []string {
	evs, err := a.h.db.AuditEvents(0)
	if err != nil {
		a.h.t.Fatal(err)
	}
	var out []string
	for i := len(evs) - 1; i >= 0; i-- {
		outcome := "ok"
		if evs[i].Outcome != "ok" {
			outcome = "refused"
		}
		out = append(out, evs[i].Actor+" "+evs[i].Action+" "+evs[i].Target+" "+outcome)
	}
	return out
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, dir: o.dataDir, served: &counter{}, pki: pkitest.New(t)}
	h.audit = auditLog{h}
	if h.dir == "" {
		h.dir = t.TempDir()
	}
	h.open(o)
	srv := rpc.NewServer(rpc.ServerOptions{TLS: h.pki.ServerTLS(), Logger: quietLogger()})
	jobs := o.jobs
	if jobs == nil {
		jobs = anyJob{}
	}
	server.Register(srv, &server.Deps{Store: h.db, Artifacts: h.st, Downloads: h.dl, JobArtifacts: jobs, Logger: quietLogger()})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	go func() {
		if err := srv.Serve(lis); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(srv.Stop)
	h.admin = h.dial(h.pki.Admin, o.dialOpts...)
	h.agent = h.dial(h.pki.Agent, o.dialOpts...)
	return h
}

// open opens (or reopens) the store on the harness's data dir.
func (h *harness) open(o harnessOpts) {
	h.t.Helper()
	if h.db != nil {
		h.db.Close()
	}
	db, err := store.Open(filepath.Join(h.dir, "ferry.db"), store.Options{Create: true})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { db.Close() })
	st, err := artifact.Open(artifact.WithWrapTemp(artifact.Config{Dir: filepath.Join(h.dir, "artifacts"), Records: db, Logger: quietLogger()}, o.wrapTemp))
	if err != nil {
		h.t.Fatal(err)
	}
	h.db, h.st = db, st
	h.dl = artifact.NewDownloader(artifact.DownloaderConfig{Store: st, MaxConcurrent: o.maxDownloads, MaxPerNode: o.perNode, StallTimeout: o.stall, BytesServed: h.served, Logger: quietLogger()})
}

func (h *harness) dial(cert tls.Certificate, extra ...grpc.DialOption) *grpc.ClientConn {
	h.t.Helper()
	conn, err := grpc.NewClient(h.addr, append(rpc.DialOptions(h.pki.ClientTLS(cert)), extra...)...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// dialAgent connects with a new agent certificate for node.
func (h *harness) dialAgent(node string, extra ...grpc.DialOption) ferryv1.AgentServiceClient {
	h.t.Helper()
	return ferryv1.NewAgentServiceClient(h.dial(h.pki.Issue(h.t, pki.Identity{Role: pki.RoleAgent, Name: node}), extra...))
}

// anyJob lets every node download every artifact, for the tests of the
// transfer itself.
type anyJob struct{}

func (anyJob) NodeMayFetch(string, string) bool { return true }

func (h *harness) artifacts() ferryv1.ArtifactServiceClient {
	return ferryv1.NewArtifactServiceClient(h.admin)
}

func (h *harness) push(name, version string, data []byte, sum string) (*ferryv1.PushArtifactResponse, error) {
	return pushclient.Push(context.Background(), h.artifacts(), &ferryv1.PushArtifactHeader{Name: name, Version: version, Size: uint64(len(data)), Sha256: sum}, bytes.NewReader(data), nil)
}

// download fetches a digest from offset with the agent's certificate.
func (h *harness) download(ctx context.Context, digest string, offset uint64) ([]byte, error) {
	return h.downloadAs(ctx, ferryv1.NewAgentServiceClient(h.agent), digest, offset)
}

// downloadAs fetches a digest from offset with an agent's client.
func (h *harness) downloadAs(ctx context.Context, agent ferryv1.AgentServiceClient, digest string, offset uint64) ([]byte, error) {
	stream, err := agent.DownloadArtifact(ctx, &ferryv1.DownloadArtifactRequest{Digest: digest, Offset: offset})
	if err != nil {
		return nil, err
	}
	var out []byte
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if m.Offset != offset+uint64(len(out)) {
			h.t.Errorf("chunk at offset %d, want %d", m.Offset, offset+uint64(len(out)))
		}
		out = append(out, m.Data...)
	}
}

// checkConsistent asserts what every fault test needs afterwards: no temp
// files, every blob has a record and hashes to its name, every record has
// its blob with the recorded size.
func (h *harness) checkConsistent() {
	h.t.Helper()
	tmps, err := os.ReadDir(h.st.TmpDir())
	if err != nil {
		h.t.Fatal(err)
	}
	for _, e := range tmps {
		h.t.Errorf("temp file %s left behind", e.Name())
	}
	recs, err := h.st.List("")
	if err != nil {
		h.t.Fatal(err)
	}
	byDigest := map[string]*ferryv1.Artifact{}
	sizes := map[string]uint64{} // every form's blob: the original's and the zstd form's
	for _, a := range recs {
		byDigest[a.Digest] = a
		sizes[a.Digest] = a.Size
		if a.ZstdDigest != "" {
			sizes[a.ZstdDigest] = a.ZstdSize
		}
	}
	blobs, err := os.ReadDir(h.st.BlobDir())
	if err != nil {
		h.t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range blobs {
		d := sha256digest.Prefix + e.Name()
		seen[d] = true
		size, ok := sizes[d]
		if !ok {
			h.t.Errorf("blob %s has no record", e.Name())
			continue
		}
		data, err := os.ReadFile(filepath.Join(h.st.BlobDir(), e.Name()))
		if err != nil {
			h.t.Fatal(err)
		}
		if got := sha(data); got != d || uint64(len(data)) != size {
			h.t.Errorf("blob %s hashes to %s with %d bytes; record says %d bytes", e.Name(), got, len(data), size)
		}
	}
	for d := range sizes {
		if !seen[d] {
			h.t.Errorf("record of %s has no blob", d)
		}
	}
}

func sha(data []byte) string {
	s := sha256.Sum256(data)
	return sha256digest.Prefix + hex.EncodeToString(s[:])
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
