package fetch

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ferryv1 "github.com/ferrydeploy/ferry/proto/gen/ferry/v1"
	"github.com/ferrydeploy/ferry/shared/chunk"
	"github.com/ferrydeploy/ferry/shared/pki/pkitest"
	"github.com/ferrydeploy/ferry/shared/rpc"
	"github.com/ferrydeploy/ferry/shared/sha256digest"
)

// blob is what the fake controller serves for a digest.
type blob interface {
	io.ReaderAt
	Size() int64
}

// fakeController serves DownloadArtifact like the controller does: from an
// offset, in chunks of the size asked for (bounded by chunk.Size, and by
// chunk when the test sets it smaller), without waiting for the client.
// cut, when set, tells how many bytes a stream carries before it breaks;
// hang, when set, tells after how many bytes a stream stops sending until
// the client gives up on it.
type fakeController struct {
	ferryv1.UnimplementedAgentServiceServer
	chunk   int
	mu      sync.Mutex
	blobs   map[string]blob
	cut     func() int64 // <0: never
	hang    func() int64 // <0: never
	refuse  error        // when set, every stream ends with it before a byte
	served  atomic.Int64
	streams atomic.Int64
	active  atomic.Int64 // streams being served now
	asked   []uint32     // each stream's max_chunk_size
}

func newFake() *fakeController {
	return &fakeController{chunk: chunk.Max, blobs: map[string]blob{}}
}

// idle waits until no stream is being served, so served counts every
// byte the streams so far will ever send.
func (s *fakeController) idle(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.active.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("the fake controller is still serving a stream after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// add serves data under its own digest and returns the digest.
func (s *fakeController) add(data []byte) string {
	d := digestOf(data)
	s.serveAs(d, bytes.NewReader(data))
	return d
}

func (s *fakeController) serveAs(digest string, b blob) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs[digest] = b
}

func (s *fakeController) DownloadArtifact(req *ferryv1.DownloadArtifactRequest, stream grpc.ServerStreamingServer[ferryv1.DownloadArtifactResponse]) error {
	s.streams.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	s.mu.Lock()
	b, ok := s.blobs[req.Digest]
	cut, hang, refuse := s.cut, s.hang, s.refuse
	s.asked = append(s.asked, req.MaxChunkSize)
	s.mu.Unlock()
	if refuse != nil {
		return refuse
	}
	if !ok {
		return status.Errorf(codes.NotFound, "no artifact has digest %s", req.Digest)
	}
	size := uint64(b.Size())
	off := req.Offset
	if off > size {
		return status.Errorf(codes.OutOfRange, "offset %d is past the end (%d)", off, size)
	}
	limit, hangAt := int64(-1), int64(-1)
	if cut != nil {
		limit = cut()
	}
	if hang != nil {
		hangAt = hang()
	}
	buf := make([]byte, min(s.chunk, chunk.Size(req.MaxChunkSize)))
	var sent int64
	if off == size {
		return stream.Send(&ferryv1.DownloadArtifactResponse{Offset: off, Size: size})
	}
	end := size
	if req.Length > 0 && req.Length < size-off {
		end = off + req.Length
	}
	for off < end {
		if hangAt >= 0 && sent >= hangAt {
			<-stream.Context().Done()
			return stream.Context().Err()
		}
		n := int(min(uint64(len(buf)), end-off))
		broken := false
		if limit >= 0 && sent+int64(n) > limit {
			n, broken = int(limit-sent), true
		}
		if n > 0 {
			if _, err := b.ReadAt(buf[:n], int64(off)); err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if err := stream.Send(&ferryv1.DownloadArtifactResponse{Offset: off, Data: buf[:n], Size: size}); err != nil {
				return err
			}
			s.served.Add(int64(n))
			sent += int64(n)
			off += uint64(n)
		}
		if broken {
			return status.Error(codes.Unavailable, "stream cut by the test")
		}
	}
	return nil
}

func digestOf(data []byte) string {
	s := sha256.Sum256(data)
	return sha256digest.Prefix + hex.EncodeToString(s[:])
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	b := make([]byte, n)
	r.Read(b)
	return b
}

// serve runs the fake behind the real server middleware over mTLS and
// returns its address.
func serve(t testing.TB, p *pkitest.PKI, fake ferryv1.AgentServiceServer) string {
	t.Helper()
	srv := rpc.NewServer(rpc.ServerOptions{TLS: p.ServerTLS(), Logger: slog.New(slog.DiscardHandler)})
	ferryv1.RegisterAgentServiceServer(srv, fake)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }() // returns at Stop
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

// dial connects as the agent; reconnects are fast so tests that break
// connections stay quick.
func dial(t testing.TB, p *pkitest.PKI, addr string) ferryv1.AgentServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, dialOptions(p)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return ferryv1.NewAgentServiceClient(conn)
}

func dialOptions(p *pkitest.PKI) []grpc.DialOption {
	return append(rpc.DialOptions(p.ClientTLS(p.Agent)), grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.5, MaxDelay: 50 * time.Millisecond},
		MinConnectTimeout: time.Second,
	}))
}

// brokenLinks is a Config.BrokenLink dialling addr with opts, one
// connection per window, as the agent does.
func brokenLinks(t testing.TB, addr string, opts []grpc.DialOption) func(int32) ferryv1.AgentServiceClient {
	var mu sync.Mutex
	conns := map[int32]ferryv1.AgentServiceClient{}
	return func(window int32) ferryv1.AgentServiceClient {
		mu.Lock()
		defer mu.Unlock()
		if c, ok := conns[window]; ok {
			return c
		}
		conn, err := grpc.NewClient(addr, append(opts, BrokenLinkDialOptions(window)...)...)
		if err != nil {
			t.Error(err)
			return nil
		}
		t.Cleanup(func() { conn.Close() })
		conns[window] = ferryv1.NewAgentServiceClient(conn)
		return conns[window]
	}
}

func newFetcher(t testing.TB, dir string, client ferryv1.AgentServiceClient, mod func(*Config)) *Fetcher {
	t.Helper()
	cfg := Config{
		StateDir: dir, Client: client,
		BackoffBase: time.Millisecond, BackoffMax: 20 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler), Rand: rand.New(rand.NewPCG(1, 2)),
	}
	if mod != nil {
		mod(&cfg)
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// ensureWithin runs Ensure under a timeout and fails unless it returns
// the artifact, byte for byte.
func ensureWithin(t *testing.T, f *Fetcher, timeout time.Duration, digest string, data []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	path, err := f.Ensure(ctx, digest, uint64(len(data)), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, path), data) {
		t.Fatal("the reassembled file differs from the artifact")
	}
}
