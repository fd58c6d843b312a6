package fetch

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

const testPieceLen = 64 << 10

// pieceController is the fake controller with peer exchange: GetPieces
// answers the table of its one download with holders(call, index) and
// seed(call, index), call counting GetPieces calls from 0.
type pieceController struct {
	*fakeController
	data   []byte
	digest string

	mu      sync.Mutex
	err     error // GetPieces's answer instead, when set
	holders func(call, index int) []string
	seed    func(call, index int) bool
	calls   int
	have    []uint32 // the last GetPieces's have (holders and seed may read it)
	reports []*ferryv1.ReportBadPeerRequest
}

func newPieceController(data []byte) *pieceController {
	c := &pieceController{fakeController: newFake(), data: data}
	c.digest = c.add(data)
	return c
}

func (c *pieceController) GetPieces(_ context.Context, req *ferryv1.GetPiecesRequest) (*ferryv1.GetPiecesResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	if req.GetDigest() != c.digest {
		return nil, status.Error(codes.PermissionDenied, "no job for that")
	}
	call := c.calls
	c.calls++
	c.have = req.GetHave()
	resp := &ferryv1.GetPiecesResponse{Size: uint64(len(c.data))}
	seen := map[string]bool{}
	for i := 0; i*testPieceLen < len(c.data); i++ {
		b := c.data[i*testPieceLen : min(len(c.data), (i+1)*testPieceLen)]
		p := &ferryv1.Piece{Offset: uint64(i * testPieceLen), Length: uint32(len(b)), Digest: digestOf(b)}
		if c.holders != nil {
			p.Holders = c.holders(call, i)
		}
		if c.seed != nil {
			p.Seed = c.seed(call, i)
		}
		for _, h := range p.Holders {
			if !seen[h] {
				seen[h] = true
				resp.Peers = append(resp.Peers, &ferryv1.PeerAddress{NodeId: h, Address: h + ".example:7947"})
			}
		}
		resp.Pieces = append(resp.Pieces, p)
	}
	return resp, nil
}

func (c *pieceController) ReportBadPeer(_ context.Context, req *ferryv1.ReportBadPeerRequest) (*ferryv1.ReportBadPeerResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reports = append(c.reports, req)
	return &ferryv1.ReportBadPeerResponse{}, nil
}

func (c *pieceController) piece(i int) []byte {
	return c.data[i*testPieceLen : min(len(c.data), (i+1)*testPieceLen)]
}

// fakePeers are other agents: each node answers a piece with behave.
type fakePeers struct {
	mu     sync.Mutex
	behave map[string]func(index int) ([]byte, error)
	calls  map[string]int
}

func (p *fakePeers) FetchPiece(_ context.Context, node, addr, _ string, index, length uint32) ([]byte, error) {
	p.mu.Lock()
	p.calls[node]++
	b := p.behave[node]
	p.mu.Unlock()
	if addr != node+".example:7947" {
		return nil, errors.New("dialled the wrong address")
	}
	if b == nil {
		return nil, errors.New("no such peer")
	}
	data, err := b(int(index))
	if err == nil && len(data) != int(length) {
		return nil, errors.New("wrong length")
	}
	return data, err
}

func (p *fakePeers) called(node string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.calls[node]
}

func honest(c *pieceController) func(int) ([]byte, error) {
	return func(i int) ([]byte, error) { return bytes.Clone(c.piece(i)), nil }
}

// pieceRig is a fetcher with peers against a piece controller.
func pieceRig(t *testing.T, c ferryv1.AgentServiceServer, peers PeerClient) *Fetcher {
	t.Helper()
	p := pkitest.New(t)
	return newFetcher(t, t.TempDir(), dial(t, p, serve(t, p, c)), func(cfg *Config) { cfg.Peers = peers })
}

// ensureNoted is ensureWithin with the job-log notes collected.
func ensureNoted(t *testing.T, f *Fetcher, digest string, data []byte) []string {
	t.Helper()
	var mu sync.Mutex
	var notes []string
	ctx, cancel := context.WithTimeout(WithNote(context.Background(), func(s string) {
		mu.Lock()
		notes = append(notes, s)
		mu.Unlock()
	}), 60*time.Second)
	defer cancel()
	path, err := f.Ensure(ctx, digest, uint64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, path), data) {
		t.Fatal("the installed file differs from the artifact")
	}
	return notes
}

func TestPiecesFromPeers(t *testing.T) {
	data := randomBytes(1, 10*testPieceLen+123)
	c := newPieceController(data)
	c.holders = func(int, int) []string { return []string{"a", "b"} }
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"a": honest(c), "b": honest(c)}}
	f := pieceRig(t, c, peers)
	notes := ensureNoted(t, f, c.digest, data)
	if got := c.served.Load(); got != 0 {
		t.Errorf("the controller served %d bytes of a download every peer holds; want none", got)
	}
	if n := peers.called("a") + peers.called("b"); n != 11 {
		t.Errorf("the peers were asked for %d pieces, want the 11", n)
	}
	if !slices.ContainsFunc(notes, func(s string) bool { return strings.Contains(s, "from 2 peers") || strings.Contains(s, "from 1 peers") }) {
		t.Errorf("the job log does not say where the pieces came from: %q", notes)
	}
}

// A peer that serves wrong bytes is dropped, reported and named in the
// job's log; the piece comes from elsewhere and the install gets the
// right bytes.
func TestPiecesLyingPeerIsDroppedAndReported(t *testing.T) {
	data := randomBytes(2, 12*testPieceLen)
	c := newPieceController(data)
	c.holders = func(int, int) []string { return []string{"liar", "honest"} }
	liar := func(i int) ([]byte, error) {
		b := bytes.Clone(c.piece(i))
		b[len(b)/2] ^= 0xff
		return b, nil
	}
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"liar": liar, "honest": honest(c)}}
	f := pieceRig(t, c, peers)
	notes := ensureNoted(t, f, c.digest, data)

	lies := peers.called("liar")
	if lies == 0 {
		t.Fatal("the liar was never asked (the test's random choice); it cannot show the drop")
	}
	if lies > pieceWindow {
		t.Errorf("the liar was asked for %d pieces; after its first bad one it should be dropped (at most %d were in flight)", lies, pieceWindow)
	}
	c.mu.Lock()
	reports := c.reports
	c.mu.Unlock()
	if len(reports) == 0 || len(reports) != lies {
		t.Fatalf("%d reports for %d bad pieces", len(reports), lies)
	}
	for _, r := range reports {
		if r.GetNodeId() != "liar" || r.GetDigest() != c.digest || r.GetGotDigest() == digestOf(c.piece(int(r.GetIndex()))) {
			t.Errorf("report %v: want the liar, the download and the digest of the bytes it sent", r)
		}
	}
	if !slices.ContainsFunc(notes, func(s string) bool { return strings.Contains(s, "peer liar") && strings.Contains(s, "wrong bytes") }) {
		t.Errorf("the job log does not name the peer that served bad bytes: %q", notes)
	}
}

// A peer that dies mid-piece (its stream breaks) leaves the piece to the
// next holder, finally the controller.
func TestPiecesPeerThatDiesFallsBack(t *testing.T) {
	data := randomBytes(3, 6*testPieceLen)
	c := newPieceController(data)
	c.holders = func(int, int) []string { return []string{"dying"} }
	dying := func(int) ([]byte, error) {
		return nil, status.Error(codes.Unavailable, "the peer ended the piece after 512 of 65536 bytes")
	}
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"dying": dying}}
	f := pieceRig(t, c, peers)
	ensureNoted(t, f, c.digest, data)
	if got := c.served.Load(); got != int64(len(data)) {
		t.Errorf("the controller served %d bytes; want the whole download (%d), its only peer failing", got, len(data))
	}
	if peers.called("dying") == 0 {
		t.Error("the dying peer was never asked")
	}
}

// Without peer exchange (off on the controller, an older controller, or
// off on the agent) the download comes from the controller as ever.
func TestPiecesOffDownloadsFromTheController(t *testing.T) {
	data := randomBytes(4, 5*testPieceLen+7)
	for _, tc := range []struct {
		name   string
		server func() (ferryv1.AgentServiceServer, *fakeController)
		peers  bool
	}{
		{"off on the controller", func() (ferryv1.AgentServiceServer, *fakeController) {
			c := newPieceController(data)
			c.err = status.Error(codes.FailedPrecondition, "peer exchange is off on this controller")
			return c, c.fakeController
		}, true},
		{"controller without GetPieces", func() (ferryv1.AgentServiceServer, *fakeController) {
			c := newFake()
			c.add(data)
			return c, c
		}, true},
		{"off on the agent", func() (ferryv1.AgentServiceServer, *fakeController) {
			c := newPieceController(data)
			c.holders = func(int, int) []string { return []string{"a"} }
			return c, c.fakeController
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, fake := tc.server()
			peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){}}
			var pc PeerClient
			if tc.peers {
				pc = peers
			}
			f := pieceRig(t, srv, pc)
			ensureNoted(t, f, digestOf(data), data)
			if got := fake.served.Load(); got != int64(len(data)) {
				t.Errorf("the controller served %d bytes, want the download's %d", got, len(data))
			}
			if fake.streams.Load() != 1 {
				t.Errorf("%d streams, want the one download as without peer exchange", fake.streams.Load())
			}
			if pc, ok := srv.(*pieceController); ok && !tc.peers && pc.calls > 0 {
				t.Error("an agent with peer exchange off asked for pieces")
			}
		})
	}
}

// Seed pieces come from the controller, one by one (offset and length);
// a restart keeps the staging file's pieces that match their digests.
func TestPiecesResumeKeepsVerifiedPieces(t *testing.T) {
	data := randomBytes(5, 8*testPieceLen)
	c := newPieceController(data)
	c.seed = func(int, int) bool { return true }
	f := pieceRig(t, c, &fakePeers{calls: map[string]int{}})
	// Pieces 0..4 on disk from before, piece 2 damaged.
	part := bytes.Clone(data[:5*testPieceLen])
	part[2*testPieceLen+5] ^= 1
	h := c.digest[len("sha256:"):]
	if err := os.WriteFile(filepath.Join(f.stageDir, h+".partial"), part, 0o600); err != nil {
		t.Fatal(err)
	}
	ensureNoted(t, f, c.digest, data)
	if got, want := c.served.Load(), int64(4*testPieceLen); got != want {
		t.Errorf("the controller served %d bytes; want %d (pieces 2, 5, 6, 7: the verified ones were kept)", got, want)
	}
}

// A piece nobody holds yet is waited for; GetPieces is asked again until
// a holder appears.
func TestPiecesWaitForAHolder(t *testing.T) {
	data := randomBytes(6, 3*testPieceLen)
	c := newPieceController(data)
	c.holders = func(call, _ int) []string {
		if call < 3 {
			return nil
		}
		return []string{"late"}
	}
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"late": honest(c)}}
	f := pieceRig(t, c, peers)
	ensureNoted(t, f, c.digest, data)
	if got := c.served.Load(); got != 0 {
		t.Errorf("the controller served %d bytes; the pieces should have waited for their holder", got)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls < 4 {
		t.Errorf("GetPieces was asked %d times; want it asked again until the holder appeared", c.calls)
	}
}

// A downloaded blob's pieces are served afterwards; pieces being fetched
// are waited for; others are ErrNoPiece.
func TestOpenPiece(t *testing.T) {
	data := randomBytes(7, 4*testPieceLen)
	c := newPieceController(data)
	c.seed = func(int, int) bool { return true }
	f := pieceRig(t, c, &fakePeers{calls: map[string]int{}})
	ensureNoted(t, f, c.digest, data)
	read := func(digest string, i uint32, wait time.Duration) ([]byte, error) {
		r, err := f.OpenPiece(context.Background(), digest, i, wait)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	got, err := read(c.digest, 2, 0)
	if err != nil || !bytes.Equal(got, c.piece(2)) {
		t.Fatalf("piece 2 of the cached download: %d bytes, %v", len(got), err)
	}
	if _, err := read(c.digest, 9, 0); !errors.Is(err, ErrNoPiece) {
		t.Errorf("a piece past the end: %v, want ErrNoPiece", err)
	}

	// A download in progress: piece 1 arrives while a peer waits for it.
	other := randomBytes(8, 2*testPieceLen)
	od := digestOf(other)
	stage := filepath.Join(t.TempDir(), "stage")
	if err := os.WriteFile(stage, other, 0o600); err != nil {
		t.Fatal(err)
	}
	table := []pieceMeta{{off: 0, n: testPieceLen}, {off: testPieceLen, n: testPieceLen}}
	f.serve(od, table, []bool{true, false}, stage, stage+".final")
	if _, err := read(od, 1, 20*time.Millisecond); !errors.Is(err, ErrNoPiece) {
		t.Errorf("a piece still missing after the wait: %v, want ErrNoPiece", err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		f.served(od, 1)
	}()
	if got, err := read(od, 1, 10*time.Second); err != nil || !bytes.Equal(got, other[testPieceLen:]) {
		t.Fatalf("a piece that arrived during the wait: %d bytes, %v", len(got), err)
	}
	f.unserve(od)
	if _, err := read(od, 0, time.Second); !errors.Is(err, ErrNoPiece) {
		t.Errorf("a piece of a download no longer offered: %v, want ErrNoPiece", err)
	}
}

// A holder that answers NOT_FOUND (a seeder still fetching the piece) is
// asked again after the next GetPieces answer, not left for the
// controller.
func TestPiecesSeederStillFetching(t *testing.T) {
	data := randomBytes(9, 3*testPieceLen)
	c := newPieceController(data)
	c.holders = func(int, int) []string { return []string{"seeder"} }
	var mu sync.Mutex
	asked := map[int]int{}
	seeder := func(i int) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if asked[i]++; asked[i] <= 2 {
			return nil, status.Error(codes.NotFound, "this agent holds no verified piece yet")
		}
		return bytes.Clone(c.piece(i)), nil
	}
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"seeder": seeder}}
	f := pieceRig(t, c, peers)
	ensureNoted(t, f, c.digest, data)
	if got := c.served.Load(); got != 0 {
		t.Errorf("the controller served %d bytes; the pieces should have come from the seeder once it had them", got)
	}
	if n := peers.called("seeder"); n != 9 {
		t.Errorf("the seeder was asked %d times, want 3 per piece", n)
	}
}

// Pieces the controller asks this agent to seed are fetched even beyond
// the window, while the window waits for holders: here the other agents
// give the first pieces only once they have the seeded ones (they wait
// for them).
func TestPiecesSeedsBeyondTheWindow(t *testing.T) {
	data := randomBytes(10, 8*testPieceLen)
	c := newPieceController(data)
	seeded := func(i int) bool { return i >= 6 }
	c.seed = func(_, i int) bool { return seeded(i) }
	c.holders = func(_, i int) []string {
		if seeded(i) || !slices.Contains(c.have, 6) || !slices.Contains(c.have, 7) {
			return nil
		}
		return []string{"other"}
	}
	peers := &fakePeers{calls: map[string]int{}, behave: map[string]func(int) ([]byte, error){"other": honest(c)}}
	f := pieceRig(t, c, peers)
	ensureNoted(t, f, c.digest, data)
	if got, want := c.served.Load(), int64(2*testPieceLen); got != want {
		t.Errorf("the controller served %d bytes, want the 2 seeded pieces' %d (the others from the peer)", got, want)
	}
}
