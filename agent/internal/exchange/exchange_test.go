package exchange

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ferrydeploy/ferry/agent/internal/fetch"
	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/pki"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
)

const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeController answers AuthorizePeer from allowed.
type fakeController struct {
	mu      sync.Mutex
	allowed map[string]bool // node IDs
	calls   atomic.Int64
}

func (c *fakeController) AuthorizePeer(_ context.Context, in *ferryv1.AuthorizePeerRequest, _ ...grpc.CallOption) (*ferryv1.AuthorizePeerResponse, error) {
	c.calls.Add(1)
	c.mu.Lock()
	defer c.mu.Unlock()
	if in.GetDigest() == digest && c.allowed[in.GetNodeId()] {
		return &ferryv1.AuthorizePeerResponse{Allowed: true}, nil
	}
	return &ferryv1.AuthorizePeerResponse{Reason: "it has no job for that artifact"}, nil
}

// fakeSource holds pieces by index; a piece in hang sends its first half
// and then waits for ctx (the serving agent vanishes mid-piece).
type fakeSource struct {
	pieces map[uint32][]byte
	hang   map[uint32]bool
	waits  chan time.Duration
}

func (s *fakeSource) OpenPiece(ctx context.Context, d string, index uint32, wait time.Duration) (io.ReadCloser, error) {
	if s.waits != nil {
		s.waits <- wait
	}
	p, ok := s.pieces[index]
	if d != digest || !ok {
		return nil, fetch.ErrNoPiece
	}
	if s.hang[index] {
		return io.NopCloser(io.MultiReader(bytes.NewReader(p[:len(p)/2]), ctxReader{ctx})), nil
	}
	return io.NopCloser(bytes.NewReader(p)), nil
}

type ctxReader struct{ ctx context.Context }

func (r ctxReader) Read([]byte) (int, error) { <-r.ctx.Done(); return 0, r.ctx.Err() }

type rig struct {
	p      *pkitest.PKI
	ctl    *fakeController
	src    *fakeSource
	srv    *Server
	stop   context.CancelFunc
	pieces map[uint32][]byte
}

// newRig serves src as agent "srv" on loopback.
func newRig(t *testing.T) *rig {
	t.Helper()
	p := pkitest.New(t)
	r := &rig{p: p, ctl: &fakeController{allowed: map[string]bool{"n2": true}},
		pieces: map[uint32][]byte{0: bytes.Repeat([]byte("piece zero "), 250_000), 1: []byte("piece one")}}
	r.src = &fakeSource{pieces: r.pieces, hang: map[uint32]bool{}}
	srvCert := p.Issue(t, pki.Identity{Role: pki.RoleAgent, Name: "srv"})
	srv, err := Listen(ServerConfig{Addr: "127.0.0.1:0", Certificate: func() *tls.Certificate { return &srvCert }, Pool: p.CA.Pool(),
		Controller: r.ctl, Source: r.src, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	r.srv, r.stop = srv, func() { cancel(); <-done }
	t.Cleanup(r.stop)
	return r
}

// client is a Client presenting a certificate for id.
func (r *rig) client(t *testing.T, id pki.Identity) *Client {
	cert := r.p.Issue(t, id)
	c := NewClient(ClientConfig{Certificate: func() *tls.Certificate { return &cert }, Pool: r.p.CA.Pool(), Stall: 2 * time.Second})
	t.Cleanup(c.Close)
	return c
}

func fetchWithin(c *Client, node, addr string, index uint32, length int) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return c.FetchPiece(ctx, node, addr, digest, index, uint32(length))
}

func TestServesPiecesToAllowedAgents(t *testing.T) {
	r := newRig(t)
	c := r.client(t, pki.Identity{Role: pki.RoleAgent, Name: "n2"})
	got, err := fetchWithin(c, "srv", r.srv.Addr(), 0, len(r.pieces[0]))
	if err != nil {
		t.Fatalf("an allowed agent's fetch of a held piece: %v", err)
	}
	if !bytes.Equal(got, r.pieces[0]) {
		t.Fatalf("got %d bytes, not the piece's %d", len(got), len(r.pieces[0]))
	}
	if got, err := fetchWithin(c, "srv", r.srv.Addr(), 1, len(r.pieces[1])); err != nil || string(got) != "piece one" {
		t.Fatalf("second piece: %q, %v", got, err)
	}
	if n := r.ctl.calls.Load(); n != 1 {
		t.Errorf("the server asked the controller %d times for one caller and one artifact; want once (the answer is kept)", n)
	}

	_, err = fetchWithin(c, "srv", r.srv.Addr(), 7, 10)
	if status.Code(err) != codes.NotFound {
		t.Errorf("a piece the server does not hold: %v, want NotFound", err)
	}
}

func TestRefusesCallersTheControllerDoesNotAllow(t *testing.T) {
	r := newRig(t)
	for _, tc := range []struct {
		name string
		id   pki.Identity
		want codes.Code
	}{
		{"agent without the job", pki.Identity{Role: pki.RoleAgent, Name: "n3"}, codes.PermissionDenied},
		{"admin certificate", pki.Identity{Role: pki.RoleAdmin, Name: pkitest.AdminName}, codes.PermissionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fetchWithin(r.client(t, tc.id), "srv", r.srv.Addr(), 1, len(r.pieces[1]))
			if status.Code(err) != tc.want {
				t.Fatalf("fetch as %s: %v, want %s", tc.id, err, tc.want)
			}
		})
	}
}

func TestClientChecksThePeersIdentity(t *testing.T) {
	r := newRig(t)
	c := r.client(t, pki.Identity{Role: pki.RoleAgent, Name: "n2"})
	// The server at that address is agent "srv", not "other".
	if _, err := fetchWithin(c, "other", r.srv.Addr(), 1, len(r.pieces[1])); err == nil {
		t.Fatal("the client took a piece from a server whose certificate names another node")
	}
	if r.ctl.calls.Load() != 0 {
		t.Error("the request reached the server although the handshake should have failed")
	}
}

func TestClientFailsAPeerThatVanishesMidPiece(t *testing.T) {
	r := newRig(t)
	r.src.hang[0] = true
	c := r.client(t, pki.Identity{Role: pki.RoleAgent, Name: "n2"})
	errc := make(chan error, 1)
	go func() {
		_, err := fetchWithin(c, "srv", r.srv.Addr(), 0, len(r.pieces[0]))
		errc <- err
	}()
	time.Sleep(200 * time.Millisecond) // half of it on the way
	r.stop()                           // the peer goes away
	if err := <-errc; err == nil {
		t.Fatal("the client returned a piece whose server vanished halfway through it")
	}
}

func TestClientGivesUpOnAStalledPeer(t *testing.T) {
	r := newRig(t)
	r.src.hang[0] = true
	c := r.client(t, pki.Identity{Role: pki.RoleAgent, Name: "n2"})
	_, err := fetchWithin(c, "srv", r.srv.Addr(), 0, len(r.pieces[0]))
	if !errors.Is(err, errStalled) {
		t.Fatalf("a peer that stops sending mid-piece: %v, want a stall", err)
	}
}

func TestWaitIsBounded(t *testing.T) {
	r := newRig(t)
	r.src.waits = make(chan time.Duration, 1)
	c := r.client(t, pki.Identity{Role: pki.RoleAgent, Name: "n2"})
	if _, err := fetchWithin(c, "srv", r.srv.Addr(), 1, len(r.pieces[1])); err != nil {
		t.Fatal(err)
	}
	if w := <-r.src.waits; w <= 0 || w > MaxWait {
		t.Fatalf("the source was asked to wait %v for the piece; want the request's wait, within (0, %v]", w, MaxWait)
	}
}
