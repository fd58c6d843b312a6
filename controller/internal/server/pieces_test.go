package server_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/controller/internal/artifact"
	"github.com/ferrydeploy/ferry/controller/internal/fleet"
	"github.com/ferrydeploy/ferry/controller/internal/health"
	"github.com/ferrydeploy/ferry/controller/internal/server"
	"github.com/ferrydeploy/ferry/controller/internal/store"
	"github.com/ferrydeploy/ferry/controller/internal/tracker"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// jobs is a rollout engine as the handlers see it: each node may fetch the
// artifacts (original digests) of its jobs.
type jobs map[string][]string

func (j jobs) NodeMayFetch(node, digest string) bool { return slices.Contains(j[node], digest) }

type count struct{ n atomic.Int64 }

func (c *count) Add(f float64) { c.n.Add(int64(f)) }
func (c *count) Inc()          { c.n.Add(1) }

// peerHarness is a controller's AgentService over real mTLS on loopback,
// with a fleet, an artifact store and peer exchange on (unless off).
type peerHarness struct {
	t      *testing.T
	pki    *pkitest.PKI
	certs  map[string]tls.Certificate // of the enrolled nodes
	addr   string
	fleet  *fleet.Registry
	st     *artifact.Store
	served *count
	bad    *count
}

func newPeerHarness(t *testing.T, nodes []string, j jobs, off bool) *peerHarness {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	db, err := store.Open(filepath.Join(dir, "ferry.db"), store.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ca := pkitest.New(t)
	certs := map[string]tls.Certificate{}
	for _, n := range nodes {
		cert := ca.Issue(t, pki.Identity{Role: pki.RoleAgent, Name: n})
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		certs[n] = cert
		if err := db.PutNode(store.NodeRecord{ID: n, Group: "prod", EnrolledAt: time.Now(), CertSerials: []string{leaf.SerialNumber.String()}, CertExpiresAt: leaf.NotAfter}, nil); err != nil {
			t.Fatal(err)
		}
	}
	fl, err := fleet.New(fleet.Config{Store: db, Logger: log, Evaluate: health.Evaluate})
	if err != nil {
		t.Fatal(err)
	}
	st, err := artifact.Open(artifact.Config{Dir: filepath.Join(dir, "artifacts"), Records: db, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	h := &peerHarness{t: t, pki: ca, certs: certs, fleet: fl, st: st, served: &count{}, bad: &count{}}
	dl := artifact.NewDownloader(artifact.DownloaderConfig{Store: st, BytesServed: h.served, Logger: log})
	d := &server.Deps{Store: db, Fleet: fl, Artifacts: st, Downloads: dl, JobArtifacts: j, Logger: log, BadPieces: h.bad}
	if !off {
		d.Tracker = tracker.New(tracker.Config{SeedTimeout: time.Hour}) // no assignment expires while a slow test runs
	}
	srv := rpc.NewServer(rpc.ServerOptions{TLS: h.pki.ServerTLS(), Logger: log})
	server.Register(srv, d)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = lis.Addr().String()
	go func() { _ = srv.Serve(lis) }() // ends with Stop
	t.Cleanup(srv.Stop)
	return h
}

// agent dials as node.
func (h *peerHarness) agent(node string) ferryv1.AgentServiceClient {
	h.t.Helper()
	conn, err := grpc.NewClient(h.addr, rpc.DialOptions(h.pki.ClientTLS(h.certs[node]))...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return ferryv1.NewAgentServiceClient(conn)
}

// connect dials as node and opens its stream with a hello naming its
// piece server's port ("" for none), until the test ends.
func (h *peerHarness) connect(node, peerAddr string) ferryv1.AgentServiceClient {
	h.t.Helper()
	c := h.agent(node)
	ctx, cancel := context.WithCancel(context.Background())
	h.t.Cleanup(cancel)
	stream, err := c.Connect(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := stream.Send(&ferryv1.ConnectRequest{Msg: &ferryv1.ConnectRequest_Hello{Hello: &ferryv1.AgentHello{AgentVersion: "test", PeerAddress: peerAddr}}}); err != nil {
		h.t.Fatal(err)
	}
	if m, err := stream.Recv(); err != nil || m.GetWelcome() == nil {
		h.t.Fatalf("%s: no welcome: %v %v", node, m, err)
	}
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				return
			}
		}
	}()
	return c
}

func (h *peerHarness) push(name string, data []byte) *ferryv1.Artifact {
	h.t.Helper()
	a, _, err := h.st.Put(context.Background(), artifact.PutRequest{Name: name, Version: "1"}, bytes.NewReader(data))
	if err != nil {
		h.t.Fatal(err)
	}
	return a
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return sha256digest.Format(s[:])
}

func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(seed)}).Read(b)
	return b
}

// checkPieces asserts that the answer describes data exactly: pieces in
// order, covering it, each digest the SHA-256 of its bytes.
func checkPieces(t *testing.T, resp *ferryv1.GetPiecesResponse, data []byte) {
	t.Helper()
	if resp.GetSize() != uint64(len(data)) {
		t.Fatalf("size %d, want %d", resp.GetSize(), len(data))
	}
	var off uint64
	for i, p := range resp.GetPieces() {
		if p.GetOffset() != off || p.GetLength() == 0 {
			t.Fatalf("piece %d at %d with %d bytes, want at %d", i, p.GetOffset(), p.GetLength(), off)
		}
		end := off + uint64(p.GetLength())
		if got := sha(data[off:end]); p.GetDigest() != got {
			t.Errorf("piece %d digest %s, want %s", i, p.GetDigest(), got)
		}
		off = end
	}
	if off != uint64(len(data)) {
		t.Fatalf("pieces cover %d bytes of %d", off, len(data))
	}
}

// A node gets the pieces of its job's artifact, exact and verified; a
// node without a job for it is refused whatever it sends, and so is a
// digest that is malformed or a `have` out of range.
func TestGetPiecesOnlyWithAJob(t *testing.T) {
	data := randomBytes(1, 2*artifact.DefaultPieceSize+12345)
	other := randomBytes(2, 1000)
	d, od := sha(data), sha(other)
	h := newPeerHarness(t, []string{"a", "stranger"}, jobs{"a": {d}, "stranger": {od}}, false)
	h.push("tool.bin", data)
	h.push("other.bin", other)
	a := h.connect("a", "127.0.0.1:7001")
	stranger := h.connect("stranger", "127.0.0.1:7002")
	ctx := context.Background()

	resp, err := a.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, resp, data)
	if len(resp.GetPieces()) != 3 {
		t.Errorf("%d pieces of %d bytes, want 3 of at most %d", len(resp.GetPieces()), len(data), artifact.DefaultPieceSize)
	}

	for _, tc := range []struct {
		name   string
		client ferryv1.AgentServiceClient
		req    *ferryv1.GetPiecesRequest
		code   codes.Code
		msg    string
	}{
		{"another node's artifact", stranger, &ferryv1.GetPiecesRequest{Digest: d}, codes.PermissionDenied, "node stranger has no job that uses artifact " + d},
		{"an artifact that does not exist", stranger, &ferryv1.GetPiecesRequest{Digest: sha([]byte("nope"))}, codes.PermissionDenied, "has no job"},
		{"a malformed digest", a, &ferryv1.GetPiecesRequest{Digest: "sha256:abc"}, codes.InvalidArgument, "hex digits"},
		{"a piece index out of range", a, &ferryv1.GetPiecesRequest{Digest: d, Have: []uint32{0, 3}}, codes.InvalidArgument, "piece 3 named as held, but it has 3 pieces"},
		{"more pieces than there are", a, &ferryv1.GetPiecesRequest{Digest: d, Have: []uint32{0, 0, 0, 0}}, codes.InvalidArgument, "4 pieces named as held, but it has 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.client.GetPieces(ctx, tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("GetPieces: %v, want %s saying %q", err, tc.code, tc.msg)
			}
		})
	}
}

// The zstd form of a job's tarball is a download of its own: its pieces
// are of the zstd bytes, and the node whose job uses the original may ask.
func TestGetPiecesOfZstdForm(t *testing.T) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	body := randomBytes(3, 5<<20) // random: the zstd form stays over one piece
	if err := tw.WriteHeader(&tar.Header{Name: "tool/bin", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(body); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(tb.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	h := newPeerHarness(t, []string{"a"}, jobs{"a": {sha(gz.Bytes())}}, false)
	art := h.push("tool.tar.gz", gz.Bytes())
	if art.GetZstdDigest() == "" {
		t.Fatal("the tarball got no zstd form")
	}
	a := h.connect("a", "127.0.0.1:7001")
	resp, err := a.GetPieces(context.Background(), &ferryv1.GetPiecesRequest{Digest: art.GetZstdDigest()})
	if err != nil {
		t.Fatal(err)
	}
	zst, err := download(a, art.GetZstdDigest(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	checkPieces(t, resp, zst)
	if len(resp.GetPieces()) < 2 {
		t.Errorf("%d pieces of the %d-byte zstd form, want 2", len(resp.GetPieces()), len(zst))
	}
}

// The first askers of a download split its pieces between them and are
// named to each other as holders, with their piece servers' addresses
// (the host the stream comes from, the port the hello names); a node
// that holds pieces is named for them, and the controller serves each
// piece once while the nodes swap the rest.
func TestGetPiecesSpreadsSeeding(t *testing.T) {
	data := randomBytes(4, 12*artifact.DefaultPieceSize) // 12 pieces, a seed window of 4 each
	d := sha(data)
	nodes := []string{"a", "b", "c", "d"}
	j := jobs{}
	for _, n := range nodes {
		j[n] = []string{d}
	}
	h := newPeerHarness(t, nodes, j, false)
	h.push("tool.bin", data)
	ctx := context.Background()
	clients := map[string]ferryv1.AgentServiceClient{}
	for i, n := range nodes {
		clients[n] = h.connect(n, fmt.Sprintf("[::]:%d", 7001+i))
	}
	seededBy := map[int]string{}
	for _, n := range nodes[:3] {
		resp, err := clients[n].GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d})
		if err != nil {
			t.Fatal(err)
		}
		var mine []int
		for i, p := range resp.GetPieces() {
			if p.GetSeed() {
				mine = append(mine, i)
				if other, dup := seededBy[i]; dup {
					t.Errorf("piece %d assigned to %s and %s", i, other, n)
				}
				seededBy[i] = n
			}
		}
		if len(mine) != tracker.DefaultSeedWindow {
			t.Errorf("%s seeds pieces %v, want %d of them", n, mine, tracker.DefaultSeedWindow)
		}
	}
	if len(seededBy) != 12 {
		t.Fatalf("%d of 12 pieces assigned to the first three askers", len(seededBy))
	}

	// d asks: every piece has a seeder, named as holder with its address.
	resp, err := clients["d"].GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	addrs := map[string]string{}
	for _, p := range resp.GetPeers() {
		addrs[p.GetNodeId()] = p.GetAddress()
	}
	for i, n := range nodes[:3] {
		if want := fmt.Sprintf("127.0.0.1:%d", 7001+i); addrs[n] != want {
			t.Errorf("address of %s: %q, want %q (the stream's host, the hello's port)", n, addrs[n], want)
		}
	}
	for i, p := range resp.GetPieces() {
		if p.GetSeed() || !slices.Equal(p.GetHolders(), []string{seededBy[i]}) {
			t.Errorf("d's piece %d: seed %v holders %v, want [%s] fetching it", i, p.GetSeed(), p.GetHolders(), seededBy[i])
		}
	}

	// Now every node fetches: its seeds from the controller (a range of
	// exactly the piece), then the rest from holders, reporting what it
	// has each time, until each holds all.
	have := map[string][]uint32{}
	pieces := resp.GetPieces()
	for round := 0; ; round++ {
		if round > 20 {
			t.Fatalf("not done after 20 rounds: %v", have)
		}
		done := 0
		for _, n := range nodes {
			resp, err := clients[n].GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d, Have: have[n]})
			if err != nil {
				t.Fatal(err)
			}
			for i, p := range resp.GetPieces() {
				switch {
				case p.GetSeed():
					got, err := download(clients[n], d, p.GetOffset(), uint64(p.GetLength()))
					if err != nil || sha(got) != p.GetDigest() {
						t.Fatalf("%s: piece %d from the controller: %d bytes, %v", n, i, len(got), err)
					}
					have[n] = append(have[n], uint32(i))
				case slices.ContainsFunc(p.GetHolders(), func(holder string) bool { return slices.Contains(have[holder], uint32(i)) }):
					have[n] = append(have[n], uint32(i)) // from a peer
				}
			}
			if len(have[n]) == len(pieces) {
				done++
			}
		}
		if done == len(nodes) {
			break
		}
	}
	if got := h.served.n.Load(); got != int64(len(data)) {
		t.Errorf("the controller served %d bytes to %d nodes, want %d: each piece once", got, len(nodes), len(data))
	}
}

// download fetches length bytes from offset (0: to the end).
func download(c ferryv1.AgentServiceClient, digest string, offset, length uint64) ([]byte, error) {
	stream, err := c.DownloadArtifact(context.Background(), &ferryv1.DownloadArtifactRequest{Digest: digest, Offset: offset, Length: length})
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
		if m.GetOffset() != offset+uint64(len(out)) {
			return out, fmt.Errorf("chunk at %d, want %d", m.GetOffset(), offset+uint64(len(out)))
		}
		out = append(out, m.GetData()...)
	}
}

// DownloadArtifact with a length returns exactly that range; a range
// past the end is refused before any byte is sent.
func TestDownloadArtifactLength(t *testing.T) {
	data := randomBytes(5, 3*artifact.ChunkSize+77)
	d := sha(data)
	h := newPeerHarness(t, []string{"a"}, jobs{"a": {d}}, false)
	h.push("tool.bin", data)
	a := h.agent("a")
	for _, tc := range []struct {
		name        string
		off, length uint64
	}{
		{"within one chunk", 10, 100},
		{"across chunks", artifact.ChunkSize - 5, 2*artifact.ChunkSize + 3},
		{"to the last byte", 5, uint64(len(data)) - 5},
		{"no length: to the end", artifact.ChunkSize, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := data[tc.off:]
			if tc.length > 0 {
				want = data[tc.off : tc.off+tc.length]
			}
			before := h.served.n.Load()
			got, err := download(a, d, tc.off, tc.length)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%d bytes (%v), want %d bytes of the artifact from %d", len(got), err, len(want), tc.off)
			}
			if served := h.served.n.Load() - before; served != int64(len(want)) {
				t.Errorf("bytes served counted %d, want %d", served, len(want))
			}
		})
	}
	t.Run("past the end", func(t *testing.T) {
		got, err := download(a, d, uint64(len(data))-10, 11)
		if status.Code(err) != codes.OutOfRange || len(got) != 0 {
			t.Fatalf("%d bytes, %v; want OutOfRange and nothing", len(got), err)
		}
	})
}

// ReportBadPeer puts the bad node's offence into its state reason and
// stops it being named as a holder; a report of the right bytes, of a
// node the controller never named, or beyond the rate is refused.
func TestReportBadPeer(t *testing.T) {
	data := randomBytes(6, artifact.DefaultPieceSize+10)
	d := sha(data)
	nodes := []string{"good", "bad", "idle", "reporter"}
	j := jobs{}
	for _, n := range nodes {
		j[n] = []string{d}
	}
	h := newPeerHarness(t, nodes, j, false)
	h.push("tool.bin", data)
	ctx := context.Background()
	good, bad := h.connect("good", "127.0.0.1:7001"), h.connect("bad", "127.0.0.1:7002")
	h.connect("idle", "127.0.0.1:7003")
	reporter := h.connect("reporter", "127.0.0.1:7004")
	for _, c := range []ferryv1.AgentServiceClient{good, bad} {
		if _, err := c.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d, Have: []uint32{0, 1}}); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := reporter.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	if hs := resp.GetPieces()[0].GetHolders(); !slices.Contains(hs, "bad") {
		t.Fatalf("holders %v, want bad among them", hs)
	}
	right := resp.GetPieces()[0].GetDigest()
	wrong := sha([]byte("garbage"))

	for _, tc := range []struct {
		name string
		req  *ferryv1.ReportBadPeerRequest
		code codes.Code
		msg  string
	}{
		{"the right bytes", &ferryv1.ReportBadPeerRequest{NodeId: "good", Digest: d, Index: 0, GotDigest: right}, codes.InvalidArgument, "is the right piece"},
		{"a node never named", &ferryv1.ReportBadPeerRequest{NodeId: "idle", Digest: d, Index: 0, GotDigest: wrong}, codes.FailedPrecondition, "did not name node idle as a holder"},
		{"a piece out of range", &ferryv1.ReportBadPeerRequest{NodeId: "bad", Digest: d, Index: 2, GotDigest: wrong}, codes.InvalidArgument, "not a piece 2"},
		{"itself", &ferryv1.ReportBadPeerRequest{NodeId: "reporter", Digest: d, GotDigest: wrong}, codes.InvalidArgument, "reported itself"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := reporter.ReportBadPeer(ctx, tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("ReportBadPeer: %v, want %s saying %q", err, tc.code, tc.msg)
			}
		})
	}
	if n, _ := h.fleet.Node("good"); strings.Contains(n.GetStateReason(), "corrupt") {
		t.Fatalf("a refused report marked good: %q", n.GetStateReason())
	}

	if _, err := reporter.ReportBadPeer(ctx, &ferryv1.ReportBadPeerRequest{NodeId: "bad", Digest: d, Index: 1, GotDigest: wrong}); err != nil {
		t.Fatal(err)
	}
	n, _ := h.fleet.Node("bad")
	if r := n.GetStateReason(); !strings.Contains(r, "served a corrupt piece of tool.bin@1 to reporter at ") {
		t.Errorf("bad's reason %q does not name the corrupt piece", r)
	}
	if n.GetState() != ferryv1.NodeState_NODE_STATE_HEALTHY {
		t.Errorf("bad is %s: a bad piece is told in the reason; the stream is up, the node healthy", n.GetState())
	}
	if h.bad.n.Load() != 1 {
		t.Errorf("bad pieces counted %d, want 1", h.bad.n.Load())
	}
	// The bad node is named no more, even when it claims the pieces again.
	if _, err := bad.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d, Have: []uint32{0, 1}}); err != nil {
		t.Fatal(err)
	}
	resp, err = reporter.GetPieces(ctx, &ferryv1.GetPiecesRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range resp.GetPieces() {
		if slices.Contains(p.GetHolders(), "bad") || !slices.Contains(p.GetHolders(), "good") {
			t.Errorf("piece %d holders %v: want good, not bad", i, p.GetHolders())
		}
	}

	// A flood of reports: the rest are refused, and said so.
	refused := 0
	for range 10 {
		_, err := reporter.ReportBadPeer(ctx, &ferryv1.ReportBadPeerRequest{NodeId: "bad", Digest: d, Index: 0, GotDigest: wrong})
		if status.Code(err) == codes.ResourceExhausted {
			refused++
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if refused != 6 || h.bad.n.Load() != 5 {
		t.Errorf("of 11 reports within a minute %d were refused and %d recorded, want 6 and 5", refused, h.bad.n.Load())
	}
}

// AuthorizePeer allows a peer with a job for the download, to a server
// with one; a server without one is refused, a peer without one denied.
func TestAuthorizePeer(t *testing.T) {
	data, other := randomBytes(7, 100), randomBytes(8, 100)
	d, od := sha(data), sha(other)
	h := newPeerHarness(t, []string{"server", "peer", "stranger"}, jobs{"server": {d}, "peer": {d}, "stranger": {od}}, false)
	h.push("tool.bin", data)
	h.push("other.bin", other)
	ctx := context.Background()
	srv, stranger := h.agent("server"), h.agent("stranger")
	for _, tc := range []struct {
		name, node, reason string
		allowed            bool
	}{
		{"a peer with a job for it", "peer", "", true},
		{"a peer without", "stranger", "node stranger has no current or recent job that uses " + d, false},
		{"not a node", "ghost", "ghost is not an enrolled node", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := srv.AuthorizePeer(ctx, &ferryv1.AuthorizePeerRequest{NodeId: tc.node, Digest: d})
			if err != nil || resp.GetAllowed() != tc.allowed || !strings.Contains(resp.GetReason(), tc.reason) {
				t.Fatalf("AuthorizePeer(%s): %v %v, want allowed %v, reason %q", tc.node, resp, err, tc.allowed, tc.reason)
			}
		})
	}
	t.Run("a server without a job for it", func(t *testing.T) {
		if _, err := stranger.AuthorizePeer(ctx, &ferryv1.AuthorizePeerRequest{NodeId: "peer", Digest: d}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("AuthorizePeer by a node without the artifact: %v, want PermissionDenied", err)
		}
	})
}

// With --peer-exchange=false, GetPieces says so and the agent downloads
// from the controller as before.
func TestPeerExchangeOff(t *testing.T) {
	data := randomBytes(9, 1000)
	d := sha(data)
	h := newPeerHarness(t, []string{"a", "b"}, jobs{"a": {d}, "b": {d}}, true)
	h.push("tool.bin", data)
	a := h.connect("a", "127.0.0.1:7001")
	_, err := a.GetPieces(context.Background(), &ferryv1.GetPiecesRequest{Digest: d})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "peer exchange is off on this controller") {
		t.Fatalf("GetPieces with peer exchange off: %v, want FailedPrecondition saying it is off", err)
	}
	if resp, err := a.AuthorizePeer(context.Background(), &ferryv1.AuthorizePeerRequest{NodeId: "b", Digest: d}); err != nil || resp.GetAllowed() {
		t.Fatalf("AuthorizePeer with peer exchange off: %v %v, want not allowed", resp, err)
	}
	if got, err := download(a, d, 0, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("download with peer exchange off: %d bytes, %v", len(got), err)
	}
}
